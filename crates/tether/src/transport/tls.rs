//! TLS 1.3 over TCP: the `tls://` transport.
//!
//! A `tls://host:port` stream is a TCP connection wrapped in TLS 1.3
//! (rustls with the *ring* provider). Once connected it is an ordinary
//! [`ByteStream`], so sessions, the blocking API and the
//! command line work over it unchanged.
//!
//! ```text
//!  client                                   server
//!  connect_with(tls://host:port,            Listener::bind_tls(tls://addr:port,
//!               TlsClientConfig) ──TCP──►                      TlsServerConfig)
//!    verifies the server's certificate        handshake in its own task, with a
//!    against its trusted CAs and `host`       timeout; accept() yields it when done
//! ```
//!
//! - The **client** trusts the certificate authorities of a
//!   [`TlsClientConfig`] (a PEM file, explicit certificates, or your own
//!   rustls config) and checks that the server's certificate names `host`,
//!   a DNS name or an IP address. Without a config, [`connect`](super::connect)
//!   reads the PEM file named by the `TETHER_TLS_CA` environment variable.
//! - The **server** presents the chain and key of a [`TlsServerConfig`]. Each
//!   handshake runs in its own task within [`TlsServerConfig::handshake_timeout_value`],
//!   so a slow or hostile peer never holds up other connections.
//! - [`self_signed`] makes a throw-away certificate authority and a server
//!   certificate signed by it, for tests, demos and `tether serve --tls-self-signed`.
//!
//! A failed handshake is a [`TransportError::TlsHandshake`]
//! naming the endpoint and saying why (unknown certificate authority, name
//! mismatch, the peer does not speak TLS, …).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tether::transport::{self, tls, ConnectOptions, Listener};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let certs = tls::self_signed(&["127.0.0.1"])?;
//! let mut listener = Listener::bind_tls(&"tls://127.0.0.1:0".parse()?, certs.server).await?;
//! let endpoint = listener.local_endpoint(); // tls://127.0.0.1:PORT
//! tokio::spawn(async move {
//!     let mut stream = listener.accept().await?;
//!     let mut buf = [0; 5];
//!     stream.read_exact(&mut buf).await?;
//!     stream.write_all(&buf).await?;
//!     stream.shutdown().await
//! });
//!
//! let options = ConnectOptions::new(Duration::from_secs(5)).tls(certs.client);
//! let mut stream = transport::connect_with(&endpoint, &options).await?;
//! stream.write_all(b"hello").await?;
//! let mut echo = [0; 5];
//! stream.read_exact(&mut echo).await?;
//! assert_eq!(&echo, b"hello");
//! # Ok(()) }
//! ```
//!
//! What this module does not do: TLS 1.2, client certificates and public
//! web roots are left out to keep the build small. Build a
//! [`rustls::ClientConfig`] or [`rustls::ServerConfig`] yourself (with
//! `webpki-roots`, client authentication, ALPN…) and wrap it with
//! [`TlsClientConfig::from_rustls`] or [`TlsServerConfig::from_rustls`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

use super::{ByteStream, Endpoint, TransportError};

pub use rustls;

/// The environment variable naming a PEM file of certificate authorities
/// that `tls://` connections trust when no [`TlsClientConfig`] is given.
pub const CA_ENV_VAR: &str = "TETHER_TLS_CA";

/// How long a server waits for a peer to complete its handshake. A TLS 1.3
/// handshake is one round trip plus the peer's key exchange: milliseconds on
/// a LAN, well under a second across continents. 10 s drops a peer that
/// connected and said nothing, without failing a slow but honest one.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes a listener runs at once. When all are busy, new
/// connections wait in the kernel's backlog until one finishes or times out.
/// Each costs a task and a few KiB; 256 absorbs a reconnect storm of a
/// large installation while capping what idle attackers can hold.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Certificates or a key are missing, malformed or refused by rustls.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being loaded (a file name, "server certificate", …).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TlsConfigError {
    fn invalid(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        TlsConfigError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The largest PEM file read: 1 MiB, a few thousand certificates. Only a
/// regular file is read: given `/dev/zero` or a named pipe by mistake,
/// reading (or opening) it might never end.
const PEM_FILE_AT_MOST: u64 = 1024 * 1024;

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    use std::io::Read;
    let failed = |source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // before opening: opening a named pipe nobody writes to never returns
    if !std::fs::metadata(path).map_err(failed)?.is_file() {
        return Err(failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut pem = Vec::new();
    file.take(PEM_FILE_AT_MOST + 1)
        .read_to_end(&mut pem)
        .map_err(failed)?;
    if pem.len() as u64 > PEM_FILE_AT_MOST {
        return Err(failed(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {PEM_FILE_AT_MOST} bytes: not a PEM file"),
        )));
    }
    Ok(pem)
}

/// A PEM key, or an error that says what was looked for.
fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::invalid(
            what,
            "no private key found (expected a BEGIN PRIVATE KEY, RSA PRIVATE KEY or \
             EC PRIVATE KEY block; encrypted keys are not supported)",
        ),
        e => TlsConfigError::invalid(what, e),
    })
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::invalid(what, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::invalid(
            what,
            "no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

/// The client side of TLS: which certificate authorities to trust.
///
/// The server name checked against the certificate is the host of the
/// endpoint connected to (`tls://device.lab:5025` → `device.lab`,
/// `tls://127.0.0.1:5025` → the IP address 127.0.0.1). Cloning is cheap.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig").finish_non_exhaustive()
    }
}

impl PartialEq for TlsClientConfig {
    /// The same configuration object (clones of one config are equal).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for TlsClientConfig {}

impl TlsClientConfig {
    /// Trusts exactly these certificate authorities (DER).
    pub fn trusting(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsConfigError> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root)
                .map_err(|e| TlsConfigError::invalid("trusted certificate", e))?;
        }
        if store.is_empty() {
            return Err(TlsConfigError::invalid(
                "trusted certificates",
                "none given: a client that trusts nobody can never connect",
            ));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsConfigError::invalid("TLS client", e))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(TlsClientConfig {
            config: Arc::new(config),
        })
    }

    /// Trusts the certificate authorities in PEM text (one or more
    /// `BEGIN CERTIFICATE` blocks).
    pub fn trusting_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        Self::trusting(parse_certs(pem, "trusted certificates")?)
    }

    /// Trusts the certificate authorities in a PEM file.
    pub fn trusting_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let path = path.as_ref();
        let pem = read_file(path)?;
        Self::trusting(parse_certs(&pem, &path.display().to_string())?)
    }

    /// The CA file named by `TETHER_TLS_CA`, or `None` when it is not set.
    pub fn from_env() -> Result<Option<Self>, TlsConfigError> {
        match std::env::var_os(CA_ENV_VAR) {
            Some(path) if !path.is_empty() => {
                Self::trusting_pem_file(PathBuf::from(path)).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Wraps a rustls configuration built by hand (public web roots,
    /// client certificates, ALPN, TLS 1.2…).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig { config }
    }

    /// The rustls configuration.
    pub fn rustls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }
}

/// The server side of TLS: the certificate chain and key to present, and
/// the limits on handshakes in progress.
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    max_pending_handshakes: usize,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// Presents `chain` (the server's certificate first, then any
    /// intermediates) and proves it with `key`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsConfigError::invalid("TLS server", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError::invalid("server certificate and key", e))?;
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// The chain and key from PEM text (certificates as `BEGIN CERTIFICATE`
    /// blocks, the key as PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        let chain = parse_certs(chain_pem, "server certificate")?;
        let key = parse_key(key_pem, "server key")?;
        Self::new(chain, key)
    }

    /// The chain and key from PEM files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let certs = parse_certs(&read_file(chain)?, &chain.display().to_string())?;
        let key = parse_key(&read_file(key)?, &key.display().to_string())?;
        Self::new(certs, key)
    }

    /// Wraps a rustls configuration built by hand (client authentication, ALPN…).
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig {
            config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }

    /// How long a peer may take to complete its handshake before it is dropped.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// At most `n` handshakes at once (at least 1); further connections wait
    /// in the kernel's backlog.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// The handshake timeout.
    pub fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    /// The cap on handshakes in progress.
    pub fn max_pending_handshakes_value(&self) -> usize {
        self.max_pending_handshakes
    }

    /// The rustls configuration.
    pub fn rustls_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

/// A throw-away certificate authority and a server certificate it signed,
/// from [`self_signed`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SelfSigned {
    /// Presents the server certificate.
    pub server: TlsServerConfig,
    /// Trusts the certificate authority (and so the server).
    pub client: TlsClientConfig,
    /// The certificate authority, PEM: give it to clients (`--tls-ca`, `TETHER_TLS_CA`).
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub cert_pem: String,
    /// The server's private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Makes a new certificate authority and a server certificate it signs for
/// `names` (DNS names or IP addresses, e.g. `["localhost", "127.0.0.1"]`).
///
/// Keys are ECDSA P-256, made fresh on every call and never written
/// anywhere unless you write [`SelfSigned::key_pem`] yourself. Meant for
/// tests, demos and private links where both ends are yours.
pub fn self_signed<S: AsRef<str>>(names: &[S]) -> Result<SelfSigned, TlsConfigError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| TlsConfigError::invalid("self-signed certificate", e);
    let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
    if names.is_empty() {
        return Err(TlsConfigError::invalid(
            "self-signed certificate",
            "no names given: the certificate must name the host clients connect to",
        ));
    }

    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A name of its own: clients look their trusted CAs up by name, and two
    // throw-away CAs called alike would fail as a bad signature instead of
    // an unknown authority.
    let fingerprint: String = ca_key.public_key_raw()[1..9]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("tether self-signed CA {fingerprint}"),
    );
    let ca = ca_params.self_signed(&ca_key).map_err(failed)?;

    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::new(names.clone()).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(failed)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(SelfSigned {
        server: TlsServerConfig::new(vec![cert.der().clone()], key_der)?,
        client: TlsClientConfig::trusting([ca.der().clone()])?,
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The name a server's certificate must carry for `host`: checked before
/// connecting, so that a host no certificate can name fails at once.
pub(crate) fn server_name(
    endpoint: &Endpoint,
    host: &str,
) -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(host.to_string()).map_err(|_| TransportError::TlsConfig {
        endpoint: endpoint.to_string(),
        reason: format!("{host:?} is neither a DNS name nor an IP address a certificate can carry"),
    })
}

/// The client handshake over a connected TCP stream; the caller bounds it in time.
pub(crate) async fn client_handshake(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    endpoint: &Endpoint,
    (host, name): (&str, ServerName<'static>),
    config: &TlsClientConfig,
) -> Result<ByteStream, TransportError> {
    let connector = TlsConnector::from(config.config.clone());
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(ByteStream::from_tls(stream.into(), peer)),
        Err(e) => Err(TransportError::TlsHandshake {
            endpoint: endpoint.to_string(),
            reason: describe_handshake_error(&e, host),
            source: e,
        }),
    }
}

/// The client configuration for `endpoint`: the one given, else `TETHER_TLS_CA`.
pub(crate) fn client_config_for(
    endpoint: &Endpoint,
    given: Option<&TlsClientConfig>,
) -> Result<TlsClientConfig, TransportError> {
    if let Some(config) = given {
        return Ok(config.clone());
    }
    match TlsClientConfig::from_env() {
        Ok(Some(config)) => Ok(config),
        Ok(None) => Err(TransportError::TlsConfig {
            endpoint: endpoint.to_string(),
            reason: format!(
                "no certificate authority to check the server against: give a TLS client \
                 config (ConnectOptions::tls, ClientOptions::tls, `tether call --tls-ca FILE`) \
                 or set {CA_ENV_VAR} to a PEM file"
            ),
        }),
        Err(e) => Err(TransportError::TlsConfig {
            endpoint: endpoint.to_string(),
            reason: format!("{CA_ENV_VAR}: {e}"),
        }),
    }
}

/// Says in words why a handshake failed.
fn describe_handshake_error(e: &io::Error, host: &str) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer => format!(
                "bad certificate: unknown certificate authority (the server's certificate \
                 is not signed by a CA this client trusts) ({e})"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("bad certificate: name mismatch (the server's certificate is not valid for {host:?}) ({e})")
            }
            CertificateError::BadSignature => format!(
                "bad certificate: bad signature (not signed by the trusted certificate \
                 authority of that name) ({e})"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("bad certificate: expired ({e})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("bad certificate: not valid yet ({e})")
            }
            _ => format!("bad certificate: {e}"),
        },
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("the peer refused the handshake (alert {alert:?})")
        }
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
            format!("the peer does not speak TLS 1.3 ({e})")
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake (does it speak TLS?)".into()
        }
        None => e.to_string(),
    }
}

/// The server half of a TLS listener: a TCP listener whose handshakes run
/// in their own tasks, each within the handshake timeout.
pub(crate) struct TlsAccept {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    max_pending: usize,
    pending: JoinSet<Option<ByteStream>>,
}

impl fmt::Debug for TlsAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAccept")
            .field("tcp", &self.tcp)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl TlsAccept {
    pub(crate) fn new(tcp: tokio::net::TcpListener, config: TlsServerConfig) -> Self {
        TlsAccept {
            tcp,
            acceptor: TlsAcceptor::from(config.config),
            handshake_timeout: config.handshake_timeout,
            max_pending: config.max_pending_handshakes.max(1),
            pending: JoinSet::new(),
        }
    }

    /// The next peer whose handshake succeeded. Cancel-safe: handshakes in
    /// progress go on in their tasks and are not lost if this future is dropped.
    pub(crate) async fn accept(&mut self) -> io::Result<ByteStream> {
        loop {
            let room = self.pending.len() < self.max_pending;
            tokio::select! {
                accepted = self.tcp.accept(), if room => {
                    let (tcp, peer) = accepted?;
                    let acceptor = self.acceptor.clone();
                    let timeout = self.handshake_timeout;
                    self.pending.spawn(async move {
                        if let Err(e) = tcp.set_nodelay(true) {
                            debug!(%peer, error = %e, "TLS: connection lost before the handshake");
                            return None;
                        }
                        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => Some(ByteStream::from_tls(stream.into(), peer)),
                            Ok(Err(e)) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                                warn!(%peer, reason = %describe_handshake_error(&e, ""), "TLS handshake failed");
                                None
                            }
                            Ok(Err(e)) => {
                                debug!(%peer, reason = %describe_handshake_error(&e, ""), "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                debug!(%peer, ?timeout, "TLS handshake not completed in time; dropped");
                                None
                            }
                        }
                    });
                }
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    if let Ok(Some(stream)) = done {
                        return Ok(stream);
                    }
                }
                // Unreachable (one branch is always enabled), but never a panic.
                else => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pem_loads_back() {
        let made = self_signed(&["127.0.0.1", "device.lab"]).unwrap();
        assert!(made.ca_pem.contains("BEGIN CERTIFICATE"));
        TlsServerConfig::from_pem(made.cert_pem.as_bytes(), made.key_pem.as_bytes()).unwrap();
        TlsClientConfig::trusting_pem(made.ca_pem.as_bytes()).unwrap();
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let a = self_signed(&["a"]).unwrap();
        let b = self_signed(&["b"]).unwrap();
        let err =
            TlsServerConfig::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("server certificate and key"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_malformed_files_are_named() {
        let err = TlsClientConfig::trusting_pem_file("/no/such/ca-tether.pem").unwrap_err();
        assert!(matches!(err, TlsConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/no/such/ca-tether.pem"), "{err}");

        let err = TlsClientConfig::trusting_pem(b"not a certificate").unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");

        let made = self_signed(&["x"]).unwrap();
        let err = TlsServerConfig::from_pem(made.cert_pem.as_bytes(), b"no key here").unwrap_err();
        assert!(err.to_string().contains("server key"), "{err}");
        assert!(err.to_string().contains("no private key found"), "{err}");
        // the certificate given for the key: says what it looked for
        let err = TlsServerConfig::from_pem(made.cert_pem.as_bytes(), made.cert_pem.as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");

        // not a file, or far too big to be one: refused, not read for ever
        let err = TlsClientConfig::trusting_pem_file("/dev/zero").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = std::env::temp_dir().join(format!("tether-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
        let err = TlsClientConfig::trusting_pem_file(&big).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.to_string().contains("not a PEM file"), "{err}");

        let err = TlsServerConfig::from_pem_files("/no/such/cert-tether.pem", "/no/such/key.pem")
            .unwrap_err();
        assert!(
            err.to_string().contains("/no/such/cert-tether.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_host_no_certificate_can_name_is_refused_before_connecting() {
        let ep: Endpoint = "tls://a..b:1".parse().unwrap();
        let err = server_name(&ep, "a..b").unwrap_err();
        assert!(matches!(err, TransportError::TlsConfig { .. }), "{err:?}");
        assert!(server_name(&ep, "device.lab").is_ok());
        assert!(server_name(&ep, "127.0.0.1").is_ok());
    }

    #[test]
    fn a_certificate_needs_a_name() {
        let err = self_signed::<&str>(&[]).unwrap_err();
        assert!(err.to_string().contains("no names"), "{err}");
    }

    #[test]
    fn handshake_errors_are_described() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(describe_handshake_error(&eof, "h").contains("closed the connection"));
        let unknown = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(describe_handshake_error(&unknown, "h").contains("unknown certificate authority"));
        let name = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        let text = describe_handshake_error(&name, "device.lab");
        assert!(
            text.contains("name mismatch") && text.contains("device.lab"),
            "{text}"
        );
    }
}
