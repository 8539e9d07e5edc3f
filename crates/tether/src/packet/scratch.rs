//! Working buffers that belong to a thread rather than to a connection.
//!
//! A connection task borrows a [`Scratch`] when it wakes up with work and
//! gives it back when it goes to sleep with nothing buffered, so ten
//! thousand idle connections hold no buffers at all, while a busy one finds
//! warm buffers in its thread's pool and allocates nothing per packet.
//! (Two other designs were measured and dropped: giving the buffers to the
//! allocator at every sleep cost a third more instructions per round trip;
//! keeping them and giving them back after a second of quiet left holes in
//! the heap, so idle connections cost more memory, not less.)
//!
//! ```text
//! wake-up ──► Scratch::take() ──► read, decode, handle, encode, write
//!                                        │
//! sleep (all empty) ◄── scratch.give_back() (kept if the pool has room)
//! end of connection ◄─┘   (emptied first)
//! ```

use std::task::Waker;

use super::connection::Parked;
use super::outgoing::Outgoing;
use super::proto::IncomingRequest;
use super::Response;
use crate::buffers::{Pool, ReadBuf};

/// Scratch sets a thread keeps. A thread works for one connection at a
/// time, so one set is enough; a few more cover connections that go to
/// sleep holding theirs (a packet half received).
const POOL_SIZE: usize = 4;

/// One connection's working buffers, all empty between uses.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Bytes read and not yet decoded.
    pub(super) rbuf: ReadBuf,
    /// Bytes encoded and not yet written.
    pub(super) wbuf: Outgoing,
    /// The peer's requests decoded under the lock, run after it.
    pub(super) incoming: Vec<IncomingRequest>,
    /// Handler results collected before taking the lock.
    pub(super) completed: Vec<((u64, u64), Response)>,
    /// The peer's requests answered at once, their tags to release.
    pub(super) answered: Vec<(u64, u64)>,
    /// Requesters to wake after releasing the lock.
    pub(super) to_wake: Vec<Waker>,
    /// The peer's requests waiting for a handler slot: not swapped in, but
    /// kept here by the connection that borrows the set (see [`Parked`]).
    pub(super) parked: Parked,
}

thread_local! {
    // Boxed, so that lending and returning a set moves a pointer, not the
    // set (measured: the moves cost more than the pool saved).
    static POOL: Pool<Box<Scratch>, POOL_SIZE> = const { Pool::new() };
}

impl Scratch {
    /// A set from this thread's pool, or a new (unallocated) one.
    pub(super) fn take() -> Box<Scratch> {
        Pool::take(&POOL)
    }

    /// Empties every buffer, keeping its room (a set is only pooled
    /// empty; a connection that ends may leave bytes in it).
    fn clear(&mut self) {
        self.rbuf.clear();
        self.wbuf.clear();
        self.incoming.clear();
        self.completed.clear();
        self.answered.clear();
        self.to_wake.clear();
        self.parked.clear();
    }

    /// Returns the set, emptied, to this thread's pool, or to the allocator
    /// when the pool is full; buffers grown for a big packet go to the
    /// allocator.
    pub(super) fn give_back(mut self: Box<Self>) {
        self.clear();
        self.rbuf.release_if_grown();
        self.wbuf.clear_and_shrink();
        self.parked.release_if_grown();
        Pool::give(&POOL, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::KEEP_AT_MOST;

    #[test]
    fn a_set_given_back_is_taken_again_with_its_buffers() {
        let mut s = Scratch::take();
        s.rbuf.reserve(1000);
        s.incoming.reserve(8);
        let rbuf_at = s.rbuf.as_ptr();
        s.give_back();
        let again = Scratch::take();
        assert_eq!(again.rbuf.as_ptr(), rbuf_at, "the same allocation, warm");
        assert!(again.incoming.capacity() >= 8);
    }

    #[tokio::test] // one thread: both connections use this thread's pool
    async fn a_connection_that_ends_gives_its_set_back_warm() {
        use crate::packet::{EchoService, NoHandler, PacketConfig, PacketConnection};
        while Pool::len(&POOL) > 0 {
            drop(Scratch::take());
        }
        let (a, b) = crate::transport::memory_pair(4096);
        let server = PacketConnection::spawn(b, EchoService, PacketConfig::default());
        let client = PacketConnection::spawn(a, NoHandler, PacketConfig::default());
        let limit = std::time::Duration::from_secs(10);
        let r = tokio::time::timeout(limit, client.submit_and_close(0, 0, "x"));
        assert!(r.await.unwrap().unwrap().ok);
        tokio::time::timeout(limit, server.closed())
            .await
            .unwrap()
            .unwrap();
        // each end borrows a set at every wake-up; the last one, at its
        // end, goes back instead of to the allocator
        assert_eq!(Pool::len(&POOL), 1);
        assert!(Scratch::take().rbuf.capacity() > 0, "warm");
    }

    #[test]
    fn a_grown_read_buffer_and_a_full_pool_go_to_the_allocator() {
        let mut big = Scratch::take();
        big.rbuf.reserve(2 * KEEP_AT_MOST);
        big.give_back();
        assert_eq!(Scratch::take().rbuf.capacity(), 0);

        for _ in 0..POOL_SIZE + 3 {
            let mut s = Box::<Scratch>::default();
            s.wbuf.buf_mut().reserve(10);
            s.give_back();
        }
        let pooled = Pool::len(&POOL);
        assert_eq!(pooled, POOL_SIZE);
    }
}
