//! Runs a plan in this process: one thread per core, each with a single-threaded runtime and
//! its own recorder; connections never move between threads. Merges the recorders at the end.
//!
//! Every thread stops by itself at the plan's end and is cut off at `max_time` regardless,
//! so a run can never hang.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::task::{JoinHandle, LocalSet};

use super::client::{Conn, ConnectError};
use super::plan::Plan;
use super::progress::Progress;
use super::ramp::{Outcome, Ramp, Ticket};
use super::stats::Recorder;
use super::{Scenario, bulk, deadlines, echo, handshake, hold};

/// What one thread's tasks share.
#[derive(Debug)]
pub struct Ctx {
    /// The plan.
    pub plan: Arc<Plan>,
    /// This thread's counters and histograms.
    pub rec: RefCell<Recorder>,
    /// The process's live counters.
    pub progress: Arc<Progress>,
    /// Start of the run (shared by all threads of the process).
    pub t0: Instant,
    /// The process's ramp (shared by all its threads).
    pub ramp: Arc<Ramp>,
}

impl Ctx {
    /// Nanoseconds since the run's start.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// End of the steady phase of a fixed-rate run: the planned ramp + duration.
    pub fn steady_end(&self) -> Instant {
        self.t0 + self.plan.ramp() + self.plan.duration
    }

    /// End of the hold: the ramp's actual end + duration, once the ramp has ended (a
    /// closed-loop ramp ends when it has opened every connection or hit a limit).
    pub fn hold_end(&self) -> Option<Instant> {
        if self.plan.ramp.adaptive {
            self.ramp.ended_at().map(|e| e + self.plan.duration)
        } else {
            Some(self.steady_end())
        }
    }

    /// Opens connection `id`, recording the handshake time or the failure, and telling the
    /// ramp how it went when the ramp admitted it (`ticket`).
    pub async fn open(&self, id: u64, ticket: Option<Ticket>) -> Option<Conn> {
        let started = Instant::now();
        let seed = id ^ (self.t0.elapsed().as_nanos() as u64).rotate_left(32);
        // Boxed: the connect-and-upgrade state is large and short-lived; keeping it inline
        // would make every idle connection's task as big as its biggest moment.
        match Box::pin(Conn::open(self.plan.dial(id), seed)).await {
            Ok(c) => {
                let us = started.elapsed().as_micros() as u64;
                if let Some(t) = ticket {
                    self.ramp.finished(t, Outcome::Upgraded(us));
                }
                let mut rec = self.rec.borrow_mut();
                rec.counts.connected += 1;
                if let Some(resumed) = c.tls_resumed() {
                    rec.counts.tls_handshakes += 1;
                    rec.counts.tls_resumed += u64::from(resumed);
                }
                rec.handshake_us(us);
                self.progress.handshakes.record(us);
                self.progress.connected.fetch_add(1, Relaxed);
                self.progress.open.fetch_add(1, Relaxed);
                Some(c)
            }
            Err(e) => {
                if let Some(t) = ticket {
                    self.ramp.finished(t, outcome_of(&e));
                }
                let mut rec = self.rec.borrow_mut();
                match e {
                    ConnectError::Connect(_) => rec.counts.connect_failed += 1,
                    ConnectError::Handshake(_) => rec.counts.handshake_failed += 1,
                }
                let failed = self.progress.failed.fetch_add(1, Relaxed);
                if failed < 3 {
                    eprintln!("wsbench load: connection {id} to {} failed: {e}", self.plan.dial(id).target);
                }
                None
            }
        }
    }

    /// Marks a connection closed in the live counters.
    pub fn closed(&self) {
        self.progress.open.fetch_sub(1, Relaxed);
    }
}

/// What a failed connection tells the ramp.
fn outcome_of(e: &ConnectError) -> Outcome {
    match e {
        ConnectError::Connect(e) => match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Outcome::OutOfFiles,
            Some(libc::EADDRNOTAVAIL) => Outcome::OutOfPorts,
            _ => Outcome::Failed,
        },
        ConnectError::Handshake(_) => Outcome::Failed,
    }
}

/// Runs the plan on its threads; returns the merged recorder and whether `max_time` cut it.
pub fn run(plan: &Arc<Plan>, progress: &Arc<Progress>, ramp: &Arc<Ramp>) -> Result<(Recorder, bool)> {
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for k in 0..plan.threads {
        let plan = Arc::clone(plan);
        let progress = Arc::clone(progress);
        let ramp = Arc::clone(ramp);
        let h = std::thread::Builder::new()
            .name(format!("load-{k}"))
            .spawn(move || thread_main(plan, progress, ramp, t0, k))
            .context("cannot start a load thread")?;
        handles.push(h);
    }
    let mut total = Recorder::default();
    let mut cut = false;
    for h in handles {
        let (rec, timed_out) = h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        total.merge(&rec);
        cut |= timed_out;
    }
    progress.done.store(true, Relaxed);
    Ok((total, cut))
}

fn thread_main(
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    ramp: Arc<Ramp>,
    t0: Instant,
    k: usize,
) -> Result<(Recorder, bool)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let max_time = plan.max_time;
    let ctx = Rc::new(Ctx { plan, rec: RefCell::new(Recorder::default()), progress, t0, ramp });
    let local = LocalSet::new();
    let timed_out = local.block_on(&rt, async {
        tokio::task::spawn_local(deadlines::drive());
        tokio::time::timeout_at((t0 + max_time).into(), drive(Rc::clone(&ctx), k)).await.is_err()
    });
    drop(local);
    deadlines::clear();
    let rec = ctx.rec.borrow().clone();
    Ok((rec, timed_out))
}

/// Starts this thread's share of connections as the ramp admits them (until it has
/// started them all or the ramp stopped) and waits for them all.
async fn drive(ctx: Rc<Ctx>, k: usize) {
    let plan = Arc::clone(&ctx.plan);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for j in (k as u64..plan.conns).step_by(plan.threads) {
        let Some(ticket) = ctx.ramp.admit().await else { break };
        let id = plan.id(j);
        let c = Rc::clone(&ctx);
        tasks.push(match plan.scenario {
            Scenario::Hold => tokio::task::spawn_local(hold::conn(c, id, ticket)),
            Scenario::Echo => tokio::task::spawn_local(echo::conn(c, id, ticket)),
            Scenario::Bulk => tokio::task::spawn_local(bulk::conn(c, id, ticket)),
            Scenario::Handshake => tokio::task::spawn_local(handshake::worker(c, id, ticket)),
        });
    }
    for t in tasks {
        let _ = t.await;
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The futures an idle connection parks in are its whole userspace cost besides the
    /// socket: keep them within the ≤ 1 KiB per connection budget (task header included).
    #[test]
    fn idle_task_state_stays_small() {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            o: crate::load::Options,
        }
        let p = <P as clap::Parser>::parse_from(["x", "hold"]);
        let plan = Arc::new(Plan::new(&p.o, 0, 1).unwrap());
        let progress = Arc::default();
        let ramp = Arc::new(Ramp::new(plan.ramp));
        let ctx = Rc::new(Ctx { plan, rec: RefCell::new(Recorder::default()), progress, t0: Instant::now(), ramp });
        let ticket = crate::load::ramp::Ticket::first();
        let hold = std::mem::size_of_val(&hold::conn(Rc::clone(&ctx), 0, ticket));
        assert!(hold <= 560, "hold task future is {hold} bytes");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let cfg = crate::echo::Config { fault: crate::echo::fault::Fault::None, max_frame: 1 };
            let serve = std::mem::size_of_val(&crate::echo::conn::serve(s, cfg));
            assert!(serve <= 512, "echo connection future is {serve} bytes");
        });
    }
}
