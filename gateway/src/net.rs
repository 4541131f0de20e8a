//! Socket operations that `io_uring` does not cover: non-blocking connect with a
//! timeout (so a timed-out attempt is closed at once, not left in flight), peeking,
//! draining, and socket options. Waiting is always done on the poll ring
//! ([`crate::readiness`]); nothing here blocks a worker.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_uring::net::TcpStream;

use crate::readiness;

/// Connects to `addr` within `timeout`, from local address `source` if given; the
/// socket comes back in blocking mode with `TCP_NODELAY`, ready for `io_uring` reads and
/// writes. A source address is bound with `IP_BIND_ADDRESS_NO_PORT`, so the port is
/// chosen at connect time per destination and each source gets its own port range.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        setsockopt_int(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
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
            match tokio::time::timeout(timeout, readiness::ready(&socket, readiness::WRITABLE)).await {
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
    let r = unsafe { libc::ioctl(fd, libc::FIONBIO, &raw const off) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Writes all of `bytes` to `to`: at once when it fits in the socket buffer (the
/// usual case for a head), the rest by io_uring, which waits for room.
pub async fn write_all(to: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    use tokio_uring::buf::BoundedBuf;
    let sent = send_now(to, &bytes)?;
    if sent == bytes.len() {
        return Ok(());
    }
    to.write_all(bytes.slice(sent..)).await.0
}

/// Reads what is queued without consuming it (`MSG_PEEK | MSG_DONTWAIT`).
/// `Ok(0)` is end of stream; `WouldBlock` means nothing is queued.
pub fn peek(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(fd.as_raw_fd(), buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Non-blocking receive (`MSG_DONTWAIT`), for draining a queue down to empty.
pub fn recv_now(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_flags(fd.as_raw_fd(), buf, libc::MSG_DONTWAIT)
}

fn recv_flags(fd: RawFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.unsigned_abs()) }
}

/// Receives into the spare capacity of `buf` without blocking and extends its length.
/// `WouldBlock` means nothing is queued.
pub fn recv_into(fd: &impl AsRawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable for `spare.len()` bytes; the kernel writes at most that.
    let n = unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n.unsigned_abs();
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Sends what fits in the socket's buffer without blocking (`MSG_DONTWAIT`,
/// `MSG_NOSIGNAL`); returns the bytes taken, 0 when the buffer is full.
pub fn send_now(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for `data.len()` bytes for the whole call.
    let n = unsafe {
        libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n >= 0 {
        return Ok(n.unsigned_abs());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) }
}

/// Sets `SO_RCVLOWAT`: readiness (`POLLIN`) is reported only once `bytes` are queued.
pub fn set_rcvlowat(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, i32::try_from(bytes).unwrap_or(i32::MAX))
}

/// Makes the next close send RST instead of FIN (`SO_LINGER` 0): used to pass a reset on.
pub fn set_linger_zero(fd: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a valid `struct linger` and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a valid int and its exact size is passed.
    let r =
        unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<i32>() as libc::socklen_t) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `shutdown(2)` that ignores "not connected" (the peer may already be gone).
pub fn shutdown(fd: &impl AsRawFd, how: std::net::Shutdown) {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a descriptor the caller owns.
    unsafe { libc::shutdown(fd.as_raw_fd(), how) };
}

/// Whether an I/O error means the peer reset the connection.
pub fn is_reset(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED | libc::ETIMEDOUT))
}
