//! Reads one certificate chain and its private key from PEM files and checks them:
//! the key must match the leaf certificate; the leaf's expiry is reported so `wsgate
//! check` can warn. Errors name the configuration field and the file.
//!
//! Reads files only when asked (start-up, `wsgate check`); never on a connection's path.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsSetupError;

/// A chain and key that belong together, with when the leaf expires.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The DNS names of the leaf's subjectAltName.
    pub dns_names: Vec<String>,
}

impl LoadedCert {
    /// Time left before the leaf expires (zero when it has).
    pub fn valid_for(&self) -> Duration {
        self.not_after.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

/// Loads `cert` (chain, leaf first) and `key`; `field` names them in errors
/// (`listener[0].tls`).
pub fn load(field: &str, cert: &Path, key: &Path) -> Result<LoadedCert, TlsSetupError> {
    let bad = |what: &str, path: &Path, reason: String| TlsSetupError {
        field: format!("{field}.{what}"),
        reason: format!("{}: {reason}", path.display()),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert", cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(bad("cert", cert, "no CERTIFICATE in the file".into()));
    };
    let (not_after, dns_names) = leaf_facts(leaf).map_err(|e| bad("cert", cert, e))?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| bad("key", key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad("key", key, format!("does not match the certificate in {} ({e})", cert.display())))?;
    Ok(LoadedCert { key: Arc::new(certified), not_after, dns_names })
}

/// The leaf's expiry and its subjectAltName DNS names.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(SystemTime, Vec<String>), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let secs = parsed.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    Ok((not_after, names))
}
