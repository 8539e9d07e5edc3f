//! A connected `std` socket, TCP or Unix: what the blocking session and
//! the thread-per-connection server both read, write, time out and shut
//! down, written once rather than matched on in each.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected TCP or Unix socket. `Read` and `Write` are implemented for
/// `&StdStream` too, as for the std streams, so that the server can read
/// through an `Arc` it shares with the registry that shuts it down.
#[derive(Debug)]
pub(super) enum StdStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl StdStream {
    /// Ends reading, writing or both: wakes a thread blocked on the socket.
    pub(super) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            StdStream::Tcp(s) => s.shutdown(how),
            StdStream::Unix(s) => s.shutdown(how),
        }
    }

    /// How long a read may block; `None` for ever.
    pub(super) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            StdStream::Tcp(s) => s.set_read_timeout(t),
            StdStream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// How long a write may block; `None` for ever.
    pub(super) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            StdStream::Tcp(s) => s.set_write_timeout(t),
            StdStream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for &StdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StdStream::Tcp(s) => (&*s).read(buf),
            StdStream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &StdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StdStream::Tcp(s) => (&*s).write(buf),
            StdStream::Unix(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            StdStream::Tcp(s) => (&*s).write_vectored(bufs),
            StdStream::Unix(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // sockets buffer nothing in user space
    }
}

impl Read for StdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for StdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}
