//! The bpf(2) map calls and the shared memory of the kernel splice, and the clock its
//! program stamps activity with. Must never hand the kernel a pointer to anything but
//! a live, fully initialised value of the size it is told.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

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
