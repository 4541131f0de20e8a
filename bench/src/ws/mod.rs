//! The WebSocket wire protocol (RFC 6455) as far as an echo server and a load client need it:
//! frame headers, masking, close codes, and the opening handshake.
//!
//! This module only encodes and decodes bytes; it never does I/O and never allocates on the
//! hot path, so both the echo server and the load client can call it from their read loops.

pub mod frame;
pub mod handshake;
