//! One deadline queue per load thread, for the wake-ups of held connections (heartbeats,
//! the hold's end): a connection parks one entry (its deadline and its task's waker) in
//! the thread's heap instead of keeping a runtime timer of its own, and one driver task
//! per thread sleeps until the earliest deadline and wakes every connection that is due.
//!
//! It must never be shared between threads (it is thread-local, like the connections it
//! serves), never wake a task before its deadline (a moved deadline may wake it late or
//! spuriously, never early), and never hold more than one live entry per armed [`Deadline`]
//! plus the stale ones its moves left, each gone at its own deadline.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future as _;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One parked wake-up.
struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// This thread's queue and its driver's waker.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// The driver, to wake when an entry comes before the one it sleeps for.
    driver: Option<Waker>,
    /// What the driver sleeps until.
    driver_at: Option<Instant>,
}

thread_local! {
    static QUEUE: RefCell<Queue> = RefCell::new(Queue::default());
}

/// A connection's wake-up: at most one entry in the thread's queue per deadline it was
/// polled with. Small (one `Option<Instant>`), so it costs an idle connection 16 bytes.
#[derive(Debug, Default)]
pub struct Deadline {
    armed: Cell<Option<Instant>>,
}

impl Deadline {
    /// Ready once `at` has passed; otherwise parks the task's waker in the thread's queue
    /// (once per distinct `at`) and returns pending.
    pub fn poll(&self, cx: &Context<'_>, at: Instant) -> Poll<()> {
        if Instant::now() >= at {
            self.armed.set(None);
            return Poll::Ready(());
        }
        if self.armed.get() != Some(at) {
            self.armed.set(Some(at));
            let driver = QUEUE.with(|q| {
                let mut q = q.borrow_mut();
                q.seq += 1;
                let seq = q.seq;
                q.heap.push(Reverse(Entry { at, seq, waker: cx.waker().clone() }));
                // The driver sleeps past this deadline (or not at all): wake it to re-arm.
                if q.driver_at.is_none_or(|d| d > at) { q.driver.take() } else { None }
            });
            if let Some(w) = driver {
                w.wake();
            }
        }
        Poll::Pending
    }
}

/// The thread's driver: sleeps until the earliest deadline, wakes every task that is due,
/// and repeats. Runs until its task is dropped with the thread's runtime.
pub async fn drive() {
    let far = || Instant::now() + Duration::from_hours(1);
    let mut sleep = pin!(tokio::time::sleep_until(far().into()));
    let mut due = Vec::new();
    std::future::poll_fn(|cx| -> Poll<()> {
        loop {
            let now = Instant::now();
            let next = QUEUE.with(|q| {
                let mut q = q.borrow_mut();
                while q.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
                    if let Some(Reverse(e)) = q.heap.pop() {
                        due.push(e.waker);
                    }
                }
                let next = q.heap.peek().map(|Reverse(e)| e.at);
                q.driver = Some(cx.waker().clone());
                q.driver_at = next;
                next
            });
            // Woken outside the borrow: a wake never runs the task here, but keep the queue
            // free for whatever it does.
            for w in due.drain(..) {
                w.wake();
            }
            let at = next.unwrap_or_else(far);
            if sleep.deadline() != at.into() {
                sleep.as_mut().reset(at.into());
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// Drops every parked waker of this thread (at the end of its run, before its runtime).
pub fn clear() {
    QUEUE.with(|q| *q.borrow_mut() = Queue::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn wakes_each_task_at_its_deadline_never_before() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let woke: Rc<RefCell<Vec<(u64, Duration)>>> = Rc::default();
        local.block_on(&rt, async {
            tokio::task::spawn_local(drive());
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            // Registered out of order, one moved earlier after parking.
            for (i, ms) in [(0u64, 120u64), (1, 30), (2, 80), (3, 200)] {
                let woke = Rc::clone(&woke);
                tasks.push(tokio::task::spawn_local(async move {
                    let d = Deadline::default();
                    let mut at = t0 + Duration::from_millis(ms);
                    let mut polls = 0;
                    std::future::poll_fn(|cx| {
                        polls += 1;
                        if i == 3 && polls == 2 {
                            at = t0 + Duration::from_millis(60);
                        }
                        let r = d.poll(cx, at);
                        if i == 3 && polls == 1 {
                            cx.waker().wake_by_ref();
                        }
                        r
                    })
                    .await;
                    let late = t0.elapsed();
                    assert!(Instant::now() >= at, "task {i} woke before its deadline");
                    woke.borrow_mut().push((i, late));
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        clear();
        let order: Vec<u64> = woke.borrow().iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }
}
