use bytes::BytesMut;
use tokio_util::codec::Encoder;

use super::FramingError;

/// Payloads at least this long go out from the caller's buffer rather than
/// being copied into the write buffer. Below it a copy costs less than the
/// extra I/O slice (16 KiB: the packet layer's threshold too).
pub(crate) const BY_REFERENCE: usize = 16 * 1024;

/// An [`Encoder`] that can leave a long payload out of the write buffer,
/// for tether's sessions and servers to write it from the caller's own
/// item, in place, by a vectored write.
///
/// A bulk transfer through `Encoder::encode` copies each payload into the
/// write buffer before the kernel copies it again into the socket: for
/// 1 MiB echoes, that copy was a tenth of all the CPU time on both ends.
/// With this trait a session writes the frame's own bytes (a length
/// prefix, a sentinel) from the buffer and the payload from the item:
///
/// ```text
/// LengthCodec, a 1 MiB payload:  dst = [00 10 00 00]           at = 4
/// SentinelCodec "\r\n":          dst = [0d 0a]                 at = 0
/// on the wire:                   dst[..at] · payload · dst[at..]
/// ```
///
/// Sessions ([`Session`](crate::session::Session),
/// [`Server`](crate::session::Server)) take any codec that implements it.
/// tether's byte codecs leave out payloads of 16 KiB or more; short ones,
/// where a copy costs less than a vectored write's extra slice, are encoded
/// whole. Both methods have defaults that encode every frame whole, so a
/// codec of your own needs one line:
///
/// ```
/// use bytes::BytesMut;
/// use tether::framing::{FrameEncoder, FramingError};
/// use tokio_util::codec::Encoder;
///
/// struct Upper; // sends text in capitals, one per line
///
/// impl Encoder<&str> for Upper {
///     type Error = FramingError;
///     fn encode(&mut self, item: &str, dst: &mut BytesMut) -> Result<(), FramingError> {
///         dst.extend_from_slice(item.to_uppercase().as_bytes());
///         dst.extend_from_slice(b"\n");
///         Ok(())
///     }
/// }
///
/// impl FrameEncoder<&str> for Upper {} // every frame encoded whole
/// ```
pub trait FrameEncoder<T>: Encoder<T, Error = FramingError> {
    /// Encodes `item` into `dst` without its payload, if that payload is
    /// worth writing in place: returns the offset in `dst` (counted from
    /// where this frame starts, its length on entry) at which the
    /// payload, [`payload`](Self::payload)`(item)`, goes. `None`: nothing
    /// was written; the caller encodes `item` whole with
    /// [`Encoder::encode`].
    ///
    /// An item that can't be encoded is an error here, as `encode` would
    /// make it, with nothing written.
    fn encode_around(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        let _ = (item, dst);
        Ok(None)
    }

    /// The payload [`encode_around`](Self::encode_around) left out of
    /// `item`'s frame. Called only after it returned `Some`.
    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        let _ = item;
        &[]
    }
}
