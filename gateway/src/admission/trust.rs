//! Whose forwarding headers are believed: `trusted_proxies` as address prefixes, and the
//! client address derived from `X-Forwarded-For` / `X-Real-IP` of a trusted peer.
//!
//! From a peer that is not trusted these headers are never read; the peer's own address
//! is the client. This module must never let a header override the peer address of an
//! untrusted connection.

use std::net::IpAddr;

use crate::config::Cidr;
use crate::http::request::RequestHead;

/// The trusted-proxy list.
#[derive(Debug, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    /// Builds the list from `admission.trusted_proxies`.
    pub fn new(prefixes: &[Cidr]) -> Self {
        Self(prefixes.to_vec())
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
    std::str::from_utf8(v).ok()?.trim().parse().ok().map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(buf: &[u8]) -> Result<Option<crate::http::request::RequestHead>, crate::error::ProxyError> {
        crate::http::request::parse(buf, crate::http::DEFAULT_MAX_HEADERS)
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = Trusted::new(&[Cidr::parse("127.0.0.1").unwrap(), Cidr::parse("10.0.0.0/8").unwrap()]);
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
