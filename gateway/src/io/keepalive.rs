//! Dead peers: TCP keepalive and `TCP_USER_TIMEOUT` on both sides of a connection, so
//! a client or upstream that vanished (power loss, a cut path: no FIN, no RST) is
//! found by the kernel, which then fails the socket with `ETIMEDOUT`, instead of
//! lingering until the idle timeout.
//!
//! Set on each listening socket (accepted sockets inherit the options, so the
//! accept path pays nothing) and on each upstream socket after connect. Values left at
//! 0 keep the kernel's `net.ipv4.tcp_keepalive_*` (what the tuning profiles set). Must
//! never fail a connection: an upstream socket the kernel refuses an option for is logged
//! and used anyway.

use std::os::fd::AsRawFd;

use socket2::TcpKeepalive;

use super::socket::with_sock;
use crate::config::KeepaliveConfig;

/// Applies `cfg` to the socket behind `fd`.
pub fn set_keepalive(fd: &impl AsRawFd, cfg: &KeepaliveConfig) -> std::io::Result<()> {
    with_sock(fd, |sock| apply(&sock, cfg))
}

fn apply(sock: &socket2::SockRef<'_>, cfg: &KeepaliveConfig) -> std::io::Result<()> {
    if !cfg.enabled {
        return Ok(());
    }
    let mut ka = TcpKeepalive::new();
    if !cfg.idle.is_zero() {
        ka = ka.with_time(cfg.idle);
    }
    if !cfg.interval.is_zero() {
        ka = ka.with_interval(cfg.interval);
    }
    if cfg.count > 0 {
        ka = ka.with_retries(cfg.count);
    }
    // With nothing set this only turns SO_KEEPALIVE on: the kernel's values apply.
    sock.set_tcp_keepalive(&ka)?;
    if !cfg.user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(cfg.user_timeout))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn options_reach_the_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = KeepaliveConfig {
            enabled: true,
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            count: 4,
            user_timeout: Duration::from_millis(1500),
        };
        set_keepalive(&l, &cfg).unwrap();
        let s = socket2::SockRef::from(&l);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(1500)));
        // Accepted sockets inherit them: the reason they are set on listeners only.
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let a = socket2::SockRef::from(&a);
        assert!(a.keepalive().unwrap());
        assert_eq!(a.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(a.keepalive_retries().unwrap(), 4);
        assert_eq!(a.tcp_user_timeout().unwrap(), Some(Duration::from_millis(1500)));
        drop(c);
    }
}
