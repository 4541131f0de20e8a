//! Chooses the certificate for a ClientHello by its SNI name: an exact name first,
//! then a one-label wildcard (`*.example.com`), then the default; none of them (no
//! default configured) refuses the handshake.
//!
//! Lookups only, built once at start; must never allocate per handshake beyond
//! lower-casing the asked name, nor panic on any name a client sends.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates by name.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// A resolver with only a default certificate (or none).
    pub fn new(default: Option<Arc<CertifiedKey>>) -> Self {
        Self { default, ..Self::default() }
    }

    /// Adds `name` (exact, or `*.` in front) for `key`; the first entry for a name wins.
    pub fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_owned()).or_insert_with(|| key.clone()),
            None => self.exact.entry(name).or_insert_with(|| key.clone()),
        };
    }

    /// The certificate for a client that asked for `name` (or nothing).
    pub fn choose(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else { return self.default.clone() };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return Some(k.clone());
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::sign::CertifiedKey;

    /// A stand-in key: the resolver compares pointers, it never signs.
    fn key() -> Arc<CertifiedKey> {
        let der =
            rustls_pki_types::PrivateKeyDer::Pkcs8(rcgen::KeyPair::generate().expect("key").serialize_der().into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).expect("signer");
        Arc::new(CertifiedKey::new(Vec::new(), signer))
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a, w, d) = (key(), key(), key());
        let mut r = super::SniResolver::new(Some(d.clone()));
        r.add("API.example.com", &a);
        r.add("*.example.com", &w);
        let is = |name: Option<&str>, k: &Arc<CertifiedKey>| Arc::ptr_eq(&r.choose(name).expect("a cert"), k);
        assert!(is(Some("api.example.com"), &a));
        assert!(is(Some("Api.Example.Com."), &a));
        assert!(is(Some("www.example.com"), &w));
        assert!(is(Some("a.b.example.com"), &d), "a wildcard covers one label");
        assert!(is(Some("example.com"), &d), "a wildcard does not cover its parent");
        assert!(is(None, &d));
        let none = super::SniResolver::new(None);
        assert!(none.choose(Some("other.org")).is_none());
        assert!(none.choose(None).is_none());
    }
}
