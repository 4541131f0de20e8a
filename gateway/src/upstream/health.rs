//! Active health checks: every `interval`, an HTTP request to each server of the groups
//! that have `health_check`; `fall` consecutive failures take a server out, `rise`
//! consecutive passes bring it back. State changes are logged. A TLS group's checks
//! speak TLS too, verified as its connections are (`upstream.NAME.tls`): a server whose
//! certificate would fail a connection fails its check.
//!
//! Runs on its own thread with its own (current-thread tokio) runtime, off the data
//! plane; the only thing it shares with the workers is each server's `healthy` atomic.
//! It must never touch a worker's sockets or block a worker.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Group, Tenure};
use crate::config::{HealthCheckConfig, ServerAddress, parse_statuses};
use crate::tls::Connector;

/// Largest response head a check reads.
const MAX_HEAD: usize = 8192;

/// Starts the health-check thread if any group has `health_check`; returns whether it
/// did. The thread ends once `tenure` is over (a reload replaced the groups: the next
/// generation's thread checks the servers that stay, their verdicts kept).
pub fn start(groups: &[Arc<Group>], tenure: &Tenure) -> io::Result<bool> {
    let checked: Vec<Arc<Group>> = groups.iter().filter(|g| g.health_check().is_some()).cloned().collect();
    if checked.is_empty() {
        return Ok(false);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tenure = tenure.clone();
    std::thread::Builder::new().name("wsgate-health".into()).spawn(move || {
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for g in checked {
                for i in 0..g.servers().len() {
                    tasks.push(tokio::spawn(check_loop(g.clone(), i, tenure.clone())));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    })?;
    Ok(true)
}

/// Checks server `i` of `group` until a reload replaces the group.
async fn check_loop(group: Arc<Group>, i: usize, tenure: Tenure) {
    let Some(cfg) = group.health_check().cloned() else {
        return;
    };
    let statuses = parse_statuses(&cfg.statuses).unwrap_or_default();
    let server = group.server(i);
    let request = check_request(&cfg, server.addr());
    let mut ticks = tokio::time::interval(cfg.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passed, mut failed) = (0u32, 0u32);
    loop {
        ticks.tick().await;
        if tenure.is_over() {
            return;
        }
        let target = Target { addr: server.addr(), tls: group.tls.as_ref().map(|t| (t, &server.address)) };
        match probe(target, &request, cfg.timeout, &statuses).await {
            Ok(status) => {
                server.checks_passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (passed, failed) = (passed.saturating_add(1), 0);
                if passed >= cfg.rise && !server.set_healthy(true) {
                    tracing::warn!(group = %group.name, upstream = %server.addr(), status, passed = cfg.rise, "upstream passed its health checks; back in service");
                }
            }
            Err(reason) => {
                server.checks_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (passed, failed) = (0, failed.saturating_add(1));
                if failed >= cfg.fall && server.is_healthy() {
                    server.set_healthy(false);
                    tracing::warn!(group = %group.name, upstream = %server.addr(), failed = cfg.fall, %reason, "upstream failed its health checks; out of service");
                }
            }
        }
    }
}

fn check_request(cfg: &HealthCheckConfig, addr: SocketAddr) -> Vec<u8> {
    let host = cfg.host.clone().unwrap_or_else(|| addr.to_string());
    format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsgate-health-check\r\nConnection: close\r\n\r\n", cfg.path)
        .into_bytes()
}

/// Where one check goes: the server's address, and the group's TLS with the server's
/// configured address (for the name it is verified for) when the group speaks TLS.
struct Target<'a> {
    addr: SocketAddr,
    tls: Option<(&'a Connector, &'a ServerAddress)>,
}

/// One check: connect (and the TLS handshake), send, read the response head, judge
/// its status.
async fn probe(to: Target<'_>, request: &[u8], timeout: Duration, statuses: &[(u16, u16)]) -> Result<u16, String> {
    let status = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(to.addr).await.map_err(|e| format!("connect: {e}"))?;
        match to.tls {
            None => exchange(tcp, request).await,
            Some((tls, address)) => {
                let name = tls.name_for(address, to.addr);
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let s = connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(s, request).await
            }
        }
    })
    .await
    .map_err(|_| format!("no response within {timeout:?}"))??;
    if statuses.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

/// Sends the check's request on `s` and reads the status of the response head.
async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin, request: &[u8]) -> Result<u16, String> {
    s.write_all(request).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return resp.code.ok_or_else(|| "no status".to_owned());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".to_owned()),
            Err(e) => return Err(format!("malformed response: {e}")),
        }
        let mut chunk = [0u8; 2048];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
