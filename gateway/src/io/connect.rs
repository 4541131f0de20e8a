//! The non-blocking connect to an upstream, with a timeout: a timed-out attempt is
//! closed at once, not left in flight. Waits on the worker's poll ring
//! ([`crate::readiness::Ring`]);
//! must never block a worker or leave a socket half set up.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_uring::net::TcpStream;

use super::socket::{cvt, setsockopt};
use crate::readiness::{self, Ring};

/// Connects to `addr` within `timeout`, from local address `source` if given; the
/// socket comes back in blocking mode with `TCP_NODELAY`, ready for `io_uring` reads and
/// writes. A source address is bound with `IP_BIND_ADDRESS_NO_PORT`, so the port is
/// chosen at connect time per destination and each source gets its own port range.
/// An unfinished connect waits on `ring`.
///
/// With `ack_on_head` (`TCP_QUICKACK` off before the connect, as HAProxy's
/// `tcp-smart-connect`), the kernel holds the handshake's last ACK (for up to 200 ms)
/// so that it rides on the first bytes sent, not in a segment of its own. The caller
/// sends its request head at once and then turns quick ACKs on
/// ([`super::set_quickack`]): a send within 40 ms of the handshake would otherwise
/// leave the socket delaying its ACKs, the upstream's answer's among them.
pub async fn connect(
    ring: &Ring,
    addr: SocketAddr,
    source: Option<IpAddr>,
    (timeout, ack_on_head): (Duration, bool),
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_nodelay(true)?;
    if ack_on_head {
        super::set_quickack(&socket, false)?;
    }
    if let Some(ip) = source {
        setsockopt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &1 as &libc::c_int)?;
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| io::Error::new(e.kind(), format!("binding source address {ip}: {e}")))?;
    }
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        // On loopback and fast links the handshake often completes within connect():
        // one poll(2) says so without a trip through the poll ring.
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) && poll_now(socket.as_raw_fd(), libc::POLLOUT) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            match tokio::time::timeout(timeout, ring.ready(&socket, readiness::WRITABLE)).await {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
                // Writable without an error or hang-up: connected, nothing to ask.
                Ok(Ok(mask)) if mask & (libc::POLLERR | libc::POLLHUP) as u32 == 0 => {}
                Ok(r) => {
                    r?;
                    if let Some(e) = socket.take_error()? {
                        return Err(e);
                    }
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "connect failed"));
                }
            }
        }
        Err(e) => return Err(e),
    }
    set_blocking(socket.as_raw_fd())?;
    Ok(TcpStream::from_std(socket.into()))
}

/// Whether `fd` reports `events` right now, without an error or hang-up (`poll(2)`
/// with no timeout).
fn poll_now(fd: RawFd, events: libc::c_short) -> bool {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n == 1 && p.revents & events != 0 && p.revents & (libc::POLLERR | libc::POLLHUP) == 0
}

/// Clears `O_NONBLOCK` in one call (`FIONBIO`), for `io_uring` reads and writes.
fn set_blocking(fd: RawFd) -> io::Result<()> {
    let off: libc::c_int = 0;
    // SAFETY: FIONBIO reads one c_int through the pointer.
    cvt(unsafe { libc::ioctl(fd, libc::FIONBIO, &raw const off) })?;
    Ok(())
}
