//! [`Packet`]: one packet of the cs.packetstream wire format, sans-IO.
//!
//! ```text
//! varint body_len, then body_len bytes of body:
//!   varint tag
//!   varint H               H = flags << 2 | is_request << 1 | has_channel
//!   varint channel         only if H & 1
//!   varint rq_type + 1     only if H & 2 (requests)
//!   payload                the rest of the body
//! ```
//!
//! A response's wire flags are `user_flags << 1 | ok`. EOF is `03 00 02 00`
//! and ERQ `03 01 02 00`.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use tether::packet::Packet;
//! let p = Packet::Request { channel: 0, tag: 0, rq_type: 3, flags: 0, payload: Bytes::from_static(b"hello") };
//! let mut buf = BytesMut::new();
//! p.encode(&mut buf).unwrap();
//! assert_eq!(&buf[..], b"\x08\x00\x02\x04hello");
//! ```

use bytes::{Bytes, BytesMut};

use super::varint;
use super::PacketError;

/// The largest request flags value the header word can carry (2^62 - 1).
pub const MAX_REQUEST_FLAGS: u64 = u64::MAX >> 2;
/// The largest response flags value the header word can carry (2^61 - 1).
pub const MAX_RESPONSE_FLAGS: u64 = u64::MAX >> 3;
/// The largest application rq_type (on the wire it is sent as rq_type + 1).
pub const MAX_RQ_TYPE: u64 = u64::MAX - 1;

/// The reason a request with an unknown channel gets (channels other than 0
/// have no meaning in tether, the reference's behaviour).
pub const UNKNOWN_CHANNEL: &str = "unknown channel";
/// The reason a request gets after the peer's ERQ (the reference's words).
pub const REQUESTS_NOT_ALLOWED: &str = "requests no longer allowed";

/// One packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A request. `rq_type` is the application's number (the wire carries
    /// `rq_type + 1`).
    Request {
        /// Channel (0 unless the application uses channels).
        channel: u64,
        /// The sender's tag for this request.
        tag: u64,
        /// Application request type.
        rq_type: u64,
        /// Caller's flags, at most [`MAX_REQUEST_FLAGS`].
        flags: u64,
        /// Request payload.
        payload: Bytes,
    },
    /// A response to the request with the same `(channel, tag)`.
    Response {
        /// Channel of the request.
        channel: u64,
        /// Tag of the request.
        tag: u64,
        /// Success or failure.
        ok: bool,
        /// Responder's flags, at most [`MAX_RESPONSE_FLAGS`].
        flags: u64,
        /// Response payload (a failure carries an ASCII reason).
        payload: Bytes,
    },
    /// `03 00 02 00`: the sender will send nothing more. Any other request
    /// with on-wire rq_type 0 decodes as this, as the reference treats it.
    Eof,
    /// `03 01 02 00`: the sender will send no more requests.
    Erq,
}

impl Packet {
    /// Appends this packet (length prefix and body) to `dst`.
    ///
    /// Fails only if a field cannot be represented (see the `MAX_*`
    /// constants); nothing is written then.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), PacketError> {
        match self {
            Packet::Request {
                channel,
                tag,
                rq_type,
                flags,
                payload,
            } => encode_request(dst, *channel, *tag, *rq_type, *flags, payload),
            Packet::Response {
                channel,
                tag,
                ok,
                flags,
                payload,
            } => encode_response(dst, *channel, *tag, *ok, *flags, payload),
            Packet::Eof => {
                dst.extend_from_slice(&[0x03, 0x00, 0x02, 0x00]);
                Ok(())
            }
            Packet::Erq => {
                dst.extend_from_slice(&[0x03, 0x01, 0x02, 0x00]);
                Ok(())
            }
        }
    }

    /// The length of this packet's body on the wire (without the prefix).
    pub fn body_len(&self) -> u64 {
        match self {
            Packet::Request {
                channel,
                tag,
                rq_type,
                flags,
                payload,
            } => body_len(
                *tag,
                request_word(*channel, *flags),
                *channel,
                Some(rq_type.wrapping_add(1)),
                payload.len(),
            ),
            Packet::Response {
                channel,
                tag,
                ok,
                flags,
                payload,
            } => body_len(
                *tag,
                response_word(*channel, *ok, *flags),
                *channel,
                None,
                payload.len(),
            ),
            Packet::Eof | Packet::Erq => 3,
        }
    }

    /// Decodes one packet body (the bytes after the length prefix).
    ///
    /// The payload shares `body`'s storage: no copy.
    pub fn decode_body(body: Bytes) -> Result<Packet, PacketError> {
        let (header, pos) = Header::parse(&body)?;
        Ok(header.with_payload(|| body.slice(pos..)))
    }
}

/// The fields of a packet body before its payload.
pub(crate) enum Header {
    Request {
        channel: u64,
        tag: u64,
        rq_type: u64,
        flags: u64,
    },
    Response {
        channel: u64,
        tag: u64,
        ok: bool,
        flags: u64,
    },
    Eof,
    Erq,
}

impl Header {
    /// Parses the fields at the start of `body`; returns them and where the
    /// payload starts.
    #[inline(always)]
    pub(crate) fn parse(body: &[u8]) -> Result<(Header, usize), PacketError> {
        let mut pos = 0;
        let tag = field(body, &mut pos, "tag")?;
        let h = field(body, &mut pos, "header word")?;
        let channel = if h & 1 != 0 {
            field(body, &mut pos, "channel")?
        } else {
            0
        };
        let flags = h >> 2;
        let header = if h & 2 != 0 {
            let rq_wire = field(body, &mut pos, "rq_type")?;
            if rq_wire == 0 {
                let exact = channel == 0 && flags == 0 && pos == body.len();
                if exact && tag == 1 {
                    Header::Erq
                } else {
                    Header::Eof
                }
            } else {
                Header::Request {
                    channel,
                    tag,
                    rq_type: rq_wire - 1,
                    flags,
                }
            }
        } else {
            Header::Response {
                channel,
                tag,
                ok: flags & 1 != 0,
                flags: flags >> 1,
            }
        };
        Ok((header, pos))
    }

    /// The packet, with the payload taken only for requests and responses.
    #[inline(always)]
    pub(crate) fn with_payload(self, payload: impl FnOnce() -> Bytes) -> Packet {
        match self {
            Header::Request {
                channel,
                tag,
                rq_type,
                flags,
            } => Packet::Request {
                channel,
                tag,
                rq_type,
                flags,
                payload: payload(),
            },
            Header::Response {
                channel,
                tag,
                ok,
                flags,
            } => Packet::Response {
                channel,
                tag,
                ok,
                flags,
                payload: payload(),
            },
            Header::Eof => Packet::Eof,
            Header::Erq => Packet::Erq,
        }
    }
}

/// Reads one varint field at `body[*pos..]` and moves `pos` past it (the
/// loop of [`varint::decode`], inlined: this runs for every field of every
/// packet received).
#[inline(always)]
fn field(body: &[u8], pos: &mut usize, name: &'static str) -> Result<u64, PacketError> {
    let mut i = *pos;
    // one byte: header words, rq_types, the first 128 tags
    if let Some(&b) = body.get(i) {
        if b < 0x80 {
            *pos = i + 1;
            return Ok(u64::from(b));
        }
    }
    // two or three bytes: the tags of the first two million requests,
    // read without the loop's overflow check per byte
    if let Some(&[b0, b1, b2]) = body.get(i..i + 3) {
        let v = u64::from(b0 & 0x7f) << 7 | u64::from(b1 & 0x7f);
        if b1 < 0x80 {
            *pos = i + 2;
            return Ok(v);
        }
        if b2 < 0x80 {
            *pos = i + 3;
            return Ok(v << 7 | u64::from(b2));
        }
    }
    let mut value = 0u64;
    loop {
        let Some(&b) = body.get(i) else {
            return Err(truncated(name));
        };
        if value >> 57 != 0 {
            return Err(PacketError::VarintOverflow); // this group would not fit
        }
        i += 1;
        value = (value << 7) | u64::from(b & 0x7f);
        if b < 0x80 {
            *pos = i;
            return Ok(value);
        }
    }
}

#[cold]
fn truncated(field: &'static str) -> PacketError {
    PacketError::Truncated { field }
}

#[inline]
fn body_len(tag: u64, h: u64, channel: u64, rq_wire: Option<u64>, payload_len: usize) -> u64 {
    let mut n = varint::encoded_len(tag) + varint::encoded_len(h);
    if channel != 0 {
        n += varint::encoded_len(channel);
    }
    if let Some(rq) = rq_wire {
        n += varint::encoded_len(rq);
    }
    n as u64 + payload_len as u64
}

/// The least a write buffer grows by when a packet does not fit. The
/// drivers give their buffers back whenever the connection goes idle, so a
/// burst of small packets starts from an empty buffer: grown a packet at a
/// time it was reallocated seven times for 64 echoes (about 70 instructions
/// per packet in W3). 8 KiB holds a typical burst of small packets (64
/// echoes of 64 bytes take 4.7 KiB) in one allocation, and an idle
/// connection holds none of it.
const MIN_GROWTH: usize = 8 * 1024;

#[inline(always)]
fn put_raw(
    dst: &mut BytesMut,
    tag: u64,
    h: u64,
    channel: u64,
    rq_wire: Option<u64>,
    payload: &[u8],
) {
    // the usual packet (channel 0, a tag below 2^28, small flags and
    // rq_type, a body below 16 KiB) has a header of at most 8 bytes:
    // built in a register and stored as one word, without a stack buffer
    // to clear and a copy of variable length (a third of this function's
    // instructions in W3)
    if channel == 0 && tag < 1 << 28 && h < 1 << 7 && rq_wire.map_or(true, |rq| rq < 1 << 7) {
        let (mut fields, tag_len) = small_varint(tag);
        fields |= h << (8 * tag_len);
        let mut fields_len = tag_len + 1;
        if let Some(rq) = rq_wire {
            fields |= rq << (8 * fields_len);
            fields_len += 1;
        }
        let len = fields_len + payload.len();
        if len < 1 << 14 {
            // at most 2 prefix bytes and 6 of fields: one u64
            let (prefix, prefix_len) = small_varint(len as u64);
            let word = prefix | fields << (8 * prefix_len);
            let need = 8 + payload.len();
            if dst.capacity() - dst.len() < need {
                dst.reserve(need.max(MIN_GROWTH));
            }
            let end = dst.len() + prefix_len + fields_len;
            // all 8 bytes are stored, then the unused ones cut off
            dst.extend_from_slice(&word.to_le_bytes());
            dst.truncate(end);
            if !payload.is_empty() {
                dst.extend_from_slice(payload); // not for an acknowledgement
            }
            return;
        }
    }
    put_raw_general(dst, tag, h, channel, rq_wire, payload.len(), payload);
}

/// A varint below 2^28 as the low bytes of a word, its first byte
/// lowest, and its length.
#[inline(always)]
fn small_varint(value: u64) -> (u64, usize) {
    debug_assert!(value < 1 << 28);
    let group = |shift: u32| (value >> shift) & 0x7f;
    if value < 1 << 7 {
        (value, 1)
    } else if value < 1 << 14 {
        (group(7) | 0x80 | group(0) << 8, 2)
    } else if value < 1 << 21 {
        (
            group(14) | 0x80 | (group(7) | 0x80) << 8 | group(0) << 16,
            3,
        )
    } else {
        let high = group(21) | 0x80 | (group(14) | 0x80) << 8;
        (high | (group(7) | 0x80) << 16 | group(0) << 24, 4)
    }
}

/// [`put_raw`] for any field values; the payload is `payload_len` bytes,
/// copied from `payload` unless that is empty (the caller sends it).
#[cold]
fn put_raw_general(
    dst: &mut BytesMut,
    tag: u64,
    h: u64,
    channel: u64,
    rq_wire: Option<u64>,
    payload_len: usize,
    payload: &[u8],
) {
    debug_assert!(payload.is_empty() || payload.len() == payload_len);
    // the fields first, into a stack buffer after room for the longest
    // length prefix (at most 4 × 10 bytes of fields), then the prefix just
    // before them: the header goes out in one copy, the payload in another
    const PREFIX: usize = 10;
    let mut header = [0u8; PREFIX + 40];
    let mut end = put_varint_at(&mut header, PREFIX, tag);
    end = put_varint_at(&mut header, end, h);
    if channel != 0 {
        end = put_varint_at(&mut header, end, channel);
    }
    if let Some(rq) = rq_wire {
        end = put_varint_at(&mut header, end, rq);
    }
    let len = (end - PREFIX + payload_len) as u64;
    let start = PREFIX - varint::encoded_len(len);
    put_varint_at(&mut header, start, len);
    let need = end - start + payload.len();
    if dst.capacity() - dst.len() < need {
        dst.reserve(need.max(MIN_GROWTH));
    }
    dst.extend_from_slice(&header[start..end]);
    if !payload.is_empty() {
        dst.extend_from_slice(payload); // not for an acknowledgement
    }
}

/// Writes `value` as a varint at `buf[at..]`; returns the end. (Only the
/// rare packets `put_raw`'s one-word path does not take come here.)
fn put_varint_at(buf: &mut [u8], at: usize, value: u64) -> usize {
    let n = varint::encoded_len(value);
    let b = &mut buf[at..at + n];
    let mut v = value;
    b[n - 1] = v as u8 & 0x7f;
    for byte in b[..n - 1].iter_mut().rev() {
        v >>= 7;
        *byte = v as u8 | 0x80;
    }
    at + n
}

/// A request's header word H: `flags << 2 | is_request << 1 | has_channel`.
#[inline(always)]
fn request_word(channel: u64, flags: u64) -> u64 {
    flags << 2 | 2 | u64::from(channel != 0)
}

/// A response's header word H, whose wire flags are `flags << 1 | ok`.
#[inline(always)]
fn response_word(channel: u64, ok: bool, flags: u64) -> u64 {
    (flags << 1 | u64::from(ok)) << 2 | u64::from(channel != 0)
}

/// Appends a request packet to `dst` without building a [`Packet`].
// always: on every packet's path, where a call cost W3 120
// instructions a request
#[inline(always)]
pub fn encode_request(
    dst: &mut BytesMut,
    channel: u64,
    tag: u64,
    rq_type: u64,
    flags: u64,
    payload: &[u8],
) -> Result<(), PacketError> {
    let (h, rq_wire) = request_fields(channel, rq_type, flags)?;
    put_raw(dst, tag, h, channel, Some(rq_wire), payload);
    Ok(())
}

/// [`encode_request`] without the payload: its length prefix and header
/// only, for a payload of `payload_len` bytes the caller writes next.
pub(super) fn encode_request_head(
    dst: &mut BytesMut,
    channel: u64,
    tag: u64,
    rq_type: u64,
    flags: u64,
    payload_len: usize,
) -> Result<(), PacketError> {
    let (h, rq_wire) = request_fields(channel, rq_type, flags)?;
    put_raw_general(dst, tag, h, channel, Some(rq_wire), payload_len, &[]);
    Ok(())
}

/// A request's header word and on-wire rq_type, or why they cannot be sent.
#[inline(always)]
fn request_fields(channel: u64, rq_type: u64, flags: u64) -> Result<(u64, u64), PacketError> {
    if flags > MAX_REQUEST_FLAGS {
        return Err(PacketError::OutOfRange("request flags wider than 62 bits"));
    }
    if rq_type > MAX_RQ_TYPE {
        return Err(PacketError::OutOfRange("rq_type u64::MAX"));
    }
    Ok((request_word(channel, flags), rq_type + 1))
}

/// Appends a response packet to `dst` without building a [`Packet`].
// always: on every packet's path, where a call cost W3 120
// instructions a request
#[inline(always)]
pub fn encode_response(
    dst: &mut BytesMut,
    channel: u64,
    tag: u64,
    ok: bool,
    flags: u64,
    payload: &[u8],
) -> Result<(), PacketError> {
    let h = response_fields(channel, ok, flags)?;
    put_raw(dst, tag, h, channel, None, payload);
    Ok(())
}

/// [`encode_response`] without the payload: its length prefix and header
/// only, for a payload of `payload_len` bytes the caller writes next.
pub(super) fn encode_response_head(
    dst: &mut BytesMut,
    channel: u64,
    tag: u64,
    ok: bool,
    flags: u64,
    payload_len: usize,
) -> Result<(), PacketError> {
    let h = response_fields(channel, ok, flags)?;
    put_raw_general(dst, tag, h, channel, None, payload_len, &[]);
    Ok(())
}

/// A response's header word, or why it cannot be sent.
#[inline(always)]
fn response_fields(channel: u64, ok: bool, flags: u64) -> Result<u64, PacketError> {
    if flags > MAX_RESPONSE_FLAGS {
        return Err(PacketError::OutOfRange("response flags wider than 61 bits"));
    }
    Ok(response_word(channel, ok, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reads_what_the_varint_decoder_reads() {
        // every run of up to 4 bytes from a set that covers one-byte values,
        // continuation groups, redundant leading groups and truncation,
        // read at the start and after another byte
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0x81, 0xff];
        let mut runs: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = runs
                .iter()
                .filter(|r| r.len() == runs.last().unwrap().len())
                .flat_map(|r| {
                    bytes.iter().map(move |&b| {
                        let mut r = r.clone();
                        r.push(b);
                        r
                    })
                })
                .collect();
            runs.extend(longer);
        }
        for run in &runs {
            for lead in [&[][..], &[0x05][..]] {
                let body = [lead, run].concat();
                let mut pos = lead.len();
                let got = field(&body, &mut pos, "f");
                match varint::decode(run) {
                    Ok(Some((v, n))) => {
                        assert_eq!(got.unwrap(), v, "{run:x?}");
                        assert_eq!(pos, lead.len() + n, "{run:x?}");
                    }
                    Ok(None) => assert!(matches!(got, Err(PacketError::Truncated { .. }))),
                    Err(_) => assert!(matches!(got, Err(PacketError::VarintOverflow))),
                }
            }
        }
    }

    #[test]
    fn put_raw_fast_path_matches_the_general_encoding() {
        let edges = |limits: &[u64]| -> Vec<u64> {
            let mut v = vec![0, 1];
            for &l in limits {
                v.extend([l - 1, l, l + 1]);
            }
            v
        };
        let tags = edges(&[1 << 7, 1 << 14, 1 << 21, 1 << 28, 1 << 35]);
        let words = edges(&[1 << 7, 1 << 14]);
        let lens = edges(&[1 << 7, 1 << 14]);
        let payload = vec![0xa5u8; (1 << 14) + 1];
        for &tag in &tags {
            for &h in &words {
                for rq in [None, Some(1), Some(127), Some(128), Some(300)] {
                    for channel in [0, 1, 200] {
                        for &len in &lens {
                            let payload = &payload[..len as usize];
                            let mut fast = BytesMut::from(&b"x"[..]);
                            put_raw(&mut fast, tag, h, channel, rq, payload);
                            let mut general = BytesMut::from(&b"x"[..]);
                            put_raw_general(
                                &mut general,
                                tag,
                                h,
                                channel,
                                rq,
                                payload.len(),
                                payload,
                            );
                            assert_eq!(fast, general, "{tag} {h} {channel} {rq:?} {len}");
                        }
                    }
                }
            }
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn enc(p: &Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        p.encode(&mut b).unwrap();
        assert_eq!(
            b.len() as u64,
            p.body_len() + varint::encoded_len(p.body_len()) as u64
        );
        b.to_vec()
    }

    fn dec(bytes: &[u8]) -> Packet {
        let (len, n) = varint::decode(bytes).unwrap().unwrap();
        assert_eq!(
            n + len as usize,
            bytes.len(),
            "length prefix covers the rest"
        );
        Packet::decode_body(Bytes::copy_from_slice(&bytes[n..])).unwrap()
    }

    fn rq(channel: u64, tag: u64, rq_type: u64, flags: u64, payload: &'static [u8]) -> Packet {
        Packet::Request {
            channel,
            tag,
            rq_type,
            flags,
            payload: Bytes::from_static(payload),
        }
    }

    fn rs(tag: u64, ok: bool, flags: u64, payload: &'static [u8]) -> Packet {
        Packet::Response {
            channel: 0,
            tag,
            ok,
            flags,
            payload: Bytes::from_static(payload),
        }
    }

    fn golden(p: Packet, bytes: &[u8]) {
        assert_eq!(enc(&p), bytes, "encode {p:?}");
        assert_eq!(dec(bytes), p, "decode {bytes:02x?}");
    }

    #[test]
    fn golden_examples_table() {
        golden(rq(0, 0, 3, 0, b"hello"), &hex("08 00 02 04 68 65 6c 6c 6f"));
        golden(rs(0, true, 0, b"hello"), &hex("07 00 04 68 65 6c 6c 6f"));
        let mut fail = hex("1a 00 00");
        fail.extend_from_slice(b"exception during handler");
        golden(rs(0, false, 0, b"exception during handler"), &fail);
        golden(rq(5, 300, 1, 3, b"x"), &hex("06 82 2c 0f 05 02 78"));
        golden(Packet::Eof, &hex("03 00 02 00"));
        golden(Packet::Erq, &hex("03 01 02 00"));
    }

    #[test]
    fn golden_full_exchange_client_to_server() {
        golden(rq(0, 2, 3, 0, b"hello"), &hex("08 02 02 04 68656c6c6f"));
        golden(rq(0, 3, 2, 5, b"abc"), &hex("06 03 16 03 616263"));
        golden(rq(0, 4, 9, 0, b""), &hex("03 04 02 0a"));
        golden(rq(0, 5, 0, 0, b""), &hex("03 05 02 01"));
        golden(Packet::Erq, &hex("03 01 02 00"));
        golden(Packet::Eof, &hex("03 00 02 00"));
    }

    #[test]
    fn golden_full_exchange_server_to_client() {
        golden(rs(2, true, 0, b"hello"), &hex("07 02 04 68656c6c6f"));
        golden(rs(3, true, 6, b"abc"), &hex("05 03 34 616263"));
        let mut fail = hex("1a 04 00");
        fail.extend_from_slice(b"exception during handler");
        golden(rs(4, false, 0, b"exception during handler"), &fail);
        golden(rs(5, true, 0, b""), &hex("02 05 04"));
    }

    #[test]
    fn response_on_a_channel_round_trips() {
        let p = Packet::Response {
            channel: 7,
            tag: 9,
            ok: false,
            flags: 12345,
            payload: Bytes::from_static(b"no"),
        };
        assert_eq!(dec(&enc(&p)), p);
    }

    #[test]
    fn channel_bit_with_zero_channel_is_read() {
        // H = 0 << 2 | 2 | 1 = 3, channel 0 written explicitly, rq_type wire 1
        assert_eq!(dec(&hex("05 07 03 00 01 41")), rq(0, 7, 0, 0, b"A"));
    }

    #[test]
    fn other_rq_type_zero_requests_are_eof() {
        assert_eq!(dec(&hex("04 05 02 00 41")), Packet::Eof);
        assert_eq!(dec(&hex("03 01 06 00")), Packet::Eof); // ERQ tag but flags 1
    }

    #[test]
    fn extreme_values_round_trip() {
        for p in [
            rq(u64::MAX, u64::MAX, MAX_RQ_TYPE, MAX_REQUEST_FLAGS, b"z"),
            Packet::Response {
                channel: u64::MAX,
                tag: u64::MAX,
                ok: true,
                flags: MAX_RESPONSE_FLAGS,
                payload: Bytes::new(),
            },
        ] {
            assert_eq!(dec(&enc(&p)), p);
        }
    }

    #[test]
    fn unrepresentable_values_are_errors() {
        let mut b = BytesMut::new();
        assert!(matches!(
            rq(0, 2, u64::MAX, 0, b"").encode(&mut b),
            Err(PacketError::OutOfRange(_))
        ));
        assert!(matches!(
            rq(0, 2, 0, MAX_REQUEST_FLAGS + 1, b"").encode(&mut b),
            Err(PacketError::OutOfRange(_))
        ));
        assert!(matches!(
            Packet::Response {
                channel: 0,
                tag: 2,
                ok: true,
                flags: MAX_RESPONSE_FLAGS + 1,
                payload: Bytes::new()
            }
            .encode(&mut b),
            Err(PacketError::OutOfRange(_))
        ));
        assert!(b.is_empty());
    }

    #[test]
    fn bodies_shorter_than_their_fields() {
        let cases: &[(&str, &str)] = &[
            ("", "tag"),
            ("05", "header word"),
            ("05 81", "header word"),
            ("05 03", "channel"),
            ("05 02", "rq_type"),
            ("05 03 07", "rq_type"),
        ];
        for (body, field) in cases {
            match Packet::decode_body(Bytes::from(hex(body))) {
                Err(PacketError::Truncated { field: f }) => assert_eq!(f, *field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn overflowing_field_is_an_error() {
        let mut body = vec![0xff; 10];
        body.push(0x7f);
        assert!(matches!(
            Packet::decode_body(Bytes::from(body)),
            Err(PacketError::VarintOverflow)
        ));
    }
}
