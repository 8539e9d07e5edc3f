use bytes::BytesMut;
use tokio_util::codec::Encoder;

use super::FramingError;

/// Payloads at least this long go out from the caller's buffer rather than
/// being copied into the write buffer, with tether's codecs (and the packet
/// layer): below it a copy costs less than the extra I/O slice. A codec of
/// your own may use it too.
pub const BY_REFERENCE: usize = 16 * 1024;

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
/// Sessions and servers, async and blocking
/// ([`session::Session`](crate::session::Session),
/// [`session::Server`](crate::session::Server),
/// [`blocking::Session`](crate::blocking::Session),
/// [`blocking::Server`](crate::blocking::Server)), take any codec that
/// implements it.
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
///
/// A codec that overrides [`encode_around`](Self::encode_around) must
/// override [`payload`](Self::payload) too: the default payload is empty.
pub trait FrameEncoder<T>: Encoder<T, Error = FramingError> {
    /// Encodes `item` into `dst` without its payload, if that payload is
    /// worth writing in place: appends the frame's other bytes and returns
    /// the offset, counted from where this frame starts (`dst`'s length on
    /// entry) and at most the bytes appended, at which the payload,
    /// [`payload`](Self::payload)`(item)`, goes. Bytes already in `dst`
    /// (frames queued before) are not to be touched.
    ///
    /// `None`: nothing was written and no state changed; the caller
    /// encodes `item` whole with [`Encoder::encode`]. An item that would
    /// be left out but can't be encoded is an error, as `encode` would make
    /// it. (An offset past the bytes appended is refused as
    /// [`FramingError::PayloadOutOfFrame`], with nothing sent.)
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

/// Encodes `item` into `dst` through `codec`: whole, or without a long
/// payload, returning `item` with the offset in `dst` where its payload
/// goes (to be written before anything else is queued). On an error
/// nothing is left in `dst` of this frame.
pub(crate) fn encode_frame<C, T>(
    codec: &mut C,
    item: T,
    dst: &mut BytesMut,
) -> Result<Option<(T, usize)>, FramingError>
where
    C: FrameEncoder<T>,
{
    let start = dst.len();
    let encoded = match codec.encode_around(&item, dst) {
        Ok(Some(at)) => match dst.len().checked_sub(start) {
            Some(written) if at <= written => Ok(Some((item, start + at))),
            // (shrunk: bytes queued before were taken, a broken codec too)
            written => Err(FramingError::PayloadOutOfFrame {
                at,
                written: written.unwrap_or(0),
            }),
        },
        Ok(None) => {
            dst.truncate(start); // a codec that wrote before saying `None`
            codec.encode(item, dst).map(|()| None)
        }
        Err(e) => Err(e),
    };
    if encoded.is_err() {
        dst.truncate(start);
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{FixedLengthCodec, LengthCodec, SentinelCodec};

    /// What `codec` puts on the wire for `item`: through `encode_around`
    /// (the parts in place) when it leaves the payload out, and whether
    /// it did.
    fn wire<C: FrameEncoder<Vec<u8>>>(codec: &mut C, item: Vec<u8>) -> (Vec<u8>, bool) {
        let mut dst = BytesMut::from(&b"before"[..]);
        match codec.encode_around(&item, &mut dst).unwrap() {
            None => {
                assert_eq!(dst, "before", "nothing written when the payload stays in");
                codec.encode(item, &mut dst).unwrap();
                (dst[6..].to_vec(), false)
            }
            Some(at) => {
                let (head, tail) = dst[6..].split_at(at);
                ([head, codec.payload(&item), tail].concat(), true)
            }
        }
    }

    /// `encode` alone, for comparison.
    fn whole<C: FrameEncoder<Vec<u8>>>(codec: &mut C, item: Vec<u8>) -> Vec<u8> {
        let mut dst = BytesMut::new();
        codec.encode(item, &mut dst).unwrap();
        dst.to_vec()
    }

    #[test]
    fn a_payload_left_out_goes_on_the_wire_as_encode_puts_it() {
        for len in [0, 5, BY_REFERENCE - 1, BY_REFERENCE, 3 * BY_REFERENCE + 7] {
            let item = vec![b'x'; len];
            let long = len >= BY_REFERENCE;
            for prefix in [1, 4, 8] {
                if prefix == 1 && len > 255 {
                    continue; // too long for the prefix: an error, below
                }
                let mut codec = LengthCodec::with_prefix(prefix, 1 << 20);
                let want = whole(&mut codec, item.clone());
                assert_eq!(
                    wire(&mut codec, item.clone()),
                    (want, long),
                    "length {prefix}: {len}"
                );
            }
            let mut codec = SentinelCodec::new("\r\n");
            let want = whole(&mut codec, item.clone());
            assert_eq!(
                wire(&mut codec, item.clone()),
                (want, long),
                "sentinel: {len}"
            );
            if len == 0 {
                continue; // no fixed frame is empty
            }
            let mut codec = FixedLengthCodec::new(len);
            let want = whole(&mut codec, item.clone());
            assert_eq!(wire(&mut codec, item.clone()), (want, long), "fixed: {len}");
        }
    }

    #[test]
    fn a_long_payload_that_cannot_be_encoded_is_refused_with_nothing_written() {
        let long = vec![b'x'; BY_REFERENCE];
        let mut dst = BytesMut::new();
        let refused = LengthCodec::with_prefix(1, 1 << 20).encode_around(&long, &mut dst);
        assert!(matches!(refused, Err(FramingError::FrameTooLong { .. })));
        let refused = LengthCodec::with_prefix(4, 100).encode_around(&long, &mut dst);
        assert!(matches!(
            refused,
            Err(FramingError::FrameTooLong { max: 100 })
        ));
        let mut with_sentinel = long.clone();
        with_sentinel[10_000] = b'\n';
        let refused = SentinelCodec::lines().encode_around(&with_sentinel, &mut dst);
        assert!(matches!(
            refused,
            Err(FramingError::SentinelInFrame { position: 10_000 })
        ));
        // `…]]>` then `]]>]]>` reads back as `…` and leaves `]]>` over
        let ends_in_a_start = [&long[..], b"]]>"].concat();
        let refused = SentinelCodec::new("]]>]]>").encode_around(&ends_in_a_start, &mut dst);
        assert!(
            matches!(refused, Err(FramingError::SentinelInFrame { .. })),
            "a frame ending in the sentinel's start"
        );
        let refused = FixedLengthCodec::new(8).encode_around(&long, &mut dst);
        assert!(matches!(
            refused,
            Err(FramingError::WrongLength { expected: 8, .. })
        ));
        assert!(dst.is_empty());
    }

    /// A codec of someone's own that says its payload goes `at` bytes in,
    /// after writing `writes` bytes, or fails.
    struct Misplacing {
        writes: usize,
        at: Option<usize>,
    }

    impl Encoder<Vec<u8>> for Misplacing {
        type Error = FramingError;
        fn encode(&mut self, _: Vec<u8>, dst: &mut BytesMut) -> Result<(), FramingError> {
            dst.extend_from_slice(b"half");
            Err(FramingError::malformed("cannot"))
        }
    }

    impl FrameEncoder<Vec<u8>> for Misplacing {
        fn encode_around(
            &mut self,
            _: &Vec<u8>,
            dst: &mut BytesMut,
        ) -> Result<Option<usize>, FramingError> {
            dst.extend_from_slice(&b"prefix"[..self.writes]);
            Ok(self.at)
        }
    }

    #[test]
    fn a_payload_placed_past_the_frame_or_a_failed_encode_leaves_nothing_queued() {
        let mut dst = BytesMut::from(&b"queued"[..]);
        let mut codec = Misplacing {
            writes: 4,
            at: Some(5),
        };
        let refused = encode_frame(&mut codec, vec![1], &mut dst);
        assert!(matches!(
            refused,
            Err(FramingError::PayloadOutOfFrame { at: 5, written: 4 })
        ));
        assert_eq!(dst, "queued");
        let mut codec = Misplacing {
            writes: 4,
            at: Some(4),
        };
        let (_, at) = encode_frame(&mut codec, vec![1], &mut dst)
            .unwrap()
            .unwrap();
        assert_eq!(
            (at, &dst[..]),
            (10, &b"queuedpref"[..]),
            "at the end: allowed"
        );
        let mut dst = BytesMut::from(&b"queued"[..]);
        let mut codec = Misplacing {
            writes: 0,
            at: None,
        };
        assert!(encode_frame(&mut codec, vec![1], &mut dst).is_err());
        assert_eq!(dst, "queued", "the half-encoded frame is dropped");
        let mut codec = Misplacing {
            writes: 4,
            at: None,
        };
        assert!(encode_frame(&mut codec, vec![1], &mut dst).is_err());
        assert_eq!(dst, "queued", "bytes written before `None` are dropped too");
    }

    #[test]
    fn wrapping_codecs_pass_the_payload_on_or_copy_it() {
        use crate::framing::{text, DuplexCodec};
        let long = vec![b'y'; BY_REFERENCE];
        let mut duplex = DuplexCodec::new(FixedLengthCodec::new(4), LengthCodec::new());
        let want = whole(&mut duplex, long.clone());
        assert_eq!(wire(&mut duplex, long.clone()), (want, true));
        // a map's marshalling function takes the value: always a copy
        let mut lines = text(SentinelCodec::lines());
        let item = "z".repeat(BY_REFERENCE);
        let mut dst = BytesMut::new();
        assert_eq!(lines.encode_around(&item, &mut dst).unwrap(), None);
    }
}
