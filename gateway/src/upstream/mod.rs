//! Upstream groups: which servers a new connection tries, in which order, and what is
//! known of each server's health.
//!
//! State shared by all workers and the health-check thread is atomics only: live
//! connection counts (`least_conn`, `max_conns`), passive failure marks and the active
//! health verdict. Nothing here takes a lock or waits; every attempt order is bounded
//! by the group size and `tries`. Policies live in [`balance`], passive marking in
//! [`passive`], active checks (own thread, own runtime) in [`health`].

pub mod address;
pub mod balance;
pub mod health;
pub mod passive;
pub mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::config::{Balance, HashKey, HealthCheckConfig, ServerConfig, UpstreamConfig};
use address::AddrCell;
use balance::Rendezvous;
use passive::{Passive, now_ms};

/// One upstream server: its configuration in this generation and its live state.
#[derive(Debug)]
pub struct Server {
    /// Where the server is, as configured (an IP or a DNS name, with a port).
    pub address: crate::config::ServerAddress,
    pub weight: u32,
    pub backup: bool,
    /// Live connections allowed (all workers); 0 = no limit.
    pub max_conns: u64,
    /// What is known of the server, shared with the same server (same group, same
    /// address) of the configuration generations before and after this one: a reload
    /// keeps its health verdict, passive marks and live connection count.
    live: Arc<ServerLive>,
}

/// The live state of one server, kept across reloads.
#[derive(Debug)]
pub struct ServerLive {
    /// Its current IP address (a name's is re-resolved every `resolve_interval`).
    current: AddrCell,
    /// Connections established or being established to this server right now (all workers).
    active: AtomicU64,
    passive: Passive,
    /// Verdict of the active health checks; true until they say otherwise.
    healthy: AtomicBool,
    /// Active health checks passed and failed, and times passive health marked it down
    /// (for metrics).
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    pub passive_marks: AtomicU64,
}

impl std::ops::Deref for Server {
    type Target = ServerLive;

    /// The live state reads as the server's own (`server.checks_passed`).
    fn deref(&self) -> &ServerLive {
        &self.live
    }
}

impl Server {
    fn new(
        address: crate::config::ServerAddress,
        addr: SocketAddr,
        (weight, backup, max_conns): (u32, bool, u64),
        kept: Option<Arc<ServerLive>>,
    ) -> Self {
        let live = kept.unwrap_or_else(|| {
            Arc::new(ServerLive {
                current: AddrCell::new(addr),
                active: AtomicU64::new(0),
                passive: Passive::default(),
                healthy: AtomicBool::new(true),
                checks_passed: AtomicU64::new(0),
                checks_failed: AtomicU64::new(0),
                passive_marks: AtomicU64::new(0),
            })
        });
        Self { address, weight, backup, max_conns, live }
    }
}

impl ServerLive {
    /// The address connections go to now.
    pub fn addr(&self) -> SocketAddr {
        self.current.get()
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the active health checks consider the server alive.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Publishes a health-check verdict; returns the previous one.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Whether the server may be picked now (health checks and passive marks agree).
    pub fn is_up(&self) -> bool {
        self.available(now_ms())
    }

    /// Whether passive failure marking has the server down right now.
    pub fn is_marked_down(&self) -> bool {
        self.passive.is_down(now_ms())
    }

    fn available(&self, now: u64) -> bool {
        self.is_healthy() && !self.passive.is_down(now)
    }
}

impl Server {
    fn has_room(&self) -> bool {
        self.max_conns == 0 || self.active() < self.max_conns
    }
}

/// What a policy may look at to pick a server.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The client's address (as believed: see `admission.trusted_proxies`).
    pub client: IpAddr,
    /// The `hash_key` value of the request, if the group hashes on one and it was present.
    pub key: Option<&'a [u8]>,
}

/// A named group of servers.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    servers: Vec<Server>,
    balance: Balance,
    hash_key: Option<HashKey>,
    /// Upper bound of servers tried per connection.
    tries: usize,
    /// Round-robin cursor over the weighted schedule (also rotates ties elsewhere).
    cursor: AtomicUsize,
    /// Primary indices spread by weight (smooth weighted round robin, precomputed).
    schedule: Vec<usize>,
    /// Consistent hashing of the primaries (`ip_hash`, `hash`).
    hashing: Rendezvous,
    max_fails: u32,
    fail_timeout_ms: u64,
    sources: Vec<IpAddr>,
    source_cursor: AtomicUsize,
    health_check: Option<HealthCheckConfig>,
    /// How often names are resolved again (zero: never).
    resolve_interval: std::time::Duration,
    /// Names resolve to their first IPv4 address (else IPv6).
    ipv4: bool,
    /// What each worker's pool keeps of this group's idle connections.
    pub keepalive: pool::Keep,
    /// TLS towards the servers (`upstream.NAME.tls`); `None`: plain TCP.
    pub tls: Option<crate::tls::Connector>,
    /// A reload that removes a server from this group closes its userspace-relayed
    /// WebSockets with a Close 1001 (`upstream.NAME.drain_removed`).
    pub drain_removed: bool,
}

/// Why a group could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// A server name that did not resolve at start.
#[derive(Debug, thiserror::Error)]
#[error("upstream.{group}.servers[{index}].address: cannot resolve `{address}`")]
pub struct ResolveError {
    group: String,
    index: usize,
    address: String,
    source: std::io::Error,
}

/// How long the groups of one configuration generation are in force: the background
/// threads made for them (health checks, resolver) stop once a reload replaced them.
#[derive(Debug, Clone)]
pub struct Tenure {
    /// The generation in force now (the reload publishes each new one here).
    current: Arc<AtomicU64>,
    own: u64,
}

impl Tenure {
    /// The tenure of generation `own`; `current` holds the number in force.
    pub fn new(current: Arc<AtomicU64>, own: u64) -> Self {
        Self { current, own }
    }

    /// Whether a newer generation replaced this one.
    pub fn is_over(&self) -> bool {
        self.current.load(Ordering::Relaxed) != self.own
    }
}

/// Starts one thread that resolves the groups' server names again, each group every
/// `resolve_interval`, until `tenure` is over. Returns whether one was needed.
pub fn start_resolver(groups: &[Arc<Group>], tenure: Tenure) -> std::io::Result<bool> {
    let mut named: Vec<(Arc<Group>, std::time::Instant)> = groups
        .iter()
        .filter(|g| !g.resolve_interval.is_zero() && g.servers.iter().any(|s| s.address.ip().is_none()))
        .map(|g| (g.clone(), std::time::Instant::now() + g.resolve_interval))
        .collect();
    if named.is_empty() {
        return Ok(false);
    }
    std::thread::Builder::new().name("wsgate-resolve".into()).spawn(move || {
        while !tenure.is_over() {
            let now = std::time::Instant::now();
            for (g, due) in &mut named {
                if *due <= now {
                    g.resolve_again();
                    *due = std::time::Instant::now() + g.resolve_interval;
                }
            }
            let next = named.iter().map(|(_, due)| *due).min().unwrap_or(now);
            // Wakes at least every second to see whether a reload replaced the groups.
            let wait = next.saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(wait.min(std::time::Duration::from_secs(1)));
        }
    })?;
    Ok(true)
}

impl Group {
    /// Builds the group, resolving servers given by name (blocking: call at start, off
    /// the data plane).
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Self, GroupError> {
        Self::after(name, cfg, None)
    }

    /// Builds the group of a reloaded configuration: servers also in `previous` (same
    /// address as configured) keep their live state (health verdict, passive marks,
    /// connection count, current IP). Blocking like [`Group::new`].
    pub fn after(name: &str, cfg: &UpstreamConfig, previous: Option<&Self>) -> Result<Self, GroupError> {
        // Every field, by name: a new one cannot be left unread here.
        let UpstreamConfig {
            servers,
            balance: policy,
            hash_key,
            max_fails,
            fail_timeout,
            tries,
            source_addresses,
            health_check,
            resolve_interval,
            keepalive,
            keepalive_timeout,
            keepalive_requests,
            tls,
            drain_removed,
        } = cfg;
        let tls = match tls {
            Some(t) => Some(
                crate::tls::Connector::from_config(&format!("upstream.{name}.tls"), t)?
                    .keeping_stats(previous.and_then(|p| p.tls.as_ref())),
            ),
            None => None,
        };
        let ipv4 = source_addresses.first().is_none_or(IpAddr::is_ipv4);
        let servers = servers
            .iter()
            .enumerate()
            .map(|(index, ServerConfig { address, weight, backup, max_conns })| {
                let kept = previous.and_then(|p| p.servers.iter().find(|s| s.address == *address));
                if let Some(kept) = kept {
                    return Ok(Server::new(
                        address.clone(),
                        kept.addr(),
                        (*weight, *backup, *max_conns),
                        Some(kept.live.clone()),
                    ));
                }
                let addr = address::resolve(address, ipv4).map_err(|source| ResolveError {
                    group: name.to_owned(),
                    index,
                    address: address.to_string(),
                    source,
                })?;
                Ok(Server::new(address.clone(), addr, (*weight, *backup, *max_conns), None))
            })
            .collect::<Result<Vec<Server>, ResolveError>>()?;
        let schedule = balance::interleave(&servers);
        let hashing = if matches!(policy, Balance::IpHash | Balance::Hash) {
            Rendezvous::new(&servers)
        } else {
            Rendezvous::default()
        };
        Ok(Self {
            name: name.to_owned(),
            tries: if *tries == 0 { servers.len() } else { (*tries).min(servers.len()) },
            servers,
            balance: *policy,
            hash_key: hash_key.clone(),
            cursor: AtomicUsize::new(0),
            schedule,
            hashing,
            max_fails: *max_fails,
            fail_timeout_ms: u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX),
            sources: source_addresses.clone(),
            source_cursor: AtomicUsize::new(0),
            health_check: health_check.clone(),
            resolve_interval: *resolve_interval,
            ipv4,
            keepalive: pool::Keep { idle: *keepalive, timeout: *keepalive_timeout, requests: *keepalive_requests },
            tls,
            drain_removed: *drain_removed,
        })
    }

    /// Resolves every server given by name again and moves it to its new address;
    /// a failed resolution keeps the old one. Blocking: for the resolver thread.
    pub fn resolve_again(&self) {
        for s in self.servers.iter().filter(|s| s.address.ip().is_none()) {
            match address::resolve(&s.address, self.ipv4) {
                Ok(addr) => {
                    if let Some(old) = s.current.set(addr) {
                        tracing::info!(group = %self.name, server = %s.address, %old, new = %addr, "upstream address changed");
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %self.name, server = %s.address, error = %e, "cannot resolve upstream; keeping its last address");
                }
            }
        }
    }

    /// The live state of `previous`'s servers that this group no longer has (the
    /// servers a reload removed from the group).
    pub fn removed_since(&self, previous: &Self) -> Vec<Arc<ServerLive>> {
        previous
            .servers
            .iter()
            .filter(|old| !self.servers.iter().any(|s| Arc::ptr_eq(&s.live, &old.live)))
            .map(|old| old.live.clone())
            .collect()
    }

    pub fn server(&self, i: usize) -> &Server {
        &self.servers[i]
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The active health check settings, if the group has them.
    pub fn health_check(&self) -> Option<&HealthCheckConfig> {
        self.health_check.as_ref()
    }

    /// The key this group hashes on, if any.
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    /// The servers to try for a new connection, in order: the primary chosen by the
    /// policy, the other available primaries, then the available backups; at most
    /// `tries` of them. When every server is marked down by passive checks only, they
    /// are all tried anyway (a burst of failures must not turn into a full outage).
    /// Servers the active checks hold down or at `max_conns` are never returned.
    pub fn attempt_order(&self, pick: &Pick<'_>) -> Vec<usize> {
        let now = now_ms();
        let mut order = self.primaries_in_policy_order(pick, |s| s.available(now) && s.has_room());
        order.extend(self.backups_in_turn(|s| s.available(now) && s.has_room()));
        if order.is_empty() {
            order = self.primaries_in_policy_order(pick, |s| s.is_healthy() && s.has_room());
            order.extend(self.backups_in_turn(|s| s.is_healthy() && s.has_room()));
        }
        order.truncate(self.tries);
        order
    }

    /// Eligible backups, rotated so that several backups share the load.
    fn backups_in_turn(&self, ok: impl Fn(&Server) -> bool) -> Vec<usize> {
        let n = self.servers.len();
        let start = self.cursor.load(Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).filter(|&i| self.servers[i].backup && ok(&self.servers[i])).collect()
    }

    fn primaries_in_policy_order(&self, pick: &Pick<'_>, ok: impl Fn(&Server) -> bool) -> Vec<usize> {
        let eligible = |i: usize| !self.servers[i].backup && ok(&self.servers[i]);
        match self.balance {
            Balance::RoundRobin => {
                // A position whose server is out is skipped by taking the next turn, so
                // its share spreads over the others by weight instead of going to the
                // server after it in the schedule.
                let len = self.schedule.len().max(1);
                let mut start = self.cursor.fetch_add(1, Ordering::Relaxed);
                for _ in 1..len {
                    if self.schedule.get(start % len).is_some_and(|&i| eligible(i)) {
                        break;
                    }
                    start = self.cursor.fetch_add(1, Ordering::Relaxed);
                }
                balance::schedule_order(&self.schedule, start, self.servers.len(), eligible)
            }
            Balance::LeastConn => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                balance::least_conn_order(&self.servers, start, eligible)
            }
            Balance::IpHash => self.hashing.order(balance::hash_ip(pick.client), eligible),
            Balance::Hash => {
                let h = pick.key.map_or_else(|| balance::hash_ip(pick.client), balance::hash_bytes);
                self.hashing.order(h, eligible)
            }
        }
    }

    /// Reserves a live-connection slot on server `i` for a connection attempt; `None`
    /// when the server is at `max_conns` (exact across workers: compare-and-swap).
    pub fn try_enter(self: &Arc<Self>, i: usize) -> Option<ActiveGuard> {
        let s = &self.servers[i];
        if s.max_conns == 0 {
            s.active.fetch_add(1, Ordering::Relaxed);
        } else {
            s.active.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < s.max_conns).then_some(n + 1)).ok()?;
        }
        Some(ActiveGuard { group: self.clone(), index: i })
    }

    /// Counts a connection to server `i` as live until the guard drops (ignores `max_conns`).
    pub fn enter(self: &Arc<Self>, i: usize) -> ActiveGuard {
        self.servers[i].active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { group: self.clone(), index: i }
    }

    /// Records a failed attempt on server `i` (passive health); logs when it marks the
    /// server down.
    pub fn report_failure(&self, i: usize) {
        let s = &self.servers[i];
        if s.passive.failure(now_ms(), self.max_fails, self.fail_timeout_ms) {
            s.passive_marks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                group = %self.name,
                upstream = %s.addr(),
                down_ms = self.fail_timeout_ms,
                failed = self.max_fails,
                "upstream marked down after failed attempts"
            );
        }
    }

    /// The local address the next upstream connection binds to (`source_addresses` in turn).
    pub fn next_source(&self) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let k = self.source_cursor.fetch_add(1, Ordering::Relaxed);
        Some(self.sources[k % self.sources.len()])
    }
}

/// A live (or being established) connection to one server; decrements its count on drop.
#[derive(Debug)]
pub struct ActiveGuard {
    group: Arc<Group>,
    index: usize,
}

impl ActiveGuard {
    /// The server this guard counts.
    pub fn server(&self) -> usize {
        self.index
    }

    /// The server's group.
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// That server's live state: its identity across reloads.
    pub fn server_live(&self) -> Arc<ServerLive> {
        self.group.servers[self.index].live.clone()
    }

    /// That server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.group.server(self.index).addr()
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.group.servers[self.index].active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn group(toml: &str) -> Arc<Group> {
        let c = Config::from_toml(toml).unwrap();
        Arc::new(Group::new("g", &c.upstreams["g"]).unwrap())
    }

    fn pick() -> Pick<'static> {
        Pick { client: "127.0.0.1".parse().unwrap(), key: None }
    }

    #[test]
    fn names_are_resolved_again_and_ips_kept() {
        let g = group("[upstream.g]\nservers = [\"localhost:9\", \"127.0.0.5:9\"]\n");
        let resolved = g.server(0).addr();
        assert!(resolved.ip().is_loopback() && resolved.is_ipv4(), "{resolved}");
        // A stale address (the name moved since): the next resolution brings it back.
        let stale: std::net::SocketAddr = "192.0.2.1:9".parse().unwrap();
        g.server(0).current.set(stale);
        g.server(1).current.set(stale);
        g.resolve_again();
        assert_eq!(g.server(0).addr(), resolved);
        assert_eq!(g.server(1).addr(), stale, "an IP server is never re-resolved");
    }

    #[test]
    fn weighted_order_and_backups_last() {
        let g = group(
            "[upstream.g]\nservers = [{ address = \"127.0.0.1:1\", weight = 3 }, \"127.0.0.1:2\", { address = \"127.0.0.1:3\", backup = true }]\n",
        );
        let firsts: Vec<usize> = (0..8).map(|_| g.attempt_order(&pick())[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 2);
        let order = g.attempt_order(&pick());
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], 2);
        let guard = g.enter(1);
        assert_eq!(g.server(1).active(), 1);
        drop(guard);
        assert_eq!(g.server(1).active(), 0);
    }

    #[test]
    fn down_primaries_leave_the_backup() {
        let g = group(
            "[upstream.g]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", { address = \"127.0.0.1:3\", backup = true }]\n",
        );
        g.server(0).set_healthy(false);
        assert_eq!(g.attempt_order(&pick()), vec![1, 2]);
        assert_eq!(g.attempt_order(&pick()), vec![1, 2]);
        g.report_failure(1);
        assert_eq!(g.attempt_order(&pick()), vec![2]);
        g.server(2).set_healthy(false);
        // Only passive marks left: try what the active checks still allow.
        assert_eq!(g.attempt_order(&pick()), vec![1]);
        g.server(1).set_healthy(false);
        assert!(g.attempt_order(&pick()).is_empty());
    }

    #[test]
    fn a_down_server_shares_its_turns_evenly() {
        let g = group("[upstream.g]\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\n");
        g.server(1).set_healthy(false);
        let mut count = [0; 4];
        for _ in 0..300 {
            count[g.attempt_order(&pick())[0]] += 1;
        }
        assert_eq!(count, [100, 0, 100, 100]);
    }

    #[test]
    fn tries_bound_the_attempt_order() {
        let g = group(
            "[upstream.g]\ntries = 2\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", { address = \"127.0.0.1:4\", backup = true }]\n",
        );
        assert_eq!(g.attempt_order(&pick()).len(), 2);
        let g = group(
            "[upstream.g]\nbalance = \"ip_hash\"\nservers = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
        );
        let first = g.attempt_order(&pick());
        assert_eq!(first.len(), 3);
        // The address's server goes out: its second choice takes over, the rest keep order.
        g.server(first[0]).set_healthy(false);
        assert_eq!(g.attempt_order(&pick()), first[1..].to_vec());
    }

    #[test]
    fn max_conns_is_exact() {
        let g = group("[upstream.g]\nservers = [{ address = \"127.0.0.1:1\", max_conns = 2 }, \"127.0.0.1:2\"]\n");
        let a = g.try_enter(0).unwrap();
        let _b = g.try_enter(0).unwrap();
        assert!(g.try_enter(0).is_none());
        assert!(g.attempt_order(&pick()).iter().all(|&i| i == 1));
        drop(a);
        assert!(g.try_enter(0).is_some());
    }

    #[test]
    fn least_conn_respects_weights() {
        let g = group(
            "[upstream.g]\nbalance = \"least_conn\"\nservers = [{ address = \"127.0.0.1:1\", weight = 2 }, \"127.0.0.1:2\"]\n",
        );
        let mut held = Vec::new();
        for _ in 0..300 {
            let i = g.attempt_order(&pick())[0];
            held.push(g.enter(i));
        }
        assert_eq!((g.server(0).active(), g.server(1).active()), (200, 100));
    }
}
