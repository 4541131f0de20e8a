//! Rust mirror of `ebpf/splice.h`: the values userspace writes into the maps
//! and the layout of the mmap-ed per-connection array. Must never drift from
//! the C header; the size assertions catch most drift at compile time.

use std::mem::{offset_of, size_of};

/// `SPLICE_DIR_TO_UPSTREAM`: bytes arriving on the client socket.
pub const TO_UPSTREAM: usize = 0;
/// `SPLICE_DIR_TO_CLIENT`: bytes arriving on the upstream socket.
pub const TO_CLIENT: usize = 1;

/// `struct splice_link`, the value of the `links` map.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub peer_cookie: u64,
    pub slot: u32,
    pub dir: u32,
}

/// `struct splice_dir`.
#[repr(C)]
pub struct Dir {
    pub redirected: u64,
    pub passed: u64,
    pub pass_runs: u64,
    pub held_max: u64,
    pub bound_base: u64,
    pub next_seq: u64,
    pub trimmed: u64,
    pub broken: u64,
    pub forwarded: u64,
    pub acked_base: u64,
}

/// `struct splice_conn`, one element of the `conns` array.
#[repr(C)]
pub struct Conn {
    pub dir: [Dir; 2],
    pub last_active_ns: u64,
    pub generation: u64,
}

const _: () = assert!(size_of::<Link>() == 16);
const _: () = assert!(size_of::<Dir>() == 80);
const _: () = assert!(size_of::<Conn>() == 176);
const _: () = assert!(offset_of!(Conn, last_active_ns) == 160);

/// Fields of [`Dir`] by byte offset, for atomic access through the mmap.
#[derive(Debug, Clone, Copy)]
pub enum DirField {
    Redirected,
    Passed,
    PassRuns,
    HeldMax,
    BoundBase,
    NextSeq,
    Trimmed,
    Broken,
    Forwarded,
    AckedBase,
}

impl DirField {
    pub const fn offset(self, dir: usize) -> usize {
        let field = match self {
            DirField::Redirected => offset_of!(Dir, redirected),
            DirField::Passed => offset_of!(Dir, passed),
            DirField::PassRuns => offset_of!(Dir, pass_runs),
            DirField::HeldMax => offset_of!(Dir, held_max),
            DirField::BoundBase => offset_of!(Dir, bound_base),
            DirField::NextSeq => offset_of!(Dir, next_seq),
            DirField::Trimmed => offset_of!(Dir, trimmed),
            DirField::Broken => offset_of!(Dir, broken),
            DirField::Forwarded => offset_of!(Dir, forwarded),
            DirField::AckedBase => offset_of!(Dir, acked_base),
        };
        dir * size_of::<Dir>() + field
    }
}

/// Byte offset of `last_active_ns` inside a [`Conn`].
pub const LAST_ACTIVE: usize = offset_of!(Conn, last_active_ns);
/// Byte offset of `generation` inside a [`Conn`].
pub const GENERATION: usize = offset_of!(Conn, generation);
