//! The big-endian base-128 varint every integer on the packet wire uses.
//!
//! Seven bits per byte, most significant group first; every byte but the
//! last has its high bit set. This is *not* LEB128.
//!
//! ```
//! use tether::packet::varint;
//! let mut buf = bytes::BytesMut::new();
//! varint::put(&mut buf, 300);
//! assert_eq!(&buf[..], &[0x82, 0x2c]);
//! assert_eq!(varint::decode(&buf), Ok(Some((300, 2))));
//! ```

use bytes::BufMut;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VarintError {
    /// The value does not fit in a `u64`.
    Overflow,
}

/// The number of bytes [`put`] writes for `value` (1 to 10).
#[inline]
pub fn encoded_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    if bits == 0 {
        1
    } else {
        bits.div_ceil(7)
    }
}

/// Appends the minimal encoding of `value` to `dst`.
#[inline]
pub fn put<B: BufMut + ?Sized>(dst: &mut B, value: u64) {
    let n = encoded_len(value);
    for i in (1..n).rev() {
        dst.put_u8(((value >> (7 * i)) & 0x7f) as u8 | 0x80);
    }
    dst.put_u8((value & 0x7f) as u8);
}

/// Decodes one varint from the start of `src`.
///
/// Returns `Ok(Some((value, bytes_used)))`, `Ok(None)` if `src` ends before
/// the last byte of the varint, or an error if the value overflows `u64`.
/// Redundant leading `0x80` bytes are accepted, as the reference does.
#[inline]
pub fn decode(src: &[u8]) -> Result<Option<(u64, usize)>, VarintError> {
    // one byte: most tags, header words, rq_types and small lengths
    if let Some(&b) = src.first() {
        if b < 0x80 {
            return Ok(Some((u64::from(b), 1)));
        }
    }
    decode_long(src)
}

fn decode_long(src: &[u8]) -> Result<Option<(u64, usize)>, VarintError> {
    let mut value: u64 = 0;
    for (i, &b) in src.iter().enumerate() {
        if value >> 57 != 0 {
            return Err(VarintError::Overflow);
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, v);
        assert_eq!(out.len(), encoded_len(v));
        out
    }

    #[test]
    fn golden_values_from_packet_wire_md() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x81, 0x00]),
            (255, &[0x81, 0x7f]),
            (300, &[0x82, 0x2c]),
            (16383, &[0xff, 0x7f]),
            (16384, &[0x81, 0x80, 0x00]),
            (1 << 32, &[0x90, 0x80, 0x80, 0x80, 0x00]),
        ];
        for &(v, bytes) in cases {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(decode(bytes), Ok(Some((v, bytes.len()))), "decode {v}");
        }
    }

    #[test]
    fn round_trips_edges() {
        for v in [
            0,
            1,
            127,
            128,
            u64::from(u32::MAX),
            u64::MAX >> 1,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let b = enc(v);
            assert_eq!(decode(&b), Ok(Some((v, b.len()))));
            // every strict prefix is incomplete
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), Ok(None));
            }
        }
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn accepts_redundant_leading_zero_groups() {
        assert_eq!(decode(&[0x80, 0x80, 0x05]), Ok(Some((5, 3))));
    }

    #[test]
    fn rejects_overflow() {
        // u64::MAX then one more group
        let mut b = enc(u64::MAX);
        b[9] |= 0x80;
        b.push(0x00);
        assert_eq!(decode(&b), Err(VarintError::Overflow));
        // 2^64 exactly: 0x82 then nine 0x80 then 0x00
        let mut b = vec![0x82];
        b.extend([0x80; 8]);
        b.push(0x00);
        assert_eq!(decode(&b), Err(VarintError::Overflow));
        // long garbage of 0xff never panics
        assert_eq!(decode(&[0xff; 40]), Err(VarintError::Overflow));
    }
}
