//! The async frame driver shared by client sessions and server connections:
//! a stream, a sans-IO codec, and one read and one write buffer.
//!
//! Two buffer policies, because the two sides want different things:
//! - [`Buffers::Lazy`] (servers): an idle connection holds no buffers. It
//!   gives them back to its thread's [`POOL`] when a read finds nothing and
//!   takes one again when woken, so ten thousand idle sessions cost little
//!   more than their sockets, and a busy server allocates nothing per
//!   request.
//! - [`Buffers::Kept`] (client sessions): the buffers stay between requests,
//!   saving a trip through the pool per request; one that grew past
//!   [`KEEP_AT_MOST`](crate::buffers::KEEP_AT_MOST) for a bulk frame is
//!   given back.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::buffers::{self, clear_write_buf, Pool, ReadBuf};
use crate::framing::{encode_frame, FrameEncoder, FramingError};
use crate::transport::ByteStream;

/// How much room a read asks for. 4 KiB covers typical device replies in
/// one syscall; bulk frames grow the buffer as they arrive. (The client
/// sessions of this module and of [`crate::blocking`] both read this much.)
pub(crate) const READ_CHUNK: usize = 4096;

/// The first room a [`Buffers::Lazy`] read asks for: requests to a server
/// are mostly short, and glibc serves blocks up to 1 KiB from its per-thread
/// cache, several times faster than a 4 KiB block. A longer frame grows the
/// buffer (doubling) as it arrives.
pub(crate) const LAZY_READ_CHUNK: usize = 1024;

/// When a [`FrameIo`] gives its buffers back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buffers {
    /// As soon as they are empty: for servers holding many idle connections.
    Lazy,
    /// Only when they grew past
    /// [`KEEP_AT_MOST`](crate::buffers::KEEP_AT_MOST): for client sessions.
    Kept,
}

#[derive(Debug)]
pub(crate) struct FrameIo<C> {
    pub(crate) stream: ByteStream,
    pub(crate) codec: C,
    rbuf: ReadBuf,
    wbuf: BytesMut,
    // How much of `wbuf` is already written.
    written: usize,
    buffers: Buffers,
}

impl<C> FrameIo<C> {
    pub(crate) fn new(stream: ByteStream, codec: C, buffers: Buffers) -> Self {
        FrameIo {
            stream,
            codec,
            rbuf: ReadBuf::default(),
            wbuf: BytesMut::new(),
            written: 0,
            buffers,
        }
    }
}

impl<C> FrameIo<C>
where
    C: Decoder<Error = FramingError>,
{
    /// A frame already in the read buffer, without touching the stream.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<C::Item>, FramingError> {
        buffers::buffered_frame(&mut self.codec, &mut self.rbuf)
    }

    /// The next frame; `None` at a clean end of stream (between frames).
    pub(crate) async fn read_frame(&mut self) -> Result<Option<C::Item>, FramingError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if std::future::poll_fn(|cx| self.poll_read_more(cx)).await? == 0 {
                return self.codec.decode_eof(&mut self.rbuf);
            }
        }
    }

    /// Reads what the stream has into the read buffer: the number of bytes,
    /// 0 at end of stream. A [`Buffers::Lazy`] connection that finds nothing
    /// gives its empty buffers back before it waits, and takes one again
    /// when woken, so an idle connection holds none.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let chunk = match self.buffers {
            Buffers::Lazy => {
                if self.rbuf.capacity() == 0 {
                    self.rbuf = ReadBuf::new(Pool::take(&POOL));
                }
                LAZY_READ_CHUNK
            }
            Buffers::Kept => READ_CHUNK,
        };
        self.rbuf.make_room(chunk);
        self.rbuf.note_growth(); // the codec too may have made room, for a long frame
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut *self.rbuf);
        if read.is_pending() && self.buffers == Buffers::Lazy {
            self.give_back_empty();
        }
        read
    }

    /// Gives the empty buffers back: to the pool, or to the allocator if
    /// they grew for a bulk frame.
    fn give_back_empty(&mut self) {
        if self.rbuf.is_empty() {
            if let Some(rbuf) = self.rbuf.take_keepable() {
                give_to_pool(rbuf);
            }
        }
        if self.wbuf.is_empty() {
            // (`flush` already let go of one grown past KEEP_AT_MOST)
            give_to_pool(std::mem::take(&mut self.wbuf));
        }
    }

    /// Encodes a frame into the write buffer; [`flush`](Self::flush) sends it.
    pub(crate) fn queue<T>(&mut self, item: T) -> Result<(), FramingError>
    where
        C: Encoder<T, Error = FramingError>,
    {
        if self.wbuf.capacity() == 0 && self.buffers == Buffers::Lazy {
            self.wbuf = Pool::take(&POOL);
        }
        let start = self.wbuf.len();
        let encoded = self.codec.encode(item, &mut self.wbuf);
        if encoded.is_err() {
            self.wbuf.truncate(start); // nothing of a frame that failed
        }
        encoded
    }

    /// Encodes a frame into the write buffer as [`queue`](Self::queue)
    /// does, unless the codec leaves its payload out (a long one): then
    /// `item` comes back with the offset in the write buffer where its
    /// payload goes, for [`write_around`](Self::write_around) to send.
    pub(crate) fn queue_around<T>(&mut self, item: T) -> Result<Option<(T, usize)>, FramingError>
    where
        C: FrameEncoder<T>,
    {
        if self.wbuf.capacity() == 0 && self.buffers == Buffers::Lazy {
            self.wbuf = Pool::take(&POOL);
        }
        encode_frame(&mut self.codec, item, &mut self.wbuf)
    }

    /// Writes everything queued with `payload` in place at offset `at` of
    /// the write buffer (where [`queue_around`](Self::queue_around) said it
    /// goes), by vectored writes: the payload is not copied. With a
    /// `stall` limit, a write that makes no progress for that long fails
    /// with `TimedOut`.
    ///
    /// A client's write cancelled half-way (its request dropped) copies
    /// what is left into the write buffer, so that a later
    /// [`flush`](Self::flush) sends the rest of the frame and the stream
    /// stays in step. After an error, or a server's connection cancelled
    /// (dropped with it), nothing is left queued: the connection is over.
    pub(crate) async fn write_around(
        &mut self,
        payload: &[u8],
        at: usize,
        stall: Option<Duration>,
    ) -> std::io::Result<()> {
        debug_assert!(self.written <= at && at <= self.wbuf.len());
        let mut around = Around {
            io: self,
            payload,
            at,
            done: false,
        };
        let total = around.io.wbuf.len() + payload.len();
        while around.io.written < total {
            let io = &mut *around.io;
            let slices = rest_around(&io.wbuf, payload, at, io.written);
            let written = match within_stall(stall, io.stream.write_vectored(&slices)).await {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                written => written,
            };
            match written {
                Ok(n) => io.written += n,
                Err(e) => {
                    around.done = true; // nothing more goes out: no copy
                    around.io.written = 0;
                    around.io.wbuf.clear();
                    return Err(e);
                }
            }
        }
        around.done = true;
        let io = &mut *around.io;
        io.written = 0;
        clear_write_buf(&mut io.wbuf);
        if io.stream.buffers_writes() {
            // TLS and Telnet take the frame into a buffer of their own and
            // write it out here: timed as the writes are
            within_stall(stall, io.stream.flush()).await?;
        }
        Ok(())
    }

    /// Writes everything queued, in one write when the kernel takes it.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        // A plain write loop: `write_all_buf` prepares 64 I/O slices for a
        // vectored write on every call, costing more than the frame itself.
        // The buffer is not advanced as it goes out: cleared whole, it keeps
        // all its room, where advancing would eat into it a frame at a time
        // until every encode had to make room again. The offset written so
        // far lives in `self`, so a flush cancelled half-way and called
        // again sends each byte once.
        while self.written < self.wbuf.len() {
            let n = self.stream.write(&self.wbuf[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.written = 0;
        clear_write_buf(&mut self.wbuf);
        if self.stream.buffers_writes() {
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// [`flush`](Self::flush), but a write that makes no progress for
    /// `stall()` (a peer that reads nothing) fails with `TimedOut`. A peer
    /// that reads slowly but reads is not cut off: each write that takes
    /// bytes starts the wait again. No timer is armed while the socket
    /// takes what is written, as it nearly always does.
    ///
    /// (It repeats `flush`'s loop on purpose: one loop for both, with the
    /// poll-then-time step as a helper, measured 1,847 B an idle sentinel
    /// session against 1,712 B, the nested future taking more room in
    /// every connection.)
    pub(crate) async fn flush_within(
        &mut self,
        stall: impl Fn() -> Duration,
    ) -> std::io::Result<()> {
        use futures_util::FutureExt;
        while self.written < self.wbuf.len() {
            let mut write = std::pin::pin!(self.stream.write(&self.wbuf[self.written..]));
            let n = match write.as_mut().now_or_never() {
                Some(n) => n?,
                // boxed: a timer in place would sit in every idle
                // connection's future (130 bytes more a sentinel session)
                None => Box::pin(tokio::time::timeout(stall(), write))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.written = 0;
        clear_write_buf(&mut self.wbuf);
        if self.stream.buffers_writes() {
            // TLS and Telnet take a reply into a buffer of their own and
            // write it out here: timed as the writes are
            let mut flush = std::pin::pin!(self.stream.flush());
            match flush.as_mut().now_or_never() {
                Some(flushed) => flushed?,
                None => Box::pin(tokio::time::timeout(stall(), flush))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
            }
        }
        Ok(())
    }

    /// After refusing a peer, reads and drops what it is still sending (up
    /// to `max_bytes`, until `max_wait`), so that closing does not reset the
    /// connection and destroy the refusal before the peer reads it.
    pub(crate) async fn discard_input(&mut self, max_bytes: usize, max_wait: std::time::Duration) {
        // On the heap: an array here would live in every connection's future
        // and make each idle connection 8 KiB bigger.
        let mut scratch = vec![0u8; 8192];
        let mut seen = 0;
        let _ = tokio::time::timeout(max_wait, async {
            while seen < max_bytes {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen += n,
                }
            }
        })
        .await;
    }

    /// Flushes, then ends the write side so the peer sees end-of-stream.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }
}

/// A [`FrameIo::write_around`] under way: if it ends before its payload is
/// all out, what is left moves into the write buffer.
struct Around<'a, C> {
    io: &'a mut FrameIo<C>,
    payload: &'a [u8],
    at: usize,
    done: bool,
}

impl<C> Drop for Around<'_, C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let io = &mut *self.io;
        if io.buffers == Buffers::Lazy {
            // a server's connection, dropped with the write: copying up to
            // a frame's worth only to free it would cost every connection
            // cancelled at shutdown
            io.wbuf.clear();
            io.written = 0;
            return;
        }
        let rest = rest_around(&io.wbuf, self.payload, self.at, io.written);
        let mut left = BytesMut::with_capacity(rest.iter().map(|s| s.len()).sum());
        for part in &rest {
            left.extend_from_slice(part);
        }
        io.wbuf = left;
        io.written = 0;
    }
}

/// `io`, failing with `TimedOut` if it takes longer than `stall`.
async fn within_stall<T>(
    stall: Option<Duration>,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match stall {
        None => io.await,
        Some(limit) => tokio::time::timeout(limit, io)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
    }
}

/// What is left to write of `buf[..at]`, `payload`, `buf[at..]` once
/// `written` bytes of them are out.
fn rest_around<'a>(
    buf: &'a [u8],
    payload: &'a [u8],
    at: usize,
    written: usize,
) -> [IoSlice<'a>; 3] {
    let (head, tail) = buf.split_at(at.min(buf.len()));
    let from_payload = written.saturating_sub(head.len()).min(payload.len());
    let from_tail = written.saturating_sub(head.len() + payload.len());
    [
        IoSlice::new(&head[written.min(head.len())..]),
        IoSlice::new(&payload[from_payload..]),
        IoSlice::new(&tail[from_tail..]),
    ]
}

thread_local! {
    /// Buffers that server connections gave back, kept by their thread for
    /// the next connection with data. A thread serves one connection at a
    /// time, which uses two.
    static POOL: Pool<BytesMut, 8> = const { Pool::new() };
}

/// Pools `buf`, unless it was never allocated.
fn give_to_pool(buf: BytesMut) {
    if buf.capacity() > 0 {
        Pool::give(&POOL, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::KEEP_AT_MOST;
    use crate::framing::LengthCodec;
    use crate::transport::memory_pair;

    async fn read_one(io: &mut FrameIo<LengthCodec>, peer: &mut ByteStream, len: usize) {
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.resize(4 + len, b'x');
        peer.write_all(&frame).await.unwrap();
        let got = io.read_frame().await.unwrap().unwrap();
        assert_eq!(got.len(), len);
    }

    #[tokio::test]
    async fn a_flush_cancelled_half_way_sends_each_byte_once() {
        let (a, mut peer) = memory_pair(64);
        let mut io = FrameIo::new(a, LengthCodec::new(), Buffers::Kept);
        io.queue(&[1u8; 100][..]).unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), io.flush()).await;
        assert!(cut.is_err(), "the pipe holds 64 bytes: the flush waits");
        io.queue(&[2u8; 5][..]).unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        io.shutdown().await.unwrap();
        drop(io);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        let mut want = vec![0, 0, 0, 100];
        want.extend([1u8; 100]);
        want.extend([0, 0, 0, 5, 2, 2, 2, 2, 2]);
        assert_eq!(got, want);
    }

    #[test]
    fn what_is_left_around_a_payload_is_the_rest_of_the_frame_from_any_point() {
        let joined =
            |slices: [IoSlice<'_>; 3]| slices.iter().flat_map(|s| s.to_vec()).collect::<Vec<u8>>();
        let buf = b"HEADtail";
        let payload = b"payload";
        let frame = b"HEADpayloadtail";
        for written in 0..=frame.len() {
            let rest = joined(rest_around(buf, payload, 4, written));
            assert_eq!(rest, frame[written..], "after {written} bytes");
        }
        assert_eq!(joined(rest_around(b"", payload, 0, 3)), b"load");
        assert_eq!(joined(rest_around(b"HEAD", payload, 4, 0)), b"HEADpayload");
    }

    /// A long frame queued by `queue_around`, sent through `write_around`
    /// (cancelled after `cut` unless `None`), then a short one by `flush`:
    /// what the peer gets.
    async fn long_then_short(cut: Option<Duration>) -> Vec<u8> {
        let (a, peer) = memory_pair(64);
        let mut io = FrameIo::new(a, LengthCodec::new(), Buffers::Kept);
        io.queue(&b"first"[..]).unwrap();
        let long = vec![7u8; crate::framing::BY_REFERENCE];
        let (item, at) = io.queue_around(&long[..]).unwrap().expect("left out");
        assert_eq!(at, 9 + 4, "after the first frame and the long one's prefix");
        let read_all = |mut peer: ByteStream| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).await.unwrap();
                got
            })
        };
        let payload = io.codec.payload(&item);
        let reader = match cut {
            Some(after) => {
                let write = io.write_around(payload, at, None);
                let cut = tokio::time::timeout(after, write).await;
                assert!(cut.is_err(), "the pipe holds 64 bytes: the write waits");
                read_all(peer)
            }
            None => {
                let reader = read_all(peer);
                io.write_around(payload, at, None).await.unwrap();
                reader
            }
        };
        drop(long); // the caller's buffer is gone: what is left was copied
        io.queue(&b"last"[..]).unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_payload_written_in_place_goes_out_in_order_even_if_cut_short() {
        let mut want = vec![0, 0, 0, 5];
        want.extend(b"first");
        want.extend((crate::framing::BY_REFERENCE as u32).to_be_bytes());
        want.extend(vec![7u8; crate::framing::BY_REFERENCE]);
        want.extend([0, 0, 0, 4]);
        want.extend(b"last");
        assert_eq!(long_then_short(None).await, want);
        assert_eq!(long_then_short(Some(Duration::from_millis(20))).await, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_payload_written_in_place_to_a_peer_that_reads_nothing_stalls_out() {
        let (a, _peer) = memory_pair(64);
        let mut io = FrameIo::new(a, LengthCodec::new(), Buffers::Lazy);
        let long = vec![7u8; crate::framing::BY_REFERENCE];
        let (item, at) = io.queue_around(&long[..]).unwrap().expect("left out");
        let payload = io.codec.payload(&item);
        let stalled = io
            .write_around(payload, at, Some(Duration::from_secs(1)))
            .await;
        assert_eq!(stalled.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        // the connection is over: what is left is dropped, not copied
        assert_eq!((io.wbuf.len(), io.written), (0, 0));
    }

    #[tokio::test]
    async fn lazy_buffers_are_given_back_kept_ones_only_after_bulk() {
        let (a, mut peer) = memory_pair(1 << 20);
        let mut lazy = FrameIo::new(a, LengthCodec::new(), Buffers::Lazy);
        read_one(&mut lazy, &mut peer, 64).await;
        lazy.queue(&b"reply"[..]).unwrap();
        lazy.flush().await.unwrap();
        // waiting for the next request
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), lazy.read_frame());
        assert!(waited.await.is_err(), "nothing more was sent");
        assert_eq!(
            (lazy.rbuf.capacity(), lazy.wbuf.capacity()),
            (0, 0),
            "an idle server connection holds no buffer"
        );
        read_one(&mut lazy, &mut peer, 64).await;

        let (a, mut peer) = memory_pair(1 << 20);
        let mut kept = FrameIo::new(a, LengthCodec::new(), Buffers::Kept);
        read_one(&mut kept, &mut peer, 64).await;
        assert!(kept.rbuf.capacity() > 0, "a client keeps its buffer");
        read_one(&mut kept, &mut peer, 4 * KEEP_AT_MOST).await;
        assert_eq!(
            kept.rbuf.capacity(),
            0,
            "but not one grown for a bulk frame"
        );
    }
}
