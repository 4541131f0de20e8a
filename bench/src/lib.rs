//! wsbench: a WebSocket load generator and echo upstream, built to hold a million
//! connections on one machine. It shares no code with the gateway: it measures what a
//! user's clients and backends would see.

pub mod echo;
pub mod limits;
pub mod load;
pub mod machine;
pub mod report;
pub mod sock;
pub mod tls;
pub mod ws;
