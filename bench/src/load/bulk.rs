//! Scenario `bulk`: each connection sends one large binary message at a time and reads its
//! echo concurrently (so messages larger than the socket buffers cannot deadlock), verifying
//! every byte, until the end of the run.
//!
//! Bulk connections are few, so each keeps one frame buffer of its own; each exchange is
//! bounded in time.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::client::Recv;
use super::payload;
use super::ramp::Ticket;
use super::receiver::Msg;
use super::runner::Ctx;
use super::verify::Expect;
use crate::ws::frame::{self, OP_BINARY};

/// Bound of one message's round trip.
const EXCHANGE_WAIT: Duration = Duration::from_secs(30);

/// One connection of the scenario.
pub async fn conn(ctx: Rc<Ctx>, id: u64, ticket: Ticket) {
    let Some(mut c) = ctx.open(id, Some(ticket)).await else {
        return;
    };
    let size = ctx.plan.size.max(payload::HEADER);
    let end = ctx.steady_end();
    let mut expect = Expect::new(id, size);
    let mut wire = Vec::with_capacity(size + frame::MAX_HEADER);
    let mut seq = 0u64;
    let mut closed = false;
    while Instant::now() < end && !closed {
        wire.clear();
        let mask = c.mask();
        frame::write_header(&mut wire, true, OP_BINARY, Some(mask), size as u64);
        let at = wire.len();
        payload::build(&mut wire, id, seq, ctx.now_ns(), size);
        frame::apply_mask(&mut wire[at..], mask, 0);
        seq += 1;
        expect.sent();
        {
            let mut rec = ctx.rec.borrow_mut();
            rec.counts.sent += 1;
            rec.counts.bytes_sent += size as u64;
        }
        let before = expect.outstanding;
        let (link, rx) = c.parts();
        let exchange = async {
            let write = link.write_all(&wire);
            let read = async {
                while expect.outstanding >= before && !closed {
                    let r = super::client::recv_parts(link, rx, &mut |m| match m {
                        Msg::Data { payload: p, .. } => {
                            if expect.echoed(p, ctx.now_ns(), &mut ctx.rec.borrow_mut()) {
                                ctx.progress.ops.fetch_add(1, Relaxed);
                            }
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
            let (w, ()) = tokio::join!(write, read);
            if w.is_err() {
                closed = true;
            }
        };
        if tokio::time::timeout(EXCHANGE_WAIT, exchange).await.is_err() {
            break;
        }
    }
    expect.finish(&mut ctx.rec.borrow_mut());
    if closed {
        ctx.rec.borrow_mut().counts.closed_early += 1;
    } else if c.close(ctx.plan.close_wait).await {
        ctx.rec.borrow_mut().counts.closed_clean += 1;
    }
    ctx.closed();
}
