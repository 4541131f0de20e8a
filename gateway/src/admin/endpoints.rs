//! What each admin path answers. Every answer is computed from atomics, the live
//! view and one ping per worker; nothing here may wait on a worker except for the
//! ping's deadline.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::registry::Registry;
use serde_json::json;

use super::State;
use super::exposition::{self, Format};
use crate::metrics::live::Filter;
use crate::metrics::{self, ActiveMode};
use crate::shutdown::Phase;

/// Rows `/connections` returns when `limit` is not given, and the most it returns.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// The parts of a request the endpoints look at.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub accept: Option<String>,
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    pub fn text(status: u16, body: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.to_owned() }
    }

    fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
        body.push('\n');
        Self { status, content_type: "application/json", body }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            _ => "Service Unavailable",
        };
        let mut out = String::with_capacity(self.body.len() + 160);
        let _ = write!(
            out,
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// Answers one request.
pub async fn answer(req: &Request, state: &State, registry: &Registry) -> Response {
    if req.method != "GET" {
        return Response::text(405, "only GET\n");
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    match path {
        "/metrics" => {
            let format = Format::from_accept(req.accept.as_deref());
            match exposition::render(registry, format) {
                Ok(body) => Response { status: 200, content_type: format.content_type(), body },
                Err(_) => Response::text(500, "encoding the metrics failed\n"),
            }
        }
        "/healthz" => healthz(state).await,
        "/readyz" => readyz(state),
        "/status" => status(state),
        "/connections" => connections(state, query),
        _ => Response::text(404, "admin paths: /metrics /healthz /readyz /status /connections\n"),
    }
}

async fn healthz(state: &State) -> Response {
    match state.metrics.ping_workers(state.ping_deadline).await {
        Ok(()) => Response::text(200, "ok\n"),
        Err(silent) => Response::text(
            503,
            &format!("workers not answering within {} ms: {silent:?}\n", state.ping_deadline.as_millis()),
        ),
    }
}

fn readyz(state: &State) -> Response {
    // After a binary upgrade the new process accepts on the same sockets (and answers
    // on this admin socket too): the node stays ready while this one drains.
    if state.shutdown.phase() >= Phase::Draining && !state.upgrade.listeners_moved() {
        return Response::text(503, "draining\n");
    }
    let any_up = state.generations.current().groups.iter().any(|g| g.servers().iter().any(|s| s.is_up()));
    if any_up { Response::text(200, "ready\n") } else { Response::text(503, "no upstream server is up\n") }
}

fn status(state: &State) -> Response {
    let workers: Vec<_> = state
        .metrics
        .workers
        .iter()
        .map(|w| {
            let active: serde_json::Map<String, serde_json::Value> =
                ActiveMode::ALL.iter().map(|m| (m.as_str().to_owned(), json!(w.active(*m)))).collect();
            json!({ "worker": w.index, "accepted": w.accepted.load(Relaxed), "active": active, "pings_answered": w.pings_answered.load(Relaxed) })
        })
        .collect();
    let generation = state.generations.current();
    let upstreams: Vec<_> = generation
        .groups
        .iter()
        .map(|g| {
            let servers: Vec<_> = g
                .servers()
                .iter()
                .map(|s| json!({ "address": s.address.to_string(), "resolved": s.addr(), "up": s.is_up(), "connections": s.active() }))
                .collect();
            json!({ "name": g.name, "servers": servers })
        })
        .collect();
    let splice = match (&state.splicer, &state.splice_fallback) {
        (Some(s), _) => json!({ "mode": "sockmap", "self_test": "passed", "pairs": s.counts().active }),
        (None, Some(why)) => json!({ "mode": "userspace", "self_test": format!("failed: {why}") }),
        (None, None) => json!({ "mode": "userspace", "self_test": "not run (splice = \"userspace\")" }),
    };
    Response::json(
        200,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "config_digest": super::digest(&generation.config),
            "config_generation": generation.number,
            "phase": format!("{:?}", state.shutdown.phase()).to_lowercase(),
            "splice": splice,
            "workers": workers,
            "upstreams": upstreams,
        }),
    )
}

fn connections(state: &State, query: &str) -> Response {
    let Some(table) = &state.metrics.live else {
        return Response::text(503, "the live view is off\n");
    };
    let mut filter = Filter::default();
    let (mut offset, mut limit) = (0usize, DEFAULT_LIMIT);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "route" => filter.route = Some(v.into_owned()),
            "upstream" => filter.upstream = Some(v.into_owned()),
            "client" => filter.client = Some(v.into_owned()),
            "offset" | "limit" => {
                let Ok(n) = v.parse::<usize>() else {
                    return Response::text(400, &format!("{k} must be a whole number, got `{v}`\n"));
                };
                if k == "offset" { offset = n } else { limit = n.min(MAX_LIMIT) }
            }
            _ => {
                return Response::text(
                    400,
                    &format!("unknown parameter `{k}` (route, upstream, client, offset, limit)\n"),
                );
            }
        }
    }
    let Ok(mut table) = table.lock() else { return Response::text(500, "live view unavailable\n") };
    table.catch_up();
    let (total, rows) =
        table.view(&filter, &state.metrics.routes, state.splicer.as_ref(), metrics::now_ns(), (offset, limit));
    drop(table);
    Response::json(200, &json!({ "total": total, "offset": offset, "limit": limit, "connections": rows }))
}
