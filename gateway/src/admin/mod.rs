//! The admin plane: `/metrics`, `/healthz`, `/readyz`, `/status` and
//! `/connections` on their own listener (`[admin] listen`, `--admin`), served by
//! their own thread with a small current-thread tokio runtime.
//!
//! It shares with the data plane only atomics, the live view's event queue and one
//! ping channel per worker; it must never make a worker wait for it. Off (no
//! thread, no listener, no live-view events) when `[admin] listen` is unset.

mod endpoints;
pub mod exposition;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::reload::Generations;
use crate::shutdown::ShutdownRx;
use crate::splice::Splicer;

/// Everything the admin endpoints read.
#[derive(Debug)]
pub struct State {
    pub metrics: Arc<Metrics>,
    /// The configuration generation in force: its upstream groups are the ones shown.
    pub generations: Generations,
    pub admission: Arc<Admission>,
    /// The process-wide counters (TLS handshakes).
    pub stats: Arc<crate::stats::Stats>,
    /// The kernel splice, when in force.
    pub splicer: Option<Splicer>,
    /// Why the splice is not in force (`splice = "auto"` fell back), if it is not.
    pub splice_fallback: Option<String>,
    pub shutdown: ShutdownRx,
    pub started: Instant,
    pub started_unix: f64,
    /// How long `/healthz` waits for every worker's answer.
    pub ping_deadline: std::time::Duration,
    /// A binary upgrade of this process (its listeners may have moved on).
    pub upgrade: Arc<crate::upgrade::Upgrade>,
}

/// What the data plane lends the admin plane.
#[derive(Debug)]
pub struct Sources {
    pub generations: Generations,
    pub admission: Arc<Admission>,
    pub splice: crate::splice::Started,
    pub stats: Arc<crate::stats::Stats>,
    pub upgrade: Arc<crate::upgrade::Upgrade>,
}

impl State {
    /// The state of a process starting now.
    pub fn new(metrics: Arc<Metrics>, sources: Sources, shutdown: ShutdownRx) -> Self {
        let Sources { generations, admission, splice, stats, upgrade } = sources;
        Self {
            metrics,
            generations,
            admission,
            stats,
            splicer: splice.splicer,
            splice_fallback: splice.fallback,
            shutdown,
            started: Instant::now(),
            started_unix: crate::accesslog::now_unix(),
            ping_deadline: PING_DEADLINE,
            upgrade,
        }
    }
}

/// Binds `addr` (or serves `inherited`, the old process's admin socket in a binary
/// upgrade) and serves the admin endpoints on a thread of their own; returns the
/// bound address (port 0 resolved) and a duplicate of the socket for a later upgrade.
pub fn start(
    addr: SocketAddr,
    inherited: Option<socket2::Socket>,
    state: State,
) -> std::io::Result<(SocketAddr, socket2::Socket)> {
    let listener = match inherited {
        Some(s) => std::net::TcpListener::from(s),
        None => std::net::TcpListener::bind(addr)?,
    };
    listener.set_nonblocking(true)?;
    let kept = socket2::Socket::from(listener.try_clone()?);
    let local = listener.local_addr()?;
    tracing::info!("admin plane on http://{local}/metrics");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("wsgate-admin".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => server::serve(l, Arc::new(state)).await,
                Err(e) => tracing::error!(error = %e, "admin listener failed; the admin plane is off"),
            }
        });
    })?;
    Ok((local, kept))
}

/// How long `/healthz` waits for every worker to answer its ping.
pub const PING_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The metrics labels of each route, in configuration order.
pub fn route_labels(routes: &[crate::config::RouteConfig]) -> Vec<crate::metrics::RouteLabel> {
    routes
        .iter()
        .map(|r| crate::metrics::RouteLabel {
            route: format!("{}{}", r.host.as_deref().unwrap_or_default(), r.path),
            upstream: r.upstream.clone(),
        })
        .collect()
}

/// SHA-1 (hex) of the configuration as JSON: tells two processes' configurations apart.
pub fn digest(config: &crate::config::Config) -> String {
    use sha1::Digest as _;
    let json = serde_json::to_vec(config).unwrap_or_default();
    sha1::Sha1::digest(&json).iter().fold(String::with_capacity(40), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}
