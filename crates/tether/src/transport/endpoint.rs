//! Endpoints written as URLs, so one flag reaches every transport.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::TransportError;

/// Where to connect or listen, parsed from a URL-like string.
///
/// | form | meaning |
/// |---|---|
/// | `tcp://host:port`, `host:port` | TCP (IPv4, IPv6 as `[::1]:port`, or a name) |
/// | `unix:///path/to.sock` | a Unix-domain stream socket |
/// | `telnet://host:port` | TCP speaking Telnet (RFC 854) |
/// | `tls://host:port` | TCP wrapped in TLS |
/// | `stdio:` | this process's standard input and output |
/// | `exec:program arg…` | a child process's stdin/stdout (shell-style quoting) |
///
/// ```
/// use tether::transport::Endpoint;
///
/// let ep: Endpoint = "127.0.0.1:5000".parse().unwrap();
/// assert_eq!(ep, Endpoint::Tcp { host: "127.0.0.1".into(), port: 5000 });
/// assert_eq!(ep.to_string(), "tcp://127.0.0.1:5000");
///
/// let err = "tcp://localhost:http".parse::<Endpoint>().unwrap_err();
/// assert!(err.to_string().contains("port"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// Plain TCP.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port; 0 asks the system for a free one when listening.
        port: u16,
    },
    /// A Unix-domain stream socket at a path.
    Unix(PathBuf),
    /// TCP with Telnet option negotiation and IAC escaping.
    Telnet {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// TCP wrapped in TLS.
    Tls {
        /// Host name or IP address; also the name the certificate must carry.
        host: String,
        /// Port.
        port: u16,
    },
    /// This process's standard input and output.
    Stdio,
    /// A child process, spoken to over its stdin and stdout.
    Exec {
        /// The program to run.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

impl Endpoint {
    /// A TCP endpoint.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    /// The `host:port` of a network endpoint, as the OS resolver wants it.
    pub fn host_port(&self) -> Option<String> {
        match self {
            Endpoint::Tcp { host, port }
            | Endpoint::Telnet { host, port }
            | Endpoint::Tls { host, port } => Some(join_host_port(host, *port)),
            _ => None,
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp://{}", join_host_port(host, *port)),
            Endpoint::Telnet { host, port } => {
                write!(f, "telnet://{}", join_host_port(host, *port))
            }
            Endpoint::Tls { host, port } => write!(f, "tls://{}", join_host_port(host, *port)),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Stdio => f.write_str("stdio:"),
            Endpoint::Exec { program, args } => {
                let words =
                    std::iter::once(program.as_str()).chain(args.iter().map(String::as_str));
                let joined = shlex::try_join(words).unwrap_or_else(|_| program.clone());
                write!(f, "exec:{joined}")
            }
        }
    }
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |part: &str, reason: &str| TransportError::InvalidEndpoint {
            input: input.to_string(),
            part: part.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(bad("", "the endpoint is empty"));
        }
        if s == "stdio:" || s == "stdio" || s == "stdio://" {
            return Ok(Endpoint::Stdio);
        }
        if let Some(rest) = s.strip_prefix("exec:") {
            let words = shlex::split(rest).ok_or_else(|| bad(rest, "unbalanced quotes"))?;
            let mut words = words.into_iter();
            let program = words
                .next()
                .ok_or_else(|| bad("exec:", "no program named after `exec:`"))?;
            return Ok(Endpoint::Exec {
                program,
                args: words.collect(),
            });
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("unix://", "no socket path after `unix://`"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, s),
        };
        if scheme.is_none() {
            // `unix:/tmp/x.sock`, `tls:host:443`: a scheme without its `//`,
            // which would otherwise be blamed on the port or the host (but
            // `tls:443` is the host `tls`, port 443)
            for known in ["tcp", "unix", "telnet", "tls"] {
                let after = s.strip_prefix(known).and_then(|r| r.strip_prefix(':'));
                if after.is_some_and(|port| port.parse::<u16>().is_err()) {
                    return Err(bad(
                        known,
                        "a scheme is followed by `://` (tls://host:port, unix:///path)",
                    ));
                }
            }
        }
        let (host, port) = parse_host_port(rest).map_err(|(part, reason)| bad(part, reason))?;
        match scheme {
            None | Some("tcp") => Ok(Endpoint::Tcp { host, port }),
            Some("telnet") => Ok(Endpoint::Telnet { host, port }),
            Some("tls") => Ok(Endpoint::Tls { host, port }),
            Some(other) => Err(bad(
                other,
                "unknown scheme (expected tcp, unix, telnet, tls, stdio or exec)",
            )),
        }
    }
}

fn parse_host_port(s: &str) -> Result<(String, u16), (&str, &'static str)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or((s, "an IPv6 address opened with `[` is never closed"))?;
        let port = after
            .strip_prefix(':')
            .ok_or((after, "expected `:port` after the IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or((s, "expected `host:port` (no `:port` found)"))?;
        if host.contains(':') {
            return Err((
                host,
                "an IPv6 address must be written in brackets: [::1]:port",
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err((s, "the host is empty"));
    }
    if host.contains('/') || host.contains(char::is_whitespace) {
        return Err((host, "the host contains `/` or white space"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| (port, "the port is not a number from 0 to 65535"))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_without_its_slashes_is_named_as_such() {
        for input in [
            "unix:/tmp/x.sock",
            "tls:host:443",
            "tcp:127.0.0.1:80",
            "telnet:h:23",
        ] {
            let err = input.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains("followed by `://`"), "{input}: {err}");
        }
        // a host named like a scheme is still a host
        for host in ["tls", "tlsbox", "unix"] {
            assert_eq!(
                format!("{host}:443").parse::<Endpoint>().unwrap(),
                Endpoint::tcp(host.to_string(), 443)
            );
        }
    }

    fn parse(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_parses() {
        assert_eq!(parse("tcp://localhost:80"), Endpoint::tcp("localhost", 80));
        assert_eq!(parse("10.0.0.1:8080"), Endpoint::tcp("10.0.0.1", 8080));
        assert_eq!(parse("[::1]:9"), Endpoint::tcp("::1", 9));
        assert_eq!(parse("tcp://[fe80::1]:9"), Endpoint::tcp("fe80::1", 9));
        assert_eq!(
            parse("telnet://dev:23"),
            Endpoint::Telnet {
                host: "dev".into(),
                port: 23
            }
        );
        assert_eq!(
            parse("tls://svc:443"),
            Endpoint::Tls {
                host: "svc".into(),
                port: 443
            }
        );
        assert_eq!(
            parse("unix:///tmp/x.sock"),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(parse("stdio:"), Endpoint::Stdio);
        assert_eq!(
            parse("exec:python3 -c 'print(1)'"),
            Endpoint::Exec {
                program: "python3".into(),
                args: vec!["-c".into(), "print(1)".into()]
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tcp://127.0.0.1:5",
            "tcp://[::1]:5",
            "telnet://h:23",
            "tls://h:1",
            "unix:///a/b",
            "stdio:",
            "exec:cat -u",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn errors_name_the_wrong_part() {
        let cases = [
            ("", ""),
            ("localhost", "localhost"),
            ("tcp://localhost:http", "http"),
            ("tcp://localhost:70000", "70000"),
            ("ftp://host:21", "ftp"),
            ("tcp://:80", ":80"),
            ("[::1:80", "[::1:80"),
            ("::1:80", "::1"),
            ("unix://", "unix://"),
            ("exec:", "exec:"),
            ("exec:'unclosed", "'unclosed"),
        ];
        for (input, part) in cases {
            match input.parse::<Endpoint>() {
                Err(TransportError::InvalidEndpoint { part: got, .. }) => {
                    assert_eq!(got, part, "for {input:?}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }
}
