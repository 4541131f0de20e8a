//! A reader that stops reading must stop the sender through a spliced pair:
//! the kernel holds at most the budget (plus one skb) beyond ordinary TCP
//! buffers, and every byte arrives in order once the reader resumes.
//!
//! One test per binary (the other direction is `splice_backpressure.rs`):
//! the memory figures are machine-wide, and each proxy runtime should start
//! from a fresh process.

mod splice_util;

#[test]
fn slow_client_reader_blocks_the_upstream() {
    splice_util::slow_reader::slow_reader(false);
}
