//! Admission: whether a request may become a proxied connection, decided once per
//! connection right after routing.
//!
//! Limits: the global `limits.max_connections`, a route's `max_connections`, the
//! per-client-address `limit_conn`, and the per-address handshake `rate` (token
//! bucket). Counts are held by an [`Admitted`] guard for the connection's whole life.
//! Every count is an atomic updated with compare-and-swap, so a limit is exact across
//! all workers; nothing here locks or waits. Refusals are counted and summarised at most
//! once per `log_period` (the text is returned; `conn::route_admit` logs it).
//! Also here: the route's `allowed_origins` check and the trusted-proxy rules.

mod table;
mod trust;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use trust::Trusted;

use crate::config::{AdmissionConfig, Config};
use crate::error::{ErrorKind, ProxyError};
use crate::http::request::RequestHead;
use crate::upstream::passive::now_ms;
use table::{Buckets, Counts, Slots};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_connections`.
    Global,
    /// A route's `max_connections`.
    Route,
    /// `admission.limit_conn`.
    PerAddress,
    /// `admission.rate`.
    Rate,
}

impl Limit {
    const ALL: [Self; 4] = [Self::Global, Self::Route, Self::PerAddress, Self::Rate];

    /// Its `reason` label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Self::Global => "max_connections",
            Self::Route => "route_max_connections",
            Self::PerAddress => "limit_conn",
            Self::Rate => "rate",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Global => "limits.max_connections",
            Self::Route => "route max_connections",
            Self::PerAddress => "admission.limit_conn",
            Self::Rate => "admission.rate",
        }
    }
}

/// Per-route admission rules.
#[derive(Debug)]
pub struct RouteGate {
    /// Lowercased allowed origins; empty allows all.
    origins: Vec<String>,
    limit: u64,
    live: AtomicU64,
}

impl RouteGate {
    /// A route's `allowed_origins` and `max_connections`.
    pub fn new(allowed_origins: &[String], max_connections: u64) -> Self {
        Self {
            origins: allowed_origins.iter().map(|o| o.trim().to_ascii_lowercase()).collect(),
            limit: max_connections,
            live: AtomicU64::new(0),
        }
    }

    /// 403 when the route restricts origins and the request's `Origin` is not listed.
    /// A request without `Origin` (not a browser) passes.
    pub fn check_origin(&self, head: &RequestHead) -> Result<(), ProxyError> {
        if self.origins.is_empty() {
            return Ok(());
        }
        let Some(origin) = head.header("origin") else {
            return Ok(());
        };
        let origin = origin.trim_ascii();
        if self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin)) {
            return Ok(());
        }
        Err(ProxyError::new(
            ErrorKind::Forbidden,
            format!("Origin `{}` is not in the route's allowed_origins", String::from_utf8_lossy(origin)),
        ))
    }

    /// Connections admitted through this route right now.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
}

/// Process-wide admission state, shared by all workers.
#[derive(Debug)]
pub struct Admission {
    trusted: Trusted,
    /// `limits.max_connections` of the configuration generation in force.
    global_limit: AtomicU64,
    global: AtomicU64,
    limit_conn: u32,
    slots: Slots,
    conns: Option<Counts>,
    rate: Option<Buckets>,
    refused_kind: ErrorKind,
    refused: [AtomicU64; 4],
    /// Refusals per limit since start (`refused` is reset by each report).
    refused_ever: [AtomicU64; 4],
    refused_total: AtomicU64,
    last_report: AtomicU64,
    period_ms: u64,
}

impl Admission {
    pub fn new(cfg: &Config) -> Self {
        // Every field, by name: a new one cannot be left unread here.
        let AdmissionConfig { limit_conn, rate, burst, status, trusted_proxies, log_period, table_slots } =
            &cfg.admission;
        let n = (*table_slots).max(1);
        Self {
            trusted: Trusted::new(trusted_proxies),
            global_limit: AtomicU64::new(cfg.limits.max_connections),
            global: AtomicU64::new(0),
            limit_conn: *limit_conn,
            slots: Slots::new(n),
            conns: (*limit_conn > 0).then(|| Counts::new(n)),
            rate: (*rate > 0.0).then(|| Buckets::new(n, *rate, *burst)),
            refused_kind: if *status == 429 { ErrorKind::TooManyRequests } else { ErrorKind::OverLimit },
            refused: Default::default(),
            refused_ever: Default::default(),
            refused_total: AtomicU64::new(0),
            last_report: AtomicU64::new(0),
            period_ms: u64::try_from(log_period.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Whether `peer` is a trusted proxy (its forwarding headers are kept and believed).
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.contains(peer)
    }

    /// The client's address as believed: see [`Trusted::client_ip`].
    pub fn client_ip(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        self.trusted.client_ip(peer, head)
    }

    /// A reload's `limits.max_connections`: new connections are held to it; the live
    /// ones above it are not closed.
    pub fn set_global_limit(&self, limit: u64) {
        self.global_limit.store(limit, Ordering::Relaxed);
    }

    /// Admits a connection from `client` through `route`, or refuses it with
    /// `admission.status`. The counts are released when the guard drops.
    pub fn admit(self: &Arc<Self>, client: IpAddr, route: &Arc<RouteGate>) -> Result<Admitted, ProxyError> {
        let limit = self.global_limit.load(Ordering::Relaxed);
        let slot = self.slots.of(client);
        if let Some(rate) = &self.rate
            && !rate.take(slot, now_ms())
        {
            return Err(self.refuse(Limit::Rate, client));
        }
        let mut guard = Admitted { admission: self.clone(), route: None, slot: NO_SLOT, global: false };
        if self.global.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_err() {
            return Err(self.refuse(Limit::Global, client));
        }
        guard.global = true;
        if route.limit > 0 {
            if route
                .live
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < route.limit).then_some(n + 1))
                .is_err()
            {
                return Err(self.refuse(Limit::Route, client));
            }
        } else {
            route.live.fetch_add(1, Ordering::Relaxed);
        }
        guard.route = Some(route.clone());
        if let Some(conns) = &self.conns {
            if !conns.try_inc(slot, self.limit_conn) {
                return Err(self.refuse(Limit::PerAddress, client));
            }
            guard.slot = u32::try_from(slot).unwrap_or(NO_SLOT);
        }
        Ok(guard)
    }

    /// Counts a connection that is already open (a binary upgrade passed it on): it
    /// is held to no limit, but counts towards them for the connections that follow.
    pub fn adopted(self: &Arc<Self>, client: IpAddr, route: Option<&Arc<RouteGate>>) -> Admitted {
        self.global.fetch_add(1, Ordering::AcqRel);
        let mut guard = Admitted { admission: self.clone(), route: None, slot: NO_SLOT, global: true };
        if let Some(route) = route {
            route.live.fetch_add(1, Ordering::Relaxed);
            guard.route = Some(route.clone());
        }
        if let Some(conns) = &self.conns {
            let slot = self.slots.of(client);
            if conns.try_inc(slot, u32::MAX) {
                guard.slot = u32::try_from(slot).unwrap_or(NO_SLOT);
            }
        }
        guard
    }

    fn refuse(&self, limit: Limit, client: IpAddr) -> ProxyError {
        self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
        self.refused_ever[limit as usize].fetch_add(1, Ordering::Relaxed);
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        ProxyError::new(self.refused_kind, format!("{client} refused by {}", limit.name()))
    }

    /// After a refusal: the summary line to log if a `log_period` has passed since the
    /// last one (exactly one caller gets it), else `None`.
    pub fn refusal_report(&self) -> Option<String> {
        let now = now_ms();
        let last = self.last_report.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.period_ms {
            return None;
        }
        self.last_report.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        let parts: Vec<String> = Limit::ALL
            .iter()
            .filter_map(|&l| {
                let n = self.refused[l as usize].swap(0, Ordering::Relaxed);
                (n > 0).then(|| format!("{n} by {}", l.name()))
            })
            .collect();
        (!parts.is_empty()).then(|| format!("connections refused since the last report: {}", parts.join(", ")))
    }

    /// Refusals since start by limit (metric label, count).
    pub fn refusals(&self) -> [(&'static str, u64); 4] {
        Limit::ALL.map(|l| (l.label(), self.refused_ever[l as usize].load(Ordering::Relaxed)))
    }

    /// Connections refused by a limit since start (for metrics).
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Connections admitted right now (all routes, all workers).
    pub fn live(&self) -> u64 {
        self.global.load(Ordering::Relaxed)
    }
}

/// `Admitted::slot` when no per-address count is held.
const NO_SLOT: u32 = u32::MAX;

/// An admitted connection's counts; released on drop. Kept small (24 bytes): a
/// spliced pair keeps it for its whole life.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    route: Option<Arc<RouteGate>>,
    /// Per-address table slot counted, or [`NO_SLOT`].
    slot: u32,
    global: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let (true, Some(conns)) = (self.slot != NO_SLOT, &self.admission.conns) {
            conns.dec(self.slot as usize);
        }
        if let Some(r) = &self.route {
            r.live.fetch_sub(1, Ordering::AcqRel);
        }
        if self.global {
            self.admission.global.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(extra: &str) -> (Arc<Admission>, Arc<RouteGate>) {
        let c = Config::from_toml(&format!(
            "[limits]\nmax_connections = 5\n[admission]\ntable_slots = 64\n{extra}\n[[route]]\nupstream = \"u\"\nmax_connections = 4\nallowed_origins = [\"https://Good.example\"]\n[upstream.u]\nservers = [\"127.0.0.1:1\"]\n"
        ))
        .unwrap();
        (
            Arc::new(Admission::new(&c)),
            Arc::new(RouteGate::new(&c.routes[0].allowed_origins, c.routes[0].max_connections)),
        )
    }

    #[test]
    fn limits_hold_and_release() {
        let (a, r) = setup("limit_conn = 2");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let g1 = a.admit(ip, &r).unwrap();
        let _g2 = a.admit(ip, &r).unwrap();
        let e = a.admit(ip, &r).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OverLimit);
        assert!(e.detail.contains("limit_conn"), "{}", e.detail);
        assert_eq!((a.live(), r.live()), (2, 2), "a refusal holds nothing");
        drop(g1);
        let _g3 = a.admit(ip, &r).unwrap();
        let others: Vec<_> = (0..10).filter_map(|i| a.admit(IpAddr::from([198, 51, 100, i]), &r).ok()).collect();
        assert_eq!(others.len(), 2, "route max_connections = 4");
        assert!(a.refusal_report().unwrap().contains("by route max_connections"));
        assert!(a.refusal_report().is_none(), "once per period");
        assert_eq!(a.refused_total(), 9);
    }

    #[test]
    fn rate_and_status_429() {
        let (a, r) = setup("rate = 0.001\nburst = 2\nstatus = 429");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        drop(a.admit(ip, &r).unwrap());
        drop(a.admit(ip, &r).unwrap());
        assert_eq!(a.admit(ip, &r).unwrap_err().kind, ErrorKind::TooManyRequests);
    }

    #[test]
    fn origins() {
        let (_, r) = setup("");
        let head = |o: &str| {
            crate::http::request::parse(format!("GET / HTTP/1.1\r\n{o}\r\n").as_bytes(), 256).unwrap().unwrap()
        };
        assert!(r.check_origin(&head("Origin: https://good.EXAMPLE\r\n")).is_ok());
        assert_eq!(r.check_origin(&head("Origin: https://evil.example\r\n")).unwrap_err().kind, ErrorKind::Forbidden);
        assert!(r.check_origin(&head("")).is_ok());
    }
}
