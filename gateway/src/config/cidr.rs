//! An address prefix of `admission.trusted_proxies`, checked when the file is read.
//!
//! A value type: parsing, printing back, and whether an address lies inside. This
//! module never reads a request header (that is `admission::trust`).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address prefix such as `10.0.0.0/8`, `::1` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `IP` or `IP/PREFIX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| format!("`{s}` is not an address or IP/PREFIX"))?;
        let max = max_prefix(addr);
        let prefix = match p {
            None => max,
            Some(p) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?
            }
        };
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: an IPv4-mapped prefix is kept as IPv4.
        let canonical = addr.to_canonical();
        let prefix = if canonical == addr { prefix } else { prefix.saturating_sub(96) };
        Ok(Self { addr: canonical, prefix })
    }

    /// Whether `ip` lies in the prefix (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32u8),
            IpAddr::V6(v) => (u128::from(v), 128u8),
        };
        let (want, family) = bits(self.addr);
        let (have, have_family) = bits(ip.to_canonical());
        if family != have_family {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        want & mask == have & mask
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn prefixes_print_back() {
        for spec in ["10.0.0.0/8", "::1", "fd00::/8", "127.0.0.1"] {
            assert_eq!(Cidr::parse(spec).unwrap().to_string(), spec);
        }
        assert_eq!(Cidr::parse("::ffff:10.0.0.1").unwrap().to_string(), "10.0.0.1");
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
    }
}
