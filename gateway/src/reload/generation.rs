//! A configuration generation: the configuration in force and what is built from it
//! for new connections (routes, upstream groups, TLS acceptors, access log), and the
//! one place that publishes a new one.
//!
//! Every new connection takes the generation in force when it is accepted and keeps
//! it to its end; a reload publishes the next one without touching a live
//! connection. Reading the generation is one atomic load (`arc-swap`): no lock on
//! the accept path. Building one must never start serving or stop anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use super::listeners::ListenerKey;
use super::tls_watch::Stamps;
use crate::accesslog::AccessLog;
use crate::config::Config;
use crate::drain::Removals;
use crate::router::Router;
use crate::tls::{Acceptor, TlsSetupError};
use crate::upstream::{self, Group, GroupError, Tenure};

/// Why a generation could not be built from a (valid) configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("access_log.path: {0}")]
    AccessLog(std::io::Error),
}

/// One configuration and what new connections use of it.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start, one more per applied reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Router,
    /// The upstream groups by name, in the configuration's order.
    pub groups: Vec<Arc<Group>>,
    /// Each TLS listener's acceptor, by listener.
    pub tls: Vec<(ListenerKey, Acceptor)>,
    /// How the TLS listeners' certificate files looked just before they were read (what
    /// the file watch compares with).
    pub tls_files: Stamps,
    pub access_log: AccessLog,
}

impl Generation {
    /// Builds generation `number` of `config`. With `previous`, servers that stay keep
    /// their live state and an unchanged access log keeps its writer. Blocking (reads
    /// certificate files, resolves names): call off the data plane.
    pub fn build(number: u64, config: Arc<Config>, previous: Option<&Self>) -> Result<Self, BuildError> {
        // Before the files are read: a change meanwhile is seen as one by the watch.
        let tls_files = super::tls_watch::stamps(&config);
        let tls = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let tls = l.tls.as_ref()?;
                let acceptor = Acceptor::from_config(&format!("listener[{i}].tls"), tls);
                Some(acceptor.map(|a| (super::listeners::key(l), a.offer_h2(config.http2.enabled))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let groups = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let before = previous.and_then(|p| p.group(name));
                Ok(Arc::new(Group::after(name, u, before.map(AsRef::as_ref))?))
            })
            .collect::<Result<Vec<_>, GroupError>>()?;
        let router = Router::new(&config.routes, |name| groups.iter().find(|g| g.name == name).cloned());
        let access_log = match previous {
            Some(p) if same(&p.config.access_log, &config.access_log) => p.access_log.clone(),
            _ => AccessLog::start(&config.access_log).map_err(BuildError::AccessLog)?,
        };
        Ok(Self { number, config, router, groups, tls, tls_files, access_log })
    }

    /// The TLS acceptor of the listener `key` (`None`: plain, or no longer configured).
    pub fn tls_for(&self, key: &ListenerKey) -> Option<Acceptor> {
        self.tls.iter().find(|(k, _)| k == key).map(|(_, a)| a.clone())
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Starts this generation's background threads (health checks, name resolution);
    /// they end when `tenure` is over.
    pub fn start_background(&self, tenure: &Tenure) -> std::io::Result<()> {
        upstream::start_resolver(&self.groups, tenure.clone())?;
        if upstream::health::start(&self.groups, tenure)? {
            tracing::info!(generation = self.number, "active health checks running");
        }
        Ok(())
    }
}

/// Whether two configuration values are the same (compared as their serialized form,
/// so every field counts, including ones added later).
pub fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The generation in force, shared by every worker, the admin plane and the reload.
#[derive(Debug, Clone)]
pub struct Generations {
    current: Arc<ArcSwap<Generation>>,
    number: Arc<AtomicU64>,
    /// The servers reloads removed from groups with `drain_removed`, announced to the
    /// relays of their WebSockets.
    pub removals: Removals,
}

impl Generations {
    /// Puts the first generation in force.
    pub fn new(first: Generation) -> Self {
        let number = Arc::new(AtomicU64::new(first.number));
        let removals = Removals::new(&first.config.drain);
        Self { current: Arc::new(ArcSwap::from_pointee(first)), number, removals }
    }

    /// The generation in force now (what a new connection takes and keeps).
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Puts `next` in force for new connections; the ones that hold an older
    /// generation keep it. Ends the older generation's tenure.
    pub fn publish(&self, next: Generation) {
        let n = next.number;
        self.current.store(Arc::new(next));
        self.number.store(n, Ordering::Relaxed);
    }

    /// How long generation `number` stays in force.
    pub fn tenure(&self, number: u64) -> Tenure {
        Tenure::new(self.number.clone(), number)
    }
}
