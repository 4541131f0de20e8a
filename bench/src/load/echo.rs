//! Scenario `echo`: every connection sends one small message every interval until the end of
//! the run, and verifies each echo (sequence and content); round trips go to the histogram.
//!
//! Stops sending at the steady end, waits at most `drain` for outstanding echoes, then closes.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::client::Recv;
use super::payload;
use super::ramp::Ticket;
use super::receiver::Msg;
use super::runner::Ctx;
use super::verify::Expect;
use crate::ws::frame::OP_BINARY;

/// One connection of the scenario.
pub async fn conn(ctx: Rc<Ctx>, id: u64, ticket: Ticket) {
    let Some(mut c) = ctx.open(id, Some(ticket)).await else {
        return;
    };
    let plan = &ctx.plan;
    let end = ctx.steady_end();
    let give_up = end + plan.drain;
    let mut expect = Expect::new(id, plan.size);
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut body = Vec::with_capacity(plan.size.max(payload::HEADER));
    let mut closed_by_server = false;
    loop {
        let now = Instant::now();
        if (now >= end && expect.outstanding == 0) || now >= give_up {
            break;
        }
        if now >= next && now < end {
            body.clear();
            payload::build(&mut body, id, seq, ctx.now_ns(), plan.size);
            if c.send(OP_BINARY, &body).is_err() || c.flush().await.is_err() {
                closed_by_server = true;
                break;
            }
            seq += 1;
            expect.sent();
            let mut rec = ctx.rec.borrow_mut();
            rec.counts.sent += 1;
            rec.counts.bytes_sent += body.len() as u64;
            next += plan.interval;
            continue;
        }
        let wake = if now < end { next.min(end) } else { give_up };
        let mut server_closed = false;
        let mut on_msg = |m: Msg<'_>| match m {
            Msg::Data { payload: p, .. } => {
                if expect.echoed(p, ctx.now_ns(), &mut ctx.rec.borrow_mut()) {
                    ctx.progress.ops.fetch_add(1, Relaxed);
                }
            }
            Msg::Close(_) => server_closed = true,
            Msg::Ping(_) | Msg::Pong(_) => {}
        };
        let got = tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => Ok(Recv::Open),
            r = c.recv(&mut on_msg) => r,
        };
        if server_closed || !matches!(got, Ok(Recv::Open)) {
            closed_by_server = true;
            break;
        }
    }
    expect.finish(&mut ctx.rec.borrow_mut());
    if closed_by_server {
        ctx.rec.borrow_mut().counts.closed_early += 1;
    } else if c.close(plan.close_wait).await {
        ctx.rec.borrow_mut().counts.closed_clean += 1;
    }
    ctx.closed();
}
