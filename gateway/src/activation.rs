//! Socket activation (systemd `wsgate.socket`, `LISTEN_FDS`): listening sockets the
//! service manager opened and passed to this process, which wsgate serves instead of
//! binding its own. The service manager keeps them open across a restart of wsgate,
//! so connections that arrive meanwhile wait in their listen queue instead of being
//! refused.
//!
//! Each passed socket must be a listening TCP socket whose local address is exactly a
//! `[[listener]] address` of the configuration (`ListenStream=0.0.0.0:80` for `address =
//! "0.0.0.0:80"`); a listener without a passed socket is bound as usual. A passed
//! socket that matches no listener, is not a listening TCP socket, or two that share
//! an address, are refused at start with the descriptor and address named: serving a
//! socket nobody configured, or silently not serving one, would both surprise. All
//! workers accept from the one passed socket of a listener (each its own duplicate).
//! The environment (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) is read once and
//! removed, as `sd_listen_fds(3)` does.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Socket, Type};

/// Why the passed sockets cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Environment(std::io::Error),
    #[error("socket activation: descriptor {fd} ({name}) is not a listening TCP socket{detail}")]
    NotListening { fd: RawFd, name: String, detail: String },
    #[error("socket activation: descriptors {0} and {1} both listen on {2}")]
    Twice(RawFd, RawFd, SocketAddr),
    #[error(
        "socket activation: descriptor {fd} ({name}) listens on {addr}, which is no [[listener]] address \
         (the configured ones: {configured}); give the socket unit's ListenStream= the same address"
    )]
    Unmatched { fd: RawFd, name: String, addr: SocketAddr, configured: String },
}

/// One passed listening socket.
#[derive(Debug)]
pub struct Passed {
    pub fd: RawFd,
    /// Its `FileDescriptorName=` (`unknown` when the service manager gave none).
    pub name: String,
    pub addr: SocketAddr,
    pub socket: Socket,
}

/// The listening sockets passed to this process (none when it was not socket
/// activated), checked; the environment that named them is removed.
///
/// # Errors
/// A malformed environment, or a passed descriptor that is not a listening TCP socket
/// (it is closed), or two on one address.
pub fn take() -> Result<Vec<Passed>, ActivationError> {
    let fds = sd_notify::listen_fds_with_names(true).map_err(ActivationError::Environment)?;
    let mut passed: Vec<Passed> = Vec::new();
    for (fd, name) in fds {
        // SAFETY: `sd_listen_fds` protocol: LISTEN_PID named this process and the
        // service manager passed descriptors 3..3+LISTEN_FDS for it to own; they are
        // taken once (the environment is gone now) and nothing else in this process
        // uses these numbers.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let p = check(fd, name, owned)?;
        if let Some(other) = passed.iter().find(|o| o.addr == p.addr) {
            return Err(ActivationError::Twice(other.fd, p.fd, p.addr));
        }
        passed.push(p);
    }
    Ok(passed)
}

/// `owned` as a listening TCP socket with its address.
fn check(fd: RawFd, name: String, owned: OwnedFd) -> Result<Passed, ActivationError> {
    let not = |detail: String| ActivationError::NotListening { fd, name: name.clone(), detail };
    let borrowed: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(&owned);
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| not(format!(": {e}")))?;
    let socket = Socket::from(owned);
    let stream = socket.r#type().map_err(|e| not(format!(": {e}")))? == Type::STREAM;
    let addr = socket.local_addr().map_err(|e| not(format!(": {e}")))?;
    let Some(addr) = addr.as_socket().filter(|_| listening && stream) else {
        return Err(not(String::new()));
    };
    Ok(Passed { fd, name, addr, socket })
}

/// Takes the passed socket listening on `addr`, if there is one.
pub fn claim(passed: &mut Vec<Passed>, addr: SocketAddr) -> Option<Passed> {
    let i = passed.iter().position(|p| p.addr == addr)?;
    Some(passed.swap_remove(i))
}

/// The error for a passed socket no listener claimed.
pub fn unmatched(p: Passed, configured: &[SocketAddr]) -> ActivationError {
    let configured = configured.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    ActivationError::Unmatched { fd: p.fd, name: p.name, addr: p.addr, configured }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_tcp_socket_is_taken_with_its_address_and_others_are_refused() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let taken = check(7, "http".into(), OwnedFd::from(tcp)).unwrap();
        assert_eq!((taken.addr, taken.name.as_str()), (addr, "http"));

        // Bound but not listening.
        let bound = Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        bound.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let err = check(8, "x".into(), OwnedFd::from(bound)).unwrap_err();
        assert!(err.to_string().contains("descriptor 8 (x) is not a listening TCP socket"), "{err}");

        // UDP.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check(9, "u".into(), OwnedFd::from(udp)).is_err());

        let mut passed = vec![taken];
        assert!(claim(&mut passed, "127.0.0.1:1".parse().unwrap()).is_none());
        assert!(claim(&mut passed, addr).is_some() && passed.is_empty());
    }
}
