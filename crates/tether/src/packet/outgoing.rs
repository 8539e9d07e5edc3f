//! [`Outgoing`]: the bytes a connection has queued for its peer, sans-IO.
//!
//! Packets are encoded into one buffer, except that a large payload is not
//! copied there: the buffer takes its packet's header, and the payload, a
//! [`Bytes`] the caller handed over anyway, waits beside it to be written in
//! its place by a vectored write. Copying a 1 MiB payload costs about as
//! much as the kernel's own copy of it into the socket, so a bulk transfer
//! that copies on both ends spends a tenth of its time there (W5 measured
//! 1.12× faster without the copy).
//!
//! ```text
//! queued: request a (5 bytes), request b (64 KiB), response c (1 MiB)
//! buf:    [hdr a · payload a · hdr b] [hdr c]
//! large:  payload b after 15 bytes of buf, payload c after 5 more
//! wire:   hdr a · payload a · hdr b · payload b · hdr c · payload c
//! ```
//!
//! Each large payload records how many bytes of `buf` go out before it,
//! counted from the one before, so writing from the front (which advances
//! `buf`) only ever adjusts the first.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use super::wire;
use super::PacketError;
use crate::buffers::clear_write_buf;

/// Payloads at least this long are kept by reference rather than copied
/// (16 KiB: below it a copy costs less than the extra I/O slice, and the
/// encoder leaves its one-word fast path for headers there anyway).
pub(super) use crate::framing::BY_REFERENCE;

/// How many slices one vectored write takes: a header, a payload, and what
/// follows, twice over.
pub(super) const SLICES: usize = 6;

/// The bytes queued for the peer, in order.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    /// Encoded packets, large payloads left out.
    buf: BytesMut,
    /// The large payloads in order, boxed: every connection holds two
    /// queues, and most never send a large payload (W8 counts each idle
    /// connection's bytes: 8 of them here against 32 for a deque).
    #[allow(clippy::box_collection)]
    large: Option<Box<VecDeque<Large>>>,
    /// Their bytes still to write (kept, not summed: `len` is asked for
    /// at every packet the driver decodes).
    large_len: usize,
}

#[derive(Debug)]
struct Large {
    /// Bytes of `buf` written before this payload, after the previous one.
    gap: usize,
    payload: Bytes,
}

impl Outgoing {
    /// How many bytes are queued, large payloads included.
    #[inline(always)]
    pub(super) fn len(&self) -> usize {
        self.buf.len() + self.large_len
    }

    /// Whether nothing is queued.
    #[inline(always)]
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.no_large()
    }

    #[inline(always)]
    fn no_large(&self) -> bool {
        self.large_len == 0
    }

    /// The large payloads queued, in order.
    fn larges(&self) -> impl Iterator<Item = &Large> {
        self.large.iter().flat_map(|l| l.iter())
    }

    /// The buffer to append small, fixed packets to (EOF, ERQ).
    pub(super) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Queues a request (see [`wire::encode_request`]).
    #[inline(always)]
    pub(super) fn request(
        &mut self,
        channel: u64,
        tag: u64,
        rq_type: u64,
        flags: u64,
        payload: &Bytes,
    ) -> Result<(), PacketError> {
        let bytes: &[u8] = payload;
        if bytes.len() >= BY_REFERENCE {
            return self.large_request(channel, tag, rq_type, flags, payload);
        }
        wire::encode_request(&mut self.buf, channel, tag, rq_type, flags, bytes)
    }

    #[cold]
    #[inline(never)] // out of the small packets' path
    fn large_request(
        &mut self,
        channel: u64,
        tag: u64,
        rq_type: u64,
        flags: u64,
        payload: &Bytes,
    ) -> Result<(), PacketError> {
        wire::encode_request_head(&mut self.buf, channel, tag, rq_type, flags, payload.len())?;
        self.push_large(payload.clone());
        Ok(())
    }

    /// Queues a response (see [`wire::encode_response`]).
    #[inline(always)]
    pub(super) fn response(
        &mut self,
        channel: u64,
        tag: u64,
        ok: bool,
        flags: u64,
        payload: Bytes,
    ) -> Result<(), PacketError> {
        if payload.len() >= BY_REFERENCE {
            return self.large_response(channel, tag, ok, flags, payload);
        }
        wire::encode_response(&mut self.buf, channel, tag, ok, flags, &payload)
    }

    #[cold]
    #[inline(never)] // out of the small packets' path
    fn large_response(
        &mut self,
        channel: u64,
        tag: u64,
        ok: bool,
        flags: u64,
        payload: Bytes,
    ) -> Result<(), PacketError> {
        wire::encode_response_head(&mut self.buf, channel, tag, ok, flags, payload.len())?;
        self.push_large(payload);
        Ok(())
    }

    fn push_large(&mut self, payload: Bytes) {
        let gap = self.buf.len() - self.gaps();
        self.large_len += payload.len();
        let large = self.large.get_or_insert_with(Box::default);
        large.push_back(Large { gap, payload });
    }

    /// Bytes of `buf` that go out before the last large payload.
    fn gaps(&self) -> usize {
        self.larges().map(|l| l.gap).sum()
    }

    /// Moves everything `other` holds to the end of this queue.
    pub(super) fn append(&mut self, other: &mut Outgoing) {
        if self.is_empty() {
            // the usual case: no copy, and each side keeps a buffer
            std::mem::swap(self, other);
            return;
        }
        let tail = self.buf.len() - self.gaps();
        self.buf.extend_from_slice(&other.buf);
        other.buf.clear();
        if let Some(theirs) = other.large.as_mut().filter(|l| !l.is_empty()) {
            if let Some(first) = theirs.front_mut() {
                first.gap += tail;
            }
            self.large.get_or_insert_with(Box::default).append(theirs);
            self.large_len += std::mem::take(&mut other.large_len);
        }
    }

    /// Drops everything queued; the buffer keeps its room.
    pub(super) fn clear(&mut self) {
        self.buf.clear();
        if let Some(large) = &mut self.large {
            large.clear();
        }
        self.large_len = 0;
    }

    /// [`clear`](Self::clear), and lets go of a buffer grown past
    /// [`KEEP_AT_MOST`](crate::buffers::KEEP_AT_MOST).
    pub(super) fn clear_and_shrink(&mut self) {
        clear_write_buf(&mut self.buf);
        self.clear(); // the queue's few entries' room is kept, as the buffer's is
    }

    /// The bytes to write next, in one slice: all of them when no large
    /// payload is queued (the common case, a plain write).
    #[inline(always)]
    pub(super) fn contiguous(&self) -> Option<&[u8]> {
        self.no_large().then_some(&self.buf[..])
    }

    /// The bytes to write next as I/O slices for a vectored write: how many
    /// of `slices` are filled (none only when nothing is queued).
    pub(super) fn io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>; SLICES]) -> usize {
        let mut n = 0;
        let mut from = 0;
        for large in self.larges() {
            if n + 2 > SLICES {
                return n;
            }
            if large.gap > 0 {
                slices[n] = IoSlice::new(&self.buf[from..from + large.gap]);
                n += 1;
            }
            from += large.gap;
            slices[n] = IoSlice::new(&large.payload);
            n += 1;
        }
        if from < self.buf.len() && n < SLICES {
            slices[n] = IoSlice::new(&self.buf[from..]);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes, written.
    pub(super) fn advance(&mut self, mut n: usize) {
        let Some(large) = self.large.as_deref_mut() else {
            self.buf.advance(n);
            return;
        };
        while let Some(first) = large.front_mut().filter(|_| n > 0) {
            let from_buf = n.min(first.gap);
            self.buf.advance(from_buf);
            first.gap -= from_buf;
            n -= from_buf;
            let from_payload = n.min(first.payload.len());
            first.payload.advance(from_payload);
            self.large_len -= from_payload;
            n -= from_payload;
            if first.gap == 0 && first.payload.is_empty() {
                large.pop_front();
            }
        }
        self.buf.advance(n); // past the last large payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Packet;

    fn large(byte: u8) -> Bytes {
        Bytes::from(vec![byte; BY_REFERENCE + 5])
    }

    /// The bytes `q` would write, gathered as a writer taking at most
    /// `step` bytes a write would take them.
    fn drain(q: &mut Outgoing, step: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES];
            let n = q.io_slices(&mut slices);
            assert!(n > 0, "something queued, nothing to write");
            let mut taken = 0;
            for s in &slices[..n] {
                let want = (step - taken).min(s.len());
                wire.extend_from_slice(&s[..want]);
                taken += want;
                if taken == step {
                    break;
                }
            }
            let before = q.len();
            q.advance(taken);
            assert_eq!(q.len(), before - taken);
        }
        wire
    }

    fn encoded(packets: &[Packet]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for p in packets {
            p.encode(&mut b).unwrap();
        }
        b.to_vec()
    }

    fn request(tag: u64, payload: Bytes) -> Packet {
        Packet::Request {
            channel: 0,
            tag,
            rq_type: 1,
            flags: 2,
            payload,
        }
    }

    fn response(tag: u64, payload: Bytes) -> Packet {
        Packet::Response {
            channel: 0,
            tag,
            ok: true,
            flags: 3,
            payload,
        }
    }

    /// Queues `packets` (requests and responses only).
    fn queue(q: &mut Outgoing, packets: &[Packet]) {
        for p in packets {
            match p {
                Packet::Request {
                    channel,
                    tag,
                    rq_type,
                    flags,
                    payload,
                } => q
                    .request(*channel, *tag, *rq_type, *flags, payload)
                    .unwrap(),
                Packet::Response {
                    channel,
                    tag,
                    ok,
                    flags,
                    payload,
                } => q
                    .response(*channel, *tag, *ok, *flags, payload.clone())
                    .unwrap(),
                _ => unreachable!("only requests and responses are queued here"),
            }
        }
    }

    fn mixed() -> Vec<Packet> {
        vec![
            request(1, Bytes::from_static(b"small")),
            request(2, large(b'a')),
            response(7, large(b'b')),
            response(8, Bytes::new()),
            request(3, large(b'c')),
            request(4, large(b'd')),
            request(5, large(b'e')),
            response(9, Bytes::from_static(b"tail")),
        ]
    }

    #[test]
    fn the_wire_is_the_same_as_copying_at_any_write_size() {
        let packets = mixed();
        let want = encoded(&packets);
        for step in [
            1,
            3,
            7,
            4096,
            BY_REFERENCE,
            10 * BY_REFERENCE,
            usize::MAX / 2,
        ] {
            let mut q = Outgoing::default();
            queue(&mut q, &packets);
            assert_eq!(q.len(), want.len());
            assert!(drain(&mut q, step) == want, "write size {step}");
        }
    }

    #[test]
    fn large_payloads_are_not_copied() {
        let payload = large(b'x');
        let mut q = Outgoing::default();
        q.request(0, 1, 0, 0, &payload).unwrap();
        assert!(q.contiguous().is_none());
        assert!(q.buf.len() < 16, "only the header is in the buffer");
        let mut slices = [IoSlice::new(&[]); SLICES];
        assert_eq!(q.io_slices(&mut slices), 2);
        assert_eq!(slices[1].as_ptr(), payload.as_ptr(), "the caller's bytes");
    }

    #[test]
    fn small_packets_stay_one_contiguous_buffer() {
        let mut q = Outgoing::default();
        queue(
            &mut q,
            &[request(1, Bytes::from(vec![0; BY_REFERENCE - 1]))],
        );
        assert_eq!(q.contiguous().map(<[u8]>::len), Some(q.len()));
    }

    #[test]
    fn append_keeps_the_order_of_both_queues() {
        let packets = mixed();
        let want = encoded(&packets);
        for split in 0..=packets.len() {
            let (mut a, mut b) = (Outgoing::default(), Outgoing::default());
            queue(&mut a, &packets[..split]);
            queue(&mut b, &packets[split..]);
            a.append(&mut b);
            assert!(b.is_empty());
            assert!(drain(&mut a, 5000) == want, "split at {split}");
        }
    }

    #[test]
    fn append_after_a_partial_write() {
        let packets = mixed();
        let want = encoded(&packets);
        let mut a = Outgoing::default();
        queue(&mut a, &packets[..3]);
        let mut wire = Vec::new();
        let mut slices = [IoSlice::new(&[]); SLICES];
        let n = a.io_slices(&mut slices);
        let first: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        let part = BY_REFERENCE + 20; // into the first large payload
        wire.extend_from_slice(&first[..part]);
        a.advance(part);
        let mut b = Outgoing::default();
        queue(&mut b, &packets[3..]);
        a.append(&mut b);
        wire.extend(drain(&mut a, 777));
        assert!(wire == want);
    }

    #[test]
    fn append_to_a_queue_holding_only_the_rest_of_a_payload() {
        // its buffer is empty, but it is not: what is appended goes after
        let packets = [
            request(1, large(b'p')),
            request(2, Bytes::from_static(b"next")),
        ];
        let want = encoded(&packets);
        let mut a = Outgoing::default();
        queue(&mut a, &packets[..1]);
        let head = a.buf.len();
        a.advance(head + 10);
        assert!(a.buf.is_empty() && !a.is_empty());
        let mut b = Outgoing::default();
        queue(&mut b, &packets[1..]);
        a.append(&mut b);
        assert!(drain(&mut a, 4096) == want[head + 10..]);
    }

    #[test]
    fn a_write_that_ends_between_header_and_payload() {
        let mut q = Outgoing::default();
        q.request(0, 1, 0, 0, &large(b'z')).unwrap();
        let head = q.buf.len();
        q.advance(head);
        assert_eq!(q.len(), BY_REFERENCE + 5);
        let mut slices = [IoSlice::new(&[]); SLICES];
        assert_eq!(q.io_slices(&mut slices), 1, "the payload alone");
        q.advance(BY_REFERENCE + 5);
        assert!(q.is_empty());
    }
}
