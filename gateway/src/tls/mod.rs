//! TLS termination with rustls: the certificates of a TLS listener ([`certs`]), chosen
//! by SNI ([`sni`]), the rustls server configuration built from `[listener.tls]`
//! ([`acceptor`]), the handshake of one accepted connection ([`handshake`]) and the
//! encrypted stream the connection phases then read and write ([`stream`]), and the
//! client side towards TLS upstreams ([`connector`], its handshakes counted by reason in
//! [`upstream_handshakes`]).
//!
//! TLS 1.2 and 1.3 only, rustls's safe defaults, ALPN `http/1.1`, an OCSP staple from a
//! file ([`ocsp`]). This kernel has no kTLS ([`ktls`] asks the kernel, and holds the
//! design for splicing TLS pairs where it exists), so a TLS pair is always relayed in
//! userspace (`crate::relay_tls`); this
//! module must never hand a TLS socket to the kernel splice, nor log a failed
//! handshake at error level (clients cause them: they are counted by reason).

pub mod acceptor;
pub mod certs;
pub mod connector;
pub mod handshake;
pub mod ktls;
pub mod ocsp;
pub mod sni;
pub mod stream;
pub mod upstream_handshakes;

pub use acceptor::{Acceptor, TlsSetupError};
pub use connector::Connector;
pub use handshake::{HandshakeFailure, HandshakeStats};
pub use stream::TlsStream;
pub use upstream_handshakes::{UpstreamHandshakeFailure, UpstreamHandshakeStats};
