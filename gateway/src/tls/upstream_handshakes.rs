//! Handshakes with TLS upstreams counted by reason, per upstream group: why a
//! connection to a server failed before any request went out (its certificate does not
//! verify, it is for another name, no version in common, it refused wsgate's client
//! certificate, it timed out), for `/metrics` (`wsgate_upstream_tls_handshakes_total`,
//! `wsgate_upstream_tls_handshake_failures_total`).
//!
//! Counts the connections that carry traffic (health checks count their own results).
//! The counters of a group outlive a reload that keeps the group and its TLS (see
//! `Connector::keeping_stats`), so a scrape never sees them go back. Atomics only: a
//! worker must never wait here, and nothing here logs (the caller does, per connection
//! at debug level).

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::{AlertDescription, CertificateError, Error};

use super::HandshakeFailure;
use super::handshake::Failed;

/// Why a handshake with an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHandshakeFailure {
    /// Not finished within the connect timeout.
    Timeout,
    /// The server closed (or reset) before the handshake was done.
    ClosedEarly,
    /// The server answered with bytes that are not TLS (a plain server).
    NotTls,
    /// No protocol version or cipher suite in common (rustls's `PeerIncompatible`, or
    /// the server's `protocol_version` / `insufficient_security` alert).
    NoSharedVersion,
    /// The server's certificate does not verify: unknown issuer, bad signature,
    /// expired or not yet valid, revoked, malformed, or none sent.
    BadCertificate,
    /// The server's certificate verifies, but not for the name wsgate asked for
    /// (`server_name`, else the server's host name or address).
    NameMismatch,
    /// The server refused wsgate's client certificate (or its absence): an alert about
    /// a certificate (`bad_certificate`, `unknown_ca`, `certificate_required`…).
    ClientCertRefused,
    /// Any other alert the server sent.
    ServerAlert,
    /// Anything else rustls refused.
    Other,
}

impl UpstreamHandshakeFailure {
    pub const ALL: [Self; 9] = [
        Self::Timeout,
        Self::ClosedEarly,
        Self::NotTls,
        Self::NoSharedVersion,
        Self::BadCertificate,
        Self::NameMismatch,
        Self::ClientCertRefused,
        Self::ServerAlert,
        Self::Other,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ClosedEarly => "closed_early",
            Self::NotTls => "not_tls",
            Self::NoSharedVersion => "no_shared_version",
            Self::BadCertificate => "bad_certificate",
            Self::NameMismatch => "name_mismatch",
            Self::ClientCertRefused => "client_cert_refused",
            Self::ServerAlert => "server_alert",
            Self::Other => "other",
        }
    }

    /// The reason of a failed client-side handshake.
    pub fn of(failed: &Failed) -> Self {
        match (failed.why, &failed.error) {
            (HandshakeFailure::Timeout, _) => Self::Timeout,
            (HandshakeFailure::ClosedEarly, _) => Self::ClosedEarly,
            (_, Some(e)) => Self::of_rustls(e),
            (_, None) => Self::Other,
        }
    }

    fn of_rustls(e: &Error) -> Self {
        use AlertDescription as A;
        match e {
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Self::NameMismatch,
            Error::InvalidCertificate(_) | Error::NoCertificatesPresented => Self::BadCertificate,
            Error::PeerIncompatible(_) | Error::AlertReceived(A::ProtocolVersion | A::InsufficientSecurity) => {
                Self::NoSharedVersion
            }
            Error::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
                | A::AccessDenied,
            ) => Self::ClientCertRefused,
            Error::AlertReceived(_) => Self::ServerAlert,
            Error::InvalidMessage(_) => Self::NotTls,
            _ => Self::Other,
        }
    }
}

/// Handshakes of one upstream group's connections: done, and failed by reason.
#[derive(Debug, Default)]
pub struct UpstreamHandshakeStats {
    done: AtomicU64,
    failed: [AtomicU64; UpstreamHandshakeFailure::ALL.len()],
}

impl UpstreamHandshakeStats {
    /// Handshakes completed.
    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Handshakes failed for `why`.
    pub fn failed(&self, why: UpstreamHandshakeFailure) -> u64 {
        self.failed[why as usize].load(Ordering::Relaxed)
    }

    pub(super) fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count(&self, why: UpstreamHandshakeFailure) {
        self.failed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> &'static str {
        UpstreamHandshakeFailure::of(&Failed { why: HandshakeFailure::Other, detail: String::new(), error: Some(e) })
            .as_str()
    }

    #[test]
    fn rustls_errors_map_to_reasons() {
        assert_eq!(reason(Error::InvalidCertificate(CertificateError::UnknownIssuer)), "bad_certificate");
        assert_eq!(reason(Error::InvalidCertificate(CertificateError::BadSignature)), "bad_certificate");
        assert_eq!(reason(Error::InvalidCertificate(CertificateError::Expired)), "bad_certificate");
        assert_eq!(reason(Error::NoCertificatesPresented), "bad_certificate");
        assert_eq!(reason(Error::InvalidCertificate(CertificateError::NotValidForName)), "name_mismatch");
        assert_eq!(
            reason(Error::PeerIncompatible(rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13)),
            "no_shared_version"
        );
        assert_eq!(reason(Error::AlertReceived(AlertDescription::ProtocolVersion)), "no_shared_version");
        assert_eq!(reason(Error::AlertReceived(AlertDescription::CertificateRequired)), "client_cert_refused");
        assert_eq!(reason(Error::AlertReceived(AlertDescription::UnknownCA)), "client_cert_refused");
        assert_eq!(reason(Error::AlertReceived(AlertDescription::InternalError)), "server_alert");
        assert_eq!(reason(Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)), "not_tls");
        assert_eq!(reason(Error::DecryptError), "other");
    }

    #[test]
    fn timeouts_and_closes_are_named_by_the_socket_not_rustls() {
        let f = |why| Failed { why, detail: String::new(), error: None };
        assert_eq!(UpstreamHandshakeFailure::of(&f(HandshakeFailure::Timeout)), UpstreamHandshakeFailure::Timeout);
        assert_eq!(
            UpstreamHandshakeFailure::of(&f(HandshakeFailure::ClosedEarly)),
            UpstreamHandshakeFailure::ClosedEarly
        );
        assert_eq!(UpstreamHandshakeFailure::of(&f(HandshakeFailure::NotTls)), UpstreamHandshakeFailure::Other);
    }
}
