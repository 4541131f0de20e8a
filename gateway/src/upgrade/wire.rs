//! The control socket between the running process and the one it starts: a
//! `SOCK_SEQPACKET` Unix socket pair, one JSON message per packet, with the file
//! descriptors it moves attached (`SCM_RIGHTS`). Packets keep their boundaries, so a
//! message and its descriptors always arrive together or not at all.
//!
//! Never blocks a data-plane thread for long: the new process reads continuously, and
//! the socket buffers are sized for thousands of pairs in flight.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

use crate::close::Mode;
use crate::drain::FrameState;

/// The version of these messages: a binary whose messages differ says another.
pub const PROTOCOL: u32 = 1;

/// The largest message (a pair's facts are a few hundred bytes; the listener list a
/// few dozen per listener).
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors in one message (the listeners of every worker, and the admin's).
pub const MAX_FDS: usize = 250;
/// Socket buffer of each end: thousands of pairs may be in flight at once.
const BUFFER: usize = 8 << 20;

/// One message of the upgrade.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// New → old: configuration loaded, data plane self-tested; send the listeners.
    /// `protocol` is [`PROTOCOL`] of the new binary: the old one refuses another.
    Ready { pid: u32, protocol: u32 },
    /// New → old: it cannot take over (the old process keeps everything).
    Failed { why: String },
    /// Old → new: the listening sockets, one descriptor each in this order, then the
    /// admin listener's if `admin`, then the splice's three maps if `splice` (whose
    /// slots in use follow in `Slots` messages).
    Listeners { listeners: Vec<PassedListener>, admin: bool, splice: Option<SpliceOffer> },
    /// Old → new: slots of the splice's state array in use (several messages).
    Slots { used: Vec<u32> },
    /// New → old: every listener accepts in the new process; `spliced`: it took the
    /// splice's maps (parked spliced pairs may come).
    Accepting { spliced: bool },
    /// Old → new: a live WebSocket at a quiet moment, client then upstream descriptor.
    Pair(Box<PairFacts>),
    /// Old → new: nothing more comes; `pairs` were passed in all.
    Done { pairs: u64 },
}

/// A listening socket, by the listener it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassedListener {
    /// The configured address (the key across processes, as across reloads).
    pub address: SocketAddr,
    pub tls: bool,
    pub backlog: u32,
    /// The service manager's socket that every worker shares (socket activation).
    pub shared: bool,
}

/// The kernel splice's maps, offered with the listeners.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SpliceOffer {
    pub capacity: u32,
    pub budget: u64,
    /// Digest of the program attached to the maps (`splice::program_digest`).
    pub program: u64,
    /// `Slots` messages that follow.
    pub slot_messages: u32,
}

/// Slots per `Slots` message (well inside a packet).
pub const SLOTS_PER_MESSAGE: usize = 4096;

/// What the new process needs to carry on a WebSocket: its access-log facts so far,
/// where its frames stand each way, and how long it has lived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairFacts {
    /// Microseconds since the connection was accepted.
    pub age_us: u64,
    pub peer: SocketAddr,
    pub origin: SocketAddr,
    pub host: String,
    pub request: String,
    pub user_agent: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_response_time: Option<f64>,
    pub mode: Mode,
    pub https: bool,
    /// Frames client→upstream, upstream→client.
    pub frames: [FrameState; 2],
    /// Microseconds since a byte last moved (the idle clock goes on from there; a
    /// spliced pair's is in its slot).
    pub idle_us: u64,
    /// The pair is spliced in the kernel (with the maps the new process took): its
    /// slot, cookies and handover bytes; `bytes_in`/`bytes_out` are then what moved
    /// before the splice (the slot's counters hold the rest).
    pub spliced: Option<SplicedFacts>,
}

/// A spliced pair's kernel side, as passed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SplicedFacts {
    pub kernel: crate::splice::PassedKernel,
    /// Relayed in userspace before the splice (`mode=userspace+splice`).
    pub after_userspace: bool,
}

/// One end of the control socket.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair of ends (close-on-exec; the one given to the new process is
    /// made inheritable by [`Channel::inheritable`]).
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        for end in [&a, &b] {
            let s = socket2::SockRef::from(end);
            s.set_send_buffer_size(BUFFER)?;
            s.set_recv_buffer_size(BUFFER)?;
        }
        Ok((Self(a), Self(b)))
    }

    /// The end a process was started with (its number in the environment).
    ///
    /// # Safety
    /// `fd` must be an open descriptor this process owns and uses nowhere else.
    pub unsafe fn from_raw(fd: RawFd) -> Self {
        // SAFETY: the caller's promise.
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Clears close-on-exec so that a started process inherits this end; returns its number.
    pub fn inheritable(&self) -> io::Result<RawFd> {
        nix::fcntl::fcntl(self.0.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
        Ok(self.0.as_raw_fd())
    }

    /// Sends `msg` with `fds` attached (the descriptors stay open here too).
    pub fn send(&self, msg: &Message, fds: &[RawFd]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let iov = [IoSlice::new(&body)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for the next message and the descriptors that came with it; `None` when
    /// the other process closed its end (or exited).
    pub fn recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut space = cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut body)];
            match recvmsg::<()>(self.0.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(r) => {
                    let mut fds = Vec::new();
                    for c in r.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel installed these descriptors in this
                            // process for this message; nothing else knows them.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    if r.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "upgrade message truncated"));
                    }
                    break (r.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&body[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("upgrade message: {e}")))?;
        Ok(Some((msg, fds)))
    }

    /// Stops waiting in [`Channel::recv`] on either side (both directions shut).
    pub fn shut(&self) {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

impl Channel {
    /// How long [`Channel::recv`] waits (`None`: for ever).
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        socket2::SockRef::from(&self.0).set_read_timeout(timeout)
    }
}

impl Channel {
    /// Another handle on the same end.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }
}
