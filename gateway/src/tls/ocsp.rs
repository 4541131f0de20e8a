//! Reads an OCSP response from a file (DER, as `openssl ocsp -respout` writes it and as
//! certbot-style hooks fetch it) to staple to a certificate, and checks that it is one a
//! client will accept: a successful basic response, for this leaf's serial number, with
//! status good. A response past its `nextUpdate` is not stapled (a client would reject
//! the stale staple, and some would reject the handshake): it is reported as a warning
//! so a start-up or a reload with an old file keeps serving, without the staple.
//!
//! The responder's signature is checked by clients, not here. Reads files only when
//! asked (start-up, `wsgate check`, reload); never on a connection's path.

use std::path::Path;
use std::time::SystemTime;

use der::Decode;
use der::oid::AssociatedOid;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

/// A response that passed the checks, and whether it is still fresh.
#[derive(Debug)]
pub enum Staple {
    /// Staple these bytes (the file's DER as it was read).
    Fresh(Vec<u8>),
    /// The response's `nextUpdate` has passed: not stapled.
    Expired { next_update: SystemTime },
}

/// Reads `path` and checks it against the leaf whose serial number (DER content
/// bytes) is `serial`. Errors say what is wrong with the file, in words an operator
/// can act on.
pub fn load(path: &Path, serial: &[u8]) -> Result<Staple, String> {
    let der = std::fs::read(path).map_err(|e| e.to_string())?;
    check(&der, serial, SystemTime::now())?;
    let next_update = basic(&der)?
        .tbs_response_data
        .responses
        .iter()
        .find(|r| r.cert_id.serial_number.as_bytes() == serial)
        .and_then(|r| r.next_update.map(|t| t.0.to_system_time()));
    match next_update {
        Some(t) if t <= SystemTime::now() => Ok(Staple::Expired { next_update: t }),
        _ => Ok(Staple::Fresh(der)),
    }
}

/// The checks of [`load`] on bytes already read (`now` for the validity window).
fn check(der: &[u8], serial: &[u8], now: SystemTime) -> Result<(), String> {
    let basic = basic(der)?;
    let Some(single) = basic.tbs_response_data.responses.iter().find(|r| r.cert_id.serial_number.as_bytes() == serial)
    else {
        let for_serials: Vec<String> =
            basic.tbs_response_data.responses.iter().map(|r| hex(r.cert_id.serial_number.as_bytes())).collect();
        return Err(format!(
            "the OCSP response is for serial number {}, not this certificate's {}",
            for_serials.join(", "),
            hex(serial)
        ));
    };
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err("the OCSP response says the certificate is revoked".into()),
        CertStatus::Unknown(_) => return Err("the OCSP responder does not know the certificate".into()),
    }
    if single.this_update.0.to_system_time() > now + std::time::Duration::from_mins(5) {
        return Err("the OCSP response's thisUpdate is in the future (clock skew?)".into());
    }
    Ok(())
}

/// The basic response inside a successful `OCSPResponse`.
fn basic(der: &[u8]) -> Result<BasicOcspResponse, String> {
    let resp = OcspResponse::from_der(der).map_err(|e| format!("not a DER OCSP response ({e})"))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(format!("the OCSP response's status is {:?}, not successful", resp.response_status));
    }
    let Some(bytes) = resp.response_bytes else {
        return Err("the OCSP response carries no response bytes".into());
    };
    if bytes.response_type != BasicOcspResponse::OID {
        return Err(format!("the OCSP response type is {}, not the basic response", bytes.response_type));
    }
    BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(|e| format!("a malformed basic OCSP response ({e})"))
}

/// `0A:1B:…` as openssl prints serial numbers.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn garbage_and_empty_files_are_refused_with_a_reason() {
        for bad in [&b""[..], b"\x30\x03\x0a\x01\x00", b"not der at all", b"\x30\x80"] {
            let err = super::check(bad, &[1], std::time::SystemTime::now()).expect_err("refused");
            assert!(err.contains("OCSP"), "{err}");
        }
        // `tryLater` (3), a well-formed unsuccessful response.
        let err = super::check(b"\x30\x03\x0a\x01\x03", &[1], std::time::SystemTime::now()).expect_err("refused");
        assert!(err.contains("TryLater"), "{err}");
    }
}
