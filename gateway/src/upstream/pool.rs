//! One worker's idle upstream connections (nginx's `keepalive` cache): kept per server
//! after a plain HTTP exchange whose response was completely framed, taken again by
//! the next plain request the balancer sends to the same server.
//!
//! The worker owns its pool (no lock, no sharing between threads). A connection is
//! taken only after a non-blocking peek found nothing queued on it: one the server
//! closed (FIN, RST) or that holds unexpected bytes is closed instead. Idle connections
//! are not counted as live on their server (`least_conn`, `max_conns`); a taken one is
//! counted again by its taker. Must never hand out a connection with bytes queued on
//! it, keep more than the group's `keepalive` per group, or keep anything once the
//! drain has begun.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Group;
use crate::conn::peer_io::PeerIo;

/// What a group's pool keeps (`upstream.NAME.keepalive*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Idle connections kept per worker for the group; 0: no pool.
    pub idle: usize,
    /// Longest idle time of a kept connection.
    pub timeout: Duration,
    /// Requests one connection carries at most.
    pub requests: u32,
}

/// An upstream connection that carried `served` requests and may carry more.
pub struct Reusable {
    pub stream: PeerIo,
    pub served: u32,
}

impl std::fmt::Debug for Reusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reusable").field("served", &self.served).finish_non_exhaustive()
    }
}

/// One idle connection.
#[derive(Debug)]
struct Idle {
    group: Arc<Group>,
    server: usize,
    addr: SocketAddr,
    since: Instant,
    conn: Reusable,
}

/// A worker's idle upstream connections.
#[derive(Debug, Default)]
pub struct Pool {
    idle: RefCell<Vec<Idle>>,
    /// Set by the drain: nothing is kept from then on.
    closed: Cell<bool>,
}

impl Pool {
    /// An idle, still open connection to server `server` of `group`, most recently
    /// used first; stale ones found on the way are closed.
    pub fn take(&self, group: &Arc<Group>, server: usize) -> Option<Reusable> {
        let addr = group.server(server).addr();
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < c.group.keepalive.timeout);
        while let Some(pos) = idle.iter().rposition(|c| Arc::ptr_eq(&c.group, group) && c.server == server) {
            let c = idle.remove(pos);
            if c.addr == addr && is_quiet(&c.conn.stream) {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps `conn` to server `server` of `group` for the next request, when the group
    /// has a pool, the connection has requests left and the drain has not begun;
    /// otherwise (or for the oldest of the group beyond its count) it is closed.
    pub fn put(&self, group: &Arc<Group>, server: usize, conn: Reusable) {
        let keep = group.keepalive;
        if keep.idle == 0 || self.closed.get() || conn.served >= keep.requests {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let mut of_group = idle.iter().filter(|c| Arc::ptr_eq(&c.group, group)).count();
        while of_group >= keep.idle {
            let Some(oldest) = idle.iter().position(|c| Arc::ptr_eq(&c.group, group)) else { break };
            idle.remove(oldest);
            of_group -= 1;
        }
        let addr = group.server(server).addr();
        idle.push(Idle { group: group.clone(), server, addr, since: Instant::now(), conn });
    }

    /// Closes connections idle past their group's `keepalive_timeout`.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|c| now.duration_since(c.since) < c.group.keepalive.timeout);
    }

    /// Closes every idle connection and keeps none from now on (the drain).
    pub fn close(&self) {
        self.closed.set(true);
        self.idle.borrow_mut().clear();
    }

    /// Idle connections now.
    pub fn len(&self) -> usize {
        self.idle.borrow().len()
    }

    /// No idle connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Nothing queued and not closed: a non-blocking peek would block.
fn is_quiet(stream: &PeerIo) -> bool {
    // A TLS server's close_notify is a record on the socket like any other byte.
    if let PeerIo::Tls(tls) = stream
        && tls.has_plaintext()
    {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(crate::io::peek(stream.tcp(), &mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
