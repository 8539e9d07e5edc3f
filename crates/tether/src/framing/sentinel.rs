use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{room_ahead, FrameEncoder, FramingError, BY_REFERENCE, DEFAULT_MAX_FRAME_LENGTH};

/// A frame longer than this (a read's worth) is long: the codec remembers
/// its length, and makes room ahead for the next long one.
const LONG_FRAME: usize = 4096;

/// Frames that end with a sentinel: any non-empty byte sequence such as
/// `\n`, `\r\n` or `END`.
///
/// ```text
/// wire:   2a 49 44 4e 3f 0d 0a  52 45 56 20 61 62 0d 0a
///         *  I  D  N  ?  \r \n  R  E  V  ␠  a  b  \r \n
/// frames: "*IDN?"               "REV ab"
/// ```
///
/// Decoded frames exclude the sentinel; encoding appends it. A sentinel
/// split across reads is found, several frames in one read come out one by
/// one, and the bytes after a frame stay in the buffer. The search resumes
/// where it stopped, so a long frame arriving in many reads is scanned once.
///
/// A frame longer than [`max_length`](Self::max_length) is an error for that
/// frame only: its bytes are discarded up to the next sentinel and decoding
/// goes on. Encoding refuses a frame that contains the sentinel, since the
/// peer would read it as two, and one whose end begins the sentinel that
/// follows it: with `]]>]]>`, the frame `x]]>` goes out as `x]]>]]>]]>`,
/// which ends at its first `]]>]]>`.
///
/// A frame's length is known only when its sentinel arrives, so a long one
/// would grow the buffer a few KiB a read. Once a frame runs past 4 KiB,
/// the codec expects it to be as long as the last long frame and makes room
/// for its rest as a length prefix would (up to four times what has
/// arrived, and 256 KiB, at a time): a peer that sends 1 MiB frames has
/// each read in a few big reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelCodec {
    sentinel: Bytes,
    max_length: usize,
    // No sentinel starts before this offset of the buffer.
    next_index: usize,
    // Inside an oversize frame: drop bytes until the next sentinel.
    discarding: bool,
    // The length of the last frame longer than LONG_FRAME (0: none yet),
    // saturated: a hint, and as a u32 it fits in the padding after
    // `discarding`, so a session (which holds a codec) is no bigger.
    last_long: u32,
}

impl SentinelCodec {
    /// A codec for frames ending in `sentinel`, with the default maximum
    /// frame length (8 MiB).
    ///
    /// # Panics
    /// If `sentinel` is empty (a programming error, not peer input).
    pub fn new(sentinel: impl Into<Bytes>) -> Self {
        Self::with_max_length(sentinel, DEFAULT_MAX_FRAME_LENGTH)
    }

    /// A codec whose frames (without sentinel) are at most `max_length` bytes.
    ///
    /// # Note
    /// Without a limit a peer that never sends the sentinel makes the buffer
    /// grow until memory runs out; keep it as small as the protocol allows.
    pub fn with_max_length(sentinel: impl Into<Bytes>, max_length: usize) -> Self {
        let sentinel = sentinel.into();
        assert!(!sentinel.is_empty(), "a sentinel must not be empty");
        SentinelCodec {
            sentinel,
            max_length,
            next_index: 0,
            discarding: false,
            last_long: 0,
        }
    }

    /// Frames ending in `\n`.
    pub fn lines() -> Self {
        Self::new(&b"\n"[..])
    }

    /// Frames ending in `\r\n`.
    pub fn crlf() -> Self {
        Self::new(&b"\r\n"[..])
    }

    /// The sentinel.
    pub fn sentinel(&self) -> &[u8] {
        &self.sentinel
    }

    /// The maximum frame length, sentinel excluded.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    fn find(&self, buf: &[u8]) -> Option<usize> {
        find(&self.sentinel, buf, self.next_index)
    }

    /// Offset before which no sentinel can start, given the buffer so far.
    fn searched_up_to(&self, len: usize) -> usize {
        len.saturating_sub(self.sentinel.len() - 1)
    }
}

/// Where `sentinel` first starts in `buf` at or after `from`. memchr's
/// vectorised search: a byte-by-byte scan made bulk frames four times slower.
fn find(sentinel: &[u8], buf: &[u8], from: usize) -> Option<usize> {
    let haystack = buf.get(from..)?;
    let at = match sentinel {
        [byte] => memchr::memchr(*byte, haystack),
        _ => memchr::memmem::find(haystack, sentinel),
    }?;
    Some(from + at)
}

/// Where the sentinel would first be seen in `frame` followed by the
/// sentinel, if before the frame's end: inside the frame, or starting in
/// its last bytes (`xa` before `aa` reads as `x`, then `a`…).
pub(crate) fn sentinel_in_frame(sentinel: &[u8], frame: &[u8]) -> Option<usize> {
    if let Some(position) = find(sentinel, frame, 0) {
        return Some(position);
    }
    // The frame's last `m` bytes and the sentinel's first `len - m` make
    // one when they are its first `m` and its last `len - m`. The biggest
    // such `m` starts earliest.
    (1..sentinel.len().min(frame.len() + 1))
        .rev()
        .find(|&m| {
            frame.ends_with(&sentinel[..m]) && sentinel[m..] == sentinel[..sentinel.len() - m]
        })
        .map(|m| frame.len() - m)
}

impl Decoder for SentinelCodec {
    type Item = BytesMut;
    type Error = FramingError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        loop {
            match self.find(buf) {
                Some(end) => {
                    let frame = buf.split_to(end);
                    buf.advance(self.sentinel.len());
                    self.next_index = 0;
                    if self.discarding {
                        // The tail of an oversize frame: already reported.
                        self.discarding = false;
                        continue;
                    }
                    if frame.len() > self.max_length {
                        return Err(FramingError::FrameTooLong {
                            max: self.max_length,
                        });
                    }
                    if frame.len() > LONG_FRAME {
                        self.last_long = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    }
                    return Ok(Some(frame));
                }
                None if self.discarding => {
                    let drop = self.searched_up_to(buf.len());
                    buf.advance(drop);
                    self.next_index = 0;
                    return Ok(None);
                }
                None => {
                    self.next_index = self.searched_up_to(buf.len());
                    if self.next_index > self.max_length {
                        self.discarding = true;
                        let drop = self.next_index;
                        buf.advance(drop);
                        self.next_index = 0;
                        return Err(FramingError::FrameTooLong {
                            max: self.max_length,
                        });
                    }
                    let expected = self.last_long as usize;
                    if buf.len() > LONG_FRAME && expected > buf.len() {
                        // probably another like the last long one: room for
                        // (some of) its rest, so reads take it in big steps
                        buf.reserve(room_ahead(buf.len(), expected - buf.len()));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let buffered = buf.len();
        buf.clear();
        self.next_index = 0;
        if buffered == 0 || std::mem::take(&mut self.discarding) {
            Ok(None)
        } else {
            Err(FramingError::TruncatedFrame { buffered })
        }
    }
}

impl SentinelCodec {
    /// Refuses a frame the peer could not read back as sent.
    fn check_frame(&self, frame: &[u8]) -> Result<(), FramingError> {
        if frame.len() > self.max_length {
            return Err(FramingError::FrameTooLong {
                max: self.max_length,
            });
        }
        match sentinel_in_frame(&self.sentinel, frame) {
            Some(position) => Err(FramingError::SentinelInFrame { position }),
            None => Ok(()),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for SentinelCodec {
    type Error = FramingError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FramingError> {
        let frame = item.as_ref();
        self.check_frame(frame)?;
        dst.reserve(frame.len() + self.sentinel.len());
        dst.put_slice(frame);
        dst.put_slice(&self.sentinel);
        Ok(())
    }
}

/// A payload of 16 KiB or more is left out: `dst` takes the sentinel, and
/// the payload goes before it.
impl<T: AsRef<[u8]>> FrameEncoder<T> for SentinelCodec {
    fn encode_around(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        let frame = item.as_ref();
        if frame.len() < BY_REFERENCE {
            return Ok(None);
        }
        self.check_frame(frame)?;
        dst.put_slice(&self.sentinel);
        Ok(Some(0))
    }

    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        item.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut SentinelCodec, buf: &mut BytesMut) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).unwrap() {
            out.push(frame.to_vec());
        }
        out
    }

    #[test]
    fn the_long_frame_hint_costs_a_codec_no_room() {
        // Bytes, two usizes, and the bool and u32 in the last word: a
        // session's task holds a codec, and a bigger one measured 140 bytes
        // more per idle session (W8)
        assert!(std::mem::size_of::<SentinelCodec>() <= 56);
    }

    #[test]
    fn after_a_long_frame_room_is_made_for_the_next_one() {
        let mut codec = SentinelCodec::lines();
        let long = vec![b'x'; 600_000];
        let mut buf = BytesMut::new();
        // a first long frame grows the buffer as it comes
        buf.extend_from_slice(&long[..5000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 64 * 1024, "no long frame seen yet");
        buf.extend_from_slice(&long[5000..]);
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), long.len());

        // short frames after it reserve nothing ahead
        let mut buf = BytesMut::from(&b"short\nframes\nonly"[..]);
        assert_eq!(frames(&mut codec, &mut buf).len(), 2);
        assert!(buf.capacity() < 64);

        // the next frame, once past 4 KiB, gets room for the rest of one as
        // long, four times what has arrived at a time, up to 256 KiB
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&long[..4000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 8192, "4000 bytes is not long yet");
        buf.extend_from_slice(&long[4000..5000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() - buf.len() >= 4 * 5000);
        assert!(buf.capacity() <= 2 * (5 + 4) * 5000);
        buf.extend_from_slice(&long[5000..200_000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() - buf.len() >= 256 * 1024,
            "256 KiB ahead, the most made at once"
        );
        assert!(buf.capacity() <= 2 * (200_000 + 256 * 1024));
        buf.extend_from_slice(&long[200_000..]);
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), long.len());

        // a frame while discarding an oversize one reserves nothing
        let mut codec = SentinelCodec::with_max_length(&b"\n"[..], 100_000);
        let mut buf = BytesMut::from(&long[..50_000]);
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 50_000);
        let mut buf = BytesMut::from(&long[..150_000]);
        assert!(codec.decode(&mut buf).is_err(), "over the maximum");
        buf.extend_from_slice(&long[..10_000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= 150_000 + 10_000, "{}", buf.capacity());
    }

    #[test]
    fn sentinel_split_across_reads() {
        let mut codec = SentinelCodec::crlf();
        let mut buf = BytesMut::from("abc\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "abc");
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut codec = SentinelCodec::crlf();
        let mut buf = BytesMut::from("a\r\nb\r\n");
        assert_eq!(frames(&mut codec, &mut buf), [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn every_split_point_of_a_multi_byte_sentinel() {
        let wire = b"one<END>two<E<END>three<END>";
        for split in 0..=wire.len() {
            let mut codec = SentinelCodec::new(&b"<END>"[..]);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = frames(&mut codec, &mut buf);
            buf.extend_from_slice(&wire[split..]);
            got.extend(frames(&mut codec, &mut buf));
            assert_eq!(got, [&b"one"[..], b"two<E", b"three"], "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let wire = b"x\r\n\r\ny\r\n";
        let mut codec = SentinelCodec::crlf();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire {
            buf.put_u8(b);
            got.extend(frames(&mut codec, &mut buf));
        }
        assert_eq!(got, [&b"x"[..], b"", b"y"]);
    }

    #[test]
    fn oversize_frame_is_an_error_then_decoding_resumes() {
        let mut codec = SentinelCodec::with_max_length(&b"\n"[..], 4);
        let mut buf = BytesMut::from("12345678");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::FrameTooLong { max: 4 })
        ));
        assert!(buf.len() <= 4, "the oversize frame is not kept");
        buf.extend_from_slice(b"9\nok\n");
        assert_eq!(frames(&mut codec, &mut buf), [b"ok".to_vec()]);
    }

    #[test]
    fn oversize_frame_found_whole_is_an_error() {
        let mut codec = SentinelCodec::with_max_length(&b"\n"[..], 2);
        let mut buf = BytesMut::from("abc\nde\n");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::FrameTooLong { .. })
        ));
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "de");
    }

    #[test]
    fn truncated_frame_at_eof() {
        let mut codec = SentinelCodec::lines();
        let mut buf = BytesMut::from("done\npartial");
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), "done");
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FramingError::TruncatedFrame { buffered: 7 })
        ));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn encode_appends_and_refuses_embedded_sentinel() {
        let mut codec = SentinelCodec::crlf();
        let mut dst = BytesMut::new();
        codec.encode("hi", &mut dst).unwrap();
        assert_eq!(dst, "hi\r\n");
        assert!(matches!(
            codec.encode("a\r\nb", &mut dst),
            Err(FramingError::SentinelInFrame { position: 1 })
        ));
        assert_eq!(dst, "hi\r\n", "nothing half-written");
    }

    #[test]
    fn encode_refuses_a_frame_whose_end_begins_the_sentinel() {
        for (sentinel, frame, position) in [
            (&b"]]>]]>"[..], &b"x]]>"[..], Some(1)),
            (b"]]>]]>", b"]]>", Some(0)),
            (b"aa", b"xa", Some(1)),
            (b"\r\n\r\n", b"ok\r\n", Some(2)),
            (b"\r\n", b"ok\r", None), // "ok\r\r\n" ends where it should
            (b"END", b"xEN", None),
            (b"aa", b"", None),
        ] {
            let mut codec = SentinelCodec::new(sentinel);
            let mut dst = BytesMut::new();
            let sent = codec.encode(frame, &mut dst);
            match position {
                Some(position) => {
                    assert!(
                        matches!(sent, Err(FramingError::SentinelInFrame { position: p }) if p == position),
                        "{frame:?} before {sentinel:?}: {sent:?}"
                    );
                    assert!(dst.is_empty());
                }
                None => {
                    sent.unwrap();
                    // and it reads back as it went out
                    assert_eq!(codec.decode(&mut dst).unwrap().unwrap(), frame);
                    assert!(dst.is_empty());
                }
            }
        }
    }
}
