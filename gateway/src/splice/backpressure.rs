//! Backpressure for spliced pairs: relays the bytes the verdict passed to
//! userspace, with ordinary TCP flow control, so a reader that stops reading
//! stops the sender.
//!
//! The verdict redirects a direction only while the peer holds fewer than
//! `budget` unacknowledged bytes of it. Past that it passes skbs to the
//! arriving socket, where they are charged to its receive buffer (closing the
//! sender's window once userspace stops reading), and it keeps passing until
//! userspace has written every passed byte. Userspace writes to the peer only
//! when the kernel's redirect backlog for it is empty (else it would overtake
//! redirected bytes) and the direction is under budget, then publishes the
//! count in `forwarded`, which lets the verdict redirect again.
//!
//! So per direction the kernel holds at most `budget` bytes beyond the sockets'
//! own TCP buffers, plus one skb (the verdict admits an skb while under budget).
//! Must never hold a buffer for an idle pair: buffers live only while bytes are
//! being relayed.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::kernel::Inner;
use super::shared::DirField;
use crate::readiness::{self, Ring};

/// First and longest pause between checks of a congested peer's progress.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(16);

/// Writes all of `data` to a non-blocking socket, waiting for writability on `ring`.
pub(super) async fn write_all(ring: &Ring, fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match crate::io::send(&fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ring.ready(&Fd(fd), readiness::WRITABLE).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether direction `dir` of pair `slot` needs its supervisor: it has passed bytes
/// userspace has not forwarded, or the program marked it broken.
pub(super) fn needs_userspace(inner: &Inner, slot: u32, dir: usize) -> bool {
    inner.dir_word(slot, dir, DirField::Passed).load(Ordering::Acquire)
        > inner.dir_word(slot, dir, DirField::Forwarded).load(Ordering::Acquire)
        || inner.dir_word(slot, dir, DirField::Broken).load(Ordering::Relaxed) != 0
}

/// Bytes this direction of `slot` has moved: redirected in the kernel, or
/// forwarded by userspace while over budget.
pub(super) fn bytes(inner: &Inner, slot: u32, dir: usize) -> u64 {
    inner.dir_word(slot, dir, DirField::Redirected).load(Ordering::Acquire)
        + inner.dir_word(slot, dir, DirField::Forwarded).load(Ordering::Acquire)
}

/// A raw fd for [`Ring::ready`].
pub(super) struct Fd(pub RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One direction of a spliced pair: where its bytes go and its kernel state.
#[derive(Clone, Copy)]
pub(super) struct Direction<'a> {
    pub inner: &'a Inner,
    /// The worker's poll ring, to wait for room at `dst`.
    pub ring: &'a Ring,
    pub slot: u32,
    pub dir: usize,
    pub dst: RawFd,
}

/// Where the peer stands for this direction.
struct Progress {
    /// Every byte the kernel redirected has reached the peer's send queue.
    drained: bool,
    /// Bytes of this direction the peer has not had acknowledged.
    held: u64,
}

impl Direction<'_> {
    fn word(&self, field: DirField) -> &std::sync::atomic::AtomicU64 {
        self.inner.dir_word(self.slot, self.dir, field)
    }

    /// The verdict passed bytes to userspace that are not forwarded yet (pass mode),
    /// or marked the direction broken. A plain memory read of the kernel-shared
    /// array: no syscall.
    pub fn needs_userspace(&self) -> bool {
        needs_userspace(self.inner, self.slot, self.dir)
    }

    /// The verdict passed bytes to userspace that are not forwarded yet.
    pub fn pass_pending(&self) -> bool {
        self.word(DirField::Passed).load(Ordering::Acquire) > self.word(DirField::Forwarded).load(Ordering::Acquire)
    }

    /// Passed bytes userspace has written to the peer.
    pub fn forwarded(&self) -> u64 {
        self.word(DirField::Forwarded).load(Ordering::Acquire)
    }

    /// The program met retransmitted bytes it could not trim off an skb and dropped
    /// it: the stream has a hole, and the pair must be reset.
    pub fn broken(&self) -> bool {
        self.word(DirField::Broken).load(Ordering::Relaxed) != 0
    }

    /// Retransmitted bytes the program cut off because it had handed them on before.
    pub fn trimmed(&self) -> u64 {
        self.word(DirField::Trimmed).load(Ordering::Relaxed)
    }

    fn progress(&self) -> io::Result<Progress> {
        let acked = crate::io::tcp_progress(&self.dst)?.bytes_acked;
        // Read after `acked`, so acks racing with the two calls can only make
        // the backlog look larger, never empty too early.
        let unacked = crate::io::unacked(&self.dst)? as u64;
        let sent = self.word(DirField::AckedBase).load(Ordering::Acquire)
            + self.word(DirField::Redirected).load(Ordering::Acquire)
            + self.word(DirField::Forwarded).load(Ordering::Acquire);
        Ok(Progress { drained: acked + unacked >= sent, held: sent.saturating_sub(acked) })
    }

    /// Waits until the redirect backlog is empty and, if `room`, the direction is
    /// under budget; returns how many bytes may be written.
    pub async fn wait_room(&self, room: bool) -> io::Result<u64> {
        let mut pause = POLL_MIN;
        loop {
            let p = self.progress()?;
            let budget = self.inner.budget;
            if p.drained && (!room || p.held < budget) {
                return Ok(budget.saturating_sub(p.held));
            }
            let state = crate::io::tcp_progress(&self.dst)?.state;
            if !matches!(state, crate::io::TCP_ESTABLISHED | crate::io::TCP_CLOSE_WAIT) {
                return Err(io::Error::from(io::ErrorKind::ConnectionReset));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// Writes passed bytes to the peer once it has room, and accounts for them.
    pub async fn forward(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.wait_room(true).await?;
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX)).max(1);
            match crate::io::send(&self.dst, &data[..take]) {
                Ok(n) => {
                    data = &data[n..];
                    self.word(DirField::Forwarded).fetch_add(n as u64, Ordering::Release);
                    self.inner.last_active(self.slot).store(crate::io::bpf::coarse_now_ns(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ring.ready(&Fd(self.dst), readiness::WRITABLE).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bytes this direction carried while spliced (redirected plus relayed).
    pub fn bytes(&self) -> u64 {
        bytes(self.inner, self.slot, self.dir)
    }

    /// Times this direction went over budget.
    pub fn pressure_runs(&self) -> u64 {
        self.word(DirField::PassRuns).load(Ordering::Relaxed)
    }

    /// Most bytes the kernel held unacknowledged for this direction.
    pub fn held_max(&self) -> u64 {
        self.word(DirField::HeldMax).load(Ordering::Relaxed)
    }
}
