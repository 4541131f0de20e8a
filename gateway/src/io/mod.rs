//! The one place wsgate makes the system calls io_uring does not cover: socket reads,
//! writes, options and state ([`socket`]), TCP keepalive ([`keepalive`]), the
//! non-blocking connect ([`connect`]), and
//! the bpf(2) map calls and shared memory of the kernel splice ([`bpf`]). Built on
//! socket2's `SockRef` where it offers the call.
//!
//! Every `unsafe` that talks to the kernel lives here, each one a single call with a
//! fully initialised argument. Nothing here may block a worker: sockets are read and
//! written with `MSG_DONTWAIT`, and waiting is done on the poll ring
//! ([`crate::readiness`]).

pub mod bpf;
pub mod connect;
pub mod keepalive;
pub mod socket;

pub use connect::connect;
pub use keepalive::set_keepalive;
pub use socket::*;
