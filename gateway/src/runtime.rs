//! Start-up of the data plane: one thread per worker (pinned to a core when there is
//! one per CPU: `worker_cpus`), each with its own tokio-uring runtime, poll ring,
//! buffer pool and SO_REUSEPORT listeners.
//!
//! Workers share nothing mutable but atomics (stats, upstream counters) and the
//! shutdown channel; the kernel balances new connections across their listeners.
//! No work stealing, no shared hot locks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin;
use crate::admission::Admission;
use crate::bufpool::BufPool;
use crate::config::{CliOptions, Config};
use crate::conn::{self, Worker};
use crate::drain::Pacer;
use crate::lifetimes::Lifetimes;
use crate::metrics::{Metrics, WorkerSlot};
use crate::readiness::Ring;
use crate::reload::listeners::{self, ListenerKey, Listeners, Order};
use crate::reload::pid_file::PidFile;
use crate::reload::{Generation, Generations, Reloader};
use crate::shutdown::{self, ShutdownRx};
use crate::splice::{self, SpliceOptions, Splicer};
use crate::stats::Stats;

/// Why the gateway could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preflight: {0}")]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("listener on {0} has no IP address")]
    ListenerAddress(String),
    #[error(transparent)]
    Splice(#[from] splice::StartError),
    #[error("starting the health-check thread: {0}")]
    HealthChecks(std::io::Error),
    #[error("spawning the {what} thread: {source}")]
    Spawn { what: &'static str, source: std::io::Error },
    #[error("creating the poll ring: {0}")]
    PollRing(std::io::Error),
    #[error(transparent)]
    Generation(crate::reload::BuildError),
    #[error("{0}")]
    PidFile(std::io::Error),
    #[error("a worker thread panicked")]
    WorkerPanicked,
    #[error("a worker's task was cancelled before it ended (its runtime shut down under it)")]
    WorkerCancelled,
    #[error(transparent)]
    Activation(#[from] crate::activation::ActivationError),
    #[error("cannot listen on {addr} (admin): {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("binary upgrade: {0}")]
    Upgrade(std::io::Error),
}

type Result<T, E = RunError> = std::result::Result<T, E>;

/// Submission queue size of each worker's io_uring (completion queue is twice that).
const RING_ENTRIES: u32 = 4096;

/// What the binary lends the runtime of its allocator.
#[derive(Debug, Clone, Copy)]
pub struct Allocator {
    /// Returns the calling thread's freed memory to the system. Called on the main
    /// thread once the set-up is done (loading the splice parses ~10 MiB of kernel BTF),
    /// and by each worker every [`RELEASE_PERIOD`]: after a burst of handshakes the
    /// memory they used would otherwise stay resident while the connections sit idle.
    pub release: fn(),
}

/// How often a worker hands freed memory back ([`Allocator::release`]).
pub const RELEASE_PERIOD: Duration = Duration::from_secs(2);

/// Runs the gateway until shutdown: binds, starts workers, waits for them. `source`
/// is where `config` came from: a reload reads it again.
pub fn run(config: Config, source: CliOptions, allocator: Allocator) -> Result<()> {
    conn::teardown::start_clock();
    // Started by a binary upgrade: the old process's control socket.
    let upgrading = crate::upgrade::child::from_env().map_err(RunError::Upgrade)?;
    let result = run_with(config, source, allocator, upgrading.as_ref());
    if let (Err(e), Some(channel)) = (&result, &upgrading) {
        crate::upgrade::child::failed(channel, &e.to_string());
    }
    result
}

/// [`run`], with the control socket of a binary upgrade when an old process started
/// this one (its flag: `Accepting` was said).
fn run_with(
    config: Config,
    source: CliOptions,
    allocator: Allocator,
    upgrading: Option<&crate::upgrade::wire::Channel>,
) -> Result<()> {
    let config = Arc::new(config);
    let workers = config.worker_count();
    preflight(&config)?;

    if config.listeners.iter().any(|l| l.tls.is_some()) {
        tracing::info!("{}", crate::tls::ktls::probe());
    }
    let first = Generation::build(1, config.clone(), None).map_err(RunError::Generation)?;
    let generations = Generations::new(first);
    let admission = Arc::new(Admission::new(&config));
    let splice_opts = SpliceOptions {
        mode: config.splice,
        capacity: u32::try_from(config.limits.max_connections).unwrap_or(u32::MAX).clamp(1, splice::MAX_CAPACITY),
        budget: config.relay.splice_budget,
    };
    let mut started_splice = splice::start(&splice_opts)?;
    // Loaded and self-tested: an old process passes its listening sockets now.
    let (mut inherited, took_maps) = take_over(upgrading, &mut started_splice)?;
    let (first_sockets, mut addrs) = bind_listeners(&config, &mut inherited)?;
    generations.current().start_background(&generations.tenure(1)).map_err(RunError::HealthChecks)?;
    let splicer = started_splice.splicer.clone();
    let stats = Arc::new(Stats::default());
    let upgrade = Arc::new(crate::upgrade::Upgrade::default());
    let (tx, rx) = shutdown::channel();
    let cpus = worker_cpus(allowed_cpus(), workers);
    let admin_socket = inherited.admin.take();
    let (metrics, mut metric_slots) = start_metrics(
        &config,
        workers,
        (&generations, &admission, started_splice, &stats),
        &rx,
        (admin_socket, &upgrade),
    )?;
    // Started by an upgrade, this process names itself only once the old one handed over.
    let write_pid = || config.pid_file.as_deref().map(PidFile::write).transpose().map_err(RunError::PidFile);
    let mut pid_file = if upgrading.is_none() { write_pid()? } else { None };

    let per_worker = sockets_per_worker(&config, first_sockets, &mut addrs)?;
    let (handles, orders) = spawn_workers(per_worker, |w, order_rx| {
        Ok(WorkerSetup {
            config: config.clone(),
            generations: generations.clone(),
            stats: stats.clone(),
            shutdown: rx.clone(),
            admission: admission.clone(),
            splicer: splicer.clone(),
            cpu: cpus.get(w % cpus.len().max(1)).copied(),
            allocator,
            metrics: metric_slots.next().ok_or(RunError::WorkerPanicked)?,
            orders: order_rx,
            index: w,
            upgrade: upgrade.clone(),
        })
    })?;
    (allocator.release)();

    // The signal handlers are in place before the ready line: a SIGTERM that follows it
    // at once (a test, `systemctl stop` right after start) must drain, not take the
    // default action and kill the process.
    let drain = config.stop_after();
    let adopters = orders.clone();
    let reloader = Arc::new(Reloader::new(
        source,
        generations.clone(),
        admission.clone(),
        metrics.clone(),
        Listeners::new(orders, config.keepalive.clone(), listen_socket),
    ));
    let upgrade_ctx =
        crate::upgrade::parent::Context::new((upgrade.clone(), tx.clone(), stats.clone()), &config, splicer.clone());
    crate::reload::tls_watch::spawn(reloader.clone(), rx.clone())
        .map_err(|source| RunError::Spawn { what: "certificate watch", source })?;
    let (handlers_in, handlers_ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            if let Err(e) = shutdown::signal_thread(&tx, drain, reloader, upgrade_ctx, &handlers_in) {
                tracing::error!(error = %e, "signal handling failed; SIGTERM will not drain gracefully");
            }
            // Keep the sender alive until the process exits.
            std::thread::park();
        })
        .map_err(|source| RunError::Spawn { what: "signal", source })?;
    // An error in the thread drops the sender: then there is nothing to wait for.
    let _ = handlers_ready.recv();

    announce_ready(&addrs, workers);
    if let Some(channel) = upgrading {
        // The old process stops accepting and passes its WebSockets from here on.
        let channel = channel.try_clone().map_err(RunError::Upgrade)?;
        crate::upgrade::child::accepting(channel, adopters, took_maps).map_err(RunError::Upgrade)?;
        pid_file = write_pid()?;
    }

    spawn_counts_reporter(stats.clone(), splicer.clone())?;
    crate::systemd::spawn_status(stats.clone()).map_err(|source| RunError::Spawn { what: "notify", source })?;
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(RunError::WorkerPanicked),
        }
    }
    upgrade.wait_finished();
    report_stopped(&stats, splicer.as_ref(), &metrics);
    drop(pid_file);
    // The workers are gone: the last lines of every generation's access log are
    // written here (the admin plane and the reload may still hold a handle).
    drop(generations);
    crate::accesslog::finish_all();
    failed.map_or(Ok(()), Err)
}

/// Started by a binary upgrade: says `Ready` (configuration loaded, splice self-tested)
/// and takes the old process's sockets, and its splice maps when they fit (see
/// [`adopt_splice`]); returns them and whether it took the maps.
fn take_over(
    upgrading: Option<&crate::upgrade::wire::Channel>,
    started: &mut splice::Started,
) -> Result<(crate::upgrade::Inherited, bool)> {
    let Some(channel) = upgrading else { return Ok((crate::upgrade::Inherited::default(), false)) };
    let mut inherited = crate::upgrade::child::ready(channel).map_err(RunError::Upgrade)?;
    let took = adopt_splice(started, inherited.splice.take());
    Ok((inherited, took))
}

/// Each worker's sockets: the first worker's, one more of each listener for each
/// other, and the sockets an old process with more workers passed, spread over all.
fn sockets_per_worker(config: &Config, first: Vec<KeyedSocket>, addrs: &mut [Bound]) -> Result<Vec<Vec<KeyedSocket>>> {
    let workers = config.worker_count();
    let mut per_worker = vec![first];
    for _ in 1..workers {
        per_worker.push(worker_sockets(config, addrs)?);
    }
    for (i, extra) in leftover_sockets(config, addrs).into_iter().enumerate() {
        per_worker[i % workers.max(1)].push(extra);
    }
    Ok(per_worker)
}

/// A worker thread's handle.
type WorkerHandle = std::thread::JoinHandle<Result<()>>;

/// Starts one thread per worker on its sockets, set up by `setup` (worker number, its
/// order channel); returns the threads and the channels' senders.
fn spawn_workers(
    per_worker: Vec<Vec<KeyedSocket>>,
    mut setup: impl FnMut(usize, tokio::sync::mpsc::UnboundedReceiver<Order>) -> Result<WorkerSetup>,
) -> Result<(Vec<WorkerHandle>, Vec<tokio::sync::mpsc::UnboundedSender<Order>>)> {
    let mut handles = Vec::new();
    let mut orders = Vec::new();
    for (w, sockets) in per_worker.into_iter().enumerate() {
        let (order_tx, order_rx) = tokio::sync::mpsc::unbounded_channel();
        orders.push(order_tx);
        let ctx = setup(w, order_rx)?;
        let h = std::thread::Builder::new()
            .name(format!("wsgate-w{w}"))
            .spawn(move || worker(ctx, sockets))
            .map_err(|source| RunError::Spawn { what: "worker", source })?;
        handles.push(h);
    }
    Ok((handles, orders))
}

/// A binary upgrade: takes the old process's splice maps (and so its spliced pairs)
/// when this process splices too, with the same program; returns whether it did.
/// Otherwise the old process keeps its spliced pairs and drains them.
fn adopt_splice(started: &mut splice::Started, offered: Option<crate::upgrade::InheritedSplice>) -> bool {
    let Some(offered) = offered else { return false };
    let Some(own) = &started.splicer else {
        tracing::warn!("binary upgrade: the splice is off here; the old process drains its spliced pairs");
        return false;
    };
    let offer = offered.offer;
    if offer.program != splice::program_digest() {
        tracing::warn!(
            "binary upgrade: the splice program changed; the old process drains its spliced pairs (new ones splice here)"
        );
        return false;
    }
    if offer.capacity != own.capacity() || offer.budget != own.budget() {
        tracing::warn!(
            capacity = offer.capacity,
            budget = offer.budget,
            "binary upgrade: the splice's capacity and budget stay the old process's until a restart"
        );
    }
    match Splicer::adopt(offered.fds, offer.capacity, offer.budget, &offered.used) {
        Ok(adopted) => {
            tracing::info!(in_use = offered.used.len(), "binary upgrade: took the old process's splice maps");
            started.splicer = Some(adopted);
            true
        }
        Err(e) => {
            tracing::warn!("binary upgrade: {e}; the old process drains its spliced pairs");
            false
        }
    }
}

/// Every listener listens: the ready lines scripts and tests wait for, and `READY=1`
/// to the service manager.
fn announce_ready(addrs: &[Bound], workers: usize) {
    for Bound { addr: a, .. } in addrs {
        tracing::info!(workers, "listening on {a}");
        println!("wsgate: listening on {a}");
    }
    let _ = std::io::stdout().flush();
    crate::systemd::ready(addrs.len(), workers);
}

/// The workers' counters, and the admin plane that reads them when `[admin] listen`
/// is set; returns the counters and each worker's slot.
fn start_metrics(
    config: &Config,
    workers: usize,
    (generations, admission, splice, stats): (&Generations, &Arc<Admission>, splice::Started, &Arc<Stats>),
    shutdown: &ShutdownRx,
    (inherited, upgrade): (Option<Socket>, &Arc<crate::upgrade::Upgrade>),
) -> Result<(Arc<Metrics>, std::vec::IntoIter<WorkerSlot>)> {
    let sources = admin::Sources {
        generations: generations.clone(),
        admission: admission.clone(),
        splice,
        stats: stats.clone(),
        upgrade: upgrade.clone(),
    };
    let live_view = config.admin.listen.is_some();
    let (metrics, slots) = Metrics::new(workers, admin::route_labels(&config.routes), live_view);
    if let Some(addr) = config.admin.listen {
        // The old process's admin socket, unless the configuration moved the admin plane.
        let inherited = inherited.filter(|s| {
            crate::upgrade::Inherited::local(s).is_some_and(|l| l == addr || (addr.port() == 0 && l.ip() == addr.ip()))
        });
        let (local, kept) =
            admin::start(addr, inherited, admin::State::new(metrics.clone(), sources, shutdown.clone()))
                .map_err(|source| RunError::Admin { addr, source })?;
        upgrade.admin_listening(kept);
        println!("wsgate: admin on {local}");
    }
    Ok((metrics, slots.into_iter()))
}

/// How often the per-mode counts are logged (only when something changed).
const COUNTS_PERIOD: Duration = Duration::from_mins(1);

/// One log line with the relay-mode counts (spliced, userspace, pressure, failed
/// handovers) and the 101 success ratio.
fn report_counts(stats: &Stats, splicer: Option<&Splicer>, what: &str) {
    let splice = splicer.map(Splicer::counts).unwrap_or_default();
    tracing::info!(
        accepted = stats.accepted.load(Ordering::Relaxed),
        active = stats.active.load(Ordering::Relaxed),
        spliced = splice.spliced,
        userspace = stats.relayed_userspace.load(Ordering::Relaxed),
        splice_pressure = splice.pressure,
        splice_handover_failed = splice.handover_failed,
        tls_handshakes = stats.tls.done.load(Ordering::Relaxed),
        tls_failed = %stats.tls.summary(),
        upgrade_success_ratio = stats.upgrade_success_ratio().unwrap_or(0.0),
        "{what}"
    );
}

/// The last lines: the counts, and the connections closed by reason. The admin plane
/// stops with the process, so no scrape can be sure to see the closes of the drain's
/// end (`shutdown`): this line says them.
fn report_stopped(stats: &Stats, splicer: Option<&Splicer>, metrics: &Metrics) {
    report_counts(stats, splicer, "stopped");
    tracing::info!("connections closed by reason: {}", metrics.closed_summary());
}

/// Logs the counts every [`COUNTS_PERIOD`] while connections come in.
fn spawn_counts_reporter(stats: Arc<Stats>, splicer: Option<Splicer>) -> Result<()> {
    std::thread::Builder::new()
        .name("wsgate-counts".into())
        .spawn(move || {
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(COUNTS_PERIOD);
                let accepted = stats.accepted.load(Ordering::Relaxed);
                if accepted != last {
                    last = accepted;
                    report_counts(&stats, splicer.as_ref(), "counts");
                }
            }
        })
        .map_err(|source| RunError::Spawn { what: "counts", source })?;
    Ok(())
}

struct WorkerSetup {
    /// The configuration at start: what a worker sizes once (buffers, drain, splice).
    config: Arc<Config>,
    generations: Generations,
    stats: Arc<Stats>,
    shutdown: ShutdownRx,
    admission: Arc<Admission>,
    splicer: Option<Splicer>,
    cpu: Option<usize>,
    allocator: Allocator,
    metrics: WorkerSlot,
    /// Listeners a reload adds or removes, and WebSockets a binary upgrade passes.
    orders: tokio::sync::mpsc::UnboundedReceiver<Order>,
    /// This worker's number.
    index: usize,
    upgrade: Arc<crate::upgrade::Upgrade>,
}

/// One listener's socket of one worker, by key.
type KeyedSocket = (ListenerKey, crate::config::Scheme, Socket, Shared);

/// Whether a listener's socket is the service manager's, shared by every worker.
type Shared = bool;

fn worker(setup: WorkerSetup, sockets: Vec<KeyedSocket>) -> Result<()> {
    if let Some(cpu) = setup.cpu {
        pin_to(cpu);
    }
    // Not IORING_SETUP_COOP_TASKRUN: the worker waits in epoll on the rings' fds, and
    // with it a completion that arrives while the worker sleeps does not wake it (the
    // task work waits for the worker's next system call): tried, the echo benchmark's
    // round trips went from p50 0.4 ms to 3.5 ms and p99 from 4 ms to 130 ms.
    tokio_uring::builder().entries(RING_ENTRIES).start(async move {
        // The runtime polls its root future at every pass of its scheduler (tokio's
        // `LocalSet::run_until`), that is several times per handshake: the worker's body
        // runs as a task, woken only when something of its own happens, and the root
        // only awaits it.
        match tokio_uring::spawn(serve_worker(setup, sockets)).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Not while the runtime runs: only its shutdown cancels tasks.
            Err(_) => Err(RunError::WorkerCancelled),
        }
    })
}

/// A worker's life on its runtime: its poll ring, its accept loops and its reloads,
/// then the drain of its connections.
async fn serve_worker(mut setup: WorkerSetup, sockets: Vec<KeyedSocket>) -> Result<()> {
    let ring = Ring::start(RING_ENTRIES).map_err(RunError::PollRing)?;
    let metrics = crate::metrics::Recorder::start(setup.metrics);
    let idle = splice::idle_limit(setup.config.timeouts.idle);
    let pairs = setup.splicer.as_ref().map(|s| s.init_worker(&ring, idle, setup.shutdown.clone()));
    let buffers = BufPool::new(setup.config.relay.buffer_size, setup.config.relay.pool_buffers);
    let pacer = Rc::new(Pacer::new(&setup.config.drain, setup.config.worker_count()));
    if let Some(p) = &pairs {
        p.pace_drain(pacer.clone(), setup.config.drain.close_timeout);
    }
    let events = crate::drain::events::Hub::start(setup.shutdown.clone(), &setup.generations.removals);
    let state = Rc::new(Worker {
        generations: setup.generations,
        stats: setup.stats,
        shutdown: setup.shutdown.clone(),
        admission: setup.admission,
        splicer: setup.splicer,
        ring,
        pairs,
        buffers,
        lifetimes: Lifetimes::default(),
        metrics,
        pacer,
        pool: crate::upstream::pool::Pool::default(),
        upgrade: setup.upgrade,
        events,
    });
    let release = setup.allocator.release;
    tokio_uring::spawn(async move {
        let mut tick = tokio::time::interval(RELEASE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            release();
        }
    });
    tokio_uring::spawn(sweep_pool(state.clone()));
    tokio_uring::spawn(crate::conn::teardown::close_removed_spliced(state.clone()));
    let mut accepting = Vec::new();
    for (key, scheme, s, shared) in sockets {
        accepting.push(accept_on(s, (key, scheme, shared), (setup.index, &state)));
    }
    follow_reloads(&mut setup.orders, &mut accepting, (setup.index, &state)).await;
    // After a binary upgrade the accept loops ended at the hand-over.
    if !state.upgrade.listeners_moved() {
        for (_, removed, l) in accepting {
            let _ = l.await;
            drop(removed);
        }
    }
    // Draining: wait for this worker's connections to finish (they close themselves
    // at `Stop`).
    while state.stats.active.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One more worker's socket of each listener, with its key: one an old process
/// passed (binary upgrade), or a new one on the same address.
fn worker_sockets(config: &Config, addrs: &mut [Bound]) -> Result<Vec<KeyedSocket>> {
    let sockets = addrs
        .iter_mut()
        .map(|b| {
            let socket = match (&b.shared, b.inherited.pop()) {
                (Some(passed), _) => passed.try_clone(),
                (None, Some(inherited)) => crate::io::set_quickack(&inherited, false).map(|()| inherited),
                (None, None) => listen_socket(b.addr, b.backlog, &config.keepalive),
            };
            socket.map_err(|source| RunError::Listen { addr: b.addr, source })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(keyed(config, sockets, addrs))
}

/// Each listener's sockets with its key and scheme.
fn keyed(config: &Config, sockets: Vec<Socket>, addrs: &[Bound]) -> Vec<KeyedSocket> {
    let keys = config.listeners.iter().map(|l| (listeners::key(l), l.scheme()));
    keys.zip(sockets).zip(addrs).map(|(((k, scheme), s), b)| (k, scheme, s, b.shared.is_some())).collect()
}

/// The passed sockets no worker took (the old process had more workers).
fn leftover_sockets(config: &Config, addrs: &mut [Bound]) -> Vec<KeyedSocket> {
    let mut out = Vec::new();
    for (l, b) in config.listeners.iter().zip(addrs.iter_mut()) {
        for s in b.inherited.drain(..) {
            out.push((listeners::key(l), l.scheme(), s, false));
        }
    }
    out
}

/// One accept loop of a worker: its listener, the sender that stops it, the task.
type Accepting = (ListenerKey, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// Starts accepting on `socket` (this worker's of listener `key`).
fn accept_on(
    socket: Socket,
    (key, scheme, shared): (ListenerKey, crate::config::Scheme, Shared),
    (index, worker): (usize, &Rc<Worker>),
) -> Accepting {
    worker.upgrade.listening(index, key, shared, &socket);
    let (removed_tx, removed) = tokio::sync::oneshot::channel();
    let task = tokio_uring::spawn(conn::accept::accept_loop(socket, (key, scheme, shared), worker.clone(), removed));
    (key, removed_tx, task)
}

/// Until the drain, adds and removes this worker's listeners as reloads order.
async fn follow_reloads(
    orders: &mut tokio::sync::mpsc::UnboundedReceiver<Order>,
    accepting: &mut Vec<Accepting>,
    (index, worker): (usize, &Rc<Worker>),
) {
    let mut shutdown = worker.shutdown.clone();
    let mut draining = std::pin::pin!(shutdown.reached(crate::shutdown::Phase::Draining));
    loop {
        tokio::select! {
            order = orders.recv() => match order {
                Some(Order::Add { key, scheme, socket }) => {
                    accepting.push(accept_on(socket, (key, scheme, false), (index, worker)));
                }
                Some(Order::Adopt(adopted)) => {
                    tokio_uring::spawn(conn::adopt::resume(*adopted, worker.clone()));
                }
                Some(Order::Remove(key)) => {
                    worker.upgrade.removed(index, key);
                    for (_, removed, _) in accepting.extract_if(.., |(k, _, _)| *k == key) {
                        let _ = removed.send(());
                    }
                }
                // No reload can come any more: only the drain is left to wait for.
                None => {
                    draining.await;
                    return;
                }
            },
            () = &mut draining => return,
        }
    }
}

/// Checks the kernel and process limits this configuration needs.
fn preflight(config: &Config) -> Result<()> {
    let needs = crate::preflight::Needs {
        max_connections: config.limits.max_connections,
        listen_backlog: config.listeners.iter().map(|l| l.backlog).max().unwrap_or(0),
        upstream_conns_per_source: config.limits.max_connections,
    };
    crate::preflight::run(&needs, config.strict_tuning)?;
    Ok(())
}

/// The first worker's socket of each listener (keyed), and what every other worker
/// needs to get its own. Sockets an old process passed (`inherited`, binary upgrade)
/// are taken before any is bound.
fn bind_listeners(
    config: &Config,
    inherited: &mut crate::upgrade::Inherited,
) -> Result<(Vec<KeyedSocket>, Vec<Bound>)> {
    // Bind the first socket of each listener here, so port 0 resolves once and every
    // worker shares the same port; bind errors surface before anything starts. A
    // listener whose socket the service manager passed (socket activation) takes it,
    // and every worker accepts from a duplicate of it.
    let mut passed = crate::activation::take()?;
    let mut first_sockets = Vec::new();
    let mut addrs = Vec::new();
    for l in &config.listeners {
        let listen_error = |source| RunError::Listen { addr: l.address, source };
        let mut from_old = inherited.take(listeners::key(l));
        let (s, shared) = match crate::activation::claim(&mut passed, l.address) {
            None if !from_old.is_empty() => {
                let (s, shared) = from_old.remove(0);
                // An old process of an earlier version may not have delayed its ACKs.
                crate::io::set_quickack(&s, false).map_err(listen_error)?;
                tracing::info!("listening on {} (socket from the old process)", l.address);
                let dup = if shared { Some(s.try_clone().map_err(listen_error)?) } else { None };
                (s, dup)
            }
            Some(p) => {
                tracing::info!(fd = p.fd, name = %p.name, "listening on {} (socket from the service manager)", p.addr);
                adopt(&p.socket, l.backlog, &config.keepalive).map_err(listen_error)?;
                let dup = p.socket.try_clone().map_err(listen_error)?;
                (p.socket, Some(dup))
            }
            None => (listen_socket(l.address, l.backlog, &config.keepalive).map_err(listen_error)?, None),
        };
        let local = s.local_addr().map_err(listen_error)?;
        let local = local.as_socket().ok_or_else(|| RunError::ListenerAddress(format!("{local:?}")))?;
        let inherited = if shared.is_some() { Vec::new() } else { from_old.into_iter().map(|(s, _)| s).collect() };
        addrs.push(Bound { addr: local, backlog: l.backlog, shared, inherited });
        first_sockets.push(s);
    }
    inherited.close_unclaimed();
    if let Some(p) = passed.pop() {
        let configured: Vec<_> = config.listeners.iter().map(|l| l.address).collect();
        return Err(crate::activation::unmatched(p, &configured).into());
    }
    let first = keyed(config, first_sockets, &addrs);
    Ok((first, addrs))
}

/// A listener's address once listening: the one each worker binds too (SO_REUSEPORT),
/// or the passed socket every worker shares.
#[derive(Debug)]
struct Bound {
    addr: SocketAddr,
    backlog: u32,
    /// The service manager's socket (socket activation), duplicated for each worker.
    shared: Option<Socket>,
    /// Sockets an old process passed (binary upgrade) that no worker took yet.
    inherited: Vec<Socket>,
}

/// Makes a socket the service manager passed accept like one wsgate binds: its
/// backlog, and the options accepted sockets inherit (`TCP_NODELAY`, keepalive,
/// delayed ACKs).
fn adopt(s: &Socket, backlog: u32, keepalive: &crate::config::KeepaliveConfig) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    crate::io::set_keepalive(s, keepalive)?;
    // Listening again on a listening socket only sets its backlog.
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    crate::io::set_quickack(s, false)
}

/// A listening socket with SO_REUSEPORT (every worker binds the same address).
///
/// # Errors
/// The socket, option, bind or listen call that failed.
pub fn listen_socket(
    addr: SocketAddr,
    backlog: u32,
    keepalive: &crate::config::KeepaliveConfig,
) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    // Accepted sockets inherit TCP_NODELAY and the keepalive options.
    crate::io::set_keepalive(&s, keepalive)?;
    s.bind(&addr.into())?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // And delayed ACKs (HAProxy's `tcp-smart-accept`): the ACK of a client's request
    // head rides on wsgate's answer (the 101, the upstream's response head) instead of
    // a segment of its own. A request with a body turns quick ACKs on (`conn::prepare`).
    crate::io::set_quickack(&s, false)?;
    Ok(s)
}

/// The CPUs the workers are pinned to, in order (worker `w` to `cpus[w % len]`), out of
/// those the process may run on: all of them when the workers cover them (one or more
/// per CPU: the thread-per-core layout, each worker owning its core, its listener and
/// its caches); none when there are fewer workers than CPUs. Pinned to the first CPUs
/// of the set, such workers could not leave a core that the backend, a load generator
/// or the kernel's softirq work is using while another sits idle: on 2 CPUs shared
/// with the echo benchmark's client and server, one pinned worker's round trips were
/// 1.16–1.30× slower at p99 and 1.22–1.52× at p999 than one left to the scheduler (two
/// series of 5 alternating pairs of runs; nginx has no affinity by default either).
/// To pin fewer workers, narrow the set (`taskset`, systemd's `CPUAffinity=`). With
/// `workers = 0` under a CPU quota below the set (a container), there are fewer
/// workers than CPUs: not pinned.
fn worker_cpus(allowed: Vec<usize>, workers: usize) -> Vec<usize> {
    if workers >= allowed.len() {
        return allowed;
    }
    tracing::info!(workers, cpus = allowed.len(), "fewer workers than CPUs: not pinned, the scheduler places them");
    Vec::new()
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_err() || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err() {
        tracing::warn!(cpu, "could not pin worker thread to its core");
    }
}

/// Closes this worker's idle upstream connections past their `keepalive_timeout`, once a
/// second, and all of them when the drain begins (none is kept from then on).
async fn sweep_pool(worker: Rc<conn::Worker>) {
    let mut shutdown = worker.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => worker.pool.sweep(),
            () = shutdown.reached(crate::shutdown::Phase::Draining) => break,
        }
    }
    worker.pool.close();
}

#[cfg(test)]
mod tests {
    use super::worker_cpus;

    #[test]
    fn workers_are_pinned_only_when_they_cover_the_cpus() {
        assert_eq!(worker_cpus(vec![0, 1], 2), [0, 1]);
        assert_eq!(worker_cpus(vec![0, 2], 2), [0, 2], "the set as the process may use it, gaps and all");
        assert_eq!(worker_cpus(vec![0, 1], 3), [0, 1], "more workers than CPUs take them in turn");
        assert!(worker_cpus(vec![0, 1], 1).is_empty(), "one worker on two CPUs floats");
        assert!(worker_cpus(vec![0, 1, 2, 3], 2).is_empty());
        assert!(worker_cpus(Vec::new(), 1).is_empty(), "no set known: nothing to pin to");
    }
}
