use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{FrameEncoder, FramingError};

/// Decodes with one codec and encodes with another, for protocols whose
/// requests and replies are framed differently (say, fixed-length commands
/// answered by `\n`-terminated lines).
///
/// ```
/// use bytes::BytesMut;
/// use tether::framing::{DuplexCodec, FixedLengthCodec, SentinelCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// // The device's side: 4-byte commands in, lines out.
/// let mut device = DuplexCodec::new(FixedLengthCodec::new(4), SentinelCodec::lines());
/// let mut inbound = BytesMut::from("STAT");
/// assert_eq!(device.decode(&mut inbound).unwrap().unwrap(), "STAT");
/// let mut outbound = BytesMut::new();
/// device.encode("ready", &mut outbound).unwrap();
/// assert_eq!(outbound, "ready\n");
/// ```
#[derive(Debug, Clone)]
pub struct DuplexCodec<D, E> {
    decoder: D,
    encoder: E,
}

impl<D, E> DuplexCodec<D, E> {
    /// Reads with `decoder`, writes with `encoder`.
    pub fn new(decoder: D, encoder: E) -> Self {
        DuplexCodec { decoder, encoder }
    }
}

impl<D: Decoder, E> Decoder for DuplexCodec<D, E> {
    type Item = D::Item;
    type Error = D::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<D::Item>, D::Error> {
        self.decoder.decode(buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<D::Item>, D::Error> {
        self.decoder.decode_eof(buf)
    }
}

impl<D, E: Encoder<T>, T> Encoder<T> for DuplexCodec<D, E> {
    type Error = E::Error;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), E::Error> {
        self.encoder.encode(item, dst)
    }
}

impl<D, E: FrameEncoder<T>, T> FrameEncoder<T> for DuplexCodec<D, E> {
    fn encode_around(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        self.encoder.encode_around(item, dst)
    }

    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        self.encoder.payload(item)
    }
}
