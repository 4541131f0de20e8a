//! Builds the rustls server configuration of one TLS listener from `[listener.tls]`:
//! every certificate loaded and checked, the SNI resolver, TLS 1.2 and 1.3 only, ALPN
//! `http/1.1`, session tickets (rustls's `Ticketer`, keys rotated every 6 hours) and a
//! session-id cache for TLS 1.2 clients without tickets.
//!
//! Runs at start-up and for `wsgate check`; one [`Acceptor`] is shared by all workers
//! (so a ticket issued on one worker resumes on another). Never used per connection
//! except through `ServerConnection::new`.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::ring as provider;

use super::certs::{self, LoadedCert};
use super::sni::SniResolver;
use crate::config::TlsConfig;

/// A TLS file or setting that cannot be used, naming its field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsSetupError {
    /// `listener[0].tls.sni[1].key`.
    pub field: String,
    pub reason: String,
}

/// ALPN protocols offered when HTTP/2 is off.
pub const ALPN: &[&[u8]] = &[b"http/1.1"];
/// ALPN protocols offered with HTTP/2 on (`http2.enabled`), best first.
pub const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_hours(21 * 24);

/// What a TLS listener hands to each accepted connection.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub config: Arc<ServerConfig>,
}

/// Every certificate of a listener, as loaded (for `wsgate check`'s report).
#[derive(Debug)]
pub struct Loaded {
    /// `listener[0].tls` or `listener[0].tls.sni[2]`, with what was loaded there.
    pub certs: Vec<(String, LoadedCert)>,
}

impl Loaded {
    /// One line per certificate that expires within [`EXPIRY_WARNING`] (or has), and
    /// per stale OCSP response.
    pub fn expiry_warnings(&self) -> Vec<String> {
        let stale = self.certs.iter().flat_map(|(_, c)| c.warnings.iter().cloned());
        self.certs
            .iter()
            .filter(|(_, c)| c.valid_for() < EXPIRY_WARNING)
            .map(|(field, c)| {
                let left = c.valid_for();
                if left.is_zero() {
                    format!("{field}.cert: the certificate has expired")
                } else {
                    format!("{field}.cert: the certificate expires in {} days", left.as_secs() / 86_400)
                }
            })
            .chain(stale)
            .collect()
    }
}

/// Loads every certificate of `tls` (`field` is `listener[N].tls`).
pub fn load(field: &str, tls: &TlsConfig) -> Result<Loaded, TlsSetupError> {
    let mut out = Vec::new();
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let files = certs::Files { cert, key, ocsp: tls.ocsp.as_deref() };
        out.push((field.to_owned(), certs::load(field, files)?));
    }
    for (j, entry) in tls.sni.iter().enumerate() {
        let f = format!("{field}.sni[{j}]");
        let files = certs::Files { cert: &entry.cert, key: &entry.key, ocsp: entry.ocsp.as_deref() };
        let loaded = certs::load(&f, files)?;
        out.push((f, loaded));
    }
    if out.is_empty() {
        return Err(TlsSetupError { field: field.to_owned(), reason: "no certificate configured".into() });
    }
    Ok(Loaded { certs: out })
}

impl Acceptor {
    /// The rustls configuration of a listener whose certificates are `loaded` (the
    /// default first when `tls` has one, then its `sni` entries in order).
    pub fn new(field: &str, tls: &TlsConfig, loaded: &Loaded) -> Result<Self, TlsSetupError> {
        let setup = |reason: String| TlsSetupError { field: field.to_owned(), reason };
        let mut certs = loaded.certs.iter().map(|(_, c)| c.key.clone());
        let default = if tls.cert.is_some() { certs.next() } else { None };
        let mut resolver = SniResolver::new(default);
        for (entry, key) in tls.sni.iter().zip(certs) {
            for name in &entry.names {
                resolver.add(name, &key);
            }
        }
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.ticketer = provider::Ticketer::new().map_err(|e| setup(format!("session tickets: {e}")))?;
        Ok(Self { config: Arc::new(config) })
    }

    /// Offers `h2` in ALPN before `http/1.1` when `on` (`http2.enabled`).
    #[must_use]
    pub fn offer_h2(mut self, on: bool) -> Self {
        if on {
            Arc::make_mut(&mut self.config).alpn_protocols = ALPN_H2.iter().map(|p| p.to_vec()).collect();
        }
        self
    }

    /// Loads and builds in one step (start-up).
    pub fn from_config(field: &str, tls: &TlsConfig) -> Result<Self, TlsSetupError> {
        let loaded = load(field, tls)?;
        for w in loaded.expiry_warnings() {
            tracing::warn!("{w}");
        }
        Self::new(field, tls, &loaded)
    }
}
