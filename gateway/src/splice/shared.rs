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

/// `struct splice_frames`: one direction's WebSocket frame state.
#[repr(C)]
pub struct Frames {
    pub left: u64,
    pub seq: u64,
    pub head: [u8; 14],
    pub have: u8,
    pub flags: u8,
}

/// `SPLICE_FRAMES_UNKNOWN`: where frames end is not known.
pub const FRAMES_UNKNOWN: u8 = 1;
/// `SPLICE_FRAMES_IN_CLOSE`: the current (or last) frame is a Close.
pub const FRAMES_IN_CLOSE: u8 = 2;
/// `SPLICE_FRAMES_CLOSE_SEEN`: a whole Close frame has gone by.
pub const FRAMES_CLOSE_SEEN: u8 = 4;

/// `struct splice_conn`, one element of the `conns` array.
#[repr(C)]
pub struct Conn {
    pub dir: [Dir; 2],
    pub last_active_ns: u64,
    pub generation: u64,
    pub frames: [Frames; 2],
    pub draining: u64,
}

const _: () = assert!(size_of::<Link>() == 16);
const _: () = assert!(size_of::<Dir>() == 80);
const _: () = assert!(size_of::<Frames>() == 32);
const _: () = assert!(size_of::<Conn>() == 248);
const _: () = assert!(offset_of!(Conn, last_active_ns) == 160);
const _: () = assert!(offset_of!(Conn, frames) == 176);

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

/// Words of one direction's [`Frames`], for atomic access through the mmap: the
/// payload left, the update counter, then the 16 bytes of header, count and flags
/// as two words in the machine's byte order.
#[derive(Debug, Clone, Copy)]
pub enum FramesWord {
    Left,
    Seq,
    HeadLow,
    HeadHigh,
}

impl FramesWord {
    pub const fn offset(self, dir: usize) -> usize {
        let field = match self {
            FramesWord::Left => offset_of!(Frames, left),
            FramesWord::Seq => offset_of!(Frames, seq),
            FramesWord::HeadLow => offset_of!(Frames, head),
            FramesWord::HeadHigh => offset_of!(Frames, head) + 8,
        };
        offset_of!(Conn, frames) + dir * size_of::<Frames>() + field
    }
}

/// Byte offset of `draining` inside a [`Conn`].
pub const DRAINING: usize = offset_of!(Conn, draining);
