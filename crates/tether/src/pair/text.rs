//! Text messages and JSON lines over a [`Pair`] or a [`OneClientServer`].

use std::error::Error as StdError;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use super::{OneClientServer, Pair, PairConfig, PairError, ServerConfig};
use crate::framing::SentinelCodec;
use crate::transport::Endpoint;

/// The terminator of text messages unless told otherwise: `\r\n`.
pub const DEFAULT_TERMINATOR: &[u8] = b"\r\n";

/// A pair carrying byte frames that end in a terminator, in both directions:
/// what [`Pair::text`] and [`Pair::json_lines`] return.
pub type TextPair = Pair<SentinelCodec, SentinelCodec>;

/// Strict UTF-8: the error keeps the whole frame.
pub(crate) fn decode_text(frame: BytesMut) -> Result<String, PairError> {
    String::from_utf8(frame.to_vec()).map_err(|e| PairError::InvalidUtf8 {
        position: e.utf8_error().valid_up_to(),
        raw: frame.freeze(),
    })
}

/// Strict JSON (one value, nothing after it but whitespace): the error
/// keeps the whole frame.
pub(crate) fn decode_json<T: DeserializeOwned>(frame: BytesMut) -> Result<T, PairError> {
    serde_json::from_slice(&frame).map_err(|source| PairError::Json {
        raw: frame.freeze(),
        source,
    })
}

impl TextPair {
    /// A pair whose messages, both ways, are text ending in `terminator`
    /// (e.g. `"\r\n"`; [`DEFAULT_TERMINATOR`]), at most 8 MiB each.
    ///
    /// # Panics
    /// If `terminator` is empty.
    pub async fn text(
        listen: &Endpoint,
        config: PairConfig,
        terminator: impl Into<Bytes>,
    ) -> Result<Self, PairError> {
        let codec = SentinelCodec::new(terminator);
        Pair::bind(listen, config, codec.clone(), codec).await
    }

    /// A pair carrying JSON lines: one JSON value per `\n`-terminated line,
    /// for [`read_json`](Pair::read_json) and [`write_json`](Pair::write_json).
    pub async fn json_lines(listen: &Endpoint, config: PairConfig) -> Result<Self, PairError> {
        Self::text(listen, config, &b"\n"[..]).await
    }
}

impl<E, D> Pair<E, D>
where
    E: Encoder<Bytes> + Send + 'static,
    <E as Encoder<Bytes>>::Error: StdError + Send + Sync + 'static,
    D: Decoder<Item = BytesMut> + Clone + Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// Reads one message as text. Invalid UTF-8 is
    /// [`PairError::InvalidUtf8`] with the raw bytes; the link stays up.
    pub async fn read_text(&self) -> Result<String, PairError> {
        decode_text(self.read().await?)
    }

    /// Writes one text message (the codec adds the terminator and refuses a
    /// message that contains it).
    pub async fn write_text(&self, text: &str) -> Result<(), PairError> {
        self.write(Bytes::copy_from_slice(text.as_bytes())).await
    }

    /// Reads one message as a JSON value of type `T`. A message that is not
    /// exactly one such value is [`PairError::Json`] with the raw bytes;
    /// the link stays up.
    pub async fn read_json<T: DeserializeOwned>(&self) -> Result<T, PairError> {
        decode_json(self.read().await?)
    }

    /// Writes `value` as one line of compact JSON (which never contains a
    /// raw newline).
    pub async fn write_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), PairError> {
        let json = serde_json::to_vec(value).map_err(PairError::Serialize)?;
        self.write(Bytes::from(json)).await
    }
}

impl OneClientServer<SentinelCodec> {
    /// A server whose client sends text messages ending in `terminator`.
    pub async fn text(
        listen: &Endpoint,
        config: ServerConfig,
        terminator: impl Into<Bytes>,
    ) -> Result<Self, PairError> {
        OneClientServer::bind(listen, SentinelCodec::new(terminator), config).await
    }
}

impl<D> OneClientServer<D>
where
    D: Decoder<Item = BytesMut> + Clone + Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// Reads one message as text (strict UTF-8, raw bytes on error).
    pub async fn read_text(&self) -> Result<String, PairError> {
        decode_text(self.read().await?)
    }

    /// Reads one message as a JSON value (strict, raw bytes on error).
    pub async fn read_json<T: DeserializeOwned>(&self) -> Result<T, PairError> {
        decode_json(self.read().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_strict_and_keeps_the_raw_frame() {
        assert_eq!(decode_text(BytesMut::from("café")).unwrap(), "café");
        match decode_text(BytesMut::from(&b"ok\xc3"[..])) {
            Err(PairError::InvalidUtf8 { raw, position }) => {
                assert_eq!(&raw[..], b"ok\xc3");
                assert_eq!(position, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_is_one_value_and_nothing_else() {
        let v: Vec<u32> = decode_json(BytesMut::from("[1, 2]")).unwrap();
        assert_eq!(v, [1, 2]);
        for bad in ["[1, 2] 3", "{", "", "nul"] {
            match decode_json::<serde_json::Value>(BytesMut::from(bad)) {
                Err(PairError::Json { raw, .. }) => assert_eq!(&raw[..], bad.as_bytes()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let wrong_type = decode_json::<u32>(BytesMut::from("\"x\""));
        assert!(matches!(wrong_type, Err(PairError::Json { .. })));
    }
}
