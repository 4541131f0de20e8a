//! Binary upgrade with live connections (SIGUSR2, `wsgate upgrade`): the running
//! process starts the new binary, which loads its configuration and self-tests its
//! data plane; then the old one passes it, over a Unix socket with `SCM_RIGHTS`
//! (`wire`), its listening sockets (so no connection waiting in a listen queue is
//! lost) and every WebSocket relayed in userspace, each at a quiet moment (no byte
//! held in userspace, both directions open) with its access-log facts, byte counts
//! and frame positions. The new process carries each on (`conn::adopt`) and writes
//! its one access-log line, with the whole lifetime's bytes, when it ends.
//!
//! ```text
//!  old (Running)                               new (started with WSGATE_UPGRADE_FD)
//!  SIGUSR2 ─▶ start the binary ───────────────▶ config, preflight, splice self-test
//!             ◀──────────────────────────────── Ready            (or exits: rollback,
//!  Listeners + fds ──────────────────────────▶  workers accept on them     the old
//!             ◀──────────────────────────────── Accepting         keeps everything)
//!  Handing: stop accepting, MAINPID=new
//!  each userspace WebSocket pauses ─ Pair + 2 fds ─▶ resumed on a worker
//!  quiet for HANDING_GRACE ─▶ Draining: what could not move (TLS, HTTP/2, spliced,
//!  half-closed) gets the paced Close 1001; Done ─▶  exits when it holds nothing
//! ```
//!
//! What stays in the old process, and why: TLS pairs (rustls's session state cannot
//! be exported without kTLS), HTTP/2 connections (their streams share one TLS
//! session), pairs spliced in the kernel (their psock state and the program's
//! per-pair slots belong to the old process's maps; moving them is future work,
//! see the issue note), half-closed pairs, and plain HTTP exchanges in progress. They
//! get the paced drain (Close 1001 at a frame boundary), as on SIGTERM.

pub mod child;
pub mod parent;
pub mod wire;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socket2::Socket;

use self::wire::{Channel, Message, PairFacts};
use crate::drain::FrameTracker;
use crate::reload::listeners::ListenerKey;

/// The environment variable that tells a started process which descriptor is its
/// end of the control socket.
pub const FD_ENV: &str = "WSGATE_UPGRADE_FD";

/// One listening socket this process accepts on (a duplicate, kept to pass on).
#[derive(Debug)]
struct Listening {
    worker: usize,
    key: ListenerKey,
    shared: bool,
    socket: Socket,
}

/// What the upgrade shares with the workers: the listening sockets to pass on, and,
/// while handing over, the channel to the new process.
#[derive(Debug, Default)]
pub struct Upgrade {
    listening: Mutex<Vec<Listening>>,
    admin: Mutex<Option<Socket>>,
    to_new: Mutex<Option<Arc<Channel>>>,
    passing: AtomicBool,
    /// The listeners went to a new process (this one accepts no more).
    moved: AtomicBool,
    /// Pairs passed so far.
    passed: AtomicU64,
    /// When the last pair was passed (ms since the process clock's start).
    last_passed_ms: AtomicU64,
    /// Held while an upgrade runs ([`parent::run`]).
    running: Mutex<()>,
}

impl Upgrade {
    /// Returns once no upgrade runs: the process must not exit in the middle of one
    /// (it would leave a new process that nobody stops, holding sockets nobody serves).
    /// Bounded: an upgrade gives up as soon as the process drains.
    pub fn wait_finished(&self) {
        drop(self.running.lock());
    }

    /// A worker accepts on `socket` for listener `key` (kept as a duplicate to pass on).
    pub fn listening(&self, worker: usize, key: ListenerKey, shared: bool, socket: &Socket) {
        match socket.try_clone() {
            Ok(socket) => {
                if let Ok(mut l) = self.listening.lock() {
                    l.push(Listening { worker, key, shared, socket });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep a listener for a binary upgrade"),
        }
    }

    /// A reload removed listener `key` from `worker`.
    pub fn removed(&self, worker: usize, key: ListenerKey) {
        if let Ok(mut l) = self.listening.lock() {
            l.retain(|x| !(x.worker == worker && x.key == key));
        }
    }

    /// The admin plane's listening socket (a duplicate, to pass on).
    pub fn admin_listening(&self, socket: Socket) {
        if let Ok(mut a) = self.admin.lock() {
            *a = Some(socket);
        }
    }

    /// Whether the listeners went to a new process.
    pub fn listeners_moved(&self) -> bool {
        self.moved.load(Ordering::Acquire)
    }

    /// Whether live WebSockets are being passed to a new process now.
    pub fn passing(&self) -> bool {
        self.passing.load(Ordering::Acquire)
    }

    /// Passes a WebSocket, at a quiet moment, to the new process: its sockets (this
    /// process closes its own descriptors afterwards) and its facts. An error leaves
    /// the pair here, untouched.
    ///
    /// # Errors
    /// No new process takes pairs any more, or the control socket failed.
    pub fn pass_pair(
        &self,
        client: &impl AsRawFd,
        upstream: &impl AsRawFd,
        facts: &crate::conn::teardown::Facts,
        (frames, last_activity): ([FrameTracker; 2], std::time::Instant),
    ) -> std::io::Result<()> {
        let pair = facts.passed(frames.map(|f| f.state()), last_activity.elapsed());
        self.send_pair(pair, [client.as_raw_fd(), upstream.as_raw_fd()])
    }

    /// Passes a pair (its facts and its two sockets) to the new process.
    ///
    /// # Errors
    /// No new process takes pairs any more, or the control socket failed.
    pub fn send_pair(&self, pair: PairFacts, fds: [std::os::fd::RawFd; 2]) -> std::io::Result<()> {
        let channel = self.to_new.lock().ok().and_then(|c| c.clone());
        let Some(channel) = channel.filter(|_| self.passing()) else {
            return Err(std::io::Error::other("no new process takes connections"));
        };
        let sent = channel.send(&Message::Pair(Box::new(pair)), &fds);
        if let Err(e) = &sent {
            // The new process is gone: nothing more goes to it. Anything else (a
            // message the socket would not take) leaves this pair here for now.
            let gone = matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::NotConnected
            );
            tracing::warn!(error = %e, gone, "binary upgrade: cannot pass a connection; it stays in this process");
            if gone {
                self.passing.store(false, Ordering::Release);
            }
        } else {
            self.passed.fetch_add(1, Ordering::Relaxed);
            self.last_passed_ms.store(crate::upstream::passive::now_ms(), Ordering::Relaxed);
        }
        sent
    }

    /// The listening sockets to pass, in order, and the admin listener's.
    fn sockets(&self) -> (Vec<(wire::PassedListener, std::os::fd::RawFd)>, Option<std::os::fd::RawFd>) {
        let listening = self.listening.lock().map(|l| {
            let mut out: Vec<(wire::PassedListener, std::os::fd::RawFd)> = Vec::new();
            for x in l.iter() {
                let (address, tls, backlog) = x.key;
                // A shared socket (socket activation) is one socket for every worker.
                if x.shared && out.iter().any(|(p, _)| p.shared && (p.address, p.tls, p.backlog) == x.key) {
                    continue;
                }
                out.push((wire::PassedListener { address, tls, backlog, shared: x.shared }, x.socket.as_raw_fd()));
            }
            out
        });
        let admin = self.admin.lock().ok().and_then(|a| a.as_ref().map(AsRawFd::as_raw_fd));
        (listening.unwrap_or_default(), admin)
    }
}

/// Longest access-log text passed per field (a request line or user agent longer than
/// this is cut, on a character boundary, so that a pair's message always fits a packet).
const MAX_TEXT: usize = 4096;

pub fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Listening sockets a new process received, by listener: the ones to accept on
/// instead of binding.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<(ListenerKey, bool, Socket)>,
    pub admin: Option<Socket>,
    /// The splice's maps (sockhash, links, state array) with what they hold.
    pub splice: Option<InheritedSplice>,
}

/// The kernel splice's maps an old process offered.
#[derive(Debug)]
pub struct InheritedSplice {
    pub offer: wire::SpliceOffer,
    pub fds: [std::os::fd::OwnedFd; 3],
    pub used: Vec<u32>,
}

impl Inherited {
    /// Takes the sockets passed for listener `key` (all of them).
    pub fn take(&mut self, key: ListenerKey) -> Vec<(Socket, bool)> {
        self.listeners.extract_if(.., |(k, _, _)| *k == key).map(|(_, shared, s)| (s, shared)).collect()
    }

    /// Passed sockets no listener of the configuration claims (a listener removed in
    /// the new configuration): closed, with a line each. A socket of the service
    /// manager's (`shared`) is only let go: shutting it would stop it for the service
    /// manager too, which keeps it across restarts.
    pub fn close_unclaimed(&mut self) {
        for ((address, _, _), shared, s) in self.listeners.drain(..) {
            if !shared {
                // Nobody accepts on it any more (the old process's accept loop sees it
                // shut and ends too).
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
            tracing::info!("binary upgrade: {address} is no listener of the new configuration; closed");
        }
    }

    /// The address of a passed socket.
    pub fn local(s: &Socket) -> Option<SocketAddr> {
        s.local_addr().ok()?.as_socket()
    }
}
