//! `[listener.tls]`: the certificates a TLS listener presents, chosen by SNI.
//!
//! Data only: the files are read and checked by `crate::tls` (at start and by
//! `wsgate check`), never here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS settings of one listener: a default certificate and/or certificates chosen by
/// the name the client asks for (SNI). TLS 1.2 and 1.3 only, rustls's safe cipher
/// suites, ALPN `http/1.1`, resumption by session tickets (rotated every 6 hours).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the default certificate chain (leaf first, then intermediates):
    /// presented when no `sni` entry matches the name asked for, or none was asked.
    /// Without it, a client whose name matches no `sni` entry is refused.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// DER file with an OCSP response for `cert`, stapled to handshakes (refresh it
    /// with `openssl ocsp … -respout FILE` from a timer, then reload). Checked at load:
    /// successful, for this leaf, status good; past its `nextUpdate` it is not stapled
    /// and a warning says so.
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
    /// Certificates chosen by SNI, tried in order: exact names first over all
    /// entries, then wildcards.
    #[serde(default)]
    pub sni: Vec<SniCertConfig>,
}

/// A certificate presented to clients that ask for one of its names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertConfig {
    /// Host names this certificate answers: exact (`api.example.com`) or one leading
    /// wildcard label (`*.example.com`: matches `a.example.com`, not `example.com` nor
    /// `a.b.example.com`). Compared without regard to ASCII case.
    pub names: Vec<String>,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with its private key.
    pub key: PathBuf,
    /// DER file with an OCSP response for `cert` to staple (as the listener's `ocsp`).
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
}

impl TlsConfig {
    /// The one-line form (`--tls-cert`, `--tls-key`): one default certificate.
    pub fn default_only(cert: PathBuf, key: PathBuf) -> Self {
        Self { cert: Some(cert), key: Some(key), ocsp: None, sni: Vec::new() }
    }
}

/// Whether `name` is a host name an `sni` entry may list: letters, digits, `-` and
/// `.`, optionally `*.` in front, no empty label.
pub fn valid_sni_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.len() <= 253
        && rest
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}
