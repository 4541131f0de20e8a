//! Upstream groups: which server a new connection tries, in which order.
//!
//! State shared by all workers is atomics only (no locks on the data path).
//! The policy here is smooth-enough round robin over primaries, then backups;
//! every attempt order is bounded by the group size.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::config::UpstreamConfig;

/// One upstream server and its live counters.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    /// Connections established to this server right now (all workers).
    active: AtomicU64,
}

impl Server {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// A named group of servers.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    servers: Vec<Server>,
    /// Round-robin cursor over the weighted schedule.
    cursor: AtomicUsize,
    /// Server indices repeated by weight (primaries only).
    schedule: Vec<usize>,
}

impl Group {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Self {
        let servers: Vec<Server> = cfg
            .servers
            .iter()
            .map(|s| Server { addr: s.address, weight: s.weight, backup: s.backup, active: AtomicU64::new(0) })
            .collect();
        let schedule = interleave(&servers);
        Self { name: name.to_owned(), servers, cursor: AtomicUsize::new(0), schedule }
    }

    pub fn server(&self, i: usize) -> &Server {
        &self.servers[i]
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The servers to try for a new connection, in order: one primary chosen by the
    /// policy, the other primaries, then the backups. Never longer than the group.
    pub fn attempt_order(&self, _client: IpAddr) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.servers.len());
        if !self.schedule.is_empty() {
            let start = self.cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
            for k in 0..self.schedule.len() {
                let i = self.schedule[(start + k) % self.schedule.len()];
                if !order.contains(&i) {
                    order.push(i);
                }
            }
        }
        order.extend((0..self.servers.len()).filter(|&i| self.servers[i].backup));
        order
    }

    /// Counts a connection to server `i` as live until the guard drops.
    pub fn enter(self: &Arc<Self>, i: usize) -> ActiveGuard {
        self.servers[i].active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { group: self.clone(), index: i }
    }
}

/// Spreads each primary over the schedule by weight (3:1 → a a b a, not a a a b).
fn interleave(servers: &[Server]) -> Vec<usize> {
    let total: u64 = servers.iter().filter(|s| !s.backup).map(|s| u64::from(s.weight)).sum();
    let mut current: Vec<i64> = vec![0; servers.len()];
    let mut out = Vec::new();
    for _ in 0..total.min(4096) {
        let mut best = None;
        for (i, s) in servers.iter().enumerate().filter(|(_, s)| !s.backup) {
            current[i] += i64::from(s.weight);
            if best.is_none_or(|b: usize| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        current[b] -= total as i64;
        out.push(b);
    }
    out
}

/// A live connection to one server; decrements its count on drop.
#[derive(Debug)]
pub struct ActiveGuard {
    group: Arc<Group>,
    index: usize,
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
        Arc::new(Group::new("g", &c.upstreams["g"]))
    }

    #[test]
    fn weighted_order_and_backups_last() {
        let g = group(
            "[upstream.g]\nservers = [{ address = \"127.0.0.1:1\", weight = 3 }, \"127.0.0.1:2\", { address = \"127.0.0.1:3\", backup = true }]\n",
        );
        let firsts: Vec<usize> = (0..8).map(|_| g.attempt_order("127.0.0.1".parse().unwrap())[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 2);
        let order = g.attempt_order("127.0.0.1".parse().unwrap());
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], 2);
        let guard = g.enter(1);
        assert_eq!(g.server(1).active(), 1);
        drop(guard);
        assert_eq!(g.server(1).active(), 0);
    }
}
