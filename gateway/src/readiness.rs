//! Readiness on io_uring: wait until a socket is readable or writable without
//! lending the kernel a buffer.
//!
//! tokio-uring 0.5 can only wait for data by parking a read *with* a buffer, so a
//! million idle connections would pin a million buffers. Instead each worker owns
//! one small extra ring, a [`Ring`], used only for `IORING_OP_POLL_ADD`: a
//! connection waits here, and only once bytes are queued does it borrow a buffer
//! from the per-core pool and read them through tokio-uring. The ring's fd is
//! registered with tokio's reactor, which wakes the completion drain. The worker
//! holds the [`Ring`] and lends it to whatever waits.
//!
//! Dropping a pending [`Ring::ready`] future cancels the poll in the kernel
//! (`IORING_OP_ASYNC_CANCEL`), so timeouts can simply drop it; no request is ever
//! dropped on the floor (a cancel that found no room waits in a backlog), since a
//! poll left pending would keep its socket open. For waiters that are rows of a
//! table rather than tasks (parked spliced pairs), [`Ring::arm`] starts a poll
//! identified only by a token, and its completion goes to the ring's
//! [`Ring::set_token_handler`] callback: nothing is allocated per wait. This module
//! must never block: submissions are non-blocking `io_uring_enter` calls, batched
//! per scheduler pass by a flusher task. A [`Ring`] belongs to the thread that
//! started it and must never be used from another (it is not `Send`).
//!
//! Each completed poll reaches the worker as io_uring task work, which interrupts a
//! running worker with a rescheduling IPI (`RES` of `/proc/interrupts`): with the
//! accept on io_uring too, 2.8–3.7 per handshake at 16 loops, against nginx's 0.3;
//! since the accept waits on tokio's reactor ([`crate::conn::accept`]), 0.1–1.3. The
//! ring is not set up with `IORING_SETUP_DEFER_TASKRUN` to avoid them: on this kernel
//! (6.18) a deferred completion's wake reaches epoll neither through the ring's fd
//! (never) nor through a registered eventfd (15 to 24 ms late: every handshake
//! stalled); tried in the worker, and alone with a poll on a loopback socket written
//! from another thread (and again alone, later: the eventfd's wake came 12 to 16 ms
//! after the write).
//!
//! So a relay waits on tokio's reactor from its first wait ([`crate::wait`]; it did
//! from its ninth): an interrupt costs its receiver a VM exit and re-entry, a
//! registration two `epoll_ctl` per socket. On a VM whose interrupts were cheap that
//! was a wash (41.6k and 38.8k handshakes per 5 s against 43.8k and 40.7k on the ring);
//! on one whose interrupts are dear (a nested VM, 2026-12-06, 16 loops), the machine's
//! CPU per handshake went from 163–186 µs to 110–125 (nginx's: 115–126), and the
//! interrupts from 1.4–2.3 per handshake to 0.3–0.5 (nginx's: 0.14–0.20). The
//! upstream's response head was then waited for on the reactor too, registered for that
//! wait only: the last interrupts went (0.15–0.20 per handshake against 0.43–0.53), but
//! its two `epoll_ctl` cost as much (three alternating pairs of runs: 111–116 µs either
//! way). Since the relay goes on with that registration (2026-12-07), the response head
//! of a plain client's pair relayed in userspace waits there at no extra system call
//! (0.19–0.22 interrupts per handshake; `cargo xtask bench handshake --rounds 5`, with
//! the relay's task boxed: 1.04× nginx's CPU per handshake paired, from 1.10×). A pair
//! spliced at its 101 waits for its head here, as do a request head that did not come
//! with its connection and the splice's watches.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{IoUring, opcode, types};
use slab::Slab;
use tokio::io::unix::AsyncFd;

/// `user_data` of cancel requests; their completions carry no information we need.
const CANCEL_TAG: u64 = u64::MAX;
/// Set in the `user_data` of polls started by [`arm`]; the rest is the caller's token.
const TOKEN_BIT: u64 = 1 << 63;
/// Rounds of reaping and flushing overflowed completions per wake of the drain.
const MAX_OVERFLOW_ROUNDS: usize = 64;
/// Largest token [`Ring::arm`] accepts.
pub const MAX_TOKEN: u64 = TOKEN_BIT - 2;

/// Receives the completions of [`Ring::arm`]ed polls: the token and the poll's result
/// (the reported mask, or a negative errno such as `-ECANCELED`). It may arm and
/// disarm polls on the same ring.
pub type TokenHandler = Rc<dyn Fn(u64, i32)>;

/// Readable: data, FIN (`POLLRDHUP`) or an error.
pub const READABLE: u32 = (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
/// Writable, or an error that a write would report.
pub const WRITABLE: u32 = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as u32;
/// Only a close or error: the peer sent FIN or RST (used to supervise spliced pairs).
pub const CLOSED: u32 = (libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;

enum Slot {
    Waiting(Option<Waker>),
    Done(i32),
    /// The future was dropped; the slot is freed when the kernel's completion arrives.
    Abandoned,
}

struct Reactor {
    ring: IoUring,
    slots: Slab<Slot>,
    /// SQEs are queued but not yet submitted; the flusher submits them in one call.
    unsubmitted: bool,
    flush: Rc<tokio::sync::Notify>,
    on_token: Option<TokenHandler>,
    /// SQEs that found no room (see `push`); the flusher queues them first.
    backlog: Vec<io_uring::squeue::Entry>,
}

/// One worker's poll ring; cheap to clone (every clone is the same ring).
#[derive(Clone)]
pub struct Ring {
    reactor: Rc<RefCell<Reactor>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.reactor.borrow();
        f.debug_struct("Ring").field("fd", &r.ring.as_raw_fd()).field("waits", &r.slots.len()).finish()
    }
}

impl Ring {
    /// Creates a poll ring and spawns its completion drain on the current
    /// tokio-uring runtime. Call once per worker thread, inside `tokio_uring::start`.
    pub fn start(entries: u32) -> io::Result<Self> {
        start(entries)
    }

    /// Waits until `fd` reports one of `events` (a mask of `POLL*` bits) and returns
    /// the reported mask. Holds no buffer while waiting.
    pub fn ready(&self, fd: &impl AsRawFd, events: u32) -> Ready {
        Ready { reactor: self.reactor.clone(), fd: fd.as_raw_fd(), events, key: None }
    }

    /// Sets the receiver of this ring's [`Ring::arm`]ed completions.
    pub fn set_token_handler(&self, handler: TokenHandler) {
        self.reactor.borrow_mut().on_token = Some(handler);
    }

    /// Starts a one-shot poll of `fd` for `events` whose completion is delivered to
    /// the token handler as `token` (at most [`MAX_TOKEN`]). The caller must
    /// [`Ring::disarm`] it before closing `fd` (a pending poll keeps the socket
    /// alive) unless it completed.
    pub fn arm(&self, fd: RawFd, events: u32, token: u64) {
        debug_assert!(token <= MAX_TOKEN, "token out of range");
        let sqe = opcode::PollAdd::new(types::Fd(fd), events).build().user_data(token | TOKEN_BIT);
        push(&mut self.reactor.borrow_mut(), &sqe);
    }

    /// Cancels the poll started by [`Ring::arm`] with `token`, if it is still
    /// pending; its completion (`-ECANCELED`) still reaches the token handler.
    pub fn disarm(&self, token: u64) {
        let sqe = opcode::AsyncCancel::new(token | TOKEN_BIT).build().user_data(CANCEL_TAG);
        push(&mut self.reactor.borrow_mut(), &sqe);
    }
}

fn start(entries: u32) -> io::Result<Ring> {
    let ring = IoUring::builder().setup_cqsize(entries.saturating_mul(4)).build(entries)?;
    let fd = ring.as_raw_fd();
    let flush = Rc::new(tokio::sync::Notify::new());
    let reactor = Rc::new(RefCell::new(Reactor {
        ring,
        slots: Slab::with_capacity(1024),
        unsubmitted: false,
        flush: flush.clone(),
        on_token: None,
        backlog: Vec::new(),
    }));
    let ring_fd = RingFd { fd, _ring: reactor.clone() };
    // SAFETY: `RingFd` keeps the ring (and so its fd) alive for as long as the AsyncFd
    // exists, and always returns that same fd.
    let afd = unsafe { AsyncFd::register(ring_fd) }.map_err(|e| io::Error::other(e.to_string()))?;
    tokio_uring::spawn(drain(afd, reactor.clone()));
    tokio_uring::spawn(flusher(reactor.clone(), flush));
    Ok(Ring { reactor })
}

/// Submits every SQE queued since it last ran, in one `io_uring_enter`. Woken by the
/// first push of a scheduler pass, it runs after the tasks already queued, so all the
/// waits they start share one system call.
async fn flusher(reactor: Rc<RefCell<Reactor>>, flush: Rc<tokio::sync::Notify>) {
    loop {
        flush.notified().await;
        let mut r = reactor.borrow_mut();
        r.unsubmitted = false;
        loop {
            requeue(&mut r);
            match r.ring.submit() {
                // Room again: move more of the backlog, if any waits.
                Ok(_) if !r.backlog.is_empty() && r.ring.submission().is_empty() => {}
                Ok(_) => break,
                // The completion queue is full: the drain asks again once it has reaped it.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                Err(e) => {
                    tracing::error!(error = %e, "poll ring: submit failed");
                    break;
                }
            }
        }
    }
}

/// The ring's fd for tokio's reactor; holding the reactor keeps the fd open.
struct RingFd {
    fd: RawFd,
    _ring: Rc<RefCell<Reactor>>,
}

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

async fn drain(afd: AsyncFd<RingFd>, reactor: Rc<RefCell<Reactor>>) {
    // Reused from wake to wake (emptied each time): no allocation per wake.
    let (mut wake, mut tokens) = (Vec::new(), Vec::new());
    loop {
        let Ok(mut guard) = afd.readable().await else {
            tracing::error!("poll ring: readiness registration failed; readiness waits will stall");
            return;
        };
        let (on_token, overflowed) = {
            let mut r = reactor.borrow_mut();
            let Reactor { ring, slots, on_token, .. } = &mut *r;
            let mut overflowed = false;
            for _ in 0..MAX_OVERFLOW_ROUNDS {
                for cqe in ring.completion() {
                    let key = cqe.user_data();
                    if key == CANCEL_TAG {
                        continue;
                    }
                    if key & TOKEN_BIT != 0 {
                        tokens.push((key & !TOKEN_BIT, cqe.result()));
                        continue;
                    }
                    let key = key as usize;
                    match slots.get_mut(key) {
                        Some(Slot::Abandoned) => {
                            slots.remove(key);
                        }
                        Some(slot @ Slot::Waiting(_)) => {
                            if let Slot::Waiting(Some(w)) = std::mem::replace(slot, Slot::Done(cqe.result())) {
                                wake.push(w);
                            }
                        }
                        Some(Slot::Done(_)) | None => {}
                    }
                }
                // Completions the queue had no room for wait in the kernel's overflow
                // list, and the ring's fd does not signal them again: an enter with
                // GETEVENTS (which `submit` adds while the overflow flag is up) moves
                // them into the queue just reaped.
                overflowed = ring.submission().cq_overflow();
                if !overflowed {
                    break;
                }
                if let Err(e) = ring.submit()
                    && e.raw_os_error() != Some(libc::EBUSY)
                {
                    // Not retried at once (that would spin); the next completion or
                    // submission tries again.
                    tracing::error!(error = %e, "poll ring: flushing overflowed completions failed");
                    overflowed = false;
                    break;
                }
            }
            (on_token.clone(), overflowed)
        };
        // Still overflowing (a flood): stay ready, so this runs again after the wakes.
        if !overflowed {
            guard.clear_ready();
        }
        {
            // Completions are reaped: SQEs that waited for room, or that a submission
            // refused while the completion queue was full, can go now.
            let mut r = reactor.borrow_mut();
            let waiting = !r.backlog.is_empty() || !r.ring.submission().is_empty();
            if waiting && !r.unsubmitted {
                r.unsubmitted = true;
                r.flush.notify_one();
            }
        }
        for w in wake.drain(..) {
            w.wake();
        }
        // Called with the reactor unborrowed: handlers arm and disarm polls.
        match on_token {
            Some(handler) => tokens.drain(..).for_each(|(token, result)| handler(token, result)),
            None => tokens.clear(),
        }
    }
}

/// Future of [`Ring::ready`].
#[must_use = "futures do nothing unless awaited"]
pub struct Ready {
    reactor: Rc<RefCell<Reactor>>,
    fd: RawFd,
    events: u32,
    key: Option<usize>,
}

impl Future for Ready {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
        let reactor = self.reactor.clone();
        let mut r = reactor.borrow_mut();
        if let Some(key) = self.key {
            return match r.slots.get_mut(key) {
                Some(Slot::Done(res)) => {
                    let res = *res;
                    r.slots.remove(key);
                    self.key = None;
                    Poll::Ready(u32::try_from(res).map_err(|_| io::Error::from_raw_os_error(-res)))
                }
                Some(Slot::Waiting(w)) => {
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Some(Slot::Abandoned) | None => Poll::Ready(Err(io::Error::other("poll slot lost"))),
            };
        }
        let key = r.slots.insert(Slot::Waiting(Some(cx.waker().clone())));
        let sqe = opcode::PollAdd::new(types::Fd(self.fd), self.events).build().user_data(key as u64);
        push(&mut r, &sqe);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut r = self.reactor.borrow_mut();
        match r.slots.get_mut(key) {
            Some(Slot::Done(_)) => {
                r.slots.remove(key);
            }
            Some(slot @ Slot::Waiting(_)) => {
                *slot = Slot::Abandoned;
                let sqe = opcode::AsyncCancel::new(key as u64).build().user_data(CANCEL_TAG);
                push(&mut r, &sqe);
            }
            Some(Slot::Abandoned) | None => {}
        }
    }
}

/// Queues one SQE; the flusher submits it before the worker next waits for I/O. Never
/// loses one: when the submission queue is full and cannot be submitted (the completion
/// queue overflowed and has not been drained yet), it waits in `backlog` for the flusher.
fn push(r: &mut Reactor, sqe: &io_uring::squeue::Entry) {
    // SAFETY: poll and cancel SQEs reference no user memory, and the kernel takes its
    // own reference to the polled file at submission, so it never touches a recycled fd.
    let queued = r.backlog.is_empty()
        && (unsafe { r.ring.submission().push(sqe) }.is_ok()
            || (r.ring.submit().is_ok() && unsafe { r.ring.submission().push(sqe) }.is_ok()));
    if !queued {
        r.backlog.push(sqe.clone());
    }
    if !r.unsubmitted {
        r.unsubmitted = true;
        r.flush.notify_one();
    }
}

/// Moves what waits in `backlog` into the submission queue, as far as it has room.
fn requeue(r: &mut Reactor) {
    let Reactor { ring, backlog, .. } = r;
    let mut taken = 0;
    for sqe in backlog.iter() {
        // SAFETY: as in `push`.
        if unsafe { ring.submission().push(sqe) }.is_err() {
            break;
        }
        taken += 1;
    }
    backlog.drain(..taken);
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    /// Waits whose slots are still in the table (waiting, done or abandoned).
    fn slots_in_use(ring: &Ring) -> usize {
        ring.reactor.borrow().slots.len()
    }

    fn pairs(n: usize) -> Vec<(UnixStream, UnixStream)> {
        (0..n).map(|_| UnixStream::pair().unwrap()).collect()
    }

    /// Spawns one readability wait per pair's first end; returns how many completed.
    fn spawn_waits(
        ring: &Ring,
        set: &[(UnixStream, UnixStream)],
    ) -> (Rc<Cell<usize>>, Vec<tokio::task::JoinHandle<()>>) {
        let done = Rc::new(Cell::new(0));
        let handles = set
            .iter()
            .map(|(a, _)| {
                let (fd, done, ring) = (a.as_raw_fd(), done.clone(), ring.clone());
                tokio_uring::spawn(async move {
                    let mask = ring.ready(&fd, READABLE).await.expect("readiness wait failed");
                    assert!(mask & libc::POLLIN as u32 != 0, "woken without data: {mask:#x}");
                    done.set(done.get() + 1);
                })
            })
            .collect();
        (done, handles)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(std::time::Instant::now() < give_up, "stalled: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A ring of 4 submissions and 16 completions against 100 waits at a time: the
    /// completions overflow the queue (without the drain's flush the rest would never
    /// be reaped), cancels are submitted while it overflows, and still every wait is
    /// woken and every cancel reaches the kernel (no slot, so no poll, is left). On
    /// kernels since 5.11 a submission during an overflow succeeds, so the path for a
    /// refused submission (`EBUSY`, older kernels) is not reached here.
    #[test]
    fn waits_and_cancels_survive_a_full_completion_queue() {
        const N: usize = 100;
        tokio_uring::start(async {
            let ring = Ring::start(4).unwrap();
            // All at once ready: 200 completions for a queue of 16.
            let a = pairs(N);
            let (done, _handles) = spawn_waits(&ring, &a);
            until("arming the first waits", || slots_in_use(&ring) == N).await;
            for (_, peer) in &a {
                (&*peer).write_all(b"x").unwrap();
            }
            until("waking every wait past the overflow", || done.get() == N).await;
            until("freeing the first waits' slots", || slots_in_use(&ring) == 0).await;
            drop(a);

            // Cancels pushed while the completion queue is overflowing.
            let (b, c) = (pairs(N), pairs(N));
            let (b_done, b_handles) = spawn_waits(&ring, &b);
            let (c_done, _c_handles) = spawn_waits(&ring, &c);
            until("arming the second waits", || slots_in_use(&ring) == 2 * N).await;
            for (_, peer) in &c {
                (&*peer).write_all(b"x").unwrap();
            }
            for h in b_handles {
                h.abort();
            }
            until("waking the third waits", || c_done.get() == N).await;
            until("cancelling every abandoned wait", || slots_in_use(&ring) == 0).await;
            assert_eq!(b_done.get(), 0, "a cancelled wait completed");
        });
    }
}
