//! Thin, safe wrappers over the socket and bpf(2) calls the splice needs.
//!
//! Every `unsafe` of the splice module that talks to the kernel lives here, each
//! one a single call with a fully initialised argument. Nothing here blocks:
//! sockets are non-blocking and the map calls are plain syscalls.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn getsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &mut T) -> io::Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a valid, writable `T` and `len` its size; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockopt(fd, level, name, std::ptr::from_mut(value).cast(), &raw mut len) })?;
    Ok(())
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a valid `T` of `len` bytes that the kernel only reads.
    cvt(unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(value).cast(), len) })?;
    Ok(())
}

/// The socket's cookie (`SO_COOKIE`), its key in the sockhash.
pub fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut c = 0u64;
    getsockopt(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut c)?;
    Ok(c)
}

/// What the splice needs of `TCP_INFO`.
#[derive(Debug, Clone, Copy)]
pub struct TcpProgress {
    /// `tcpi_state` (1 = `ESTABLISHED`, 8 = `CLOSE_WAIT`, …).
    pub state: u8,
    /// Bytes of this socket's output the peer has acknowledged, ever.
    pub bytes_acked: u64,
}

pub fn tcp_progress(fd: RawFd) -> io::Result<TcpProgress> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { zeroed() };
    getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(TcpProgress { state: info.tcpi_state, bytes_acked: info.tcpi_bytes_acked })
}

/// `tcpi_state` values the splice distinguishes.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;

fn ioctl_int(fd: RawFd, req: libc::Ioctl) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one c_int through the pointer.
    cvt(unsafe { libc::ioctl(fd, req, &raw mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Bytes written to the socket and not yet acknowledged by its peer (`SIOCOUTQ`).
pub fn unacked(fd: RawFd) -> io::Result<usize> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// `SO_RCVLOWAT = 1`: makes the kernel run the verdict over bytes queued before insertion.
pub fn kick(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, &1 as &libc::c_int)
}

/// `SO_LINGER {on, 0}`: closing the socket sends RST instead of FIN.
pub fn set_reset_on_close(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &libc::linger { l_onoff: 1, l_linger: 0 })
}

/// `shutdown(fd, SHUT_WR)`: sends FIN after everything queued.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

/// A second descriptor for the same open socket (`F_DUPFD_CLOEXEC`).
pub fn dup(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` only creates a descriptor; on success it is new and
    // owned by no one else.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(new) })
}

/// Non-blocking `recv`; `flags` may add `MSG_PEEK`.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.cast_unsigned()) }
}

/// Non-blocking `send` without `SIGPIPE`.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.cast_unsigned()) }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`
/// (read through the vDSO, no syscall).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    (ts.tv_sec.cast_unsigned()).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec.cast_unsigned())
}

/// `union bpf_attr` as used by the map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;

fn bpf(cmd: libc::c_long, attr: &MapElemAttr) -> io::Result<()> {
    // SAFETY: `attr` is a fully initialised bpf_attr prefix of the size passed; the
    // key/value pointers in it point to live buffers of the map's key/value size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<MapElemAttr>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn elem_attr<K, V>(map: RawFd, key: &K, value: *const V, flags: u64) -> MapElemAttr {
    MapElemAttr {
        map_fd: map.cast_unsigned(),
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value as u64,
        flags,
    }
}

/// `BPF_MAP_UPDATE_ELEM`. For a sockhash the value is the socket's fd (`u32`).
pub fn map_update<K, V>(map: RawFd, key: &K, value: &V, flags: u64) -> io::Result<()> {
    bpf(BPF_MAP_UPDATE_ELEM, &elem_attr(map, key, std::ptr::from_ref(value), flags))
}

/// `BPF_MAP_DELETE_ELEM`.
pub fn map_delete<K>(map: RawFd, key: &K) -> io::Result<()> {
    bpf(BPF_MAP_DELETE_ELEM, &elem_attr::<K, u8>(map, key, std::ptr::null(), 0))
}

/// Keys of a map with `u64` keys (one syscall per key: diagnostics only; a
/// userspace lookup cannot test a sockhash with 4-byte values, it always says ENOSPC).
pub fn keys(map: RawFd) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut key = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        let attr = if first {
            MapElemAttr { map_fd: map.cast_unsigned(), ..MapElemAttr::default() }
        } else {
            elem_attr(map, &key, std::ptr::from_mut(&mut next), 0)
        };
        let attr = MapElemAttr { value: std::ptr::from_mut(&mut next) as u64, ..attr };
        match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(()) => {
                out.push(next);
                key = next;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// A shared read-write mapping of an mmap-able BPF array.
pub struct MapMmap {
    base: *mut std::sync::atomic::AtomicU64,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics.
unsafe impl Send for MapMmap {}
// SAFETY: as above.
unsafe impl Sync for MapMmap {}

impl MapMmap {
    pub fn new(map: RawFd, len: usize) -> io::Result<Self> {
        let page = 4096;
        let len = len.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, map, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { base: ptr.cast(), len })
    }

    /// The `u64` at byte `offset` (8-aligned, inside the mapping) as an atomic.
    pub fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len, "map word out of range");
        // SAFETY: in bounds and 8-aligned (page-aligned base) per the assert; the
        // memory lives as long as `self`, and the kernel side uses word-sized accesses.
        unsafe { &*self.base.add(offset / 8) }
    }
}

impl Drop for MapMmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no references outlive `self`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
