//! The plan of a run as one process executes it: which connections it owns, where each one
//! connects from and to, and when things happen.
//!
//! Connection ids are global across worker processes (process `i` of `P` owns ids
//! `i, i+P, i+2P, …`), so sources and targets are spread the same way whatever the split.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::client::Dial;
use super::{Options, Scenario};

/// Everything a load thread needs to know; shared read-only.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to do.
    pub scenario: Scenario,
    /// Every (target, source) combination; connection `id` uses `dials[id % len]`.
    pub dials: Vec<Dial>,
    /// Connections (or handshake loops) this process runs.
    pub conns: u64,
    /// This process's slot among all processes of all shards (`index·N + I`).
    pub proc_index: u64,
    /// Processes of all shards together (`procs·N`): the stride of connection ids.
    pub procs: u64,
    /// Connections per second this process opens.
    pub rate: f64,
    /// Hold / run duration after the ramp.
    pub duration: Duration,
    /// Echo: time between two messages of one connection.
    pub interval: Duration,
    /// Payload bytes per message.
    pub size: usize,
    /// Hold: heartbeat period.
    pub heartbeat: Duration,
    /// Echo: how long to wait for outstanding echoes at the end.
    pub drain: Duration,
    /// Bound of a close handshake.
    pub close_wait: Duration,
    /// Threads of this process.
    pub threads: usize,
    /// Hard bound of the whole run.
    pub max_time: Duration,
    /// How this process ramps up.
    pub ramp: super::ramp::Settings,
}

impl Plan {
    /// The plan of process `index` of `procs` for `opts`.
    pub fn new(opts: &Options, index: u64, procs: u64) -> Result<Self> {
        if opts.target.is_empty() {
            bail!("at least one --target is needed");
        }
        let shard = opts.shard.unwrap_or_default();
        let sources = shard.sources(parse_sources(&opts.source)?)?;
        let mut dials = Vec::new();
        let host = opts.host.clone();
        let tls = opts.tls.client()?;
        for src in if sources.is_empty() { vec![None] } else { sources.into_iter().map(Some).collect() } {
            for t in &opts.target {
                dials.push(Dial {
                    target: *t,
                    source: src,
                    host: host.clone().unwrap_or_else(|| t.to_string()),
                    path: opts.path.clone(),
                    timeout: Duration::from_secs_f64(opts.connect_timeout),
                    tls: tls.clone(),
                });
            }
        }
        // Process `index` of shard I/N is slot `index·N + I` of `procs·N`: the connection
        // ids of all shards and processes interleave without overlap.
        let (slot, stride) = (index * shard.count + shard.index, procs * shard.count);
        let conns = opts.conns / stride + u64::from(slot < opts.conns % stride);
        let size = opts.size.unwrap_or(opts.scenario.default_size());
        let rate = (opts.rate / stride as f64).max(0.001);
        let ramp = opts.conns as f64 / opts.rate.max(0.001);
        let threads =
            opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
        // Only the hold is closed-loop: the other scenarios measure a steady phase whose
        // start all their connections must agree on in advance.
        let adaptive = opts.scenario == Scenario::Hold && !opts.fixed_rate;
        let ramp_max = opts.ramp_max_secs.unwrap_or(if adaptive { (ramp * 10.0).max(120.0) } else { ramp + 60.0 });
        let tail = if adaptive { opts.heartbeat } else { 0.0 };
        let max_time = opts.max_time.unwrap_or(ramp_max + opts.duration + tail + 60.0);
        let max_failures = opts.max_failures.unwrap_or((opts.conns / 1000).max(10));
        Ok(Self {
            scenario: opts.scenario,
            dials,
            conns,
            proc_index: slot,
            procs: stride,
            rate,
            duration: Duration::from_secs_f64(opts.duration),
            interval: Duration::from_millis(opts.interval_ms.max(1)),
            size,
            heartbeat: Duration::from_secs_f64(opts.heartbeat.max(0.01)),
            drain: Duration::from_millis(opts.drain_ms),
            close_wait: Duration::from_secs(5),
            threads,
            max_time: Duration::from_secs_f64(max_time),
            ramp: super::ramp::Settings {
                adaptive,
                cap: rate,
                planned: conns,
                p90_limit: Duration::from_secs_f64(opts.ramp_p90_ms.max(1.0) / 1000.0),
                max_failures: max_failures.div_ceil(procs),
                min_available_kib: opts.min_available_mib * 1024,
                max_time: Duration::from_secs_f64(ramp_max),
                coordinated: false,
            },
        })
    }

    /// Global id of this process's `j`th connection.
    pub fn id(&self, j: u64) -> u64 {
        self.proc_index + self.procs * j
    }

    /// Where connection `id` connects: this process's connections take its (target,
    /// source) pairs in turn.
    pub fn dial(&self, id: u64) -> &Dial {
        let j = id / self.procs + self.proc_index;
        &self.dials[(j % self.dials.len() as u64) as usize]
    }

    /// End of the planned ramp at the full rate (all connections started).
    pub fn ramp(&self) -> Duration {
        Duration::from_secs_f64(self.conns as f64 / self.rate)
    }
}

/// Connections that shard `shard` opens of `conns` in all, over its `procs` processes.
pub fn share(conns: u64, shard: Shard, procs: u64) -> u64 {
    let stride = procs * shard.count;
    (0..procs).map(|i| conns / stride + u64::from(i * shard.count + shard.index < conns % stride)).sum()
}

/// `--shard I/N`: this load generator is shard I (from 0) of N, each on its own machine or
/// with its own source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// I.
    pub index: u64,
    /// N.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("expected I/N (such as 0/4), not {s:?}"))?;
        let index: u64 = i.trim().parse().map_err(|e| format!("bad shard index {i:?}: {e}"))?;
        let count: u64 = n.trim().parse().map_err(|e| format!("bad shard count {n:?}: {e}"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: the index counts from 0 and must be under the count"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's source addresses: every Nth of the list, starting at the Ith (an
    /// empty list stays empty: each machine's kernel picks).
    pub fn sources(self, all: Vec<IpAddr>) -> Result<Vec<IpAddr>> {
        if all.is_empty() || self.count == 1 {
            return Ok(all);
        }
        if (all.len() as u64) < self.count {
            bail!(
                "{} shards need at least {} source addresses (each shard takes every {}th), got {}",
                self.count,
                self.count,
                self.count,
                all.len()
            );
        }
        Ok(all.into_iter().skip(self.index as usize).step_by(self.count as usize).collect())
    }
}

/// Parses `127.0.0.1`, `127.0.0.2-127.0.0.9` and lists thereof.
pub fn parse_sources(items: &[String]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for item in items {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().with_context(|| format!("bad source address {a:?}"))?;
            let b: Ipv4Addr = b.trim().parse().with_context(|| format!("bad source address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad source range {item:?}");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(item.trim().parse().with_context(|| format!("bad source address {item:?}"))?);
        }
    }
    Ok(out)
}

/// The listen-style address list for a report.
pub fn describe(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_expand() {
        let v = parse_sources(&["127.0.0.1".into(), "127.0.0.3-127.0.0.5".into()]).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
        assert!(parse_sources(&["127.0.0.5-127.0.0.3".into()]).is_err());
    }

    #[test]
    fn shards_take_every_nth_source_and_need_enough() {
        let all = parse_sources(&["127.0.0.2-127.0.0.7".into()]).unwrap();
        let s: Shard = "1/3".parse().unwrap();
        let mine = s.sources(all.clone()).unwrap();
        assert_eq!(mine, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))]);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!(Shard { index: 0, count: 7 }.sources(all).is_err());
    }

    #[test]
    fn shares_add_up_to_the_total() {
        for (conns, n, procs) in [(10, 3, 1), (1001, 4, 3), (5, 8, 2), (0, 2, 2)] {
            let sum: u64 = (0..n).map(|i| share(conns, Shard { index: i, count: n }, procs)).sum();
            assert_eq!(sum, conns, "{conns} over {n} shards of {procs} processes");
        }
    }
}
