//! [`PacketCodec`]: a tokio-util `Decoder`/`Encoder` for [`Packet`]s.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::varint::{self, VarintError};
use super::wire::Header;
use super::{Packet, PacketError};

/// The default maximum packet body length: 8 MiB.
pub const DEFAULT_MAX_BODY_LEN: usize = 8 * 1024 * 1024;

/// The longest length prefix accepted, in bytes. A minimal prefix for any
/// `u64` is at most 10 bytes; the reference accepts redundant leading `80`
/// groups, so a few more are allowed, but an endless run of `80`/`ff` bytes
/// is garbage and is refused instead of buffered.
pub const MAX_LENGTH_PREFIX: usize = 16;

/// Splits a byte stream into [`Packet`]s and writes packets to it.
///
/// Bytes after a packet stay in the buffer for the next one; nothing is
/// dropped. A body longer than the maximum is refused with
/// [`PacketError::TooLarge`] before any of it is buffered beyond what the
/// reader already holds: the codec never allocates what a peer announces.
///
/// ```
/// use bytes::BytesMut;
/// use tether::packet::{Packet, PacketCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = PacketCodec::new();
/// let mut buf = BytesMut::from(&b"\x03\x01\x02\x00\x03\x00\x02"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Erq));
/// assert_eq!(codec.decode(&mut buf).unwrap(), None); // EOF is one byte short
/// buf.extend_from_slice(b"\x00");
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Eof));
/// ```
#[derive(Debug, Clone)]
pub struct PacketCodec {
    max_body_len: usize,
}

impl Default for PacketCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketCodec {
    /// A codec with the default maximum body length ([`DEFAULT_MAX_BODY_LEN`]).
    pub fn new() -> Self {
        Self::with_max_body_len(DEFAULT_MAX_BODY_LEN)
    }

    /// A codec refusing bodies longer than `max_body_len` bytes.
    ///
    /// # Note
    ///
    /// The reference has no limit. A very large limit lets one peer make
    /// this end buffer that much memory per connection.
    pub fn with_max_body_len(max_body_len: usize) -> Self {
        PacketCodec { max_body_len }
    }

    /// The maximum body length.
    pub fn max_body_len(&self) -> usize {
        self.max_body_len
    }
}

impl PacketCodec {
    /// The length prefix at the start of `src`, checked: `(prefix bytes,
    /// body length)` if the whole packet is there, `None` if more bytes
    /// are needed.
    #[inline]
    fn frame(&self, src: &[u8]) -> Result<Option<(usize, usize)>, PacketError> {
        let (len, n) = match varint::decode(&src[..src.len().min(MAX_LENGTH_PREFIX)]) {
            Ok(Some(v)) => v,
            Ok(None) if src.len() >= MAX_LENGTH_PREFIX => {
                return Err(PacketError::LengthPrefixTooLong {
                    max: MAX_LENGTH_PREFIX,
                })
            }
            Ok(None) => return Ok(None),
            Err(VarintError::Overflow) => return Err(PacketError::VarintOverflow),
        };
        if len > self.max_body_len as u64 {
            return Err(PacketError::TooLarge {
                len,
                max: self.max_body_len,
            });
        }
        let len = len as usize;
        if src.len() - n < len {
            return Ok(None);
        }
        Ok(Some((n, len)))
    }

    /// How many more bytes the packet at the start of `src` needs, once its
    /// length prefix is there (0 while it is not, when the packet is whole,
    /// or when the prefix is bad: decoding reports that).
    pub(crate) fn still_missing(&self, src: &[u8]) -> usize {
        match varint::decode(&src[..src.len().min(MAX_LENGTH_PREFIX)]) {
            // (n <= src.len(): the prefix was decoded from it)
            Ok(Some((len, n))) if len <= self.max_body_len as u64 => {
                (len as usize).saturating_sub(src.len() - n)
            }
            _ => 0,
        }
    }

    /// The length of the run of whole packets at the start of `src` (0 if
    /// the first is incomplete). A bad length prefix ends the run; it is an
    /// error only at the start, so the packets before it are decoded first.
    pub(crate) fn whole_packets_len(&self, src: &[u8]) -> Result<usize, PacketError> {
        let mut end = 0;
        loop {
            // a small packet (a one-byte length prefix) is stepped over
            // without the general prefix decode
            if let Some(&b) = src.get(end) {
                let len = usize::from(b);
                if b < 0x80 && len <= self.max_body_len && len < src.len() - end {
                    end += 1 + len;
                    continue;
                }
            }
            match self.frame(&src[end..]) {
                Ok(Some((n, len))) => end += n + len,
                Ok(None) => return Ok(end),
                Err(e) if end == 0 => return Err(e),
                Err(_) => return Ok(end),
            }
        }
    }

    /// Decodes the packet at `chunk[*pos..]`, which
    /// [`whole_packets_len`](Self::whole_packets_len) found whole, and
    /// moves `pos` past it. The payload shares `chunk`'s storage: a batch
    /// of packets is split off the read buffer once, and each payload is a
    /// slice of it (cheaper than splitting the buffer for each).
    ///
    /// Always inlined: the driver's loop is too big for `#[inline]` to
    /// take, and as a call it cost W3 about 150 instructions a request
    /// (the packet built in a return slot, then moved).
    #[inline(always)]
    pub(crate) fn decode_whole(
        &self,
        chunk: &Bytes,
        pos: &mut usize,
    ) -> Result<Packet, PacketError> {
        // the run was checked whole and within the limit: only the length
        // prefix is read again, not checked
        let rest = &chunk[*pos..];
        let (len, n) = match rest.first() {
            // a one-byte prefix (a small packet) needs no varint loop
            Some(&b) if b < 0x80 && usize::from(b) < rest.len() => (usize::from(b), 1),
            _ => match varint::decode(rest) {
                Ok(Some((len, n))) if len <= (rest.len() - n) as u64 => (len as usize, n),
                // cannot happen for a run found by whole_packets_len
                _ => return Err(PacketError::Truncated { field: "packet" }),
            },
        };
        let body = *pos + n;
        *pos = body + len;
        let (header, at) = Header::parse(&chunk[body..body + len])?;
        Ok(if at == len {
            header.with_payload(Bytes::new)
        } else {
            header.with_payload(|| chunk.slice(body + at..body + len))
        })
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = PacketError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        let Some((n, len)) = self.frame(src)? else {
            return Ok(None);
        };
        // parse the fields in place, then split off only the payload (an
        // empty one, and an EOF's stray bytes, are skipped)
        let (header, pos) = Header::parse(&src[n..n + len])?;
        let payload_len = len - pos;
        let packet = if payload_len == 0 || matches!(header, Header::Eof | Header::Erq) {
            src.advance(n + len);
            header.with_payload(Bytes::new)
        } else {
            src.advance(n + pos);
            header.with_payload(|| src.split_to(payload_len).freeze())
        };
        Ok(Some(packet))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, PacketError> {
        match self.decode(buf)? {
            Some(p) => Ok(Some(p)),
            None if buf.is_empty() => Ok(None),
            None => Err(PacketError::ended(format!(
                "stream cut mid-packet ({} bytes of an incomplete packet)",
                buf.len()
            ))),
        }
    }
}

impl Encoder<&Packet> for PacketCodec {
    type Error = PacketError;

    fn encode(&mut self, item: &Packet, dst: &mut BytesMut) -> Result<(), PacketError> {
        let len = item.body_len();
        if len > self.max_body_len as u64 {
            return Err(PacketError::TooLarge {
                len,
                max: self.max_body_len,
            });
        }
        item.encode(dst)
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = PacketError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), PacketError> {
        self.encode(&item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn exchange() -> (Vec<u8>, Vec<Packet>) {
        let packets = vec![
            Packet::Request {
                channel: 0,
                tag: 2,
                rq_type: 3,
                flags: 0,
                payload: Bytes::from_static(b"hello"),
            },
            Packet::Request {
                channel: 0,
                tag: 3,
                rq_type: 2,
                flags: 5,
                payload: Bytes::from_static(b"abc"),
            },
            Packet::Request {
                channel: 0,
                tag: 4,
                rq_type: 9,
                flags: 0,
                payload: Bytes::new(),
            },
            Packet::Request {
                channel: 0,
                tag: 5,
                rq_type: 0,
                flags: 0,
                payload: Bytes::new(),
            },
            Packet::Request {
                channel: 5,
                tag: 300,
                rq_type: 1,
                flags: 3,
                payload: Bytes::from(vec![7u8; 200]),
            },
            Packet::Response {
                channel: 0,
                tag: 4,
                ok: false,
                flags: 0,
                payload: Bytes::from_static(b"exception during handler"),
            },
            Packet::Response {
                channel: 0,
                tag: 1 << 40,
                ok: true,
                flags: 1 << 33,
                payload: Bytes::new(),
            },
            Packet::Erq,
            Packet::Eof,
        ];
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::new();
        for p in &packets {
            codec.encode(p, &mut buf).unwrap();
        }
        (buf.to_vec(), packets)
    }

    fn decode_all(codec: &mut PacketCodec, buf: &mut BytesMut) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(p) = codec.decode(buf).unwrap() {
            out.push(p);
        }
        out
    }

    #[test]
    fn read_exchange_split_at_every_point() {
        let (bytes, packets) = exchange();
        for cut in 0..=bytes.len() {
            let mut codec = PacketCodec::new();
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&bytes[cut..]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(got, packets, "cut at {cut}");
            assert!(buf.is_empty());
            assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn batch_decoding_agrees_with_decode_at_every_split_point() {
        let (bytes, packets) = exchange();
        for split in 0..=bytes.len() {
            let codec = PacketCodec::new();
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = Vec::new();
            let mut drain = |buf: &mut BytesMut| {
                let run = codec.whole_packets_len(buf).unwrap();
                let chunk = buf.split_to(run).freeze();
                let mut pos = 0;
                while pos < chunk.len() {
                    got.push(codec.decode_whole(&chunk, &mut pos).unwrap());
                }
            };
            drain(&mut buf);
            buf.extend_from_slice(&bytes[split..]);
            drain(&mut buf);
            assert!(buf.is_empty(), "split at {split}");
            assert_eq!(got, packets, "split at {split}");
        }
    }

    #[test]
    fn batch_decoding_stops_before_a_bad_prefix() {
        let codec = PacketCodec::with_max_body_len(100);
        let mut buf = BytesMut::new();
        Packet::Erq.encode(&mut buf).unwrap();
        let good = buf.len();
        buf.extend_from_slice(&[0x81, 0x00]); // 128 > 100
        assert_eq!(codec.whole_packets_len(&buf).unwrap(), good);
        assert!(matches!(
            codec.whole_packets_len(&buf[good..]),
            Err(PacketError::TooLarge { len: 128, max: 100 })
        ));
    }

    #[test]
    fn still_missing_counts_the_rest_of_a_packet_once_its_prefix_is_in() {
        let codec = PacketCodec::with_max_body_len(1 << 20);
        let mut wire = BytesMut::new();
        PacketCodec::new()
            .encode(
                &Packet::Request {
                    channel: 0,
                    tag: 1,
                    rq_type: 0,
                    flags: 0,
                    payload: Bytes::from(vec![7u8; 300_000]),
                },
                &mut wire,
            )
            .unwrap();
        let (_, prefix) = varint::decode(&wire).unwrap().unwrap();
        for have in 0..prefix {
            assert_eq!(
                codec.still_missing(&wire[..have]),
                0,
                "prefix cut at {have}"
            );
        }
        for have in [
            prefix,
            prefix + 1,
            wire.len() / 2,
            wire.len() - 1,
            wire.len(),
        ] {
            assert_eq!(codec.still_missing(&wire[..have]), wire.len() - have);
        }
        // a prefix over the limit, or malformed, claims nothing: decoding
        // reports it
        let small = PacketCodec::with_max_body_len(1000);
        assert_eq!(small.still_missing(&wire[..10]), 0);
        assert_eq!(codec.still_missing(&[0xff; 11]), 0);
    }

    #[test]
    fn read_exchange_one_byte_at_a_time() {
        let (bytes, packets) = exchange();
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            got.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(got, packets);
    }

    #[test]
    fn malformed_eof_with_payload_is_consumed_whole() {
        let mut codec = PacketCodec::new();
        // request tag 5, rq_type wire 0, payload "AB": an EOF to the reference
        let mut buf = BytesMut::from(&b"\x05\x05\x02\x00AB\x03\x01\x02\x00"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Eof));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Packet::Erq));
        assert!(buf.is_empty());
    }

    /// A success on tag 2 whose body is 3 bytes of fields and `payload_len`
    /// of payload.
    fn ok_response(payload_len: usize) -> Packet {
        Packet::Response {
            channel: 0,
            tag: 2,
            ok: true,
            flags: 0,
            payload: Bytes::from(vec![0u8; payload_len]),
        }
    }

    #[test]
    fn oversize_body_is_refused_naming_the_limit() {
        let mut codec = PacketCodec::with_max_body_len(100);
        // announces 2^32 bytes, sends 3
        let mut buf = BytesMut::from(&[0x90, 0x80, 0x80, 0x80, 0x00, 1, 2, 3][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                PacketError::TooLarge {
                    len: 4294967296,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("100"), "{err}");
        assert!(
            buf.capacity() < 1024,
            "nothing allocated for the announced length"
        );
        // exactly the limit is fine
        let mut buf = BytesMut::new();
        let p = ok_response(97);
        codec.encode(&p, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(p));
    }

    #[test]
    fn encoding_oversize_is_refused() {
        let mut codec = PacketCodec::with_max_body_len(10);
        let mut buf = BytesMut::new();
        let p = ok_response(20);
        assert!(matches!(
            codec.encode(&p, &mut buf),
            Err(PacketError::TooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn length_prefix_overflow_is_an_error() {
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::from(&[0xff; 11][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(PacketError::VarintOverflow)
        ));
    }

    #[test]
    fn endless_length_prefix_is_an_error() {
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::from(&[0x80; 15][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0x80]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(PacketError::LengthPrefixTooLong { max: 16 })
        ));
    }

    #[test]
    fn body_shorter_than_its_fields_is_an_error() {
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::from(&[0x01, 0x05][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(PacketError::Truncated {
                field: "header word"
            })
        ));
    }

    #[test]
    fn cut_mid_packet_at_eof_is_an_error() {
        let mut codec = PacketCodec::new();
        let mut buf = BytesMut::from(&[0x08, 0x00, 0x02][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(PacketError::ConnectionEnded(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // a deterministic pseudo-random byte soup
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for round in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(round % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let mut codec = PacketCodec::with_max_body_len(1 << 16);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
