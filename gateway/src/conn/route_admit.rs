//! Phase 2, route and admit: runs once the head is parsed. Finds the route for host
//! and path, classifies the request (WebSocket upgrade or plain HTTP) and checks its
//! framing, works out the client address as believed (trusted proxies), checks the
//! route's allowed origins, and takes the admission slots (per address, per route,
//! global).
//!
//! Returns an [`Admit`]: the route, the intent and the slots held until the end.
//! Errors: 404, 400, 426, 403, 429/503 (refusals, summarised by teardown). Must never
//! touch a socket: it decides on the parsed head alone.

use std::net::{IpAddr, SocketAddr};

use super::Worker;
use super::teardown::Facts;
use crate::admission::Admitted;
use crate::error::{ErrorKind, ProxyError};
use crate::http::request::{self, RequestHead};
use crate::http::upgrade::{self, Intent};
use crate::reload::Generation;
use crate::router::Route;
use crate::stats::Stats;

/// A request let through, with what the next phases need.
pub struct Admit<'a> {
    pub route: &'a Route,
    pub intent: Intent,
    /// The client address as believed (the peer, or what a trusted proxy said).
    pub client_ip: IpAddr,
    /// The address the connection came from (a trusted proxy's, or the client's).
    pub peer_ip: IpAddr,
    /// Holds the admission slots until the connection ends.
    pub slots: Admitted,
}

/// Routes, validates and admits the request.
/// The route comes from `generation`, the connection's own.
pub fn route_admit<'a>(
    head: &RequestHead,
    worker: &Worker,
    generation: &'a Generation,
    facts: &mut Facts,
) -> Result<Admit<'a>, ProxyError> {
    request::check_host(head)?;
    // `facts.host` is this head's `host()`, taken when the head was read; with one
    // valid Host header (checked above) that is never `None`.
    let route = generation.router.find(Some(&facts.host), head.path()).ok_or_else(|| {
        ProxyError::new(ErrorKind::NoRoute, format!("no route for host `{}` path `{}`", facts.host, head.path()))
    })?;
    let intent = upgrade::classify(head)?;
    request::check_framing(head)?;
    facts.route = route.index;
    if intent == Intent::WebSocket {
        Stats::bump(&worker.stats.upgrades_attempted);
        worker.metrics.upgrade_requested(route.index);
    }
    let peer_ip = facts.origin.ip();
    let client_ip = worker.admission.client_ip(peer_ip, head);
    facts.peer = SocketAddr::new(client_ip, facts.origin.port());
    if intent == Intent::WebSocket {
        route.gate.check_origin(head)?;
    }
    let slots = worker.admission.admit(client_ip, &route.gate)?;
    Ok(Admit { route, intent, client_ip, peer_ip, slots })
}
