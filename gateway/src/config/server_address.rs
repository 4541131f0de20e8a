//! Where an upstream server is, as written: an IP address with a port, or a DNS name
//! with a port (the upstream module resolves names, at start and every
//! `resolve_interval`).
//!
//! Accepted forms: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` where HOST is a DNS name
//! (letters, digits, `-`, `.`; labels of 1 to 63 characters). Data only: this module
//! never resolves a name.

use std::fmt;
use std::net::SocketAddr;

/// A server address as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ServerAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

/// What a server address may look like, for errors.
pub const ACCEPTED: &str = "expected IP:PORT, [IPv6]:PORT or HOST:PORT with HOST a DNS name (e.g. `10.0.0.1:9000`, `[::1]:9000`, `backend.internal:9000`)";

impl ServerAddress {
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Name { port, .. } => *port,
        }
    }

    /// The IP address when configured as one.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            Self::Ip(a) => Some(*a),
            Self::Name { .. } => None,
        }
    }
}

impl TryFrom<String> for ServerAddress {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(a));
        }
        let bad = |why: &str| format!("`{s}`: {why}; {ACCEPTED}");
        let Some((host, port)) = s.rsplit_once(':') else { return Err(bad("no port")) };
        let port: u16 = port.parse().map_err(|_| bad("the port must be a number from 1 to 65535"))?;
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("not an IP address or a DNS name"));
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad("not a valid IPv4 address"));
        }
        Ok(Self::Name { host: host.to_ascii_lowercase(), port })
    }
}

impl From<ServerAddress> for String {
    fn from(a: ServerAddress) -> Self {
        a.to_string()
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let ok = |s: &str| ServerAddress::try_from(s.to_owned()).unwrap();
        assert_eq!(ok("10.0.0.1:9000"), ServerAddress::Ip("10.0.0.1:9000".parse().unwrap()));
        assert_eq!(ok("[::1]:9000"), ServerAddress::Ip("[::1]:9000".parse().unwrap()));
        assert_eq!(ok("Backend.internal:9000"), ServerAddress::Name { host: "backend.internal".into(), port: 9000 });
        assert_eq!(ok("localhost:9000").to_string(), "localhost:9000");
        for bad in
            ["localhost", "localhost:", "localhost:99999", "bad host:80", "a..b:80", "-a:80", "1.2.3.999:80", ":80"]
        {
            let e = ServerAddress::try_from(bad.to_owned()).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
