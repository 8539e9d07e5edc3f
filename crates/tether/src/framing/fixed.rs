use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{room_ahead, FrameEncoder, FramingError, BY_REFERENCE};

/// Frames of exactly `n` bytes, back to back.
///
/// ```text
/// n = 4, wire: 01 02 03 04 05 06 07 08 09
/// frames:      [01 02 03 04] [05 06 07 08]  (09 waits for the next frame)
/// ```
///
/// The frame length is also the maximum: the buffer never holds more than
/// one unfinished frame. Bytes read past a frame stay for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedLengthCodec {
    length: usize,
}

impl FixedLengthCodec {
    /// A codec for frames of `length` bytes.
    ///
    /// # Panics
    /// If `length` is 0.
    pub fn new(length: usize) -> Self {
        assert!(length > 0, "a fixed frame length must be at least 1");
        FixedLengthCodec { length }
    }

    /// The frame length.
    pub fn length(&self) -> usize {
        self.length
    }
}

impl Decoder for FixedLengthCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if buf.len() < self.length {
            // room for the rest as it arrives, as for a length prefix: a
            // peer that sends one byte of a large frame makes the buffer
            // hold a few bytes, not the whole frame
            buf.reserve(room_ahead(buf.len(), self.length - buf.len()));
            return Ok(None);
        }
        Ok(Some(buf.split_to(self.length)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => {
                let buffered = buf.len();
                buf.clear();
                Err(FramingError::TruncatedFrame { buffered })
            }
        }
    }
}

impl FixedLengthCodec {
    /// Refuses a frame to send of the wrong size.
    fn check_length(&self, frame: &[u8]) -> Result<(), FramingError> {
        if frame.len() == self.length {
            return Ok(());
        }
        Err(FramingError::WrongLength {
            expected: self.length,
            actual: frame.len(),
        })
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for FixedLengthCodec {
    type Error = FramingError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FramingError> {
        let frame = item.as_ref();
        self.check_length(frame)?;
        dst.put_slice(frame);
        Ok(())
    }
}

/// A frame of 16 KiB or more is left out whole: nothing else goes on the
/// wire.
impl<T: AsRef<[u8]>> FrameEncoder<T> for FixedLengthCodec {
    fn encode_around(
        &mut self,
        item: &T,
        _dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        let frame = item.as_ref();
        self.check_length(frame)?;
        Ok((frame.len() >= BY_REFERENCE).then_some(0))
    }

    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        item.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_read_is_kept_for_the_next_frame() {
        let mut codec = FixedLengthCodec::new(4);
        let mut buf = BytesMut::from(&[1u8, 2, 3, 4, 5, 6][..]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], [1, 2, 3, 4]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[7, 8, 9]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], [5, 6, 7, 8]);
        assert_eq!(&buf[..], [9]);
    }

    #[test]
    fn a_few_bytes_of_a_large_frame_hold_a_few_bytes_of_room() {
        for length in [8 << 20, usize::MAX] {
            let mut codec = FixedLengthCodec::new(length);
            let mut buf = BytesMut::from(&[1u8][..]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            assert!(buf.capacity() < 1024, "{length}: {}", buf.capacity());
        }
        // the room grows with what arrives, and the frame still comes whole
        let mut codec = FixedLengthCodec::new(100_000);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in vec![7u8; 100_000].chunks(999) {
            buf.extend_from_slice(chunk);
            frames.extend(codec.decode(&mut buf).unwrap());
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), 100_000);
    }

    #[test]
    fn truncated_frame_at_eof() {
        let mut codec = FixedLengthCodec::new(4);
        let mut buf = BytesMut::from(&[1u8, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FramingError::TruncatedFrame { buffered: 2 })
        ));
    }

    #[test]
    fn encode_checks_the_length() {
        let mut codec = FixedLengthCodec::new(3);
        let mut dst = BytesMut::new();
        codec.encode(b"abc", &mut dst).unwrap();
        assert!(matches!(
            codec.encode(b"ab", &mut dst),
            Err(FramingError::WrongLength {
                expected: 3,
                actual: 2
            })
        ));
        assert_eq!(dst, "abc");
    }
}
