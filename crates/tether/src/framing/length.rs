use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{room_ahead, FrameEncoder, FramingError, BY_REFERENCE, DEFAULT_MAX_FRAME_LENGTH};

/// Frames preceded by their length as a big-endian unsigned integer
/// (4 bytes unless configured), the prefix not counting itself.
///
/// ```text
/// wire:  00 00 00 05 68 65 6c 6c 6f  00 00 00 00
///        len = 5     h  e  l  l  o   len = 0 (an empty frame)
/// ```
///
/// The wire format of tokio-util's `LengthDelimitedCodec` with its default
/// big-endian prefix, decoded directly rather than through it, with
/// tether's error type, the 8 MiB default maximum and a truncated-frame
/// error at end of stream. Once a prefix is read, room is made for the
/// rest of the frame (up to four times what has arrived, and 256 KiB, at a
/// time), so a big frame arrives in few reads. A declared length over the
/// maximum is refused before anything is allocated
/// for it; that frame's bytes are then skipped as they arrive, so the error
/// belongs to one frame and the stream stays in step.
#[derive(Debug)]
pub struct LengthCodec {
    prefix: usize,
    max_length: usize,
    // Bytes of a refused oversize frame still to be dropped.
    skip: u64,
}

impl LengthCodec {
    /// A 4-byte big-endian prefix and the default maximum (8 MiB).
    pub fn new() -> Self {
        Self::with_prefix(4, DEFAULT_MAX_FRAME_LENGTH)
    }

    /// A `prefix`-byte big-endian prefix (1 to 8) and frames of at most
    /// `max_length` bytes (at most [`isize::MAX`] less the prefix: no
    /// buffer holds more).
    ///
    /// # Panics
    /// If `prefix` is not between 1 and 8.
    pub fn with_prefix(prefix: usize, max_length: usize) -> Self {
        assert!((1..=8).contains(&prefix), "a length prefix is 1 to 8 bytes");
        LengthCodec {
            prefix,
            // so that a frame and its prefix add up without overflow
            max_length: max_length.min(isize::MAX as usize - prefix),
            skip: 0,
        }
    }

    /// Drops what is left of a refused frame; true when it is all gone.
    fn skip_refused(&mut self, buf: &mut BytesMut) -> bool {
        let drop = self.skip.min(buf.len() as u64);
        buf.advance(drop as usize);
        self.skip -= drop;
        self.skip == 0
    }

    /// The maximum frame length, prefix excluded.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The length a frame's prefix declares (`buf` holds the prefix).
    fn declared(&self, buf: &[u8]) -> u64 {
        match self.prefix {
            4 => u64::from(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])),
            n => (&buf[..n]).get_uint(n),
        }
    }
}

impl Default for LengthCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for LengthCodec {
    fn clone(&self) -> Self {
        // A fresh decoder: its state belongs to one stream.
        Self::with_prefix(self.prefix, self.max_length)
    }
}

impl Decoder for LengthCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if !self.skip_refused(buf) || buf.len() < self.prefix {
            return Ok(None);
        }
        let declared = self.declared(buf);
        if declared > self.max_length as u64 {
            buf.advance(self.prefix);
            self.skip = declared;
            self.skip_refused(buf);
            return Err(FramingError::FrameTooLong {
                max: self.max_length,
            });
        }
        let whole = self.prefix + declared as usize;
        if buf.len() < whole {
            buf.reserve(room_ahead(buf.len(), whole - buf.len()));
            return Ok(None);
        }
        buf.advance(self.prefix);
        Ok(Some(buf.split_to(declared as usize)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.skip == 0 => Ok(None),
            None => {
                let buffered = buf.len();
                buf.clear();
                Err(FramingError::TruncatedFrame { buffered })
            }
        }
    }
}

impl LengthCodec {
    /// Writes the prefix of a frame of `len` bytes, making room for
    /// `room` bytes in all.
    #[inline(always)]
    fn put_prefix(&self, len: usize, dst: &mut BytesMut, room: usize) -> Result<(), FramingError> {
        let fits_prefix = self.prefix >= 8 || (len as u64) < 1u64 << (8 * self.prefix);
        if len > self.max_length || !fits_prefix {
            return Err(FramingError::FrameTooLong {
                max: self.max_length,
            });
        }
        dst.reserve(room);
        match self.prefix {
            4 => dst.put_u32(len as u32),
            n => dst.put_uint(len as u64, n),
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for LengthCodec {
    type Error = FramingError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FramingError> {
        let frame = item.as_ref();
        self.put_prefix(frame.len(), dst, self.prefix + frame.len())?;
        dst.put_slice(frame);
        Ok(())
    }
}

/// A payload of 16 KiB or more is left out: `dst` takes the prefix, and
/// the payload goes after it.
impl<T: AsRef<[u8]>> FrameEncoder<T> for LengthCodec {
    fn encode_around(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        let len = item.as_ref().len();
        if len < BY_REFERENCE {
            return Ok(None);
        }
        self.put_prefix(len, dst, self.prefix)?;
        Ok(Some(self.prefix))
    }

    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        item.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::RESERVE_AHEAD;

    #[test]
    fn round_trip_and_leftover_kept() {
        let mut codec = LengthCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(b"hello", &mut buf).unwrap();
        codec.encode(b"", &mut buf).unwrap();
        assert_eq!(&buf[..9], [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], [0, 0]);
    }

    #[test]
    fn hostile_length_is_refused_without_allocating() {
        let mut codec = LengthCodec::with_prefix(4, 1024);
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::FrameTooLong { max: 1024 })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn a_silent_peer_declaring_the_maximum_pins_little_memory() {
        let mut codec = LengthCodec::new(); // 8 MiB maximum
        let mut buf = BytesMut::new();
        buf.put_u32(DEFAULT_MAX_FRAME_LENGTH as u32);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        // four times what arrived, not the 8 MiB asked for (nor 256 KiB)
        assert!(buf.capacity() < 1024, "{}", buf.capacity());
    }

    #[test]
    fn a_big_frame_arriving_in_pieces_decodes_whole() {
        let mut codec = LengthCodec::new();
        let body: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        codec.encode(&body[..], &mut wire).unwrap();
        codec.encode(&b"next"[..], &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in wire.chunks(4093) {
            buf.extend_from_slice(piece);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0][..], &body[..]);
        assert_eq!(&frames[1][..], b"next");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_huge_declared_length_under_a_huge_maximum_is_no_panic() {
        let mut codec = LengthCodec::with_prefix(8, usize::MAX);
        let mut buf = BytesMut::from(&[0xffu8; 9][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::FrameTooLong { .. })
        ));
        let mut codec = LengthCodec::with_prefix(8, usize::MAX);
        let mut buf = BytesMut::from(&[0x7fu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf7, 1][..]);
        assert!(
            codec.decode(&mut buf).unwrap().is_none(),
            "waits for the body"
        );
        assert!(buf.capacity() <= 9 + RESERVE_AHEAD);
    }

    #[test]
    fn after_an_oversize_frame_the_next_one_decodes() {
        let mut codec = LengthCodec::with_prefix(2, 3);
        let mut buf = BytesMut::from(&[0u8, 5, b'a', b'b'][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::FrameTooLong { max: 3 })
        ));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[b'c', b'd', b'e', 0, 2, b'o', b'k']);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "ok");
    }

    #[test]
    fn truncated_frame_at_eof() {
        let mut codec = LengthCodec::new();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 1, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FramingError::TruncatedFrame { .. })
        ));
    }

    #[test]
    fn one_byte_prefix_limits_the_frame() {
        let mut codec = LengthCodec::with_prefix(1, 1000);
        let mut dst = BytesMut::new();
        assert!(codec.encode(vec![0u8; 256], &mut dst).is_err());
        codec.encode(vec![7u8; 255], &mut dst).unwrap();
        assert_eq!(dst[0], 255);
    }
}
