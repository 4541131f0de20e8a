//! Routing: host and path prefix → upstream group, first match wins (config order).
//!
//! Built once from the configuration and shared read-only by every worker: a lookup
//! must never lock, allocate or panic, whatever Host and path the client sent.

use std::sync::Arc;

use crate::admission::RouteGate;
use crate::config::RouteConfig;
use crate::upstream::Group;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration (the route's metrics slot).
    pub index: usize,
    host: Option<String>,
    prefix: String,
    pub group: Arc<Group>,
    /// Origin rules and the connection limit of this route.
    pub gate: Arc<RouteGate>,
}

/// All routes of the configuration.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Compiles routes; `group_of` resolves a group name (validated beforehand).
    pub fn new(routes: &[RouteConfig], group_of: impl Fn(&str) -> Option<Arc<Group>>) -> Self {
        let routes = routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| {
                // Every field, by name: a new one cannot be left unread here.
                let RouteConfig { host, path, upstream, allowed_origins, max_connections } = route;
                Some(Route {
                    index,
                    host: host.as_ref().map(|h| h.to_ascii_lowercase()),
                    prefix: path.clone(),
                    group: group_of(upstream)?,
                    gate: Arc::new(RouteGate::new(allowed_origins, *max_connections)),
                })
            })
            .collect();
        Self { routes }
    }

    /// The first route matching `host` (lowercase, no port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.host.as_deref().is_none_or(|h| Some(h) == host) && path.starts_with(&r.prefix))
    }
}
