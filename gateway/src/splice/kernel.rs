//! The kernel side of a spliced pair, seen from userspace: the loaded maps and
//! the per-connection state array ([`Inner`]), the slots of that array, and the
//! insertion and release of a pair in the exact order DESIGN.md measured (publish
//! the state and the peer links, insert the client, insert the upstream, flush with
//! `SO_RCVLOWAT`; release only after both sockets are closed).
//!
//! A leaf of the splice: imports nothing of it but the C mirror (`shared`) and the
//! counters. Must never read or write a socket's payload, and never take a socket
//! out of the sockhash while its psock may still queue bytes (except the one
//! failed-insert path below, which fails the pair).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::Ebpf;
use aya::maps::{MapData, SockHash};

use super::counters::Counters;
use super::frame_state;
use super::shared::{self, Conn, DirField, FramesWord, Link, TO_CLIENT, TO_UPSTREAM};
use crate::drain::FrameTracker;

/// [`Inner::upgrade`]: the maps are this process's own.
pub(super) const OWN: u8 = 0;
/// [`Inner::upgrade`]: offered to a new process, which decides.
pub(super) const FROZEN: u8 = 1;
/// [`Inner::upgrade`]: the new process took the maps; parked pairs go to it.
pub(super) const HANDING: u8 = 2;

/// Reads of a direction's frames before giving up on a consistent one (each verdict
/// keeps `seq` odd for a few microseconds).
const FREEZE_TRIES: u32 = 10_000;

/// Where one direction's frames stood when the program stopped following them, and
/// the bytes it had passed to userspace by then (the frames count them: the bytes
/// userspace has yet to read of those are behind the frames' position).
#[derive(Debug, Clone, Copy)]
pub(super) struct Frozen {
    pub frames: FrameTracker,
    pub passed: u64,
}

/// The loaded program, its maps and the free slots; shared by every worker.
pub(super) struct Inner {
    /// Keeps the program attached; only touched at load, drop and a binary upgrade
    /// (which leaves the program attached for the new process: `None` then, and in a
    /// process that adopted an old one's maps).
    pub(super) ebpf: Mutex<Option<Ebpf>>,
    /// A binary upgrade: no slot is allocated any more ([`HANDING`] once the new process
    /// took the maps, [`FROZEN`] while it decides, [`OWN`] normally).
    pub(super) upgrade: std::sync::atomic::AtomicU8,
    pub(super) _sock_hash: SockHash<MapData, u64>,
    pub(super) _links: MapData,
    pub(super) conns_data: MapData,
    pub sock_hash_fd: RawFd,
    pub links_fd: RawFd,
    pub(super) conns: crate::io::bpf::MapMmap,
    /// Free slots of the `conns` array, oldest first so a slot rests as long as
    /// possible before reuse. Held for one push or pop per splice: never across a syscall.
    pub(super) free: Mutex<VecDeque<u32>>,
    pub capacity: u32,
    pub budget: u64,
    pub counters: Counters,
}

impl Inner {
    pub fn alloc_slot(&self) -> Option<u32> {
        if self.upgrade.load(Ordering::Acquire) != OWN {
            return None;
        }
        let slot = self.free.lock().ok()?.pop_front()?;
        let base = slot as usize * size_of::<Conn>();
        for dir in 0..2 {
            for f in [
                DirField::Redirected,
                DirField::Passed,
                DirField::PassRuns,
                DirField::HeldMax,
                DirField::BoundBase,
                DirField::NextSeq,
                DirField::Trimmed,
                DirField::Broken,
                DirField::Forwarded,
                DirField::AckedBase,
            ] {
                self.conns.word(base + f.offset(dir)).store(0, Ordering::Relaxed);
            }
        }
        for dir in 0..2 {
            for w in [FramesWord::Left, FramesWord::Seq, FramesWord::HeadLow, FramesWord::HeadHigh] {
                self.conns.word(base + w.offset(dir)).store(0, Ordering::Relaxed);
            }
        }
        self.conns.word(base + shared::DRAINING).store(0, Ordering::Relaxed);
        self.conns.word(base + shared::LAST_ACTIVE).store(crate::io::bpf::coarse_now_ns(), Ordering::Relaxed);
        self.conns.word(base + shared::GENERATION).fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    pub fn free_slot(&self, slot: u32) {
        if let Ok(mut f) = self.free.lock() {
            f.push_back(slot);
        }
    }

    /// One field of one direction of a slot, shared with the program.
    pub fn dir_word(&self, slot: u32, dir: usize, field: DirField) -> &AtomicU64 {
        self.conns.word(slot as usize * size_of::<Conn>() + field.offset(dir))
    }

    /// One word of one direction's frame state, shared with the program.
    pub fn frames_word(&self, slot: u32, dir: usize, word: FramesWord) -> &AtomicU64 {
        self.conns.word(slot as usize * size_of::<Conn>() + word.offset(dir))
    }

    /// The slot's drain flag: non-zero makes the program pass every skb of the pair.
    fn draining(&self, slot: u32) -> &AtomicU64 {
        self.conns.word(slot as usize * size_of::<Conn>() + shared::DRAINING)
    }

    /// Makes the program pass every later skb of `slot` to userspace without following
    /// its frames, and returns where each direction's frames stood then (client→upstream,
    /// upstream→client).
    ///
    /// The program bumps a direction's `seq` (an atomic add) before it reads the flag,
    /// and again once its frames and counters are updated. The flag is stored before
    /// `seq` is read (both sequentially consistent), so once `seq` reads even, every
    /// later verdict sees the flag: the frames stay where they are from then on, and a
    /// read of them and of `passed` between two equal even reads of `seq` is one picture.
    pub fn freeze_frames(&self, slot: u32) -> [Frozen; 2] {
        self.draining(slot).store(1, Ordering::SeqCst);
        [TO_UPSTREAM, TO_CLIENT].map(|dir| self.frozen(slot, dir))
    }

    fn frozen(&self, slot: u32, dir: usize) -> Frozen {
        let seq = self.frames_word(slot, dir, FramesWord::Seq);
        let word = |w| self.frames_word(slot, dir, w).load(Ordering::SeqCst);
        for _ in 0..FREEZE_TRIES {
            let before = seq.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words = frame_state::Words {
                left: word(FramesWord::Left),
                head_low: word(FramesWord::HeadLow),
                head_high: word(FramesWord::HeadHigh),
            };
            let passed = self.dir_word(slot, dir, DirField::Passed).load(Ordering::SeqCst);
            if seq.load(Ordering::SeqCst) == before {
                return Frozen { frames: frame_state::decode(words), passed };
            }
        }
        // A direction so busy that no read fell between two verdicts: no boundary.
        Frozen { frames: FrameTracker::lost(), passed: 0 }
    }

    /// The slot's last-activity stamp (`CLOCK_MONOTONIC_COARSE` ns).
    pub fn last_active(&self, slot: u32) -> &AtomicU64 {
        self.conns.word(slot as usize * size_of::<Conn>() + shared::LAST_ACTIVE)
    }

    /// The slot's generation, bumped each time the slot is handed to a new pair.
    pub fn generation(&self, slot: u32) -> &AtomicU64 {
        self.conns.word(slot as usize * size_of::<Conn>() + shared::GENERATION)
    }
}

/// A pair in the kernel: its sockets, its slot and cookies, and the client bytes
/// forwarded during the handover. Moved, never shared: whoever holds it owns the pair.
pub(super) struct Pair {
    pub client: OwnedFd,
    pub upstream: OwnedFd,
    pub ins: Inserted,
    pub early: u64,
}

/// A pair that is in the kernel: its slot and both cookies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inserted {
    pub slot: u32,
    pub client_cookie: u64,
    pub upstream_cookie: u64,
}

/// Bytes ever handed to `fd` to send: its peer's acknowledged bytes plus what is still
/// unacknowledged, read as a consistent pair (the two reads are repeated until no
/// acknowledgement came between them: one landing there would make the sum too small,
/// and the splice would then believe redirected bytes delivered before they are).
/// Nothing writes to `fd` meanwhile. Also checks the socket is still established.
fn written_so_far(fd: RawFd) -> Result<u64, InsertError> {
    let mut acked = crate::io::tcp_progress(&fd).map_err(InsertError::Failed)?;
    for _ in 0..16 {
        if acked.state != crate::io::TCP_ESTABLISHED {
            return Err(InsertError::NotSpliceable("a side is no longer established"));
        }
        let unacked = crate::io::unacked(&fd).map_err(InsertError::Failed)? as u64;
        let again = crate::io::tcp_progress(&fd).map_err(InsertError::Failed)?;
        if again.bytes_acked == acked.bytes_acked {
            return Ok(acked.bytes_acked + unacked);
        }
        acked = again;
    }
    Err(InsertError::NotSpliceable("acknowledgements kept arriving"))
}

pub(super) enum InsertError {
    NotSpliceable(&'static str),
    Failed(io::Error),
}

/// Publishes the state and links of a pair, inserts both sockets and kicks
/// them. Both receive queues must be untouched or drained to EAGAIN. `frames`
/// (client→upstream, upstream→client) is where the WebSocket frames stand at the
/// first byte the program will see in each direction.
pub(super) fn insert_pair(
    inner: &Inner,
    client: RawFd,
    upstream: RawFd,
    frames: [FrameTracker; 2],
) -> Result<Inserted, InsertError> {
    // What each socket has been given to send so far (client, upstream), before the
    // program counts anything; also checks both are still established.
    let written = [written_so_far(client)?, written_so_far(upstream)?];
    let client_cookie = crate::io::cookie(&client).map_err(InsertError::Failed)?;
    let upstream_cookie = crate::io::cookie(&upstream).map_err(InsertError::Failed)?;
    let slot = inner.alloc_slot().ok_or(InsertError::NotSpliceable("splice capacity reached"))?;
    let ins = Inserted { slot, client_cookie, upstream_cookie };
    for (dir, tracker) in [(TO_UPSTREAM, &frames[0]), (TO_CLIENT, &frames[1])] {
        let w = frame_state::encode(tracker);
        inner.frames_word(slot, dir, FramesWord::Left).store(w.left, Ordering::Relaxed);
        inner.frames_word(slot, dir, FramesWord::HeadLow).store(w.head_low, Ordering::Relaxed);
        inner.frames_word(slot, dir, FramesWord::HeadHigh).store(w.head_high, Ordering::Relaxed);
    }
    let result = publish_and_insert(inner, client, upstream, ins, written);
    if let Err(e) = result {
        let _ = crate::io::bpf::map_delete(inner.links_fd, &client_cookie);
        let _ = crate::io::bpf::map_delete(inner.links_fd, &upstream_cookie);
        inner.free_slot(slot);
        return Err(e);
    }
    Ok(ins)
}

/// `written`: [`written_so_far`] of the client and of the upstream.
fn publish_and_insert(
    inner: &Inner,
    client: RawFd,
    upstream: RawFd,
    ins: Inserted,
    written: [u64; 2],
) -> Result<(), InsertError> {
    // Everything written to a socket before this point was written by the handshake
    // or the userspace relay; the program counts only what follows.
    for (dir, written) in [(TO_UPSTREAM, written[1]), (TO_CLIENT, written[0])] {
        inner.dir_word(ins.slot, dir, DirField::AckedBase).store(written, Ordering::Release);
    }
    let to_upstream = Link { peer_cookie: ins.upstream_cookie, slot: ins.slot, dir: TO_UPSTREAM as u32 };
    let to_client = Link { peer_cookie: ins.client_cookie, slot: ins.slot, dir: TO_CLIENT as u32 };
    crate::io::bpf::map_update(inner.links_fd, &ins.client_cookie, &to_upstream, 0).map_err(InsertError::Failed)?;
    crate::io::bpf::map_update(inner.links_fd, &ins.upstream_cookie, &to_client, 0).map_err(InsertError::Failed)?;
    let client_fd = client.cast_unsigned();
    if let Err(e) =
        crate::io::bpf::map_update(inner.sock_hash_fd, &ins.client_cookie, &client_fd, crate::io::bpf::BPF_NOEXIST)
    {
        return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            InsertError::NotSpliceable("a side is no longer established")
        } else {
            InsertError::Failed(e)
        });
    }
    let upstream_fd = upstream.cast_unsigned();
    if let Err(e) =
        crate::io::bpf::map_update(inner.sock_hash_fd, &ins.upstream_cookie, &upstream_fd, crate::io::bpf::BPF_NOEXIST)
    {
        // The client is in already; taking it out again may discard bytes the
        // kernel passed to it meanwhile, so the pair is failed, not relayed.
        let _ = crate::io::bpf::map_delete(inner.sock_hash_fd, &ins.client_cookie);
        return Err(InsertError::Failed(e));
    }
    crate::io::set_rcvlowat(&client, 1).map_err(InsertError::Failed)?;
    crate::io::set_rcvlowat(&upstream, 1).map_err(InsertError::Failed)?;
    Ok(())
}

/// Removes the links of a pair and frees its slot, best after its sockets are closed.
/// Freed slots are reused last (first in, first out), long after any verdict that
/// looked the pair up before its links went.
pub(super) fn release(inner: &Inner, ins: Inserted) {
    let _ = crate::io::bpf::map_delete(inner.links_fd, &ins.client_cookie);
    let _ = crate::io::bpf::map_delete(inner.links_fd, &ins.upstream_cookie);
    inner.free_slot(ins.slot);
}
