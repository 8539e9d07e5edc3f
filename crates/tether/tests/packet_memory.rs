//! The packet layer's memory bounds, measured by a counting allocator (in
//! a test binary of its own, so that no other test's allocations count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tether::packet::{
    handler_fn, IncomingRequest, Packet, PacketCodec, PacketConfig, PacketConnection, Response,
};
use tether::transport::memory_pair;
use tokio::sync::Notify;
use tokio_util::codec::Framed;

/// The system allocator, keeping count of the bytes allocated and not freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn requests_waiting_for_a_handler_slot_hold_their_bytes_not_the_buffers_they_came_in() {
    // max_handlers 1, held. The peer sends, 40 times, a 1 MiB request that
    // is refused at once (unknown channel), then a 1-byte request that
    // waits for the slot. Each waiting request must hold its own byte, not
    // the megabyte read buffer it was decoded from.
    let (a, b) = memory_pair(64 * 1024);
    let mut config = PacketConfig::default();
    config.max_handlers = 1;
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let handler = handler_fn(move |rq: IncomingRequest| {
        let gate = gate.clone();
        async move {
            if rq.rq_type == 11 {
                gate.notified().await;
            }
            Response::ok(rq.flags, rq.payload)
        }
    });
    let conn = PacketConnection::spawn(b, handler, config);
    let (mut tx, mut rx) = Framed::new(a, PacketCodec::new()).split();
    let answers = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(_)) = rx.next().await {
            n += 1;
        }
        n
    });
    let hold = Packet::Request {
        channel: 0,
        tag: 1,
        rq_type: 11,
        flags: 0,
        payload: Bytes::from_static(b"hold"),
    };
    tokio::time::timeout(LIMIT, tx.send(hold))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = LIVE.load(Relaxed);
    const PAIRS: u64 = 40;
    let big = Bytes::from(vec![7u8; 1 << 20]);
    for i in 0..PAIRS {
        let refused = Packet::Request {
            channel: 1,
            tag: i,
            rq_type: 0,
            flags: 0,
            payload: big.clone(),
        };
        let waits = Packet::Request {
            channel: 0,
            tag: 2 + i,
            rq_type: 0,
            flags: 0,
            payload: Bytes::from_static(b"x"),
        };
        tokio::time::timeout(LIMIT, async {
            tx.send(refused).await.unwrap();
            tx.send(waits).await.unwrap();
        })
        .await
        .unwrap();
    }
    drop(big);
    let waiting = tokio::time::timeout(LIMIT, async {
        loop {
            let waiting = conn.stats().requests_waiting;
            if waiting == PAIRS {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every 1-byte request waits");
    let held = LIVE.load(Relaxed).saturating_sub(before);
    assert!(
        held < 8 << 20,
        "{} MiB held by {waiting} waiting requests of 1 byte",
        held >> 20
    );
    release.notify_one();
    tokio::time::timeout(LIMIT, tx.send(Packet::Eof))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(LIMIT, conn.closed())
        .await
        .unwrap()
        .unwrap();
    // the hold, 40 refusals, 40 answers, ERQ, EOF
    let n = tokio::time::timeout(LIMIT, answers).await.unwrap().unwrap();
    assert_eq!(n, 1 + 2 * PAIRS + 2);
}
