//! `tether call ENDPOINT`: one session, one request per input line.

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use tether::framing::{
    unescape, FixedLengthCodec, FrameEncoder, FramingError, LengthCodec, SentinelCodec,
};
use tether::session::{Client, ClientOptions, Session, SessionError};
use tether::transport::Endpoint;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::codec::Decoder;

use crate::CliResult;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Where to connect (tcp://host:port, host:port, tls://host:port, unix://path, telnet://, stdio:, exec:…).
    pub endpoint: Endpoint,
    /// How requests and replies are framed: lines, sentinel:SEQ (escapes such as \r\n), fixed:N or length.
    #[arg(long, default_value = "lines")]
    pub framing: Framing,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub tls: crate::tls_args::CallTls,
    /// Speak the packet protocol (cs.packetstream wire format) instead of a framing.
    #[arg(long, requires = "rq_type", conflicts_with = "framing")]
    pub packet: bool,
    /// With --packet: the request type of every request.
    #[arg(long, requires = "packet")]
    pub rq_type: Option<u64>,
    /// With --packet: the flags of every request.
    #[arg(long, default_value_t = 0, requires = "packet")]
    pub flags: u64,
    /// Requests to send instead of reading standard input.
    #[arg(last = true)]
    pub requests: Vec<String>,
}

/// The framings `tether call` speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Frames end with these bytes.
    Sentinel(Vec<u8>),
    /// Frames are exactly this long.
    Fixed(usize),
    /// Frames carry a 4-byte big-endian length prefix.
    Length,
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lines" => Ok(Framing::Sentinel(b"\n".to_vec())),
            "length" => Ok(Framing::Length),
            _ => {
                if let Some(escaped) = s.strip_prefix("sentinel:") {
                    return unescape(escaped).map(Framing::Sentinel);
                }
                if let Some(n) = s.strip_prefix("fixed:") {
                    return match n.parse::<usize>() {
                        Ok(n) if n > 0 => Ok(Framing::Fixed(n)),
                        _ => Err(format!("fixed:{n}: the length must be a positive integer")),
                    };
                }
                Err(format!("unknown framing {s:?} (expected lines, sentinel:<escaped>, fixed:<n> or length)"))
            }
        }
    }
}

/// `--timeout`'s seconds as a duration: a positive number, at most a year
/// (`1e20` would not fit a `Duration`; a year is for ever to a request).
fn seconds(timeout: f64) -> CliResult<Duration> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(format!("--timeout {timeout}: must be a positive number of seconds").into());
    }
    Ok(Duration::from_secs_f64(timeout.min(YEAR)))
}

pub async fn run(args: CallArgs) -> CliResult {
    let timeout = seconds(args.timeout)?;
    if args.packet {
        return crate::packet_cmd::call(args, timeout).await;
    }
    let mut options = ClientOptions::default()
        .connect_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(config) = args.tls.config(&args.endpoint)? {
        options = options.tls(config);
    }
    match args.framing.clone() {
        Framing::Sentinel(s) => converse(args, SentinelCodec::new(s), options).await,
        Framing::Fixed(n) => converse(args, FixedLengthCodec::new(n), options).await,
        Framing::Length => converse(args, LengthCodec::new(), options).await,
    }
}

async fn converse<C>(args: CallArgs, codec: C, options: ClientOptions) -> CliResult
where
    C: Decoder<Item = BytesMut, Error = FramingError> + FrameEncoder<Bytes> + Clone,
{
    let telnet = matches!(args.endpoint, Endpoint::Telnet { .. });
    let client = Client::new(args.endpoint, codec, options);
    let mut session = client.connect().await?;
    if telnet {
        set_greeting_aside(&mut session).await?;
    }
    if !args.requests.is_empty() {
        for request in args.requests {
            exchange(&mut session, Bytes::from(request)).await?;
        }
    } else {
        let mut lines = BufReader::new(tokio::io::stdin()).split(b'\n');
        while let Some(mut line) = lines.next_segment().await? {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            exchange(&mut session, Bytes::from(line)).await?;
        }
    }
    session.close().await?;
    Ok(())
}

/// How long a Telnet device may stay quiet before its greeting is taken
/// as over.
const GREETING_QUIET: Duration = Duration::from_millis(200);

/// The most lines of greeting set aside.
const GREETING_AT_MOST: usize = 100;

/// A Telnet device often greets first (a banner, a prompt line): those
/// lines go to stderr, so that each reply printed is the one to its
/// request, not the one before. Whatever comes before the device has been
/// quiet for [`GREETING_QUIET`] is greeting.
async fn set_greeting_aside<C>(session: &mut Session<C>) -> CliResult
where
    C: Decoder<Item = BytesMut, Error = FramingError>,
{
    for _ in 0..GREETING_AT_MOST {
        match tokio::time::timeout(GREETING_QUIET, session.receive()).await {
            // (a receive given up leaves the session as it was)
            // (a --timeout under the quiet time ends the wait as quiet)
            Err(_) | Ok(Err(SessionError::Timeout { .. })) => return Ok(()),
            Ok(Ok(line)) => eprintln!("greeting: {}", String::from_utf8_lossy(&line)),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn exchange<C>(session: &mut Session<C>, request: Bytes) -> CliResult
where
    C: Decoder<Item = BytesMut, Error = FramingError> + FrameEncoder<Bytes>,
{
    let reply = session.request(request).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings_parse() {
        assert_eq!("lines".parse(), Ok(Framing::Sentinel(b"\n".to_vec())));
        assert_eq!(
            r"sentinel:\r\n".parse(),
            Ok(Framing::Sentinel(b"\r\n".to_vec()))
        );
        assert_eq!("fixed:16".parse(), Ok(Framing::Fixed(16)));
        assert_eq!("length".parse(), Ok(Framing::Length));
        assert!("fixed:0".parse::<Framing>().is_err());
        assert!("sentinel:".parse::<Framing>().is_err());
        assert!("json"
            .parse::<Framing>()
            .unwrap_err()
            .contains("unknown framing"));
    }
}
