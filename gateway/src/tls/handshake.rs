//! The TLS handshake of one accepted connection, within a deadline (the header
//! timeout: a client that has not finished its handshake has not sent its head), and
//! of one connection to a TLS upstream ([`connect`], within the connect timeout).
//!
//! Returns the [`TlsStream`] ready for the request head, or why it failed; failures
//! are counted by reason ([`HandshakeStats`]; towards upstreams
//! [`super::upstream_handshakes::UpstreamHandshakeStats`]) and logged at debug level by
//! the caller, never at error level (any client on the internet can cause them). Must
//! never wait without the deadline nor read past what rustls asks for.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use tokio::time::timeout_at;
use tokio_uring::net::TcpStream;

use super::TlsStream;
use super::upstream_handshakes::{UpstreamHandshakeFailure, UpstreamHandshakeStats};
use crate::readiness::{self, Ring};

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the deadline.
    Timeout,
    /// The client closed (or reset) before the handshake was done: a ClientHello cut
    /// short, a scanner.
    ClosedEarly,
    /// Bytes that are not TLS records (plain HTTP on a TLS port, garbage).
    NotTls,
    /// No protocol version or cipher suite in common (TLS 1.1 and older).
    NoSharedVersion,
    /// The name asked for (SNI) has no certificate and no default is configured.
    UnknownSni,
    /// The client refused the server (an alert: unknown CA, bad certificate).
    ClientAlert,
    /// Anything else rustls refused.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [Self; 7] = [
        Self::Timeout,
        Self::ClosedEarly,
        Self::NotTls,
        Self::NoSharedVersion,
        Self::UnknownSni,
        Self::ClientAlert,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ClosedEarly => "closed_early",
            Self::NotTls => "not_tls",
            Self::NoSharedVersion => "no_shared_version",
            Self::UnknownSni => "unknown_sni",
            Self::ClientAlert => "client_alert",
            Self::Other => "other",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) => Self::NotTls,
            E::PeerIncompatible(_) => Self::NoSharedVersion,
            E::AlertReceived(_) => Self::ClientAlert,
            // rustls's words when the certificate resolver chose nothing.
            E::General(m) if m.contains("certificate chain") => Self::UnknownSni,
            _ => Self::Other,
        }
    }
}

/// Handshakes done and failed, by reason; shared by all workers.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub done: AtomicU64,
    failed: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl HandshakeStats {
    pub fn failed(&self, why: HandshakeFailure) -> u64 {
        self.failed[why as usize].load(Ordering::Relaxed)
    }

    fn count(&self, why: HandshakeFailure) {
        self.failed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `reason=count` for every reason seen, for a log line.
    pub fn summary(&self) -> String {
        HandshakeFailure::ALL
            .iter()
            .filter(|&&w| self.failed(w) > 0)
            .map(|&w| format!("{}={}", w.as_str(), self.failed(w)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A failed handshake: why, and what rustls or the socket said.
#[derive(Debug)]
pub struct Failed {
    pub why: HandshakeFailure,
    pub detail: String,
    /// rustls's own error, when rustls refused (not a timeout or a closed socket).
    pub error: Option<rustls::Error>,
}

impl Failed {
    fn new(why: HandshakeFailure, detail: String) -> Self {
        Self { why, detail, error: None }
    }

    fn rustls(e: rustls::Error) -> Self {
        Self { why: HandshakeFailure::of(&e), detail: e.to_string(), error: Some(e) }
    }
}

/// Runs the server side of the handshake on `tcp` until it is done or `deadline`.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    ring: &Ring,
    deadline: Instant,
    stats: &HandshakeStats,
) -> Result<TlsStream, Failed> {
    let result = match ServerConnection::new(config) {
        Ok(conn) => drive(TlsStream::new(tcp, conn), ring, deadline).await,
        Err(e) => Err(Failed { why: HandshakeFailure::Other, ..Failed::rustls(e) }),
    };
    match &result {
        Ok(_) => {
            stats.done.fetch_add(1, Ordering::Relaxed);
        }
        Err(f) => stats.count(f.why),
    }
    result
}

/// Runs the client side of the handshake with an upstream on `tcp` (connected) until
/// it is done or `deadline`; `name` is what the upstream's certificate must be valid
/// for (and the SNI sent, when it is a DNS name). The error says why, as rustls does
/// (an invalid or unknown certificate, an alert, a timeout); `stats` counts it by
/// reason, under the upstream group's name.
pub async fn connect(
    tcp: TcpStream,
    (config, name): (Arc<ClientConfig>, ServerName<'static>),
    ring: &Ring,
    deadline: Instant,
    stats: &UpstreamHandshakeStats,
) -> Result<TlsStream, Failed> {
    let result = match ClientConnection::new(config, name) {
        Ok(conn) => drive(TlsStream::new(tcp, conn), ring, deadline).await,
        Err(e) => Err(Failed { why: HandshakeFailure::Other, ..Failed::rustls(e) }),
    };
    match &result {
        Ok(_) => stats.done(),
        Err(f) => stats.count(UpstreamHandshakeFailure::of(f)),
    }
    result
}

/// Drives a handshake, either side, until it is done or `deadline`.
async fn drive(stream: TlsStream, ring: &Ring, deadline: Instant) -> Result<TlsStream, Failed> {
    let fail = Failed::new;
    loop {
        // What rustls has to say (ServerHello…, tickets, an alert) goes first.
        match timeout_at(deadline.into(), stream.flush(ring)).await {
            Err(_) => return Err(fail(HandshakeFailure::Timeout, "writing the handshake".into())),
            Ok(Err(e)) => return Err(fail(HandshakeFailure::ClosedEarly, format!("writing the handshake: {e}"))),
            Ok(Ok(())) => {}
        }
        if !stream.conn().is_handshaking() {
            return Ok(stream);
        }
        match stream.read_records() {
            Ok(0) => return Err(fail(HandshakeFailure::ClosedEarly, "closed in the middle of the handshake".into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match timeout_at(deadline.into(), ring.ready(stream.tcp(), readiness::READABLE)).await {
                    Err(_) => return Err(fail(HandshakeFailure::Timeout, "handshake not complete in time".into())),
                    Ok(Err(e)) => return Err(fail(HandshakeFailure::ClosedEarly, e.to_string())),
                    Ok(Ok(_)) => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // The rustls error again, typed, for its reason.
                let failed = match stream.conn().process_new_packets() {
                    Err(typed) => Failed { detail: e.to_string(), ..Failed::rustls(typed) },
                    Ok(_) => fail(HandshakeFailure::Other, e.to_string()),
                };
                // The alert rustls queued, if the socket takes it now.
                let _ = tokio::time::timeout(std::time::Duration::ZERO, stream.flush(ring)).await;
                return Err(failed);
            }
            Err(e) => return Err(fail(HandshakeFailure::ClosedEarly, e.to_string())),
        }
    }
}
