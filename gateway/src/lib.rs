//! wsgate: a WebSocket reverse proxy with a thread-per-core io_uring data plane.
//!
//! The life of a connection is in [`conn`], one file per phase (its chart opens
//! `conn/mod.rs`); bytes move in [`relay`] (userspace) or [`splice`] (the kernel).
//! [`runtime`] starts the workers; [`config`] is the configuration reference.

pub mod accesslog;
pub mod activation;
pub mod admin;
pub mod admission;
pub mod alloc;
pub mod bufpool;
pub mod close;
pub mod config;
pub mod conn;
pub mod drain;
pub mod error;
pub mod h2;
pub mod http;
pub mod io;
pub mod lifetimes;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod readiness;
pub mod relay;
pub mod relay_tls;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod shutdown;
pub mod splice;
pub mod stats;
pub mod systemd;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod wait;
