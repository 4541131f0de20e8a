//! Scenario `handshake`: each worker loops connect → upgrade → close handshake until the end
//! of the run; the connect + upgrade time goes to the handshake histogram.
//!
//! Bounded by the run's end; a failed attempt backs off briefly so a refusing target is not
//! hammered in a tight loop.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::ramp::Ticket;
use super::runner::Ctx;

/// One handshake loop; `id` picks its first (target, source) pair.
pub async fn worker(ctx: Rc<Ctx>, id: u64, ticket: Ticket) {
    // Only the loop's first handshake is the ramp's; the rest are the load itself.
    let mut ticket = Some(ticket);
    let end = ctx.steady_end();
    let mut k = 0u64;
    while Instant::now() < end {
        // Spread successive attempts of a loop over every (target, source) pair.
        let conn_id = id + k * ctx.plan.conns.max(1) * ctx.plan.procs;
        k += 1;
        match ctx.open(conn_id, ticket.take()).await {
            Some(c) => {
                ctx.progress.ops.fetch_add(1, Relaxed);
                if c.close(ctx.plan.close_wait).await {
                    ctx.rec.borrow_mut().counts.closed_clean += 1;
                }
                ctx.closed();
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
