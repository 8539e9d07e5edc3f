//! Telnet (RFC 854) as a transport: the application sees only data bytes.
//!
//! A Telnet peer mixes commands into the byte stream: `IAC` (0xFF) starts a
//! command, `IAC IAC` is a literal 0xFF, `IAC DO/DONT/WILL/WONT opt`
//! negotiates options and `IAC SB … IAC SE` carries sub-negotiations.
//! [`TelnetStream`] removes all of that from what it reads, answers every
//! option request (refusing it unless [`TelnetOptions`] enables it), escapes
//! 0xFF in what it writes, and never drops a data byte — a login banner is
//! ordinary data for the application to read or skip. A carriage return
//! sent as `CR NUL` (RFC 854's bare CR) is read as `CR`. What we write goes
//! out as written but for 0xFF: a bare CR is not sent as `CR NUL`, as
//! Python's telnetlib (used with the devices ska-ser-devices talks to) does
//! not, and a device that ends commands with `\r` would read the NUL as
//! the first byte of the next command.
//!
//! A peer cannot make it hold much memory: a sub-negotiation longer than
//! [`SUBNEGOTIATION_AT_MOST`] is an error (a peer that never sends `IAC
//! SE` would otherwise swallow every byte after it, unseen), and while
//! more than [`REPLIES_AT_MOST`] of answers wait for a peer that sends
//! option requests but reads nothing, reading waits too.
//!
//! ```text
//! peer sends:  ff fd 01  ff fb 03  48 69 ff ff 00 11  ff fa 18 01 ff f0
//!              DO ECHO   WILL SGA  H  i  IAC-IAC ...  SB TTYPE SEND SE
//! we read:     48 69 ff 00 11
//! we answer:   ff fc 01 (WONT ECHO)  ff fe 03 (DONT SGA)
//! ```
//!
//! The protocol logic is the sans-IO [`TelnetParser`]; the stream is a thin
//! wrapper around it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Interpret As Command.
pub const IAC: u8 = 0xFF;
const DONT: u8 = 0xFE;
const DO: u8 = 0xFD;
const WONT: u8 = 0xFC;
const WILL: u8 = 0xFB;
const SB: u8 = 0xFA;
const SE: u8 = 0xF0;
const CR: u8 = b'\r';
/// TRANSMIT-BINARY (RFC 856).
const BINARY: u8 = 0;

/// The longest sub-negotiation (`IAC SB … IAC SE`) read: 64 KiB. Real ones
/// (terminal type, window size, environment) take a few dozen bytes.
pub const SUBNEGOTIATION_AT_MOST: usize = 64 * 1024;

/// How many bytes of option answers a [`TelnetStream`] holds for a peer
/// that does not read them before it stops reading: 64 KiB.
pub const REPLIES_AT_MOST: usize = 64 * 1024;

/// Which Telnet options tether agrees to. Everything else is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelnetOptions {
    /// Options we agree to perform when the peer sends `DO opt` (answered `WILL`).
    pub local: Vec<u8>,
    /// Options we let the peer perform when it sends `WILL opt` (answered `DO`).
    pub remote: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    // after a data CR: a NUL next is the second half of a bare CR
    Cr,
    Iac,
    Negotiate(u8),
    Sub,
    SubIac,
}

/// The sans-IO Telnet receive side: separates data from commands and
/// produces the replies that option negotiation needs.
#[derive(Debug, Clone)]
pub struct TelnetParser {
    options: TelnetOptions,
    state: State,
    // Bytes of the sub-negotiation under way.
    sub_len: usize,
    // Options currently on, so each request is answered once (no loops, RFC 854 §"Option negotiation").
    local_on: [bool; 256],
    remote_on: [bool; 256],
}

impl TelnetParser {
    /// A parser that agrees to `options` and refuses everything else.
    pub fn new(options: TelnetOptions) -> Self {
        TelnetParser {
            options,
            state: State::Data,
            sub_len: 0,
            local_on: [false; 256],
            remote_on: [false; 256],
        }
    }

    /// Decodes `buf` in place: the data bytes are moved to its front and
    /// their count returned; replies for the peer are appended to `replies`.
    /// A command split across calls is remembered.
    ///
    /// # Errors
    /// `InvalidData` once a sub-negotiation runs past
    /// [`SUBNEGOTIATION_AT_MOST`] bytes without its `IAC SE`: the stream is
    /// out of step (a peer that sends binary data without doubling 0xFF,
    /// say), and everything after would be dropped as part of it.
    pub fn decode_in_place(&mut self, buf: &mut [u8], replies: &mut BytesMut) -> io::Result<usize> {
        let mut out = 0;
        for i in 0..buf.len() {
            let b = buf[i];
            self.state = match (self.state, b) {
                (State::Data | State::Cr, IAC) => State::Iac,
                (State::Cr, 0) => State::Data,
                (State::Data | State::Cr, _) => {
                    buf[out] = b;
                    out += 1;
                    // (in BINARY, RFC 856, a NUL after CR is data)
                    if b == CR && !self.remote_on[BINARY as usize] {
                        State::Cr
                    } else {
                        State::Data
                    }
                }
                (State::Iac, IAC) => {
                    buf[out] = IAC;
                    out += 1;
                    State::Data
                }
                (State::Iac, DO | DONT | WILL | WONT) => State::Negotiate(b),
                (State::Iac, SB) => {
                    self.sub_len = 0;
                    State::Sub
                }
                // NOP, GA, AYT, …: commands with no data meaning.
                (State::Iac, _) => State::Data,
                (State::Negotiate(verb), opt) => {
                    self.negotiate(verb, opt, replies);
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::SubIac, SE) => State::Data,
                (State::Sub | State::SubIac, _) => {
                    self.sub_len += 1;
                    if self.sub_len > SUBNEGOTIATION_AT_MOST {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "a Telnet sub-negotiation (IAC SB) ran past \
                                 {SUBNEGOTIATION_AT_MOST} bytes without its IAC SE"
                            ),
                        ));
                    }
                    State::Sub
                }
            };
        }
        Ok(out)
    }

    fn negotiate(&mut self, verb: u8, opt: u8, replies: &mut BytesMut) {
        let i = opt as usize;
        let reply = match verb {
            DO if self.options.local.contains(&opt) => (!self.local_on[i]).then(|| {
                self.local_on[i] = true;
                WILL
            }),
            DO => Some(WONT),
            DONT if self.local_on[i] => {
                self.local_on[i] = false;
                Some(WONT)
            }
            WILL if self.options.remote.contains(&opt) => (!self.remote_on[i]).then(|| {
                self.remote_on[i] = true;
                DO
            }),
            WILL => Some(DONT),
            WONT if self.remote_on[i] => {
                self.remote_on[i] = false;
                Some(DONT)
            }
            _ => None,
        };
        if let Some(reply) = reply {
            replies.extend_from_slice(&[IAC, reply, opt]);
        }
    }
}

/// Appends `data` to `out` with every 0xFF doubled.
pub fn escape_into(data: &[u8], out: &mut BytesMut) {
    out.reserve(data.len() + 8);
    for chunk in data.split_inclusive(|&b| b == IAC) {
        out.extend_from_slice(chunk);
        if chunk.last() == Some(&IAC) {
            out.extend_from_slice(&[IAC]);
        }
    }
}

/// A byte stream speaking Telnet to its peer; reads and writes carry data only.
///
/// Reading answers option requests on the write side, so reads and writes
/// belong in one task: split between two (`tokio::io::split`), a write
/// waiting for room could miss its wake-up to a read writing an answer.
#[derive(Debug)]
pub struct TelnetStream<S> {
    inner: S,
    parser: TelnetParser,
    // Escaped data and negotiation replies not yet written to `inner`.
    out: BytesMut,
    // Bytes of replies put in `out` since it was last empty: what a peer
    // that asks but does not read makes us hold.
    replies_waiting: usize,
}

impl<S> TelnetStream<S> {
    /// Wraps `inner`, agreeing to `options` and refusing every other option.
    pub fn new(inner: S, options: TelnetOptions) -> Self {
        TelnetStream {
            inner,
            parser: TelnetParser::new(options),
            out: BytesMut::new(),
            replies_waiting: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> TelnetStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        self.replies_waiting = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TelnetStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.replies_waiting >= REPLIES_AT_MOST {
                // A peer that asks and asks but reads no answer: read no
                // more of it until it does (woken when the socket drains).
                ready!(this.poll_drain(cx))?;
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let raw = &mut buf.filled_mut()[start..];
            if raw.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            let queued = this.out.len();
            let data = this.parser.decode_in_place(raw, &mut this.out)?;
            this.replies_waiting += this.out.len() - queued;
            buf.set_filled(start + data);
            if !this.out.is_empty() {
                // Answer negotiation now; if the socket is full, the next write or flush finishes it.
                let _ = this.poll_drain(cx);
            }
            if data > 0 {
                return Poll::Ready(Ok(()));
            }
            // Only commands arrived: read again rather than report a 0-byte read (EOF).
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TelnetStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !buf.contains(&IAC) {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // Accept it all; the escaped copy is written before anything else.
        escape_into(buf, &mut this.out);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parser: &mut TelnetParser, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut buf = input.to_vec();
        let mut replies = BytesMut::new();
        let n = parser.decode_in_place(&mut buf, &mut replies).unwrap();
        (buf[..n].to_vec(), replies.to_vec())
    }

    #[test]
    fn data_is_kept_and_options_refused() {
        let mut p = TelnetParser::new(TelnetOptions::default());
        let input = [
            IAC, DO, 1, IAC, WILL, 3, b'H', b'i', IAC, IAC, 0x00, 0x11, IAC, SB, 24, 1, IAC, IAC,
            IAC, SE, b'!', IAC, 0xF1,
        ];
        let (data, replies) = decode(&mut p, &input);
        assert_eq!(data, [b'H', b'i', 0xFF, 0x00, 0x11, b'!']);
        assert_eq!(replies, [IAC, WONT, 1, IAC, DONT, 3]);
    }

    #[test]
    fn commands_split_across_reads() {
        let mut p = TelnetParser::new(TelnetOptions::default());
        let input = [
            b'a', IAC, DO, 24, IAC, IAC, b'b', IAC, SB, 1, 2, IAC, SE, b'c',
        ];
        for split in 0..=input.len() {
            let mut p2 = p.clone();
            let (mut data, mut replies) = decode(&mut p2, &input[..split]);
            let (d2, r2) = decode(&mut p2, &input[split..]);
            data.extend(d2);
            replies.extend(r2);
            assert_eq!(data, [b'a', 0xFF, b'b', b'c'], "split at {split}");
            assert_eq!(replies, [IAC, WONT, 24], "split at {split}");
        }
        assert_eq!(
            decode(&mut p, &[]),
            (vec![], vec![]),
            "nothing in, nothing out"
        );
    }

    #[test]
    fn enabled_options_are_accepted_once() {
        let mut p = TelnetParser::new(TelnetOptions {
            local: vec![24],
            remote: vec![1],
        });
        let (_, r) = decode(
            &mut p,
            &[IAC, DO, 24, IAC, DO, 24, IAC, WILL, 1, IAC, WILL, 1],
        );
        assert_eq!(r, [IAC, WILL, 24, IAC, DO, 1]);
        let (_, r) = decode(&mut p, &[IAC, DONT, 24, IAC, WONT, 1, IAC, DONT, 5]);
        assert_eq!(r, [IAC, WONT, 24, IAC, DONT, 1]);
    }

    #[test]
    fn escape_doubles_iac() {
        let mut out = BytesMut::new();
        escape_into(&[1, 0xFF, 2, 0xFF], &mut out);
        assert_eq!(&out[..], [1, 0xFF, 0xFF, 2, 0xFF, 0xFF]);
    }

    #[test]
    fn a_bare_cr_sent_as_cr_nul_is_read_as_cr_even_split_across_reads() {
        let input = [b'a', CR, 0, b'b', CR, b'\n', CR, CR, 0, 0];
        for split in 0..=input.len() {
            let mut p = TelnetParser::new(TelnetOptions::default());
            let (mut data, _) = decode(&mut p, &input[..split]);
            data.extend(decode(&mut p, &input[split..]).0);
            assert_eq!(data, b"a\rb\r\n\r\r\0", "split at {split}");
        }
    }

    #[test]
    fn a_subnegotiation_without_its_end_is_an_error_not_a_black_hole() {
        let mut p = TelnetParser::new(TelnetOptions::default());
        let mut input = vec![IAC, SB, 24];
        input.resize(2 + SUBNEGOTIATION_AT_MOST, b'x');
        input.extend([IAC, SE, b'k']);
        // at the limit: still a sub-negotiation, then data
        assert_eq!(decode(&mut p, &input).0, b"k");
        let mut input = vec![IAC, SB, 24];
        input.resize(2 + SUBNEGOTIATION_AT_MOST + 1, b'x');
        let mut buf = input.clone();
        let err = p
            .decode_in_place(&mut buf, &mut BytesMut::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("IAC SE"), "{err}");
    }

    // Paused time: the timeout below fires as soon as every task waits,
    // so the test takes no wall time, and a slow machine cannot make it
    // pass by writing slowly.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_requests_options_but_reads_no_answers_is_read_no_further() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut telnet = TelnetStream::new(ours, TelnetOptions::default());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // only commands arrive: this read never returns data
            let _ = telnet.read(&mut buf).await;
        });
        // up to 3 MB of `IAC DO 1`, each answered `IAC WONT 1`, none read
        let request = [IAC, DO, 1].repeat(1024);
        let mut sent = 0;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while sent < 3 << 20 {
                peer.write_all(&request).await.unwrap();
                sent += request.len();
            }
        })
        .await;
        // the answers held (64 KiB), the pipe (1 KiB each way), a read's worth
        assert!(
            sent <= REPLIES_AT_MOST + 16 * 1024,
            "{sent} bytes of requests taken: it read on past {REPLIES_AT_MOST} of answers"
        );
        reader.abort();
    }

    #[tokio::test]
    async fn our_own_data_escaped_and_waiting_does_not_stop_reading() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut telnet = TelnetStream::new(ours, TelnetOptions::default());
        // 100 KiB of 0xFF (escaped to 200 KiB) waits for a peer that is
        // busy writing: its reply must still be read
        let write = telnet.write(&[IAC; 100 * 1024]).await.unwrap();
        assert_eq!(write, 100 * 1024);
        peer.write_all(b"reply").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), telnet.read(&mut buf))
            .await
            .expect("read, though our data waits")
            .unwrap();
        assert_eq!(&buf[..n], b"reply");
    }

    #[test]
    fn in_binary_a_nul_after_cr_is_data() {
        let mut p = TelnetParser::new(TelnetOptions {
            local: vec![],
            remote: vec![BINARY],
        });
        let (_, replies) = decode(&mut p, &[IAC, WILL, BINARY]);
        assert_eq!(replies, [IAC, DO, BINARY]);
        assert_eq!(decode(&mut p, &[b'a', CR, 0, b'b']).0, [b'a', CR, 0, b'b']);
    }
}
