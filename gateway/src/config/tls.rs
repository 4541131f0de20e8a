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

/// `[upstream.NAME] tls`: connections to the group's servers speak TLS. `tls = true`
/// takes every default; a table sets them. The servers' certificates are always
/// verified (against `ca`, else the system's roots), for `server_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name the servers' certificates must be valid for, also sent as SNI.
    /// Default: each server's host name as configured (`backend.internal:443`), or its
    /// IP address (checked against the certificate's IP addresses; no SNI is sent).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file with the CA certificates to trust. Default: the system's roots
    /// (`/etc/ssl/certs`, or `SSL_CERT_FILE`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM file with a client certificate chain (leaf first) presented to servers that
    /// ask for one (mutual TLS); needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `tls = true | false | { … }` of an upstream group, as an `Option` (`false`: none).
pub mod upstream_tls {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::UpstreamTlsConfig;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UpstreamTlsConfig>, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = Option<UpstreamTlsConfig>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false, or a table with server_name, ca, cert, key")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(on.then(UpstreamTlsConfig::default))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                UpstreamTlsConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
        d.deserialize_any(Spec)
    }

    #[allow(clippy::ref_option, reason = "the signature serde's `with` calls")]
    pub fn serialize<S: Serializer>(v: &Option<UpstreamTlsConfig>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => false.serialize(s),
            Some(t) => t.serialize(s),
        }
    }
}
