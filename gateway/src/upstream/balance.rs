//! Balancing policies: smooth weighted round robin (precomputed schedule + one atomic
//! cursor), least connections relative to weight, and consistent (rendezvous) hashing
//! for `ip_hash` and `hash`.
//!
//! Every function here is pure over the servers' atomics: no locks, no allocation
//! beyond the returned order, and results bounded by the group size. Hashes are fixed
//! (FNV-1a with a 64-bit finalizer), not seeded per process, so every worker, every
//! restart and every gateway instance sharing a port map a key to the same server.

use std::net::IpAddr;

use super::Server;
use crate::config::HashKey;
use crate::http::request::RequestHead;

/// Spreads each primary over the schedule by weight (3:1 → a a b a, not a a a b), the
/// sequence nginx's smooth weighted round robin produces.
pub fn interleave(servers: &[Server]) -> Vec<usize> {
    let total: u64 = servers.iter().filter(|s| !s.backup).map(|s| u64::from(s.weight)).sum();
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
pub fn schedule_order(schedule: &[usize], start: usize, n: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
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
pub fn least_conn_order(servers: &[Server], start: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
    let n = servers.len();
    let mut order: Vec<(usize, u64)> =
        (0..n).map(|k| (start + k) % n).filter(|&i| eligible(i)).map(|i| (i, servers[i].active())).collect();
    // Stable sort keeps the rotation among equals. a/wa < b/wb  ⇔  a·wb < b·wa.
    order.sort_by(|&(a, ca), &(b, cb)| {
        let lhs = u128::from(ca) * u128::from(servers[b].weight);
        let rhs = u128::from(cb) * u128::from(servers[a].weight);
        lhs.cmp(&rhs)
    });
    order.into_iter().map(|(i, _)| i).collect()
}

/// Consistent hashing of the primaries by rendezvous (highest random weight): every
/// server scores each key with a hash of (key, server address), weighted as
/// `weight / -ln(u)`, and the highest score wins. A server's scores do not depend on
/// the others, so adding one moves exactly the keys it now wins (1/N on average) and
/// removing one moves only its own keys; shares follow the weights with no ring
/// variance. The attempt order is the servers by descending score, so a key's second
/// choice is stable too. Cost: one hash per primary per connection.
#[derive(Debug, Default)]
pub struct Rendezvous {
    /// (server index, seed from its address, weight) of each primary.
    members: Vec<(usize, u64, f64)>,
}

impl Rendezvous {
    pub fn new(servers: &[Server]) -> Self {
        let members = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.backup)
            .map(|(i, s)| (i, hash_bytes(s.address.to_string().as_bytes()), f64::from(s.weight)))
            .collect();
        Self { members }
    }

    fn score(hash: u64, seed: u64, weight: f64) -> f64 {
        // 53 well-mixed bits → u in (0, 1), never 0 or 1.
        let u = ((mix(hash ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        weight / -u.ln()
    }

    /// Eligible primaries by descending score for `hash`.
    pub fn order(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = self
            .members
            .iter()
            .filter(|&&(i, _, _)| eligible(i))
            .map(|&(i, seed, w)| (Self::score(hash, seed, w), i))
            .collect();
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The first server for `hash` (tests and diagnostics).
    pub fn owner(&self, hash: u64) -> Option<usize> {
        self.order(hash, |_| true).first().copied()
    }
}

/// FNV-1a over `bytes`, finished with the splitmix64 mixer for well-spread high bits.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The splitmix64 finalizer: every input bit affects every output bit.
fn mix(mut h: u64) -> u64 {
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
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| hash_bytes(&v6.octets()), |v4| hash_bytes(&v4.octets())),
    }
}

/// Reading the key out of a request (the type and its parsing are configuration).
impl HashKey {
    /// The key's value in `head`, if present and not empty.
    pub fn extract<'a>(&self, head: &'a RequestHead) -> Option<&'a [u8]> {
        let v = match self {
            Self::Header(name) => head.header(name).map(<[u8]>::trim_ascii),
            Self::Cookie(name) => head.headers_named("cookie").flat_map(|v| v.split(|&b| b == b';')).find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
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
    fn parse(buf: &[u8]) -> Result<Option<crate::http::request::RequestHead>, crate::error::ProxyError> {
        crate::http::request::parse(buf, crate::http::DEFAULT_MAX_HEADERS)
    }

    fn servers(n: u16) -> Vec<Server> {
        (0..n)
            .map(|i| {
                let addr: std::net::SocketAddr = format!("10.0.0.{}:80", i + 1).parse().unwrap();
                Server::new(crate::config::ServerAddress::Ip(addr), addr, (1, false, 0), None)
            })
            .collect()
    }

    #[test]
    fn adding_a_server_moves_about_one_in_n_keys() {
        for n in [3u16, 5, 10] {
            let before = Rendezvous::new(&servers(n));
            let after = Rendezvous::new(&servers(n + 1));
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
            assert!(share <= ideal + 0.04, "n={n}: {share:.3} of keys moved, ideal {ideal:.3}");
            assert_eq!(moved, to_new, "keys only ever move to the new server");
        }
    }

    #[test]
    fn hash_shares_follow_weights() {
        let mut s = servers(3);
        s[0].weight = 2;
        let ring = Rendezvous::new(&s);
        let mut count = [0u32; 3];
        for k in 0..40_000u64 {
            count[ring.owner(hash_bytes(&k.to_le_bytes())).unwrap()] += 1;
        }
        let share = f64::from(count[0]) / 40_000.0;
        assert!((share - 0.5).abs() < 0.01, "{count:?}");
    }

    #[test]
    fn hash_keys_are_found() {
        let head = parse(b"GET /ws?room=42&x HTTP/1.1\r\nHost: a\r\nCookie: a=1; sid = abc \r\nX-User: u7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(HashKey::parse("query:room").unwrap().extract(&head), Some(&b"42"[..]));
        assert_eq!(HashKey::parse("cookie:sid").unwrap().extract(&head), Some(&b"abc"[..]));
        assert_eq!(HashKey::parse("header:x-user").unwrap().extract(&head), Some(&b"u7"[..]));
        assert_eq!(HashKey::parse("query:x").unwrap().extract(&head), None);
        assert!(HashKey::parse("body:x").is_err());
        assert!(HashKey::parse("header:").is_err());
    }
}
