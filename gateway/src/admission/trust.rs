//! Whose forwarding headers are believed: `trusted_proxies` as address prefixes, and the
//! client address derived from `X-Forwarded-For` / `X-Real-IP` of a trusted peer.
//!
//! From a peer that is not trusted these headers are never read; the peer's own address
//! is the client. This module must never let a header override the peer address of an
//! untrusted connection.

use std::net::IpAddr;

use crate::http::request::RequestHead;

/// An address prefix such as `10.0.0.0/8`, `::1` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `IP` or `IP/PREFIX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}` is not an address or IP/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?
            }
        };
        Ok(Self { addr: canonical(addr), prefix })
    }

    /// Whether `ip` lies in the prefix (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32u8),
            IpAddr::V6(v) => (u128::from(v), 128u8),
        };
        let (want, family) = bits(self.addr);
        let (have, have_family) = bits(canonical(ip));
        if family != have_family {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        want & mask == have & mask
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The trusted-proxy list.
#[derive(Debug, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    /// Builds the list (entries were validated with the configuration; bad ones are skipped).
    pub fn new(specs: &[String]) -> Self {
        Self(specs.iter().filter_map(|s| Cidr::parse(s).ok()).collect())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address: the peer's, unless the peer is trusted and says otherwise.
    /// `X-Forwarded-For` is walked from the right past trusted hops (nginx's
    /// `real_ip_recursive on`); without it, `X-Real-IP` is used.
    pub fn client_ip(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&[u8]> = head
            .headers_named("x-forwarded-for")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        if hops.is_empty() {
            return head.header("x-real-ip").and_then(parse_ip).unwrap_or(peer);
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_ip(hop) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(v).ok()?.trim().parse().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(buf: &[u8]) -> Result<Option<crate::http::request::RequestHead>, crate::error::ProxyError> {
        crate::http::request::parse(buf, crate::http::DEFAULT_MAX_HEADERS)
    }

    #[test]
    fn prefixes_match() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains("::2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = Trusted::new(&["127.0.0.1".into(), "10.0.0.0/8".into()]);
        let head = parse(b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.0.0.7\r\nX-Real-IP: 7.7.7.7\r\n\r\n")
            .unwrap()
            .unwrap();
        let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.client_ip(untrusted, &head), untrusted);
        assert_eq!(t.client_ip("127.0.0.1".parse().unwrap(), &head), "203.0.113.9".parse::<IpAddr>().unwrap());
        let real = parse(b"GET / HTTP/1.1\r\nX-Real-IP: 7.7.7.7\r\n\r\n").unwrap().unwrap();
        assert_eq!(t.client_ip("127.0.0.1".parse().unwrap(), &real), "7.7.7.7".parse::<IpAddr>().unwrap());
        let junk = parse(b"GET / HTTP/1.1\r\nX-Forwarded-For: junk\r\n\r\n").unwrap().unwrap();
        assert_eq!(t.client_ip("127.0.0.1".parse().unwrap(), &junk), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
