//! The new process's side of a binary upgrade: it was started with its end of the
//! control socket in `WSGATE_UPGRADE_FD`. Once its configuration is loaded and its data
//! plane self-tested it says `Ready`, takes the old process's listening sockets, says
//! `Accepting` once its workers accept on them, then resumes each WebSocket the old
//! process passes on one of its workers (round robin; `conn::adopt`).

use std::os::fd::OwnedFd;

use socket2::Socket;
use tokio::sync::mpsc::UnboundedSender;

use super::Inherited;
use super::wire::{Channel, Message, PairFacts};
use crate::reload::listeners::Order;

/// A WebSocket passed by the old process, for a worker to resume.
#[derive(Debug)]
pub struct Adopted {
    pub client: OwnedFd,
    pub upstream: OwnedFd,
    pub facts: Box<PairFacts>,
}

/// This process's end of the control socket, when an old process started it (the
/// variable is removed: a process this one starts must not see it).
///
/// # Errors
/// The variable is set but names no descriptor.
pub fn from_env() -> std::io::Result<Option<Channel>> {
    let Some(raw) = std::env::var_os(super::FD_ENV) else { return Ok(None) };
    // SAFETY: called once at start, before the data plane's threads exist; no thread
    // of this process reads the environment concurrently.
    unsafe { std::env::remove_var(super::FD_ENV) };
    let fd: i32 =
        raw.to_str().and_then(|s| s.parse().ok()).filter(|&fd| fd > 2).ok_or_else(|| {
            std::io::Error::other(format!("{} is not a descriptor: {}", super::FD_ENV, raw.display()))
        })?;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|e| std::io::Error::other(format!("{}={fd}: {e}", super::FD_ENV)))?;
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    // SAFETY: the old process passed this descriptor for this process to own, it is
    // open (checked above), and the variable naming it is gone.
    Ok(Some(unsafe { Channel::from_raw(fd) }))
}

/// Says `Ready` and takes the listening sockets the old process passes.
///
/// # Errors
/// The old process went away, or sent something else.
pub fn ready(channel: &Channel) -> std::io::Result<Inherited> {
    channel.send(&Message::Ready { pid: std::process::id(), protocol: super::wire::PROTOCOL }, &[])?;
    let Some((Message::Listeners { listeners, admin, splice }, fds)) = channel.recv()? else {
        return Err(std::io::Error::other("the old process sent no listeners"));
    };
    let want = listeners.len() + usize::from(admin) + if splice.is_some() { 3 } else { 0 };
    if fds.len() != want {
        return Err(std::io::Error::other(format!("{} descriptors announced, {} received", want, fds.len())));
    }
    let mut fds = fds.into_iter();
    let mut inherited = Inherited::default();
    for l in listeners {
        let Some(s) = fds.next() else { break };
        inherited.listeners.push(((l.address, l.tls, l.backlog), l.shared, Socket::from(s)));
    }
    if admin {
        inherited.admin = fds.next().map(Socket::from);
    }
    if let Some(offer) = splice {
        let (Some(a), Some(b), Some(c)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(std::io::Error::other("the splice's maps are missing"));
        };
        let mut used = Vec::new();
        for _ in 0..offer.slot_messages {
            match channel.recv()? {
                Some((Message::Slots { used: more }, _)) => used.extend(more),
                other => return Err(std::io::Error::other(format!("expected the splice's slots, got {other:?}"))),
            }
        }
        inherited.splice = Some(super::InheritedSplice { offer, fds: [a, b, c], used });
    }
    tracing::info!(sockets = inherited.listeners.len(), "binary upgrade: took the old process's listening sockets");
    Ok(inherited)
}

/// Tells the old process why this one cannot take over (it keeps everything).
pub fn failed(channel: &Channel, why: &str) {
    let _ = channel.send(&Message::Failed { why: why.to_owned() }, &[]);
}

/// Every worker accepts: the old process may stop, and pass its WebSockets, which a
/// thread of this process hands to the workers in turn (`orders`).
///
/// # Errors
/// The thread could not be started, or the old process is gone.
pub fn accepting(channel: Channel, orders: Vec<UnboundedSender<Order>>, spliced: bool) -> std::io::Result<()> {
    channel.send(&Message::Accepting { spliced }, &[])?;
    std::thread::Builder::new().name("wsgate-adopt".into()).spawn(move || adopt_all(&channel, &orders))?;
    Ok(())
}

fn adopt_all(channel: &Channel, orders: &[UnboundedSender<Order>]) {
    let mut next = 0usize;
    let mut adopted = 0u64;
    loop {
        match channel.recv() {
            Ok(Some((Message::Pair(facts), fds))) => {
                let [client, upstream]: [OwnedFd; 2] = match fds.try_into() {
                    Ok(two) => two,
                    Err(fds) => {
                        tracing::error!(fds = fds.len(), "binary upgrade: a connection came without its two sockets");
                        continue;
                    }
                };
                let Some(to) = orders.get(next % orders.len().max(1)) else { return };
                next = next.wrapping_add(1);
                if to.send(Order::Adopt(Box::new(Adopted { client, upstream, facts }))).is_err() {
                    tracing::error!("binary upgrade: a worker is gone; a passed connection is closed");
                }
                adopted += 1;
            }
            Ok(Some((Message::Done { pairs }, _))) => {
                // A pair a worker was sending as the old process said so may follow:
                // read on until it closes its end.
                tracing::info!(pairs, adopted, "binary upgrade: done; the old process passed every WebSocket it could");
            }
            Ok(Some((other, _))) => tracing::warn!("binary upgrade: unexpected message {other:?}"),
            Ok(None) => {
                tracing::info!(adopted, "binary upgrade: the old process closed the control socket");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // One message this process cannot read (its descriptors are closed).
                tracing::error!(error = %e, "binary upgrade: a message from the old process was not understood");
            }
            Err(e) => {
                tracing::error!(error = %e, adopted, "binary upgrade: control socket failed");
                return;
            }
        }
    }
}
