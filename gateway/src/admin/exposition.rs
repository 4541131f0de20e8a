//! `/metrics`: the workers' counters summed at scrape time and encoded with
//! `prometheus-client`, in the Prometheus text format or OpenMetrics.
//!
//! Reads atomics and the live view only; must never touch a worker's state otherwise.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::{Registry, Unit};

use super::State;
use crate::metrics::histogram::{Histogram, HistogramSnapshot};
use crate::metrics::{ActiveMode, CLOSE_REASONS, WorkerMetrics};
use crate::shutdown::Phase;
use crate::tls::{HandshakeFailure, UpstreamHandshakeFailure};

/// Which exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text (`Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A registry holding the one collector that reads `state` at each scrape.
pub fn registry(state: Arc<State>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Scrape(state)));
    r
}

/// Encodes every family in `format`.
pub fn render(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
    }
    Ok(out)
}

#[derive(Debug)]
struct Scrape(Arc<State>);

type Fmt = Result<(), std::fmt::Error>;

/// A series without labels.
const NO_LABELS: [(&str, &str); 0] = [];

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(impl EncodeLabelSet, u64)],
) -> Fmt {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_counter::<NoLabelSet, _, f64>(v, None)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(impl EncodeLabelSet, i64)]) -> Fmt {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: Option<HistogramSnapshot>) -> Fmt {
    let Some(h) = h else { return Ok(()) };
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(
        h.sum_seconds,
        h.count,
        &h.buckets,
        None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
    )
}

fn per_worker<T>(
    workers: &[Arc<WorkerMetrics>],
    f: impl Fn(&WorkerMetrics) -> T,
) -> Vec<([(&'static str, String); 1], T)> {
    workers.iter().map(|w| ([("worker", w.index.to_string())], f(w))).collect()
}

/// The handshakes of the TLS upstream groups' connections, by group (and reason).
fn upstream_tls(e: &mut DescriptorEncoder, generation: &crate::reload::Generation) -> Fmt {
    let tls: Vec<_> =
        generation.groups.iter().filter_map(|g| Some((g.name.clone(), g.tls.as_ref()?.stats.clone()))).collect();
    let done: Vec<_> = tls.iter().map(|(name, stats)| ([("upstream", name.clone())], stats.completed())).collect();
    counter(
        e,
        "wsgate_upstream_tls_handshakes",
        "TLS handshakes with upstream servers completed (connections for traffic; not health checks).",
        None,
        &done,
    )?;
    let failed: Vec<_> = tls
        .iter()
        .flat_map(|(name, stats)| {
            UpstreamHandshakeFailure::ALL
                .map(|w| ([("upstream", name.clone()), ("reason", w.as_str().to_owned())], stats.failed(w)))
        })
        .collect();
    counter(
        e,
        "wsgate_upstream_tls_handshake_failures",
        "TLS handshakes with upstream servers that failed, by reason.",
        None,
        &failed,
    )
}

impl Collector for Scrape {
    #[allow(clippy::too_many_lines, reason = "one flat list of the families, in the order they appear")]
    #[allow(clippy::many_single_char_names, reason = "e(ncoder), s(tate), l(abels) recur on every line")]
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        let s = &*self.0;
        let workers = &s.metrics.workers;
        let e = &mut e;

        counter(
            e,
            "wsgate_connections_accepted",
            "Client connections accepted.",
            None,
            &per_worker(workers, |w| w.accepted.load(Relaxed)),
        )?;
        let active: Vec<_> = workers
            .iter()
            .flat_map(|w| {
                ActiveMode::ALL
                    .map(|m| ([("worker", w.index.to_string()), ("mode", m.as_str().to_owned())], w.active(m)))
            })
            .collect();
        gauge(
            e,
            "wsgate_connections_active",
            "Client connections open now, by where they are (handshake, userspace relay, handover to the splice, kernel splice).",
            &active,
        )?;
        let closed: Vec<_> = workers
            .iter()
            .flat_map(|w| {
                CLOSE_REASONS
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ([("worker", w.index.to_string()), ("reason", (*r).to_owned())], w.closed(i)))
            })
            .collect();
        counter(
            e,
            "wsgate_connections_closed",
            "Client connections ended, by how they ended (the access log's close field).",
            None,
            &closed,
        )?;

        let mut requests = Vec::new();
        let mut upgrades = Vec::new();
        for (i, l) in s.metrics.routes.iter().enumerate() {
            let sum = |f: fn(&crate::metrics::RouteCounters) -> u64| {
                workers.iter().filter_map(|w| w.route(i)).map(f).sum::<u64>()
            };
            let labels = [("route", l.route.clone()), ("upstream", l.upstream.clone())];
            requests.push((labels.clone(), sum(|r| r.upgrade_requests.load(Relaxed))));
            upgrades.push((labels, sum(|r| r.upgrades.load(Relaxed))));
        }
        counter(e, "wsgate_upgrade_requests", "Valid WebSocket upgrade requests routed.", None, &requests)?;
        counter(
            e,
            "wsgate_upgrades",
            "WebSocket upgrades answered 101 and relayed (the 101 ratio is this over wsgate_upgrade_requests_total).",
            None,
            &upgrades,
        )?;
        let mut codes = std::collections::BTreeMap::<u16, u64>::new();
        for w in workers {
            for (code, n) in w.statuses() {
                *codes.entry(code).or_default() += n;
            }
        }
        let codes: Vec<_> = codes.into_iter().map(|(c, n)| ([("code", c.to_string())], n)).collect();
        counter(
            e,
            "wsgate_handshake_responses",
            "Responses to client requests by status code (101 counted at the upgrade, others at close).",
            None,
            &codes,
        )?;

        counter(
            e,
            "wsgate_upstream_connections_opened",
            "Upstream TCP connections opened.",
            None,
            &per_worker(workers, |w| w.upstream_opened.load(Relaxed)),
        )?;
        counter(
            e,
            "wsgate_upstream_pool_hits",
            "Plain requests sent on an idle upstream connection from the worker's pool (upstream.NAME.keepalive).",
            None,
            &per_worker(workers, |w| w.pool_hits.load(Relaxed)),
        )?;
        counter(
            e,
            "wsgate_upstream_pool_misses",
            "Plain requests to a pooled upstream group that found no usable idle connection.",
            None,
            &per_worker(workers, |w| w.pool_misses.load(Relaxed)),
        )?;
        histogram(
            e,
            "wsgate_handshake_duration",
            "Accept to 101 of WebSocket upgrades.",
            Histogram::merged(workers.iter().map(|w| &w.handshake)),
        )?;
        histogram(
            e,
            "wsgate_upstream_connect_duration",
            "Upstream TCP connect latency.",
            Histogram::merged(workers.iter().map(|w| &w.connect)),
        )?;
        histogram(
            e,
            "wsgate_connection_duration",
            "Lifetime of WebSockets (accept to close).",
            Histogram::merged(workers.iter().map(|w| &w.lifetime)),
        )?;

        let live = s.metrics.live_totals(s.splicer.as_ref());
        let closed_bytes = |d: usize| workers.iter().map(|w| w.closed_bytes[d].load(Relaxed)).sum::<u64>();
        let bytes = [
            ([("direction", "to_upstream")], closed_bytes(0) + live.bytes[0]),
            ([("direction", "to_client")], closed_bytes(1) + live.bytes[1]),
        ];
        counter(
            e,
            "wsgate_relayed",
            "Bytes relayed after the request head: of ended connections, plus open WebSockets live (the kernel splice's counters, the userspace relay's).",
            Some(&Unit::Bytes),
            &bytes,
        )?;

        let mut up = Vec::new();
        let mut conns = Vec::new();
        let mut checks = Vec::new();
        let mut marks = Vec::new();
        for g in &s.generations.current().groups {
            for srv in g.servers() {
                let l = [("upstream", g.name.clone()), ("server", srv.address.to_string())];
                up.push((l.clone(), i64::from(srv.is_up())));
                conns.push((l.clone(), i64::try_from(srv.active()).unwrap_or(i64::MAX)));
                let [a, b] = l.clone();
                checks.push(([a.clone(), b.clone(), ("result", "passed".to_owned())], srv.checks_passed.load(Relaxed)));
                checks.push(([a, b, ("result", "failed".to_owned())], srv.checks_failed.load(Relaxed)));
                marks.push((l, srv.passive_marks.load(Relaxed)));
            }
        }
        gauge(
            e,
            "wsgate_upstream_up",
            "1 when the server may be picked (active checks and passive marks agree), else 0.",
            &up,
        )?;
        gauge(e, "wsgate_upstream_connections", "Connections to the server now (all workers).", &conns)?;
        counter(e, "wsgate_upstream_health_checks", "Active health checks by result.", None, &checks)?;
        counter(e, "wsgate_upstream_passive_marks", "Times passive health marked the server down.", None, &marks)?;

        let reloads = &s.metrics.reloads;
        let by_result: Vec<_> = reloads.counts().into_iter().map(|(r, n)| ([("result", r)], n)).collect();
        counter(
            e,
            "wsgate_reloads",
            "Configuration reloads (SIGHUP, wsgate reload, changed certificate files) by result.",
            None,
            &by_result,
        )?;
        let generation = i64::try_from(reloads.generation()).unwrap_or(i64::MAX);
        gauge(
            e,
            "wsgate_config_generation",
            "The configuration generation new connections use (1 at start, one more per applied reload).",
            &[(NO_LABELS, generation)],
        )?;

        let tls = &s.stats.tls;
        let done = tls.done.load(Relaxed);
        counter(e, "wsgate_tls_handshakes", "TLS handshakes completed.", None, &[(NO_LABELS, done)])?;
        let failed: Vec<_> = HandshakeFailure::ALL.iter().map(|&w| ([("reason", w.as_str())], tls.failed(w))).collect();
        counter(e, "wsgate_tls_handshake_failures", "TLS handshakes that failed, by reason.", None, &failed)?;
        upstream_tls(e, &s.generations.current())?;

        let refusals: Vec<_> = s.admission.refusals().into_iter().map(|(r, n)| ([("reason", r)], n)).collect();
        counter(e, "wsgate_admission_refusals", "Connections refused by an admission limit.", None, &refusals)?;

        let splicing = s.splicer.is_some();
        gauge(
            e,
            "wsgate_splice_mode",
            "Relay mode in force for WebSockets (1 on the mode in force).",
            &[([("mode", "sockmap")], i64::from(splicing)), ([("mode", "userspace")], i64::from(!splicing))],
        )?;
        gauge(
            e,
            "wsgate_splice_self_test_passed",
            "1 when the kernel splice loaded and passed its start-up self-test (0: failed or not tried).",
            &[(NO_LABELS, i64::from(splicing))],
        )?;
        let counts = s.splicer.as_ref().map(crate::splice::Splicer::counts).unwrap_or_default();
        gauge(
            e,
            "wsgate_splice_pairs",
            "Pairs in the kernel splice now.",
            &[(NO_LABELS, i64::try_from(counts.active).unwrap_or(i64::MAX))],
        )?;
        gauge(
            e,
            "wsgate_splice_pairs_over_budget",
            "Spliced pairs with a direction over its budget now (relayed in userspace until the reader catches up).",
            &[(NO_LABELS, i64::try_from(live.over_budget).unwrap_or(i64::MAX))],
        )?;
        counter(
            e,
            "wsgate_splice_handovers",
            "Pairs handed to the kernel splice.",
            None,
            &[(NO_LABELS, counts.spliced)],
        )?;
        counter(
            e,
            "wsgate_splice_handover_failures",
            "Handovers that failed (pair closed or relayed in userspace instead).",
            None,
            &[(NO_LABELS, counts.handover_failed)],
        )?;
        counter(
            e,
            "wsgate_splice_pressure_episodes",
            "Times a spliced direction went over budget (counted when its pair ends).",
            None,
            &[(NO_LABELS, counts.pressure)],
        )?;

        gauge(
            e,
            "wsgate_draining",
            "1 while draining or stopping (not accepting), else 0.",
            &[(NO_LABELS, i64::from(s.shutdown.phase() != Phase::Running))],
        )?;
        let mut m = e.encode_descriptor(
            "wsgate_start_time",
            "Unix time the process started.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        m.encode_gauge(&s.started_unix)?;
        Ok(())
    }
}
