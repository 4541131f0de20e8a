//! Resolving upstream server names, and the cell that holds a server's current
//! address (written by the resolver thread, read by every connect).
//!
//! Must never resolve on a data-plane thread: resolution blocks (getaddrinfo).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::RwLock;

use crate::config::ServerAddress;

/// Resolves to one address: the IP itself, or the first of the name's addresses of
/// the asked family (`ipv4`), else its first, so the choice is stable across
/// resolutions. Blocking.
pub fn resolve(address: &ServerAddress, ipv4: bool) -> std::io::Result<SocketAddr> {
    match address {
        ServerAddress::Ip(a) => Ok(*a),
        ServerAddress::Name { host, port } => {
            let all: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
            all.iter()
                .find(|a| a.is_ipv4() == ipv4)
                .or_else(|| all.first())
                .copied()
                .ok_or_else(|| std::io::Error::other(format!("`{host}` has no address")))
        }
    }
}

/// A server's current address: written by the resolver thread, read by every connect.
/// The lock is taken for a copy of 32 bytes; the writer comes once per interval.
#[derive(Debug)]
pub struct AddrCell(RwLock<SocketAddr>);

impl AddrCell {
    pub fn new(addr: SocketAddr) -> Self {
        Self(RwLock::new(addr))
    }

    pub fn get(&self) -> SocketAddr {
        *self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `addr`; returns the previous address when it changed.
    pub fn set(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let mut cur = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        (*cur != addr).then(|| std::mem::replace(&mut *cur, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_resolves_and_prefers_the_asked_family() {
        let a = ServerAddress::try_from("localhost:9000".to_owned()).unwrap();
        let v4 = resolve(&a, true).unwrap();
        assert!(v4.ip().is_loopback() && v4.port() == 9000, "{v4}");
        let cell = AddrCell::new(v4);
        assert_eq!(cell.set(v4), None);
        let other: SocketAddr = "127.0.0.2:9000".parse().unwrap();
        assert_eq!(cell.set(other), Some(v4));
        assert_eq!(cell.get(), other);
    }
}
