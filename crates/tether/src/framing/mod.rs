//! Codecs: how bytes on a stream become frames, and frames become values.
//!
//! Every codec is a sans-IO tokio-util [`Decoder`](tokio_util::codec::Decoder)
//! / [`Encoder`](tokio_util::codec::Encoder): it never touches a socket, it
//! only turns a buffer into frames. Bytes that follow a frame stay in the
//! buffer for the next one — nothing is dropped. Every decoder has a maximum
//! frame length ([`DEFAULT_MAX_FRAME_LENGTH`], 8 MiB, unless configured);
//! going over it is [`FramingError::FrameTooLong`], never an allocation of
//! what the peer asked for. A stream that ends inside a frame is
//! [`FramingError::TruncatedFrame`], not silence.
//!
//! | codec | on the wire |
//! |---|---|
//! | [`SentinelCodec`] | `frame bytes` `sentinel` (e.g. `\r\n`) |
//! | [`FixedLengthCodec`] | exactly `n` bytes per frame |
//! | [`LengthCodec`] | big-endian length prefix (4 bytes by default), then the frame |
//! | [`MapCodec`] | any of the above, with typed values instead of bytes |
//! | [`DuplexCodec`] | one codec for reading, another for writing |
//!
//! Sessions take a codec that is also a [`FrameEncoder`]: one that can
//! leave a long payload out of the write buffer, to be written from the
//! caller's own bytes (no copy of a bulk payload before the kernel's).
//!
//! ```
//! use bytes::BytesMut;
//! use tether::framing::SentinelCodec;
//! use tokio_util::codec::Decoder;
//!
//! let mut codec = SentinelCodec::new("\r\n");
//! let mut buf = BytesMut::from("a\r\nb\r\nhalf");
//! assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "a");
//! assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "b");
//! assert_eq!(codec.decode(&mut buf).unwrap(), None); // "half" waits for more
//! assert_eq!(buf, "half");
//! ```

mod duplex;
mod error;
mod fixed;
mod frame_encoder;
mod length;
mod map;
mod sentinel;

pub use duplex::DuplexCodec;
pub use error::FramingError;
pub use fixed::FixedLengthCodec;
pub(crate) use frame_encoder::encode_frame;
pub use frame_encoder::{FrameEncoder, BY_REFERENCE};
pub use length::LengthCodec;
pub use map::{text, MapCodec, TextCodec};
pub(crate) use sentinel::sentinel_in_frame;
pub use sentinel::SentinelCodec;

/// The maximum frame length every decoder uses unless told otherwise: 8 MiB.
///
/// Large enough for any device reply or bulk payload we have met, small
/// enough that a hostile peer cannot make a connection hold much memory.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 8 * 1024 * 1024;

/// The most room a reader makes at once for a frame (or packet) still
/// arriving: see [`room_ahead`].
pub(crate) const RESERVE_AHEAD: usize = 256 * 1024;

/// How much room to make for a frame still arriving, of which `arrived`
/// bytes are in and `missing` (known or expected) are still to come: the
/// rest, but at most four times what has arrived and at most
/// [`RESERVE_AHEAD`]. A big frame still comes in a few big reads (the room
/// grows fourfold a read, up to 256 KiB), while a peer that declares 8 MiB
/// and sends a few bytes makes its connection hold a few KiB: to make it
/// hold 256 KiB ahead, it must send 64 KiB.
pub(crate) fn room_ahead(arrived: usize, missing: usize) -> usize {
    missing.min(RESERVE_AHEAD).min(arrived.saturating_mul(4))
}

/// Turns escapes such as `\r\n`, `\t`, `\0`, `\\` and `\xHH` into bytes:
/// how the command line writes sentinels.
///
/// ```
/// assert_eq!(tether::framing::unescape(r"\r\n").unwrap(), b"\r\n");
/// assert_eq!(tether::framing::unescape(r"END\x00").unwrap(), b"END\0");
/// assert!(tether::framing::unescape(r"\q").is_err());
/// assert!(tether::framing::unescape(r"\x4").is_err()); // two digits, always
/// ```
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                // (`from_str_radix` alone takes `+1` and a single digit)
                let byte = (hex.len() == 2 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("`\\x{hex}` is not two hex digits"))?;
                out.push(byte);
            }
            Some(other) => return Err(format!("unknown escape `\\{other}`")),
            None => return Err("a lone `\\` at the end".to_string()),
        }
    }
    if out.is_empty() {
        return Err("the sentinel is empty".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hex_escape_is_exactly_two_hex_digits() {
        assert_eq!(unescape(r"\x0a\xFF").unwrap(), [0x0a, 0xff]);
        for bad in [r"\x+1", r"\x4", r"\x", r"\xg0", r"\x-1"] {
            let err = unescape(bad).unwrap_err();
            assert!(err.contains("two hex digits"), "{bad}: {err}");
        }
    }

    #[test]
    fn room_ahead_grows_with_what_arrived_up_to_its_bound() {
        const MIB: usize = 1 << 20;
        // a peer that declares 8 MiB and sends 3 bytes gets 12 bytes of room
        assert_eq!(room_ahead(3, 8 * MIB), 12);
        // to get the most, 256 KiB, it must send 64 KiB
        assert_eq!(room_ahead(64 * 1024 - 1, 8 * MIB), 256 * 1024 - 4);
        assert_eq!(room_ahead(64 * 1024, 8 * MIB), RESERVE_AHEAD);
        assert_eq!(room_ahead(4 * MIB, 8 * MIB), RESERVE_AHEAD);
        // never more than the rest
        assert_eq!(room_ahead(MIB, 100), 100);
        assert_eq!(room_ahead(usize::MAX, usize::MAX), RESERVE_AHEAD);
    }
}
