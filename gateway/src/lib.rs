//! wsgate: a WebSocket reverse proxy with a thread-per-core io_uring data plane.
//!
//! The life of a connection is in [`connection`] (phases in [`handshake`]); bytes move
//! in [`relay`] (userspace). [`runtime`] starts the workers; [`config`] is the
//! configuration reference.

pub mod accesslog;
pub mod admission;
pub mod bufpool;
pub mod config;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod http;
pub mod keepalive;
pub mod lifetimes;
pub mod net;
pub mod plain;
pub mod preflight;
pub mod readiness;
pub mod relay;
pub mod router;
pub mod runtime;
pub mod shutdown;
pub mod splice;
pub mod stats;
pub mod upstream;
