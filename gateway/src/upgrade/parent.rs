//! The running (old) process's side of a binary upgrade: start the new binary, wait
//! for it to be ready, pass the listeners, then the live WebSockets (each relay passes
//! its own pair at a quiet moment, `Upgrade::pass_pair`), then drain what could not
//! move and exit. Until the new process accepts, any failure leaves everything here
//! (rollback) with the reason in the log.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::wire::{Channel, Message, SLOTS_PER_MESSAGE, SpliceOffer};
use super::{FD_ENV, Upgrade};
use crate::shutdown::{Phase, ShutdownTx};
use crate::stats::Stats;

/// How long the new process may take to load and self-test before the upgrade is
/// given up (it is stopped, and this process keeps everything).
const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// Once no pair has been passed for this long, what is left cannot move: it is drained.
const HANDING_GRACE: Duration = Duration::from_secs(2);

/// Why an upgrade did not happen (this process keeps every connection).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("not running (draining or already upgrading)")]
    Busy,
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("the new process (pid {pid}) exited before it was ready ({status})")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) refused: {why}")]
    Refused { pid: u32, why: String },
    #[error("a shutdown signal came while the new process (pid {pid}) started; it was stopped and this process drains")]
    Draining { pid: u32 },
    #[error("the new process (pid {pid}) speaks upgrade protocol {theirs}, this one {ours}; stopped")]
    Incompatible { pid: u32, theirs: u32, ours: u32 },
    #[error("the new process (pid {pid}) was not ready within {0:?}; stopped", READY_TIMEOUT)]
    Timeout { pid: u32 },
    #[error("control socket: {0}")]
    Channel(std::io::Error),
    #[error("the new process (pid {pid}) sent {got} instead of {expected}")]
    Protocol { pid: u32, got: String, expected: &'static str },
}

/// What the old process's upgrade needs.
#[derive(Debug, Clone)]
pub struct Context {
    pub upgrade: Arc<Upgrade>,
    pub tx: ShutdownTx,
    pub stats: Arc<Stats>,
    /// The binary to start unless `wsgate upgrade --binary` named another.
    pub binary: PathBuf,
    /// Where `wsgate upgrade --binary` leaves the path (next to the pid file).
    pub request_file: Option<PathBuf>,
    /// How long the drain of what could not move may take before `Stop`.
    pub stop_after: Duration,
    /// How long what could not move is kept before that drain (`drain.upgrade_grace`).
    pub grace: Duration,
    /// The kernel splice, whose maps (and parked pairs) may go too.
    pub splicer: Option<crate::splice::Splicer>,
}

impl Context {
    /// The upgrade of a process running `config`: the binary it starts is the one this
    /// process was started from (resolved now, before a package may replace the file).
    pub fn new(
        (upgrade, tx, stats): (Arc<Upgrade>, ShutdownTx, Arc<Stats>),
        config: &crate::config::Config,
        splicer: Option<crate::splice::Splicer>,
    ) -> Self {
        Self {
            upgrade,
            tx,
            stats,
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wsgate")),
            request_file: config.pid_file.as_deref().map(request_file),
            stop_after: config.stop_after(),
            grace: config.drain.upgrade_grace,
            splicer,
        }
    }
}

/// The file `wsgate upgrade --binary PATH` writes PATH to, next to the pid file.
pub fn request_file(pid_file: &std::path::Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".upgrade");
    PathBuf::from(name)
}

/// Passes pairs until this process holds nothing, or nothing has moved for
/// [`HANDING_GRACE`] and `drain.upgrade_grace` is over (meanwhile what cannot move
/// serves on, and a userspace pair still moves at its next quiet moment), or a
/// signal starts the drain.
fn wait_while_passing(ctx: &Context) {
    // None: a grace too long to be a time (never over).
    let grace_ends = Instant::now().checked_add(ctx.grace);
    let mut said = false;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let active = ctx.stats.active.load(Ordering::Relaxed);
        let since =
            crate::upstream::passive::now_ms().saturating_sub(ctx.upgrade.last_passed_ms.load(Ordering::Relaxed));
        let settled = since >= u64::try_from(HANDING_GRACE.as_millis()).unwrap_or(u64::MAX);
        if active == 0 || ctx.tx.phase() != Phase::Handing || !ctx.upgrade.passing() {
            return;
        }
        if settled && grace_ends.is_some_and(|end| Instant::now() >= end) {
            return;
        }
        if settled && !said {
            said = true;
            tracing::info!(
                left = active,
                grace = ?ctx.grace,
                "binary upgrade: connections that cannot move serve on here until they close or drain.upgrade_grace is over"
            );
        }
    }
}

/// Runs one upgrade to its end (blocking; on the signal thread's blocking pool).
/// Returns the number of WebSockets passed, or why nothing moved.
///
/// # Errors
/// Everything before the new process accepts: this process then keeps everything.
pub fn run(ctx: &Context) -> Result<u64, UpgradeError> {
    let _running = ctx.upgrade.running.lock();
    if ctx.tx.phase() != Phase::Running || ctx.upgrade.passing() {
        return Err(UpgradeError::Busy);
    }
    let binary = ctx
        .request_file
        .as_ref()
        .and_then(|f| {
            let asked = std::fs::read_to_string(f).ok();
            let _ = std::fs::remove_file(f);
            asked.map(|a| PathBuf::from(a.trim()))
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| ctx.binary.clone());
    let (ours, theirs) = Channel::pair().map_err(UpgradeError::Channel)?;
    let mut child = start(&binary, &theirs)?;
    drop(theirs);
    let pid = child.id();
    tracing::info!(pid, binary = %binary.display(), "binary upgrade: started the new process; waiting for it to be ready");
    let spliced = match hand_listeners(&ours, &mut child, ctx) {
        Ok(spliced) => spliced,
        Err(e) => {
            // Rollback: nothing has moved; the new process must not serve anything.
            if !matches!(e, UpgradeError::Exited { .. }) {
                let _ = child.kill();
            }
            reap(child);
            if let Some(s) = &ctx.splicer {
                s.kept();
            }
            return Err(e);
        }
    };
    let channel = Arc::new(ours);
    if let Ok(mut c) = ctx.upgrade.to_new.lock() {
        *c = Some(channel.clone());
    }
    ctx.upgrade.moved.store(true, Ordering::Release);
    ctx.upgrade.passing.store(true, Ordering::Release);
    ctx.upgrade.last_passed_ms.store(crate::upstream::passive::now_ms(), Ordering::Relaxed);
    if !ctx.tx.begin_handing() {
        // SIGTERM came meanwhile: this process drains; so does the new one.
        ctx.upgrade.passing.store(false, Ordering::Release);
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.cast_signed()), nix::sys::signal::Signal::SIGTERM);
        reap(child);
        if let Some(s) = &ctx.splicer {
            s.kept();
        }
        return Err(UpgradeError::Busy);
    }
    reap(child);
    if let Some(s) = &ctx.splicer {
        // Spliced pairs go too when it took the maps; else they stay and are drained.
        if spliced { s.handed() } else { s.kept() }
    }
    crate::systemd::main_pid(pid);
    tracing::info!(pid, "binary upgrade: the new process accepts; passing the live WebSockets");
    wait_while_passing(ctx);
    ctx.upgrade.passing.store(false, Ordering::Release);
    let passed = ctx.upgrade.passed.load(Ordering::Relaxed);
    if let Err(e) = channel.send(&Message::Done { pairs: passed }, &[]) {
        tracing::debug!(error = %e, "binary upgrade: the new process did not take the last message");
    }
    if let Ok(mut c) = ctx.upgrade.to_new.lock() {
        *c = None;
    }
    let left = ctx.stats.active.load(Ordering::Relaxed);
    tracing::info!(
        passed,
        left,
        "binary upgrade: live WebSockets passed to pid {pid}; the connections that cannot move (TLS, HTTP/2, spliced, half-closed) are drained here"
    );
    ctx.tx.set(Phase::Draining);
    crate::systemd::stopping();
    let (tx, stop_after) = (ctx.tx.clone(), ctx.stop_after);
    std::thread::spawn(move || {
        std::thread::sleep(stop_after);
        tx.set(Phase::Stop);
    });
    Ok(passed)
}

/// Starts `binary` with this process's arguments and the control socket's other end.
fn start(binary: &std::path::Path, theirs: &Channel) -> Result<Child, UpgradeError> {
    let spawn_error = |source| UpgradeError::Spawn { binary: binary.display().to_string(), source };
    let fd: RawFd = theirs.inheritable().map_err(spawn_error)?;
    Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(FD_ENV, fd.to_string())
        // Socket activation named this process, not the new one.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .spawn()
        .map_err(spawn_error)
}

/// Waits for `Ready`, passes the listeners (and the splice's maps), waits for
/// `Accepting`; returns whether the new process took the maps.
fn hand_listeners(ours: &Channel, child: &mut Child, ctx: &Context) -> Result<bool, UpgradeError> {
    let pid = child.id();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut protocol = 0;
    expect((ours, &ctx.tx), child, deadline, "Ready", |m| match m {
        Message::Ready { protocol: p, .. } => {
            protocol = *p;
            true
        }
        _ => false,
    })?;
    if protocol != super::wire::PROTOCOL {
        return Err(UpgradeError::Incompatible { pid, theirs: protocol, ours: super::wire::PROTOCOL });
    }
    if ctx.tx.phase() != Phase::Running {
        // Draining: the listeners are being shut; the new process must not take them.
        return Err(UpgradeError::Draining { pid });
    }
    let (listeners, admin) = ctx.upgrade.sockets();
    let mut fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
    fds.extend(admin);
    // From here no pair is spliced in this process (until it keeps the maps).
    let offer = ctx.splicer.as_ref().map(crate::splice::Splicer::offer);
    let chunks: Vec<&[u32]> = offer.as_ref().map(|o| o.used.chunks(SLOTS_PER_MESSAGE).collect()).unwrap_or_default();
    let splice = offer.as_ref().map(|o| {
        fds.extend(o.fds);
        SpliceOffer {
            capacity: o.capacity,
            budget: o.budget,
            program: o.program,
            slot_messages: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
        }
    });
    if fds.len() > super::wire::MAX_FDS {
        return Err(UpgradeError::Channel(std::io::Error::other(format!("{} sockets and maps to pass", fds.len()))));
    }
    let listeners = listeners.into_iter().map(|(p, _)| p).collect();
    let msg = Message::Listeners { listeners, admin: admin.is_some(), splice };
    ours.send(&msg, &fds).map_err(UpgradeError::Channel)?;
    for used in chunks {
        ours.send(&Message::Slots { used: used.to_vec() }, &[]).map_err(UpgradeError::Channel)?;
    }
    tracing::debug!(pid, descriptors = fds.len(), "binary upgrade: listeners passed");
    let mut spliced = false;
    expect((ours, &ctx.tx), child, deadline, "Accepting", |m| match m {
        Message::Accepting { spliced: s } => {
            spliced = *s;
            true
        }
        _ => false,
    })?;
    Ok(spliced)
}

/// How often a wait for the new process looks whether this process began to drain.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// The next message from the new process, which must be `expected`; given up with
/// [`UpgradeError::Draining`] as soon as a shutdown signal came (`tx` left `Running`).
fn expect(
    (ours, tx): (&Channel, &ShutdownTx),
    child: &mut Child,
    deadline: Instant,
    expected: &'static str,
    mut is: impl FnMut(&Message) -> bool,
) -> Result<(), UpgradeError> {
    let pid = child.id();
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UpgradeError::Timeout { pid });
        }
        ours.set_timeout(Some(left.min(DRAIN_CHECK))).map_err(UpgradeError::Channel)?;
        match ours.recv() {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if tx.phase() != Phase::Running {
                    return Err(UpgradeError::Draining { pid });
                }
            }
            got => break got,
        }
    };
    let _ = ours.set_timeout(None);
    match got {
        Ok(Some((m, _))) if is(&m) => Ok(()),
        Ok(Some((Message::Failed { why }, _))) => Err(UpgradeError::Refused { pid, why }),
        Ok(Some((m, _))) => Err(UpgradeError::Protocol { pid, got: format!("{m:?}"), expected }),
        Ok(None) => {
            // Its end closed: it exited (give it a moment to be reaped).
            let status = (0..50)
                .find_map(|_| {
                    let s = child.try_wait().ok().flatten();
                    if s.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    s
                })
                .map_or_else(|| "still running, control socket closed".to_owned(), |s| s.to_string());
            Err(UpgradeError::Exited { pid, status })
        }
        Err(e) => Err(UpgradeError::Channel(e)),
    }
}

/// Waits for the new process in the background, so that it never lingers as a zombie
/// of this one.
fn reap(mut child: Child) {
    let _ = std::thread::Builder::new().name("wsgate-upgraded".into()).spawn(move || {
        let _ = child.wait();
    });
}
