//! Socket calls on a descriptor someone else owns: non-blocking reads and writes,
//! options, TCP state. Each takes the descriptor by reference (a stream or a raw fd)
//! and must never close it, block, or keep it past the call.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{SockAddr, SockRef};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

/// Runs `f` with a socket2 view of `fd`.
pub(super) fn with_sock<T>(fd: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: `fd` is borrowed for the whole call, so its descriptor stays open; the
    // view lives only inside `f` and never closes it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    f(SockRef::from(&borrowed))
}

pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn getsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &mut T) -> io::Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a valid, writable `T` and `len` its size; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockopt(fd, level, name, std::ptr::from_mut(value).cast(), &raw mut len) })?;
    Ok(())
}

pub(super) fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a valid `T` of `len` bytes that the kernel only reads.
    cvt(unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(value).cast(), len) })?;
    Ok(())
}

/// `recvfrom(2)` as a bare system call. libc's `recv` and `send` are thread
/// cancellation points, and in a process with threads each call enters and leaves the
/// asynchronous cancel state around the system call (two atomic updates); no wsgate
/// thread is ever cancelled, and these calls run several times per handshake.
fn sys_recv(fd: RawFd, buf: *mut u8, len: usize, flags: libc::c_int) -> io::Result<usize> {
    let (none, nolen) = (std::ptr::null_mut::<libc::sockaddr>(), std::ptr::null_mut::<libc::socklen_t>());
    // SAFETY: `buf` is valid for writes of `len` bytes (the callers' contract); no
    // address is asked for.
    let n = unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf, len, flags, none, nolen) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `sendto(2)` without an address, as a bare system call (see [`sys_recv`]).
fn sys_send(fd: RawFd, data: &[u8], flags: libc::c_int) -> io::Result<usize> {
    let (none, nolen) = (std::ptr::null::<libc::sockaddr>(), 0 as libc::socklen_t);
    // SAFETY: `data` is valid for reads of its length for the whole call.
    let n = unsafe { libc::syscall(libc::SYS_sendto, fd, data.as_ptr(), data.len(), flags, none, nolen) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Takes a connection off `listener`'s queue without blocking (`accept4(2)`,
/// close-on-exec, as a bare system call: see [`sys_recv`]), with its peer's address.
/// `WouldBlock` means the queue is empty.
pub fn accept(listener: &impl AsRawFd) -> io::Result<(OwnedFd, SockAddr)> {
    let fd = listener.as_raw_fd();
    // SAFETY: the kernel writes at most `len` bytes of address into the storage
    // socket2 lends, and sets `len` to what it wrote.
    let (accepted, peer) = unsafe {
        SockAddr::try_init(|addr, len| {
            let r = libc::syscall(libc::SYS_accept4, fd, addr, len, libc::SOCK_CLOEXEC);
            RawFd::try_from(r).ok().filter(|&r| r >= 0).ok_or_else(io::Error::last_os_error)
        })
    }?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(accepted) }, peer))
}

/// Writes all of `bytes` to `to`: at once when it fits in the socket buffer (the
/// usual case for a head), the rest by io_uring, which waits for room.
pub async fn write_all(to: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    let sent = send_now(to, &bytes)?;
    if sent == bytes.len() {
        return Ok(());
    }
    to.write_all(bytes.slice(sent..)).await.0
}

/// Non-blocking `recv` (`MSG_DONTWAIT` added to `flags`). `Ok(0)` is end of stream;
/// `WouldBlock` means nothing is queued.
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    sys_recv(fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), flags | libc::MSG_DONTWAIT)
}

/// Reads what is queued without consuming it (`MSG_PEEK`), without blocking.
pub fn peek(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv(fd, buf, libc::MSG_PEEK)
}

/// Receives into the spare capacity of `buf` without blocking and extends its length.
/// `WouldBlock` means nothing is queued.
pub fn recv_into(fd: &impl AsRawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    recv_into_max(fd, buf, usize::MAX)
}

/// Like [`recv_into`], taking at most `limit` bytes.
pub fn recv_into_max(fd: &impl AsRawFd, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    let limit = limit.min(spare.len());
    let n = sys_recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), limit, libc::MSG_DONTWAIT)?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Non-blocking `send` without `SIGPIPE`; `WouldBlock` when the buffer is full.
pub fn send(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    sys_send(fd.as_raw_fd(), data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Sends what fits in the socket's buffer without blocking; returns the bytes taken,
/// 0 when the buffer is full.
pub fn send_now(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    send_now_flagged(fd, data, 0)
}

/// Like [`send_now`], telling the kernel that more follows (`MSG_MORE`): a short send
/// is held back (until the next send, a shutdown, or an ACK that pushes it), so that a
/// `shutdown` right after sends it with the FIN in one segment.
pub fn send_now_more(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    send_now_flagged(fd, data, libc::MSG_MORE)
}

/// [`send_now`] with `flags` added to [`send`]'s.
fn send_now_flagged(fd: &impl AsRawFd, data: &[u8], flags: libc::c_int) -> io::Result<usize> {
    match sys_send(fd.as_raw_fd(), data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | flags) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

/// Whether the peer's FIN is the next thing queued on `fd` (a peek without waiting
/// finds the end of the stream).
pub fn fin_next(fd: &impl AsRawFd) -> bool {
    matches!(peek(fd, &mut [0u8; 1]), Ok(0))
}

/// Sets `SO_RCVLOWAT`: readiness (`POLLIN`) is reported only once `bytes` are queued.
/// Setting it (even to 1) also makes the kernel run a sockmap verdict over bytes
/// queued before the socket was inserted.
pub fn set_rcvlowat(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let bytes: libc::c_int = i32::try_from(bytes).unwrap_or(i32::MAX);
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, &bytes)
}

/// `TCP_QUICKACK`: `false` delays the socket's ACKs so that they ride on the next data
/// it sends (until the delayed-ACK timer first fires); `true` acknowledges at once
/// again, sending an ACK that is due. A listening socket's setting passes to the
/// sockets it accepts.
pub fn set_quickack(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_QUICKACK, &libc::c_int::from(on))
}

/// `SO_LINGER {on, 0}`: closing the socket sends RST instead of FIN (passes a reset on).
pub fn reset_on_close(fd: &impl AsRawFd) -> io::Result<()> {
    with_sock(fd, |s| s.set_linger(Some(Duration::ZERO)))
}

/// `shutdown(2)`.
pub fn shutdown(fd: &impl AsRawFd, how: Shutdown) -> io::Result<()> {
    with_sock(fd, |s| s.shutdown(how))
}

/// `shutdown(2)` whose failure does not matter (the peer may already be gone).
pub fn shutdown_quietly(fd: &impl AsRawFd, how: Shutdown) {
    let _ = shutdown(fd, how);
}

/// The socket's cookie (`SO_COOKIE`), its key in the sockhash.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    with_sock(fd, |s| s.cookie())
}

/// A second descriptor for the same open socket (`F_DUPFD_CLOEXEC`).
pub fn dup(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is borrowed for the whole call, so its descriptor stays open.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }.try_clone_to_owned()
}

/// What the splice needs of `TCP_INFO`.
#[derive(Debug, Clone, Copy)]
pub struct TcpProgress {
    /// `tcpi_state` (1 = `ESTABLISHED`, 8 = `CLOSE_WAIT`, …).
    pub state: u8,
    /// Bytes of this socket's output the peer has acknowledged, ever.
    pub bytes_acked: u64,
}

/// `tcpi_state` values the splice distinguishes.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// The socket's TCP state and acknowledged bytes (`TCP_INFO`).
pub fn tcp_progress(fd: &impl AsRawFd) -> io::Result<TcpProgress> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { zeroed() };
    getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(TcpProgress { state: info.tcpi_state, bytes_acked: info.tcpi_bytes_acked })
}

/// Bytes written to the socket and not yet acknowledged by its peer (`SIOCOUTQ`).
pub fn unacked(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A socket's fd number, for registering a socket that something else owns with
/// tokio's reactor; dropping it closes nothing.
#[derive(Debug)]
pub struct RawSocket(RawFd);

impl RawSocket {
    pub fn of(s: &impl AsRawFd) -> Self {
        Self(s.as_raw_fd())
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
