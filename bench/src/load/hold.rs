//! Scenario `hold`: open connections at the ramp rate, hold them until the steady end with a
//! heartbeat ping every `heartbeat` (each pong checked against its ping), then prove each
//! connection still echoes one verified message, and close.
//!
//! An idle held connection is the unit of the million-connection budget: it holds its
//! socket, empty buffers and one entry in its thread's deadline queue, and nothing else.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::client::{Conn, Recv};
use super::deadlines::Deadline;
use super::payload;
use super::ramp::Ticket;
use super::receiver::Msg;
use super::runner::Ctx;
use super::verify::Expect;
use crate::ws::frame::{OP_BINARY, OP_PING};

/// How long a ping sent just before the end may wait for its pong.
const PONG_WAIT: Duration = Duration::from_secs(10);

/// How long the final echo may take.
const VERIFY_WAIT: Duration = Duration::from_secs(10);

/// One connection of the scenario.
pub async fn conn(ctx: Rc<Ctx>, id: u64, ticket: Ticket) {
    let Some(mut c) = ctx.open(id, Some(ticket)).await else {
        return;
    };
    // The final echoes are spread over up to 5 s so that they measure the path, not a
    // queue of every connection answering at the same instant.
    let u = (id.wrapping_mul(0x9E37_79B9) % 1000) as f64 / 1000.0;
    if !heartbeat_until(&ctx, &mut c, u).await {
        ctx.rec.borrow_mut().counts.closed_early += 1;
        ctx.closed();
        return;
    }
    // The final phases are boxed so that their state is not part of the idle task.
    match Box::pin(verify_echo(&ctx, &mut c, id)).await {
        Some(true) => ctx.rec.borrow_mut().counts.verified += 1,
        Some(false) => {}
        None => {
            ctx.rec.borrow_mut().counts.closed_early += 1;
            ctx.closed();
            return;
        }
    }
    if Box::pin(c.close(ctx.plan.close_wait)).await {
        ctx.rec.borrow_mut().counts.closed_clean += 1;
    }
    ctx.closed();
}

/// Pings every heartbeat period (the first at the fraction `u` of it) until a jitter set
/// by `u` after the hold's end; false if the server
/// closed meanwhile. While the ramp goes on the end is not known yet: it is read again at
/// each wake-up, and a connection also wakes when the hold would end after a ramp at the
/// full rate, so it learns the end on time unless the ramp was slower and the hold
/// shorter than a heartbeat (then at its next heartbeat).
///
/// This is where a held connection spends its life, so its state is kept minimal: one entry
/// in the thread's deadline queue (no runtime timer of its own) and a readiness wait that
/// keeps no waiter of its own.
async fn heartbeat_until(ctx: &Ctx, c: &mut Conn, u: f64) -> bool {
    let period = ctx.plan.heartbeat;
    // The final echoes are spread over up to 5 s so that they measure the path, not a
    // queue of every connection answering at the same instant.
    let jitter = ctx.plan.ramp().min(Duration::from_secs(5)).mul_f64(u);
    let mut end = end_of(ctx, jitter);
    // The first heartbeat at a point of the period set by the connection's id, so that
    // heartbeats are spread evenly over the period however fast the ramp went.
    let mut next = Instant::now() + period.mul_f64(u.max(0.001));
    // The ping in flight: its number and send time (ns on the run clock).
    let awaiting: Cell<Option<(u64, u64)>> = Cell::new(None);
    // Pongs numbered below this were accounted for (answered or counted late): another
    // one of them is a duplicate.
    let accounted = Cell::new(0u64);
    let closed = Cell::new(false);
    let mut pings = 0u64;
    // The next wake-up, parked in the thread's deadline queue while the task waits.
    let mut wake = next.min(end);
    let deadline = Deadline::default();
    loop {
        let now = Instant::now();
        end = end_of(ctx, jitter);
        // The next wake-up: the next heartbeat, the end, or while the end is unknown the
        // end the ramp would have at its full rate (when it may have become known).
        let due = next.min(end).min(wake_by(ctx, jitter, now));
        // Always the next wake-up exactly: a wake-up that has passed must not stay armed
        // (it would be ready again at once, a loop that burns the thread).
        if now < end {
            wake = due;
        }
        // At the end, a ping still in flight gets up to PONG_WAIT for its pong.
        if now >= end && (awaiting.get().is_none() || now >= end + PONG_WAIT) {
            break;
        }
        if now >= next && now < end {
            if awaiting.get().is_some() {
                ctx.rec.borrow_mut().counts.pongs_missing += 1;
            }
            let sent = ctx.now_ns();
            if c.send(OP_PING, &pings.to_le_bytes()).is_err() || c.flush().await.is_err() {
                return false;
            }
            ctx.rec.borrow_mut().counts.pings += 1;
            awaiting.set(Some((pings, sent)));
            pings += 1;
            next += period;
            continue;
        }
        if now >= end && wake < end + PONG_WAIT {
            wake = end + PONG_WAIT;
            continue;
        }
        let readable = std::future::poll_fn(|cx| {
            if c.has_early() || c.stream().poll_read_ready(cx).is_ready() {
                return Poll::Ready(true);
            }
            deadline.poll(cx, wake).map(|()| false)
        })
        .await;
        if !readable {
            continue;
        }
        let got = c.read_now(&mut |m| match m {
            Msg::Pong(p) => {
                let mut rec = ctx.rec.borrow_mut();
                let number = <[u8; 8]>::try_from(p).ok().map(u64::from_le_bytes);
                match (awaiting.get(), number) {
                    (Some((n, sent)), Some(got)) if got == n => {
                        rec.counts.pongs += 1;
                        rec.rtt_us(ctx.now_ns().saturating_sub(sent) / 1000);
                        awaiting.set(None);
                        accounted.set(n + 1);
                    }
                    // The pong of a ping already given up on (counted missing then).
                    (_, Some(got)) if got >= accounted.get() && got < pings => {
                        rec.counts.pongs_late += 1;
                        accounted.set(got + 1);
                    }
                    _ => rec.counts.mismatched += 1,
                }
            }
            Msg::Data { .. } => ctx.rec.borrow_mut().counts.mismatched += 1,
            Msg::Close(_) => closed.set(true),
            Msg::Ping(_) => {}
        });
        if closed.get() || !matches!(got, Ok(Recv::Open)) {
            return false;
        }
    }
    if awaiting.get().is_some() {
        ctx.rec.borrow_mut().counts.pongs_missing += 1;
    }
    true
}

/// The hold's end plus `jitter`; the run's time bound while the ramp goes on. A function,
/// not a closure kept in the idle task, so that it costs a held connection no bytes.
fn end_of(ctx: &Ctx, jitter: Duration) -> Instant {
    ctx.hold_end().map_or(ctx.t0 + ctx.plan.max_time, |e| e + jitter)
}

/// While the ramp goes on: the hold's end if the ramp ends at its full rate (the earliest
/// it can be), when that is still ahead; otherwise (or once the end is known) the run's
/// time bound, which never comes first.
fn wake_by(ctx: &Ctx, jitter: Duration, now: Instant) -> Instant {
    let far = ctx.t0 + ctx.plan.max_time;
    if ctx.hold_end().is_some() {
        return far;
    }
    let earliest = ctx.steady_end() + jitter;
    if earliest > now { earliest } else { far }
}

/// Sends one message and waits for its verified echo. `None` if the server closed.
async fn verify_echo(ctx: &Ctx, c: &mut Conn, id: u64) -> Option<bool> {
    let mut expect = Expect::new(id, ctx.plan.size);
    let mut body = Vec::new();
    payload::build(&mut body, id, 0, ctx.now_ns(), ctx.plan.size);
    c.send(OP_BINARY, &body).ok()?;
    c.flush().await.ok()?;
    expect.sent();
    {
        let mut rec = ctx.rec.borrow_mut();
        rec.counts.sent += 1;
        rec.counts.bytes_sent += body.len() as u64;
    }
    drop(body);
    let mut ok = false;
    let mut closed = false;
    let wait = async {
        while expect.outstanding > 0 && !closed {
            let r = c
                .recv(&mut |m| match m {
                    Msg::Data { payload: p, .. } => {
                        ok = expect.echoed(p, ctx.now_ns(), &mut ctx.rec.borrow_mut());
                    }
                    Msg::Close(_) => closed = true,
                    Msg::Ping(_) | Msg::Pong(_) => {}
                })
                .await;
            if !matches!(r, Ok(Recv::Open)) {
                closed = true;
            }
        }
    };
    let _ = tokio::time::timeout(VERIFY_WAIT, wait).await;
    expect.finish(&mut ctx.rec.borrow_mut());
    if ok {
        ctx.progress.ops.fetch_add(1, Relaxed);
    }
    if closed { None } else { Some(ok) }
}
