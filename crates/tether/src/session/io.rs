//! The async frame driver shared by client sessions and server connections:
//! a stream, a sans-IO codec, and one read and one write buffer.
//!
//! An idle connection holds no buffers: they are allocated when data is
//! ready and given back once empty, so ten thousand idle sessions cost
//! little more than their sockets.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::framing::FramingError;
use crate::transport::ByteStream;

/// How much room a read asks for. 4 KiB covers typical device replies in
/// one syscall; bulk frames grow the buffer as they arrive.
pub(crate) const READ_CHUNK: usize = 4096;

#[derive(Debug)]
pub(crate) struct FrameIo<C> {
    pub(crate) stream: ByteStream,
    pub(crate) codec: C,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<C> FrameIo<C> {
    pub(crate) fn new(stream: ByteStream, codec: C) -> Self {
        FrameIo {
            stream,
            codec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }
}

impl<C> FrameIo<C>
where
    C: Decoder<Error = FramingError>,
{
    /// A frame already in the read buffer, without touching the stream.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<C::Item>, FramingError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        let frame = self.codec.decode(&mut self.rbuf);
        if self.rbuf.is_empty() {
            // The frame keeps what it needs of the allocation; drop our share.
            self.rbuf = BytesMut::new();
        }
        frame
    }

    /// The next frame; `None` at a clean end of stream (between frames).
    pub(crate) async fn read_frame(&mut self) -> Result<Option<C::Item>, FramingError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if self.rbuf.capacity() == 0 {
                self.stream.readable().await?;
            }
            self.rbuf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return self.codec.decode_eof(&mut self.rbuf);
            }
        }
    }

    /// Encodes a frame into the write buffer; [`flush`](Self::flush) sends it.
    pub(crate) fn queue<T>(&mut self, item: T) -> Result<(), FramingError>
    where
        C: Encoder<T, Error = FramingError>,
    {
        self.codec.encode(item, &mut self.wbuf)
    }

    /// Writes everything queued, in one write when the kernel takes it.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all_buf(&mut self.wbuf).await?;
            self.wbuf = BytesMut::new();
        }
        self.stream.flush().await
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
