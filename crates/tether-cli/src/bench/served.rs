//! What `tether bench --serve ADDR` and `tether bench --target ADDR` agree
//! on: which servers run, on which ports, and the listing the serving
//! process hands out at ADDR itself.
//!
//! Ports: the listing listens at ADDR; the servers of [`served()`] listen,
//! in that order, at ADDR's port + 1, + 2, … (port 0: every one on a free
//! port). The client never derives a port itself: it reads them from the
//! listing, so both forms work the same.
//!
//! The listing is text, sent to whoever connects, then the connection is
//! closed:
//!
//! ```text
//! tether-bench-serve 1
//! serve impl=std-blocking workload-set=echo addr=127.0.0.1:7001
//! …                                          (one line per server)
//! -----BEGIN CERTIFICATE-----                (the CA the TLS servers' certificate is signed by)
//! …
//! -----END CERTIFICATE-----
//! end
//! ```

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use clap::ValueEnum;
use tether::transport::tls::{self, SelfSigned};
use tether::transport::TlsClientConfig;

use super::{Impl, Workload};
use crate::CliResult;

/// The listing's first line: says "this is a bench server", and which
/// version of this format follows.
pub const GREETING: &str = "tether-bench-serve 1";
/// The listing's last line.
const END: &str = "end";
/// How long the client waits to connect to the listing, and then for it.
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);
/// The most the client reads of a listing (a real one is about 2 KiB).
const LISTING_MAX: u64 = 64 * 1024;

/// Which workloads a served server is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadSet {
    /// Plain echo: rtt, connect, pipelined, fanin, bulk.
    Echo,
    /// The server pushes: push.
    Push,
    /// Echo over TLS 1.3: tls.
    Tls,
}

impl WorkloadSet {
    const ALL: [WorkloadSet; 3] = [WorkloadSet::Echo, WorkloadSet::Push, WorkloadSet::Tls];

    /// The name in `workload-set=`.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadSet::Echo => "echo",
            WorkloadSet::Push => "push",
            WorkloadSet::Tls => "tls",
        }
    }

    fn from_name(name: &str) -> Option<WorkloadSet> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The servers `w` runs against, the one place that says so: the
    /// workloads start theirs by it, and `--serve` starts the same (idle's
    /// are the echo servers, which it measures in a fresh local process).
    pub fn of(w: Workload) -> WorkloadSet {
        match w {
            Workload::Push => WorkloadSet::Push,
            Workload::Tls => WorkloadSet::Tls,
            _ => WorkloadSet::Echo,
        }
    }
}

/// The servers of `--serve`, in port order: every implementation of every
/// workload W1–W7 ([`Workload::impls`]), each with a server of its own as
/// in the in-process bench (tether-blocking and tether-pipeline included),
/// one per implementation and [`WorkloadSet`], in the order first met
/// going through [`Workload::ALL`]: the echo servers, then push, then tls.
pub fn served() -> Vec<(Impl, WorkloadSet)> {
    let mut servers = Vec::new();
    // (idle measures locally, never against a target)
    for w in Workload::ALL.into_iter().filter(|&w| w != Workload::Idle) {
        let set = WorkloadSet::of(w);
        for &imp in w.impls() {
            if !servers.contains(&(imp, set)) {
                servers.push((imp, set));
            }
        }
    }
    servers
}

/// Where the `index`-th server of [`served()`] binds when the listing is
/// at `listing`: the next ports up, or a free port when `listing`'s is 0.
pub fn server_addr(listing: SocketAddr, index: usize) -> CliResult<SocketAddr> {
    if listing.port() == 0 {
        return Ok(listing);
    }
    let port = u16::try_from(usize::from(listing.port()) + 1 + index).map_err(|_| {
        format!(
            "port {} leaves no room for {} servers above it",
            listing.port(),
            served().len()
        )
    })?;
    // (the listing's address with another port: an IPv6 scope stays)
    let mut addr = listing;
    addr.set_port(port);
    Ok(addr)
}

/// One server in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The implementation it serves.
    pub imp: Impl,
    /// The workloads it is for.
    pub set: WorkloadSet,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Entry {
    /// `serve impl=… workload-set=… addr=…`: a line of the listing, and
    /// what `--serve` prints.
    pub fn line(&self) -> String {
        format!(
            "serve impl={} workload-set={} addr={}",
            self.imp.name(),
            self.set.name(),
            self.addr
        )
    }

    fn parse(line: &str) -> Option<Entry> {
        let mut words = line.strip_prefix("serve ")?.split(' ');
        let mut field = |key: &str| words.next()?.strip_prefix(key)?.strip_prefix('=');
        let imp = Impl::from_str(field("impl")?, false).ok()?;
        let set = WorkloadSet::from_name(field("workload-set")?)?;
        let addr = field("addr")?.parse().ok()?;
        Some(Entry { imp, set, addr })
    }
}

/// The listing text: the greeting, a line per server, the CA, `end`.
pub fn listing(entries: &[Entry], ca_pem: &str) -> String {
    let mut text = format!("{GREETING}\n");
    for e in entries {
        text.push_str(&e.line());
        text.push('\n');
    }
    text.push_str(ca_pem.trim_end());
    text.push('\n');
    text.push_str(END);
    text.push('\n');
    text
}

/// The servers of a `--serve` process, as its listing says.
pub struct Target {
    /// Where the listing was fetched (the servers share its IP address).
    listing: SocketAddr,
    entries: Vec<Entry>,
    tls: TlsClientConfig,
}

impl Target {
    /// Fetches the listing at `listing`: a bounded connect and read, and
    /// an error that says what was found instead of a bench server.
    pub fn fetch(listing: SocketAddr) -> CliResult<Target> {
        let mut stream = TcpStream::connect_timeout(&listing, LISTING_TIMEOUT).map_err(|e| {
            format!(
                "cannot reach a bench server at {listing}: {e} \
                 (is `tether bench --serve {listing}` running?)"
            )
        })?;
        let (bytes, read) = read_bounded(&mut stream, LISTING_TIMEOUT, LISTING_MAX as usize);
        let text = String::from_utf8_lossy(&bytes);
        if text.lines().next() != Some(GREETING) {
            return Err(not_a_bench_server(listing, &text, read.err()).into());
        }
        if bytes.len() >= LISTING_MAX as usize {
            return Err(format!(
                "the listing from {listing} is longer than {} KiB",
                LISTING_MAX / 1024
            )
            .into());
        }
        Target::parse(listing, &text)
    }

    fn parse(listing: SocketAddr, text: &str) -> CliResult<Target> {
        let cut_short = || format!("the listing from {listing} was cut short");
        if !text.lines().any(|l| l == END) {
            return Err(cut_short().into());
        }
        let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
        let pem: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .take_while(|l| *l != END)
            .flat_map(|l| [l, "\n"])
            .collect();
        if pem.is_empty() {
            return Err(cut_short().into());
        }
        let tls = TlsClientConfig::trusting_pem(pem.as_bytes())
            .map_err(|e| format!("the certificate in the listing from {listing}: {e}"))?;
        Ok(Target {
            listing,
            entries,
            tls,
        })
    }

    /// Where the server of `imp` for `set` listens: its port from the
    /// listing, at the IP address the listing was fetched from (the one
    /// `--serve` was given: an unspecified address is refused there).
    pub fn addr(&self, imp: Impl, set: WorkloadSet) -> CliResult<SocketAddr> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.imp == imp && e.set == set)
            .ok_or_else(|| {
                format!(
                    "the bench server at {} has no {} server for {}",
                    self.listing,
                    imp.name(),
                    set.name()
                )
            })?;
        let mut addr = self.listing;
        addr.set_port(entry.addr.port());
        Ok(addr)
    }

    /// A TLS client configuration trusting the served certificate.
    pub fn tls_client(&self) -> TlsClientConfig {
        self.tls.clone()
    }
}

/// Reads `stream` to its end, but for at most `limit` in all (not per
/// read: a peer trickling a byte at a time must not stretch it) and at most
/// `max` bytes. What arrived is kept either way, with the error that
/// stopped the reading.
fn read_bounded(
    stream: &mut TcpStream,
    limit: Duration,
    max: usize,
) -> (Vec<u8>, std::io::Result<()>) {
    let deadline = std::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while bytes.len() < max {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (bytes, Err(std::io::ErrorKind::TimedOut.into()));
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return (bytes, Err(e));
        }
        let room = chunk.len().min(max - bytes.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (bytes, Err(e)),
        }
    }
    (bytes, Ok(()))
}

/// The error for a listing address where something else answered.
fn not_a_bench_server(at: SocketAddr, text: &str, read: Option<std::io::Error>) -> String {
    let said = match text.lines().next() {
        Some(first) if !first.is_empty() => {
            let first: String = first.chars().take(60).collect();
            format!("it said {first:?}")
        }
        _ => match read {
            Some(e) if is_timeout(&e) => {
                format!("it sent nothing within {}s", LISTING_TIMEOUT.as_secs())
            }
            Some(e) => format!("reading from it failed: {e}"),
            None => "it closed without a word".to_string(),
        },
    };
    format!(
        "{at} is not a tether bench server ({said}; start one with `tether bench --serve ADDR`)"
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The bench's self-signed certificate for servers at `at`, in-process
/// or served: valid for [`certificate_names`].
pub fn certificate(at: IpAddr) -> CliResult<SelfSigned> {
    Ok(tls::self_signed(&certificate_names(at))?)
}

/// The names the bench's certificate is valid for: the address served at,
/// and loopback by address and by name.
fn certificate_names(at: IpAddr) -> Vec<String> {
    let mut names = vec![at.to_string()];
    for name in ["127.0.0.1", "localhost"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_names_each_impl_as_the_command_line_does() {
        // Entry::parse reads `impl=` with clap's names: they must be name()'s
        for imp in Impl::value_variants() {
            assert_eq!(Impl::from_str(imp.name(), false), Ok(*imp));
        }
    }

    #[test]
    fn twelve_servers_as_the_help_says() {
        let servers = served();
        assert_eq!(servers.len(), 13, "{servers:?}");
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn servers_take_the_ports_above_the_listing_or_free_ones() {
        assert_eq!(
            server_addr(addr("127.0.0.1:7000"), 0).unwrap(),
            addr("127.0.0.1:7001")
        );
        assert_eq!(
            server_addr(addr("127.0.0.1:7000"), 12).unwrap(),
            addr("127.0.0.1:7013")
        );
        assert_eq!(
            server_addr(addr("127.0.0.1:0"), 5).unwrap(),
            addr("127.0.0.1:0")
        );
        assert!(server_addr(addr("127.0.0.1:65530"), 11).is_err());
    }

    #[test]
    fn a_listing_round_trips() {
        let certs = tether::transport::tls::self_signed(&["127.0.0.1"]).unwrap();
        let entries: Vec<Entry> = served()
            .into_iter()
            .enumerate()
            .map(|(i, (imp, set))| Entry {
                imp,
                set,
                addr: server_addr(addr("0.0.0.0:7000"), i).unwrap(),
            })
            .collect();
        let text = listing(&entries, &certs.ca_pem);
        assert!(text.starts_with(GREETING));
        let target = Target::parse(addr("127.0.0.1:7000"), &text).unwrap();
        assert_eq!(target.entries, entries);
        assert_eq!(
            target.addr(Impl::TetherPacket, WorkloadSet::Tls).unwrap(),
            addr("127.0.0.1:7013")
        );
        assert!(target.addr(Impl::StdBlocking, WorkloadSet::Push).is_err());
    }

    #[test]
    fn a_listing_without_its_end_is_refused() {
        let text =
            format!("{GREETING}\nserve impl=std-blocking workload-set=echo addr=127.0.0.1:1\n");
        let err = Target::parse(addr("127.0.0.1:7000"), &text).err().unwrap();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn other_servers_are_named_by_what_they_said() {
        let e = not_a_bench_server(addr("127.0.0.1:80"), "HTTP/1.1 400 Bad Request\r\n", None);
        assert!(e.contains("not a tether bench server"), "{e}");
        assert!(e.contains("HTTP/1.1 400"), "{e}");
        let timeout = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        let e = not_a_bench_server(addr("127.0.0.1:80"), "", Some(timeout));
        assert!(e.contains("sent nothing"), "{e}");
    }
}
