//! The `--tls-*` flags of `tether serve` and `tether call`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use tether::transport::tls::{self, TlsClientConfig, TlsServerConfig};
use tether::transport::{Endpoint, Listener};

/// How a server proves who it is on a `tls://` endpoint.
#[derive(Debug, Clone, Args)]
pub struct ServeTls {
    /// The server's certificate chain, PEM (with --listen tls://…).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Make a throw-away certificate authority and a certificate it signs for
    /// the listen host, localhost, 127.0.0.1 and ::1.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Write the throw-away authority's certificate here (PEM) before
    /// listening, for clients to trust (`tether call --tls-ca FILE`).
    #[arg(long, value_name = "FILE", requires = "tls_self_signed")]
    pub tls_write_ca: Option<PathBuf>,
}

impl ServeTls {
    fn given(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed
    }

    /// Binds `endpoint`: plain for tcp://, unix:// and stdio:, with the
    /// certificate these flags describe for tls://.
    pub async fn bind(&self, endpoint: &Endpoint) -> crate::CliResult<Listener> {
        let Endpoint::Tls { host, .. } = endpoint else {
            if self.given() {
                return Err(format!(
                    "--tls-cert and --tls-self-signed need a tls:// endpoint, not {endpoint}"
                )
                .into());
            }
            return Ok(Listener::bind(endpoint).await?);
        };
        let config = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsServerConfig::from_pem_files(cert, key)?,
            _ if self.tls_self_signed => {
                let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
                let unspecified = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
                if !unspecified && !names.contains(host) {
                    names.insert(0, host.clone());
                }
                let made = tls::self_signed(&names)?;
                if let Some(path) = &self.tls_write_ca {
                    std::fs::write(path, &made.ca_pem)
                        .map_err(|e| format!("--tls-write-ca {}: {e}", path.display()))?;
                }
                made.server
            }
            _ => {
                return Err(format!(
                    "{endpoint}: listening on tls:// needs --tls-cert FILE --tls-key FILE, \
                     or --tls-self-signed"
                )
                .into())
            }
        };
        Ok(Listener::bind_tls(endpoint, config).await?)
    }
}

/// Which servers a `tls://` client trusts.
#[derive(Debug, Clone, Args)]
pub struct CallTls {
    /// Certificate authorities to trust for tls:// endpoints, PEM (default:
    /// the file named by TETHER_TLS_CA); an error with any other endpoint.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl CallTls {
    /// The client configuration for `endpoint`, if --tls-ca was given.
    /// Given with an endpoint that is not tls://, it is an error, as
    /// `serve`'s --tls-cert is, rather than a file read for nothing: whoever
    /// wrote it expected the connection to be encrypted.
    pub fn config(&self, endpoint: &Endpoint) -> crate::CliResult<Option<TlsClientConfig>> {
        match &self.tls_ca {
            Some(_) if !matches!(endpoint, Endpoint::Tls { .. }) => {
                Err(format!("--tls-ca needs a tls:// endpoint, not {endpoint}").into())
            }
            Some(path) => Ok(Some(TlsClientConfig::trusting_pem_file(path)?)),
            None => Ok(None),
        }
    }
}
