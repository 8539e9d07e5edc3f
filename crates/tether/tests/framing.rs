//! Codec properties over many random inputs (a deterministic generator, so
//! a failure replays): valid streams split anywhere decode to what was
//! encoded; garbage never panics and never makes a buffer outgrow its limit.

use bytes::BytesMut;
use tether::framing::{FixedLengthCodec, FramingError, LengthCodec, SentinelCodec};
use tokio_util::codec::{Decoder, Encoder};

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

/// Feeds `wire` to `codec` in random pieces and collects every frame (and
/// the end-of-stream outcome).
fn decode_in_pieces<D>(
    codec: &mut D,
    wire: &[u8],
    rng: &mut Rng,
    max_buffer: usize,
) -> (Vec<Vec<u8>>, Vec<String>)
where
    D: Decoder<Item = BytesMut, Error = FramingError>,
{
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    let mut buf = BytesMut::new();
    let mut at = 0;
    while at < wire.len() {
        let piece = 1 + rng.below(64.min(wire.len() - at));
        buf.extend_from_slice(&wire[at..at + piece]);
        at += piece;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    errors.push(e.to_string());
                    assert!(
                        errors.len() < 10_000,
                        "the codec keeps failing without consuming input"
                    );
                }
            }
        }
        assert!(
            buf.len() <= max_buffer,
            "buffer grew to {} (limit {max_buffer})",
            buf.len()
        );
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame.to_vec()),
            Ok(None) => break,
            Err(e) => {
                errors.push(e.to_string());
                break;
            }
        }
    }
    (frames, errors)
}

#[test]
fn sentinel_streams_round_trip_at_any_split() {
    let mut rng = Rng(0x7e7e_7e7e);
    for round in 0..500 {
        let sentinel: &[u8] = [&b"\n"[..], b"\r\n", b"<END>", b"\xff\x00"][round % 4];
        let mut codec = SentinelCodec::with_max_length(sentinel.to_vec(), 256);
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for _ in 0..rng.below(20) {
            let len = rng.below(200);
            let frame = rng.bytes(len, b"abc\r\n<END>\xff\x00");
            if codec.encode(&frame[..], &mut wire).is_ok() {
                sent.push(frame);
            }
        }
        let (frames, errors) =
            decode_in_pieces(&mut codec, &wire, &mut rng, 256 + 64 + sentinel.len());
        assert_eq!(frames, sent, "round {round}");
        assert!(errors.is_empty(), "round {round}: {errors:?}");
    }
}

#[test]
fn length_streams_round_trip_at_any_split() {
    let mut rng = Rng(0x1234_5678);
    for round in 0..500 {
        let prefix = [1, 2, 4, 8][round % 4];
        let mut codec = LengthCodec::with_prefix(prefix, 1000);
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for _ in 0..rng.below(20) {
            let len = rng.below(300);
            let frame = rng.bytes(len, b"\x00\x01\xffxyz");
            // A 1-byte prefix cannot say more than 255: those are refused.
            if codec.encode(&frame[..], &mut wire).is_ok() {
                sent.push(frame);
            }
        }
        let (frames, errors) = decode_in_pieces(&mut codec, &wire, &mut rng, 1000 + 64 + prefix);
        assert_eq!(frames, sent, "round {round}");
        assert!(errors.is_empty(), "round {round}: {errors:?}");
    }
}

#[test]
fn fixed_streams_round_trip_at_any_split() {
    let mut rng = Rng(0xfeed);
    for round in 0..200 {
        let len = 1 + rng.below(100);
        let mut codec = FixedLengthCodec::new(len);
        let sent: Vec<Vec<u8>> = (0..rng.below(20))
            .map(|_| rng.bytes(len, b"\x00\xffab"))
            .collect();
        let wire = sent.concat();
        let (frames, errors) = decode_in_pieces(&mut codec, &wire, &mut rng, len + 64);
        assert_eq!(frames, sent, "round {round}");
        assert!(errors.is_empty());
    }
}

#[test]
fn garbage_never_panics_nor_outgrows_the_limit() {
    let mut rng = Rng(0xbad_5eed);
    for _ in 0..300 {
        let len = rng.below(4000);
        let wire = rng.bytes(len, &(0..=255).collect::<Vec<u8>>());
        let mut sentinel = SentinelCodec::with_max_length(&b"\r\n"[..], 100);
        decode_in_pieces(&mut sentinel, &wire, &mut rng, 100 + 64 + 2);
        let mut length = LengthCodec::with_prefix(2, 100);
        let (_, _) = decode_in_pieces(&mut length, &wire, &mut rng, usize::MAX);
        let mut fixed = FixedLengthCodec::new(7);
        decode_in_pieces(&mut fixed, &wire, &mut rng, 7 + 64);
    }
}

#[test]
fn an_oversize_length_prefix_is_refused_and_named() {
    let mut codec = LengthCodec::with_prefix(4, 1000);
    let mut buf = BytesMut::from(&[0u8, 0, 0x10, 0, b'x'][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(
        err.to_string(),
        "frame exceeds the maximum length of 1000 bytes"
    );
}
