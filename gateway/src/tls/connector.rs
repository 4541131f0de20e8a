//! TLS towards upstream servers (`[upstream.NAME] tls`): the rustls client
//! configuration of one group — the roots its servers' certificates are verified
//! against (a CA file, else the system's), an optional client certificate (mutual
//! TLS), ALPN `http/1.1` (the upstream side always speaks HTTP/1.1; an h2 client's
//! WebSocket stream becomes an HTTP/1.1 upgrade) — and the name each server is
//! verified for and sent as SNI.
//!
//! Built with the configuration generation (files read then, never on a connection's
//! path); session resumption is rustls's in-memory cache, shared by every worker of the
//! generation. Its handshake counters ([`UpstreamHandshakeStats`]) are carried from
//! one generation to the next ([`Connector::keeping_stats`]). Must never skip
//! verification: there is no setting for it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::TlsSetupError;
use super::certs;
use super::upstream_handshakes::UpstreamHandshakeStats;
use crate::config::{ServerAddress, UpstreamTlsConfig};

/// What a TLS upstream group's connections are made with.
#[derive(Debug, Clone)]
pub struct Connector {
    pub config: Arc<ClientConfig>,
    /// `server_name` as configured; `None`: each server's own name or address.
    server_name: Option<ServerName<'static>>,
    /// Handshakes of the group's connections, by result.
    pub stats: Arc<UpstreamHandshakeStats>,
}

impl Connector {
    /// Reads the files of `tls` (`field` is `upstream.NAME.tls`) and builds the client
    /// configuration. Errors name the field and the file.
    pub fn from_config(field: &str, tls: &UpstreamTlsConfig) -> Result<Self, TlsSetupError> {
        let roots = match &tls.ca {
            Some(ca) => roots_from(&format!("{field}.ca"), ca)?,
            None => system_roots(field)?,
        };
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsSetupError { field: field.to_owned(), reason: e.to_string() })?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let loaded = certs::load(field, certs::Files { cert, key, ocsp: None })?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(loaded.key)))
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name =
            match &tls.server_name {
                Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| TlsSetupError {
                    field: format!("{field}.server_name"),
                    reason: format!("`{n}`: {e}"),
                })?),
                None => None,
            };
        Ok(Self { config: Arc::new(config), server_name, stats: Arc::default() })
    }

    /// Counts on in the counters of `previous` (the same group's connector before a
    /// reload), so they never go back.
    #[must_use]
    pub fn keeping_stats(mut self, previous: Option<&Self>) -> Self {
        if let Some(p) = previous {
            self.stats = p.stats.clone();
        }
        self
    }

    /// The name server `address` (now at `addr`) is verified for: `server_name`, else
    /// its configured host name, else its IP address.
    pub fn name_for(&self, address: &ServerAddress, addr: SocketAddr) -> ServerName<'static> {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        match address {
            ServerAddress::Name { host, .. } => {
                ServerName::try_from(host.clone()).unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
            }
            ServerAddress::Ip(_) => ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// The CA certificates of a PEM file.
fn roots_from(field: &str, path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let bad =
        |reason: String| TlsSetupError { field: field.to_owned(), reason: format!("{}: {reason}", path.display()) };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| bad(format!("certificate {i}: {e}")))?;
    }
    Ok(roots)
}

/// The system's CA certificates (those that parse; none at all is an error).
fn system_roots(field: &str) -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TlsSetupError {
            field: format!("{field}.ca"),
            reason: format!("no system CA certificates ({why}): install ca-certificates or give `ca`"),
        });
    }
    Ok(roots)
}

/// The one client certificate presented to every server that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.key.choose_scheme(schemes).is_some().then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
