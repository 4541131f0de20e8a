//! Start-up of the data plane: one thread per worker, pinned to a core, each with its
//! own tokio-uring runtime, poll ring, buffer pool and SO_REUSEPORT listeners.
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
use tokio_uring::net::TcpListener;

use crate::accesslog::AccessLog;
use crate::admin;
use crate::admission::Admission;
use crate::bufpool::BufPool;
use crate::config::Config;
use crate::conn::{self, Worker};
use crate::drain::Pacer;
use crate::lifetimes::Lifetimes;
use crate::metrics::{Metrics, WorkerSlot};
use crate::readiness::Ring;
use crate::router::Router;
use crate::shutdown::{self, ShutdownRx};
use crate::splice::{self, SpliceOptions, Splicer};
use crate::stats::Stats;
use crate::tls::Acceptor;
use crate::upstream::{self, Group};

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
    #[error("starting the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("spawning the {what} thread: {source}")]
    Spawn { what: &'static str, source: std::io::Error },
    #[error("creating the poll ring: {0}")]
    PollRing(std::io::Error),
    #[error(transparent)]
    Resolve(upstream::ResolveError),
    #[error("a worker thread panicked")]
    WorkerPanicked,
    #[error(transparent)]
    Tls(crate::tls::TlsSetupError),
    #[error("cannot listen on {addr} (admin): {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
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

/// Runs the gateway until shutdown: binds, starts workers, waits for them.
pub fn run(config: Config, allocator: Allocator) -> Result<()> {
    conn::teardown::start_clock();
    let config = Arc::new(config);
    let workers = config.worker_count();
    preflight(&config)?;

    // Bind the first socket of each listener here, so port 0 resolves once and every
    // worker shares the same port; bind errors surface before anything starts.
    let mut first_sockets = Vec::new();
    let mut addrs = Vec::new();
    for l in &config.listeners {
        let listen_error = |source| RunError::Listen { addr: l.address, source };
        let s = listen_socket(l.address, l.backlog, &config.keepalive).map_err(listen_error)?;
        let local = s.local_addr().map_err(listen_error)?;
        let local = local.as_socket().ok_or_else(|| RunError::ListenerAddress(format!("{local:?}")))?;
        addrs.push((local, l.backlog));
        first_sockets.push(s);
    }

    let acceptors = tls_acceptors(&config)?;
    let groups = upstream_groups(&config)?;
    let router =
        Arc::new(Router::new(&config.routes, |name| groups.iter().find(|(n, _)| n == name).map(|(_, g)| g.clone())));
    let all_groups: Vec<Arc<Group>> = groups.iter().map(|(_, g)| g.clone()).collect();
    upstream::start_resolver(&all_groups).map_err(|source| RunError::Spawn { what: "resolver", source })?;
    if upstream::health::start(&all_groups).map_err(RunError::HealthChecks)? {
        tracing::info!("active health checks running");
    }
    let admission = Arc::new(Admission::new(&config));
    let splice_opts = SpliceOptions {
        mode: config.splice,
        capacity: u32::try_from(config.limits.max_connections).unwrap_or(u32::MAX).clamp(1, splice::MAX_CAPACITY),
        budget: config.relay.splice_budget,
    };
    let started_splice = splice::start(&splice_opts)?;
    let splicer = started_splice.splicer.clone();
    let access_log = AccessLog::start(&config.access_log).map_err(RunError::AccessLog)?;
    let stats = Arc::new(Stats::default());
    let (tx, rx) = shutdown::channel();
    let cpus = allowed_cpus();
    let (metrics, mut metric_slots) =
        start_metrics(&config, workers, (&all_groups, &admission, started_splice, &stats), &rx)?;

    let mut handles = Vec::new();
    for w in 0..workers {
        let sockets = if w == 0 {
            std::mem::take(&mut first_sockets)
        } else {
            addrs
                .iter()
                .map(|&(addr, backlog)| {
                    listen_socket(addr, backlog, &config.keepalive).map_err(|source| RunError::Listen { addr, source })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let ctx = WorkerSetup {
            config: config.clone(),
            router: router.clone(),
            access_log: access_log.clone(),
            stats: stats.clone(),
            shutdown: rx.clone(),
            admission: admission.clone(),
            splicer: splicer.clone(),
            cpu: cpus.get(w % cpus.len().max(1)).copied(),
            allocator,
            metrics: metric_slots.next().ok_or(RunError::WorkerPanicked)?,
            tls: acceptors.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("wsgate-w{w}"))
            .spawn(move || worker(ctx, sockets))
            .map_err(|source| RunError::Spawn { what: "worker", source })?;
        handles.push(h);
    }
    (allocator.release)();

    // The signal handlers are in place before the ready line: a SIGTERM that follows it
    // at once (a test, `systemctl stop` right after start) must drain, not take the
    // default action and kill the process.
    let drain = config.stop_after();
    let (handlers_in, handlers_ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            if let Err(e) = shutdown::signal_thread(&tx, drain, &handlers_in) {
                tracing::error!(error = %e, "signal handling failed; SIGTERM will not drain gracefully");
            }
            // Keep the sender alive until the process exits.
            std::thread::park();
        })
        .map_err(|source| RunError::Spawn { what: "signal", source })?;
    // An error in the thread drops the sender: then there is nothing to wait for.
    let _ = handlers_ready.recv();

    announce_ready(&addrs, workers);

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
    report_stopped(&stats, splicer.as_ref(), &metrics);
    // The workers' handles are gone with them: the last lines are written here.
    access_log.finish();
    failed.map_or(Ok(()), Err)
}

/// Every listener listens: the ready lines scripts and tests wait for, and `READY=1`
/// to the service manager.
fn announce_ready(addrs: &[(SocketAddr, u32)], workers: usize) {
    for (a, _) in addrs {
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
    (groups, admission, splice, stats): (&[Arc<Group>], &Arc<Admission>, splice::Started, &Arc<Stats>),
    shutdown: &ShutdownRx,
) -> Result<(Arc<Metrics>, std::vec::IntoIter<WorkerSlot>)> {
    let sources =
        admin::Sources { groups: groups.to_vec(), admission: admission.clone(), splice, stats: stats.clone() };
    let live_view = config.admin.listen.is_some();
    let (metrics, slots) = Metrics::new(workers, admin::route_labels(&config.routes), live_view);
    if let Some(addr) = config.admin.listen {
        let local = admin::start(addr, admin::State::new(metrics.clone(), sources, shutdown.clone(), config))
            .map_err(|source| RunError::Admin { addr, source })?;
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
    config: Arc<Config>,
    router: Arc<Router>,
    access_log: AccessLog,
    stats: Arc<Stats>,
    shutdown: ShutdownRx,
    admission: Arc<Admission>,
    splicer: Option<Splicer>,
    cpu: Option<usize>,
    allocator: Allocator,
    metrics: WorkerSlot,
    /// Each listener's TLS acceptor, in the configuration's order.
    tls: Vec<Option<Acceptor>>,
}

fn worker(setup: WorkerSetup, sockets: Vec<Socket>) -> Result<()> {
    if let Some(cpu) = setup.cpu {
        pin_to(cpu);
    }
    // Not IORING_SETUP_COOP_TASKRUN: the worker waits in epoll on the rings' fds, and
    // with it a completion that arrives while the worker sleeps does not wake it (the
    // task work waits for the worker's next system call): tried, the echo benchmark's
    // round trips went from p50 0.4 ms to 3.5 ms and p99 from 4 ms to 130 ms.
    tokio_uring::builder().entries(RING_ENTRIES).start(async move {
        let ring = Ring::start(RING_ENTRIES).map_err(RunError::PollRing)?;
        let metrics = crate::metrics::Recorder::start(setup.metrics);
        let idle = splice::idle_limit(setup.config.timeouts.idle);
        let pairs = setup.splicer.as_ref().map(|s| s.init_worker(&ring, idle, setup.shutdown.clone()));
        let buffers = BufPool::new(setup.config.relay.buffer_size, setup.config.relay.pool_buffers);
        let pacer = Rc::new(Pacer::new(&setup.config.drain, setup.config.worker_count()));
        if let Some(p) = &pairs {
            p.pace_drain(pacer.clone());
        }
        let state = Rc::new(Worker {
            config: setup.config,
            router: setup.router,
            access_log: setup.access_log,
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
        let mut accept_loops = Vec::new();
        // One socket per listener, in the configuration's order.
        let schemes: Vec<_> = state.config.listeners.iter().map(crate::config::ListenerConfig::scheme).collect();
        for ((s, scheme), tls) in sockets.into_iter().zip(schemes).zip(setup.tls) {
            let listener = TcpListener::from_std(s.into());
            accept_loops.push(tokio_uring::spawn(conn::accept::accept_loop(listener, scheme, tls, state.clone())));
        }
        for l in accept_loops {
            let _ = l.await;
        }
        // Draining: wait for this worker's connections to finish (they close themselves
        // at `Stop`).
        while state.stats.active.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
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

/// Each listener's TLS acceptor (`None` for a plain listener), its files loaded and
/// checked once for all workers.
fn tls_acceptors(config: &Config) -> Result<Vec<Option<Acceptor>>> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| l.tls.as_ref().map(|tls| Acceptor::from_config(&format!("listener[{i}].tls"), tls)).transpose())
        .collect::<Result<_, _>>()
        .map_err(RunError::Tls)
}

/// The upstream groups by name, their server names resolved (blocking, at start).
fn upstream_groups(config: &Config) -> Result<Vec<(String, Arc<Group>)>> {
    config
        .upstreams
        .iter()
        .map(|(name, u)| Ok((name.clone(), Arc::new(Group::new(name, u)?))))
        .collect::<Result<_, upstream::ResolveError>>()
        .map_err(RunError::Resolve)
}

/// A listening socket with SO_REUSEPORT (every worker binds the same address).
fn listen_socket(
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
    Ok(s)
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
