//! Backpressure with small messages: the verdict looks at the peer's socket only
//! once its bound on the unacknowledged bytes nears the budget, so a stalled reader
//! fed one small skb at a time must still stop the sender within the budget (plus
//! one skb) beyond ordinary TCP buffers, and every byte must arrive once it resumes.
//!
//! Its own binary, like `splice_backpressure.rs`: the memory figures are
//! machine-wide, and each proxy runtime should start from a fresh process.

mod splice_util;

#[test]
fn slow_upstream_reader_blocks_a_client_sending_small_messages() {
    splice_util::slow_reader::slow_reader_in(true, 200);
}
