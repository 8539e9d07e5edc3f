use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{FrameEncoder, FramingError};

/// A byte codec plus a marshaller and an unmarshaller: typed values in,
/// typed values out.
///
/// `marshal` turns a value into what the inner codec encodes (bytes,
/// `String`, …); `unmarshal` turns a decoded frame into a value, or a
/// [`FramingError::Malformed`] for a frame that does not parse. The inner
/// codec still owns framing, limits and leftovers.
///
/// ```
/// use bytes::BytesMut;
/// use tether::framing::{FramingError, MapCodec, SentinelCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// // Integers as decimal lines.
/// let mut codec = MapCodec::new(
///     SentinelCodec::lines(),
///     |n: i64| n.to_string(),
///     |frame: BytesMut| {
///         std::str::from_utf8(&frame).ok().and_then(|s| s.parse::<i64>().ok())
///             .ok_or_else(|| FramingError::malformed("not an integer"))
///     },
/// );
/// let mut buf = BytesMut::new();
/// codec.encode(-42, &mut buf).unwrap();
/// assert_eq!(buf, "-42\n");
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(-42));
/// ```
#[derive(Debug, Clone)]
pub struct MapCodec<C, M, U> {
    inner: C,
    marshal: M,
    unmarshal: U,
}

impl<C, M, U> MapCodec<C, M, U> {
    /// Wraps `inner` with a marshaller and an unmarshaller.
    pub fn new(inner: C, marshal: M, unmarshal: U) -> Self {
        MapCodec {
            inner,
            marshal,
            unmarshal,
        }
    }

    /// The byte codec inside.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<C, M, U, T> Decoder for MapCodec<C, M, U>
where
    C: Decoder<Error = FramingError>,
    U: FnMut(C::Item) -> Result<T, FramingError>,
{
    type Item = T;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<T>, FramingError> {
        match self.inner.decode(buf)? {
            Some(frame) => (self.unmarshal)(frame).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<T>, FramingError> {
        match self.inner.decode_eof(buf)? {
            Some(frame) => (self.unmarshal)(frame).map(Some),
            None => Ok(None),
        }
    }
}

impl<C, M, U, T, F> Encoder<T> for MapCodec<C, M, U>
where
    C: Encoder<F, Error = FramingError>,
    M: FnMut(T) -> F,
{
    type Error = FramingError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FramingError> {
        self.inner.encode((self.marshal)(item), dst)
    }
}

/// A [`MapCodec`] carrying `String`s: what [`text`] returns.
pub type TextCodec<C> =
    MapCodec<C, fn(String) -> String, fn(BytesMut) -> Result<String, FramingError>>;

/// Text frames over any byte codec: invalid UTF-8 is
/// [`FramingError::InvalidUtf8`] naming the first bad byte's offset.
///
/// ```
/// use bytes::BytesMut;
/// use tether::framing::{text, FramingError, SentinelCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = text(SentinelCodec::crlf());
/// let mut buf = BytesMut::from(&b"caf\xc3\xa9\r\nab\xff\r\n"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "café");
/// assert!(matches!(codec.decode(&mut buf), Err(FramingError::InvalidUtf8 { position: 2 })));
/// ```
pub fn text<C>(inner: C) -> TextCodec<C> {
    fn unmarshal(frame: BytesMut) -> Result<String, FramingError> {
        String::from_utf8(frame.to_vec()).map_err(|e| FramingError::InvalidUtf8 {
            position: e.utf8_error().valid_up_to(),
        })
    }
    MapCodec::new(inner, std::convert::identity, unmarshal)
}

/// Every frame encoded whole: the marshalling function takes the value.
impl<C, M, U, T, F> FrameEncoder<T> for MapCodec<C, M, U>
where
    C: Encoder<F, Error = FramingError>,
    M: FnMut(T) -> F,
{
}
