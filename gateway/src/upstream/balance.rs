//! Balancing policies: smooth weighted round robin (precomputed schedule + one atomic
//! cursor), least connections relative to weight, and a consistent-hash ring for
//! `ip_hash` and `hash`.
//!
//! Every function here is pure over the servers' atomics: no locks, no allocation
//! beyond the returned order, and results bounded by the group size. Hashes are fixed
//! (FNV-1a with a 64-bit finalizer), not seeded per process, so every worker, every
//! restart and every gateway instance sharing a port map a key to the same server.

use std::net::IpAddr;

use super::Server;
use crate::http::request::RequestHead;

/// Ring points per unit of weight: enough to keep each server's share within a few
/// percent of its weight, few enough to build instantly.
const POINTS_PER_WEIGHT: u64 = 256;
/// Upper bound of ring points (memory and build time), whatever the weights.
const MAX_POINTS: u64 = 1 << 20;

/// Spreads each primary over the schedule by weight (3:1 → a a b a, not a a a b), the
/// sequence nginx's smooth weighted round robin produces.
pub fn interleave(servers: &[Server]) -> Vec<usize> {
    let total: u64 = servers
        .iter()
        .filter(|s| !s.backup)
        .map(|s| u64::from(s.weight))
        .sum();
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
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
        current[b] -= total_i;
        out.push(b);
    }
    out
}

/// Distinct eligible servers in schedule order from position `start`.
pub fn schedule_order(
    schedule: &[usize],
    start: usize,
    n: usize,
    eligible: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut seen = vec![false; n];
    let mut order = Vec::new();
    for k in 0..schedule.len() {
        let i = schedule[(start + k) % schedule.len()];
        if !seen[i] {
            seen[i] = true;
            if eligible(i) {
                order.push(i);
            }
        }
    }
    order
}

/// Eligible servers by live connections per unit of weight, fewest first; ties go
/// round robin from `start`.
pub fn least_conn_order(
    servers: &[Server],
    start: usize,
    eligible: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let n = servers.len();
    let mut order: Vec<(usize, u64)> = (0..n)
        .map(|k| (start + k) % n)
        .filter(|&i| eligible(i))
        .map(|i| (i, servers[i].active()))
        .collect();
    // Stable sort keeps the rotation among equals. a/wa < b/wb  ⇔  a·wb < b·wa.
    order.sort_by(|&(a, ca), &(b, cb)| {
        let lhs = u128::from(ca) * u128::from(servers[b].weight);
        let rhs = u128::from(cb) * u128::from(servers[a].weight);
        lhs.cmp(&rhs)
    });
    order.into_iter().map(|(i, _)| i).collect()
}

/// A consistent-hash ring of the primaries: `weight × 256` points per server, placed
/// by hashing the server's address, so a server's points do not depend on the others
/// and adding one moves only the keys that land on its points (~1/N).
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
    /// Distinct servers on the ring.
    members: usize,
}

impl Ring {
    pub fn new(servers: &[Server]) -> Self {
        let total: u64 = servers
            .iter()
            .filter(|s| !s.backup)
            .map(|s| u64::from(s.weight) * POINTS_PER_WEIGHT)
            .sum();
        let scale = if total > MAX_POINTS {
            MAX_POINTS as f64 / total as f64
        } else {
            1.0
        };
        let mut points = Vec::new();
        for (i, s) in servers.iter().enumerate().filter(|(_, s)| !s.backup) {
            #[allow(clippy::cast_sign_loss)] // a product of positive numbers, at least 1
            let count = ((u64::from(s.weight) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            let name = s.addr.to_string();
            for v in 0..count {
                points.push((hash_bytes(format!("{name}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        let members = servers.iter().filter(|s| !s.backup).count();
        Self { points, members }
    }

    /// Distinct eligible servers met walking clockwise from `hash`.
    pub fn order(&self, hash: u64, n: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut seen = vec![false; n];
        let mut order = Vec::new();
        let mut distinct = 0;
        let start = self.points.partition_point(|&(h, _)| h < hash);
        for k in 0..self.points.len() {
            let i = self.points[(start + k) % self.points.len()].1;
            if !seen[i] {
                seen[i] = true;
                distinct += 1;
                if eligible(i) {
                    order.push(i);
                }
                if distinct == self.members {
                    break;
                }
            }
        }
        order
    }

    /// The first server for `hash` (tests and diagnostics).
    pub fn owner(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let k = self.points.partition_point(|&(h, _)| h < hash) % self.points.len();
        Some(self.points[k].1)
    }
}

/// FNV-1a over `bytes`, finished with the splitmix64 mixer for well-spread high bits.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hash of a client address (IPv4-mapped IPv6 hashes like the IPv4 address).
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| hash_bytes(&v6.octets()), |v4| hash_bytes(&v4.octets())),
    }
}

/// Where `balance = "hash"` finds its key in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The first value of a header.
    Header(String),
    /// A cookie of the `Cookie` header(s).
    Cookie(String),
    /// A query parameter of the request target (raw, not percent-decoded).
    Query(String),
}

impl HashKey {
    /// Parses `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("`{spec}` must be header:NAME, cookie:NAME or query:NAME");
        let (kind, name) = spec.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty()
            || name.contains(|c: char| c.is_whitespace() || c == ';' || c == '=' || c == '&')
        {
            return Err(bad());
        }
        match kind.trim() {
            "header" => Ok(Self::Header(name.to_owned())),
            "cookie" => Ok(Self::Cookie(name.to_owned())),
            "query" => Ok(Self::Query(name.to_owned())),
            _ => Err(bad()),
        }
    }

    /// The key's value in `head`, if present and not empty.
    pub fn extract<'a>(&self, head: &'a RequestHead) -> Option<&'a [u8]> {
        let v = match self {
            Self::Header(name) => head.header(name).map(<[u8]>::trim_ascii),
            Self::Cookie(name) => head
                .headers_named("cookie")
                .flat_map(|v| v.split(|&b| b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (pair[..eq].trim_ascii() == name.as_bytes())
                        .then(|| pair[eq + 1..].trim_ascii())
                }),
            Self::Query(name) => {
                let (_, query) = head.target.split_once('?')?;
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v.as_bytes())
                })
            }
        };
        v.filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn servers(n: u16) -> Vec<Server> {
        (0..n)
            .map(|i| Server::new(format!("10.0.0.{}:80", i + 1).parse().unwrap(), 1, false, 0))
            .collect()
    }

    #[test]
    fn adding_a_server_moves_about_one_in_n_keys() {
        for n in [3u16, 5, 10] {
            let before = Ring::new(&servers(n));
            let after = Ring::new(&servers(n + 1));
            let keys = 20_000u64;
            let mut moved = 0u32;
            let mut to_new = 0u32;
            for k in 0..keys {
                let h = hash_bytes(format!("user-{k}").as_bytes());
                let (a, b) = (before.owner(h).unwrap(), after.owner(h).unwrap());
                if a != b {
                    moved += 1;
                    to_new += u32::from(b == usize::from(n));
                }
            }
            let share = f64::from(moved) / keys as f64;
            let ideal = 1.0 / f64::from(n + 1);
            assert!(
                share <= ideal + 0.04,
                "n={n}: {share:.3} of keys moved, ideal {ideal:.3}"
            );
            assert_eq!(moved, to_new, "keys only ever move to the new server");
        }
    }

    #[test]
    fn ring_shares_follow_weights() {
        let mut s = servers(3);
        s[0].weight = 2;
        let ring = Ring::new(&s);
        let mut count = [0u32; 3];
        for k in 0..40_000u64 {
            count[ring.owner(hash_bytes(&k.to_le_bytes())).unwrap()] += 1;
        }
        let share = f64::from(count[0]) / 40_000.0;
        assert!((share - 0.5).abs() < 0.04, "{count:?}");
    }

    #[test]
    fn hash_keys_are_found() {
        let head = parse(b"GET /ws?room=42&x HTTP/1.1\r\nHost: a\r\nCookie: a=1; sid = abc \r\nX-User: u7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            HashKey::parse("query:room").unwrap().extract(&head),
            Some(&b"42"[..])
        );
        assert_eq!(
            HashKey::parse("cookie:sid").unwrap().extract(&head),
            Some(&b"abc"[..])
        );
        assert_eq!(
            HashKey::parse("header:x-user").unwrap().extract(&head),
            Some(&b"u7"[..])
        );
        assert_eq!(HashKey::parse("query:x").unwrap().extract(&head), None);
        assert!(HashKey::parse("body:x").is_err());
        assert!(HashKey::parse("header:").is_err());
    }
}
