//! Buffers kept for reuse, and the one rule for when not to keep them.
//!
//! Connections keep their read and write buffers between frames, and
//! servers lend idle connections' buffers to a per-thread [`Pool`]. A
//! buffer that grew past [`KEEP_AT_MOST`] for a bulk frame goes to the
//! allocator instead: one big frame should not pin its memory for the life
//! of a connection or a thread.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The largest buffer kept for the next frames, or pooled; one grown
/// past it for a bulk frame goes to the allocator.
pub(crate) const KEEP_AT_MOST: usize = 64 * 1024;

/// A read buffer that remembers whether it grew past [`KEEP_AT_MOST`]. Its
/// capacity can't tell once a frame has been split off: what is left may
/// be a few bytes of a big allocation.
///
/// Only its own methods record growth. Whatever grows it through the
/// `BytesMut` it derefs to (a codec making room for a long frame) must be
/// followed by [`note_growth`](Self::note_growth).
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    bytes: BytesMut,
    grown: bool,
}

impl ReadBuf {
    /// A read buffer over `bytes` (one taken from a pool, say).
    pub(crate) fn new(bytes: BytesMut) -> Self {
        let mut buf = ReadBuf {
            bytes,
            grown: false,
        };
        buf.note_growth();
        buf
    }

    /// Makes room for `additional` more bytes.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
        self.note_growth();
    }

    /// Makes room for a read of `chunk` bytes, but only when less than a
    /// quarter of that is left: making room reclaims the space of the
    /// frames split off so far, a cost worth paying once every few dozen
    /// short frames rather than at every read.
    #[inline]
    pub(crate) fn make_room(&mut self, chunk: usize) {
        if self.bytes.capacity() - self.bytes.len() < chunk / 4 {
            self.reserve(chunk);
        }
    }

    /// Notes a growth the codec made, for a long frame, since room was
    /// last made. (Not part of [`make_room`](Self::make_room): the packet
    /// codec never grows the buffer, and its hot read loop measured
    /// slower with the check.)
    #[inline]
    pub(crate) fn note_growth(&mut self) {
        self.grown |= self.bytes.capacity() > KEEP_AT_MOST;
    }

    /// Once the buffer is empty, lets go of an allocation grown for a bulk
    /// frame: the frame split off keeps what it needs of it, the rest is
    /// not kept for the next one.
    #[inline]
    pub(crate) fn release_if_grown(&mut self) {
        if self.grown && self.bytes.is_empty() {
            *self = ReadBuf::default();
        }
    }

    /// Takes the buffer, leaving an unallocated one: `None` if it grew,
    /// since that one belongs to the allocator, not to a pool.
    #[inline]
    pub(crate) fn take_keepable(&mut self) -> Option<BytesMut> {
        if self.grown {
            *self = ReadBuf::default();
            None
        } else {
            Some(std::mem::take(&mut self.bytes))
        }
    }
}

impl Deref for ReadBuf {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.bytes
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
}

/// A frame already in `rbuf`, decoded by `codec` without touching the
/// stream, for the async and the blocking connection alike; a buffer grown
/// for a bulk frame is let go of once that frame is out of it.
pub(crate) fn buffered_frame<D: Decoder>(
    codec: &mut D,
    rbuf: &mut ReadBuf,
) -> Result<Option<D::Item>, D::Error> {
    if rbuf.is_empty() {
        return Ok(None);
    }
    let frame = codec.decode(rbuf);
    rbuf.release_if_grown();
    frame
}

/// Empties a write buffer whose bytes have gone out; one grown past
/// [`KEEP_AT_MOST`] is let go of rather than kept.
#[inline]
pub(crate) fn clear_write_buf(wbuf: &mut BytesMut) {
    if wbuf.capacity() > KEEP_AT_MOST {
        *wbuf = BytesMut::new();
    } else {
        wbuf.clear();
    }
}

/// A thread's free list of up to `KEEP` items, declared in a
/// `thread_local!` by its user (a `static` cannot be generic):
///
/// ```ignore
/// thread_local! {
///     static FREE: Pool<BytesMut, 8> = const { Pool::new() };
/// }
/// let buf = Pool::take(&FREE);
/// Pool::give(&FREE, buf);
/// ```
///
/// While the thread is being torn down the pool is gone: `take` then
/// returns a new item and `give` drops it.
#[derive(Debug)]
pub(crate) struct Pool<T, const KEEP: usize> {
    free: RefCell<Vec<T>>,
}

impl<T: Default, const KEEP: usize> Pool<T, KEEP> {
    /// An empty pool (allocates nothing until an item is given).
    pub(crate) const fn new() -> Self {
        Pool {
            free: RefCell::new(Vec::new()),
        }
    }

    /// An item from this thread's pool, or a new (default) one.
    pub(crate) fn take(pool: &'static LocalKey<Self>) -> T {
        pool.try_with(|pool| pool.free.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Keeps `item` for the next [`take`](Self::take) on this thread, if
    /// the pool has room; drops it otherwise.
    pub(crate) fn give(pool: &'static LocalKey<Self>, item: T) {
        let _ = pool.try_with(|pool| {
            let mut free = pool.free.borrow_mut();
            if free.len() < KEEP {
                free.push(item);
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn len(pool: &'static LocalKey<Self>) -> usize {
        pool.with(|pool| pool.free.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_buffer_grown_for_a_bulk_frame_is_not_kept() {
        let mut buf = ReadBuf::default();
        buf.make_room(1024);
        buf.extend_from_slice(b"short");
        let _ = buf.split();
        buf.release_if_grown();
        assert!(buf.capacity() > 0, "a short frame's buffer is kept");

        buf.reserve(2 * KEEP_AT_MOST);
        let bulk = buf.capacity() - 10;
        buf.resize(bulk, 0);
        let _frame = buf.split_to(bulk);
        assert!(buf.capacity() < KEEP_AT_MOST, "the frame took most of it");
        buf.release_if_grown();
        assert_eq!(buf.capacity(), 0, "but the allocation was a grown one");
        assert!(
            buf.take_keepable().is_some(),
            "and is forgotten once let go"
        );

        buf.reserve(2 * KEEP_AT_MOST);
        assert!(buf.take_keepable().is_none(), "a grown one is not pooled");
    }

    #[test]
    fn a_write_buffer_is_cleared_unless_it_grew() {
        let mut wbuf = BytesMut::with_capacity(100);
        wbuf.extend_from_slice(b"reply");
        clear_write_buf(&mut wbuf);
        assert!(wbuf.is_empty() && wbuf.capacity() >= 100);
        wbuf.reserve(2 * KEEP_AT_MOST);
        clear_write_buf(&mut wbuf);
        assert_eq!(wbuf.capacity(), 0);
    }

    #[test]
    fn a_pool_keeps_at_most_its_size() {
        thread_local! {
            static FREE: Pool<Vec<u8>, 2> = const { Pool::new() };
        }
        for _ in 0..5 {
            Pool::give(&FREE, vec![1]);
        }
        assert_eq!(Pool::len(&FREE), 2);
        assert_eq!(Pool::take(&FREE), [1]);
        assert_eq!(Pool::take(&FREE), [1]);
        assert_eq!(Pool::take(&FREE), Vec::<u8>::new(), "a new one when empty");
    }
}
