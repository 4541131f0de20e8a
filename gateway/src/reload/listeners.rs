//! Listeners a reload adds or removes, while every other listener keeps its sockets
//! (and its listen queue).
//!
//! A listener is known by its configured address, TLS or not, and backlog
//! ([`ListenerKey`]); one whose key is in both files is kept. An added one is bound
//! here, on the reloading thread, once per worker (SO_REUSEPORT; port 0 resolves once),
//! before the new generation is published: a bind error refuses the whole reload and
//! nothing changes. Each worker then gets its socket of each added listener and the
//! order to stop the removed ones through its own channel ([`Order`]); a removed
//! listener's live connections are not touched. Changing a backlog or switching TLS on
//! an address is a removal plus an addition: the new sockets are bound before the old
//! ones close, so the address never stops accepting. Never blocks a worker.

use std::net::SocketAddr;
use std::sync::Mutex;

use socket2::Socket;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Config, KeepaliveConfig, ListenerConfig, Scheme};

/// A listener's identity across reloads: configured address, TLS, backlog.
pub type ListenerKey = (SocketAddr, bool, u32);

/// The key of `l`.
pub fn key(l: &ListenerConfig) -> ListenerKey {
    (l.address, l.tls.is_some(), l.backlog)
}

/// What a worker is told to do with its listeners.
#[derive(Debug)]
pub enum Order {
    /// Accept on this socket (this worker's of a listener the reload added).
    Add { key: ListenerKey, scheme: Scheme, socket: Socket },
    /// Stop accepting on the listener with this key and close its socket.
    Remove(ListenerKey),
    /// Carry on a WebSocket an old process passed (binary upgrade).
    Adopt(Box<crate::upgrade::child::Adopted>),
}

/// The added listeners' sockets (one per worker each) and the removed listeners.
#[derive(Debug, Default)]
pub struct Plan {
    add: Vec<(ListenerKey, Scheme, SocketAddr, Vec<Socket>)>,
    remove: Vec<ListenerKey>,
}

/// The workers' order channels and how to bind a listener like the ones at start.
#[derive(Debug)]
pub struct Listeners {
    workers: Mutex<Vec<UnboundedSender<Order>>>,
    keepalive: KeepaliveConfig,
    bind: fn(SocketAddr, u32, &KeepaliveConfig) -> std::io::Result<Socket>,
}

impl Listeners {
    /// The listeners of `workers` (each one's order channel); added ones are bound with
    /// `bind` and the keepalive of the start.
    pub fn new(
        workers: Vec<UnboundedSender<Order>>,
        keepalive: KeepaliveConfig,
        bind: fn(SocketAddr, u32, &KeepaliveConfig) -> std::io::Result<Socket>,
    ) -> Self {
        Self { workers: Mutex::new(workers), keepalive, bind }
    }

    /// What going from `old` to `new` takes, the added listeners already bound; an
    /// error (the listener named) when a key appears twice or a bind fails.
    pub fn plan(&self, old: &Config, new: &Config) -> Result<Plan, String> {
        let before: Vec<ListenerKey> = old.listeners.iter().map(key).collect();
        let after: Vec<ListenerKey> = new.listeners.iter().map(key).collect();
        if before == after {
            return Ok(Plan::default());
        }
        for (i, k) in after.iter().enumerate() {
            if after[..i].contains(k) || before.iter().filter(|b| *b == k).count() > 1 {
                return Err(format!(
                    "listener[{i}]: {} appears twice; give each listener its own address to change listeners on reload, or restart",
                    k.0
                ));
            }
        }
        let workers = self.workers.lock().map_or(0, |w| w.len());
        let mut plan =
            Plan { add: Vec::new(), remove: before.iter().filter(|k| !after.contains(k)).copied().collect() };
        for (i, l) in new.listeners.iter().enumerate().filter(|(_, l)| !before.contains(&key(l))) {
            let failed = |e: std::io::Error| format!("listener[{i}]: cannot listen on {}: {e}", l.address);
            let first = (self.bind)(l.address, l.backlog, &self.keepalive).map_err(failed)?;
            let local = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(l.address);
            let mut sockets = vec![first];
            for _ in 1..workers {
                sockets.push((self.bind)(local, l.backlog, &self.keepalive).map_err(failed)?);
            }
            plan.add.push((key(l), l.scheme(), local, sockets));
        }
        Ok(plan)
    }

    /// Hands the added sockets to the workers and stops the removed listeners (after
    /// the generation that knows the added ones is published).
    pub fn apply(&self, plan: Plan) {
        let Ok(workers) = self.workers.lock() else { return };
        for (key, scheme, local, sockets) in plan.add {
            for (w, socket) in workers.iter().zip(sockets) {
                // A worker that is gone (draining) closes nothing it did not have.
                let _ = w.send(Order::Add { key, scheme, socket });
            }
            tracing::info!("reload: listening on {local} (listener {} added)", key.0);
        }
        for key in plan.remove {
            for w in workers.iter() {
                let _ = w.send(Order::Remove(key));
            }
            tracing::info!("reload: stopped listening on {} (listener removed; its connections go on)", key.0);
        }
    }
}
