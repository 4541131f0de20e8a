//! Reads one certificate chain and its private key from PEM files and checks them:
//! the key must match the leaf certificate, each certificate must be issued by the one
//! after it (leaf first, as clients expect the chain in the handshake), and an OCSP
//! response given for it must be for this leaf ([`super::ocsp`]). The leaf's expiry is
//! reported so `wsgate check` can warn. Errors name the configuration field and the file.
//!
//! Reads files only when asked (start-up, `wsgate check`); never on a connection's path.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsSetupError;
use super::ocsp::{self, Staple};

/// A chain and key that belong together, with when the leaf expires.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The DNS names of the leaf's subjectAltName.
    pub dns_names: Vec<String>,
    /// What is usable but wrong (a stale OCSP response, not stapled), one line each.
    pub warnings: Vec<String>,
}

impl LoadedCert {
    /// Time left before the leaf expires (zero when it has).
    pub fn valid_for(&self) -> Duration {
        self.not_after.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
    }
}

/// The files of one certificate: chain (leaf first), key, and optionally an OCSP
/// response to staple.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ocsp: Option<&'a Path>,
}

/// Loads a certificate's [`Files`]; `field` names them in errors (`listener[0].tls`).
pub fn load(field: &str, files: Files<'_>) -> Result<LoadedCert, TlsSetupError> {
    let Files { cert, key, ocsp } = files;
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
    let (not_after, dns_names, serial) = leaf_facts(leaf).map_err(|e| bad("cert", cert, e))?;
    chain_order(&chain).map_err(|e| bad("cert", cert, e))?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| bad("key", key, e.to_string()))?;
    let mut certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad("key", key, format!("does not match the certificate in {} ({e})", cert.display())))?;
    let mut warnings = Vec::new();
    if let Some(path) = ocsp {
        match ocsp::load(path, &serial).map_err(|e| bad("ocsp", path, e))? {
            Staple::Fresh(der) => certified.ocsp = Some(der),
            Staple::Expired { next_update } => warnings.push(format!(
                "{field}.ocsp: {}: the OCSP response expired at {}; not stapled",
                path.display(),
                chrono::DateTime::<chrono::Utc>::from(next_update).format("%Y-%m-%d %H:%M:%S UTC")
            )),
        }
    }
    Ok(LoadedCert { key: Arc::new(certified), not_after, dns_names, warnings })
}

/// Each certificate of `chain` must be issued by the next one (its issuer is the
/// next one's subject): clients build the path from the order they are sent in, and a
/// chain in the wrong order (or with a stray certificate) fails on some of them.
fn chain_order(chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let parsed: Vec<_> = chain
        .iter()
        .enumerate()
        .map(|(i, c)| {
            x509_parser::parse_x509_certificate(c)
                .map(|(_, p)| p)
                .map_err(|e| format!("certificate {} of the chain is not X.509: {e}", i + 1))
        })
        .collect::<Result<_, _>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(format!(
                "the chain is out of order: certificate {} ({}) is issued by \"{}\", but certificate {} is \"{}\"; \
                 put the leaf first, then each issuer in turn",
                i + 1,
                pair[0].subject(),
                pair[0].issuer(),
                i + 2,
                pair[1].subject()
            ));
        }
    }
    Ok(())
}

/// The leaf's expiry, its subjectAltName DNS names and its serial number (DER content).
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(SystemTime, Vec<String>, Vec<u8>), String> {
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
    Ok((not_after, names, parsed.raw_serial().to_vec()))
}
