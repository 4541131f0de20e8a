//! Whether this kernel has kTLS (the `tls` upper-layer protocol), found by asking it:
//! a loopback TCP pair is made and `TCP_ULP "tls"` set on one end, which loads the
//! module where it is one. Said once at start when a TLS listener is configured, and
//! by `wsgate check`.
//!
//! Today every TLS pair is relayed in userspace (`crate::relay_tls`), with or without
//! kTLS. Where the kernel has it, the design for splicing TLS pairs is:
//!
//! 1. Handshake in userspace with rustls as now, then export the traffic secrets
//!    (`dangerous_extract_secrets`, which needs `enable_secret_extraction`) once the
//!    connection is established and no record is buffered in rustls (any plaintext
//!    rustls already decrypted is relayed by userspace first, like the bytes held
//!    after a 101 today).
//! 2. **Insert the client socket into the sockmap first, then** set `TCP_ULP "tls"` and
//!    `TLS_TX`/`TLS_RX` with the keys and record sequence numbers: a socket that already
//!    has the TLS ULP cannot be inserted into a sockmap (the kernel's `sockmap_ktls`
//!    selftest expects that update to fail).
//! 3. Receive order is TCP → TLS → BPF: the verdict program sees decrypted records, but
//!    it runs only from `recvmsg` on the kTLS socket (not from `data_ready` as on a
//!    plain socket), so a pair is not spliced in the kernel alone: a reader on the
//!    client socket must keep calling `recvmsg` (which then redirects without copying
//!    to userspace). The upstream side, plaintext, redirects as today.
//! 4. Taking a pair back (drain, pressure) must read what the TLS layer holds first;
//!    the record sequence numbers move with the keys if the pair returns to rustls,
//!    which rustls cannot import: a pair taken back from kTLS stays on kTLS (userspace
//!    reads and writes plaintext through it) until it ends.
//!
//! None of this runs here (this kernel has no kTLS: `CONFIG_TLS` is off); the probe
//! exists so a log line says which machine can take the path once it is built.
//!
//! Must never: leave the probe's sockets open, or fail start-up (the probe's answer is
//! information, not a precondition).

use std::net::{Ipv4Addr, TcpListener, TcpStream};

use nix::sys::socket::{setsockopt, sockopt::TcpUlp};

/// What the kernel said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ktls {
    /// `TCP_ULP "tls"` was accepted.
    Available,
    /// It was not; why, in words.
    Missing(String),
}

impl std::fmt::Display for Ktls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Available => f.write_str("kTLS is available (TLS pairs are still relayed in userspace)"),
            Self::Missing(why) => write!(f, "no kTLS on this kernel ({why}): TLS pairs are relayed in userspace"),
        }
    }
}

/// Asks the kernel, over a loopback pair made and closed here.
pub fn probe() -> Ktls {
    let pair = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr().and_then(|a| TcpStream::connect(a).map(|c| (l, c))));
    let (_listener, conn) = match pair {
        Ok(p) => p,
        Err(e) => return Ktls::Missing(format!("could not make a loopback socket to ask: {e}")),
    };
    match setsockopt(&conn, TcpUlp::default(), b"tls") {
        Ok(()) => Ktls::Available,
        Err(nix::errno::Errno::ENOENT) => Ktls::Missing("TCP_ULP \"tls\": no such module; CONFIG_TLS is off".into()),
        Err(e) => Ktls::Missing(format!("TCP_ULP \"tls\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    /// The probe agrees with the kernel's own list: after it asked (which loads the
    /// module where there is one), `tcp_available_ulp` names `tls` exactly when the
    /// probe found kTLS.
    #[test]
    fn probe_agrees_with_tcp_available_ulp() {
        let found = super::probe();
        let listed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").expect("tcp_available_ulp");
        let has_tls = listed.split_whitespace().any(|u| u == "tls");
        assert_eq!(found == super::Ktls::Available, has_tls, "probe said {found:?}, kernel lists {listed:?}");
        println!("{found}");
    }
}
