//! What the admin plane's reads cost with many live WebSockets: a `/metrics` render
//! and a `/connections` page, with N synthetic connections in the live view (opened
//! through the hooks the data plane calls, on a thread set up as a worker), each
//! figure next to the same read with none open (the baseline), and what the hooks
//! (through a worker's `Recorder`) cost the data plane per connection.
//!
//! `cargo bench -p wsgate --bench admin_scrape [-- N]` (default 100000). As root with
//! BPF, half the rows are spliced and their bytes are read from the kernel-shared
//! array as a scrape does; otherwise all are userspace rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wsgate::admin::{Sources, State, exposition};
use wsgate::admission::Admission;
use wsgate::config::Config;
use wsgate::metrics::live::{Filter, Opened};
use wsgate::metrics::{self, Metrics, Recorder, RouteLabel};
use wsgate::splice::{LiveSlot, Splicer, Started};

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

fn main() {
    let n: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let splicer = Splicer::load(n + 16, 1 << 20).ok();
    let routes = vec![RouteLabel { route: "/".into(), upstream: "u".into() }];
    let (metrics, slots) = Metrics::new(1, routes, true);
    let config = Config::default();
    let (_tx, shutdown) = wsgate::shutdown::channel();
    let sources = Sources {
        generations: wsgate::reload::Generations::new(
            wsgate::reload::Generation::build(1, Arc::new(Config::default()), None).unwrap(),
        ),
        admission: Arc::new(Admission::new(&config)),
        splice: Started { splicer: splicer.clone(), fallback: None },
        stats: Arc::new(wsgate::stats::Stats::default()),
        upgrade: Arc::default(),
    };
    let state = Arc::new(State::new(metrics.clone(), sources, shutdown));
    let registry = exposition::registry(state);
    let scrape = || {
        let text = exposition::render(&registry, exposition::Format::Prometheus).unwrap();
        assert!(text.contains("wsgate_relayed_bytes_total"));
    };
    let page = || {
        let mut t = metrics.live.as_ref().unwrap().lock().unwrap();
        t.catch_up();
        let (_, rows) = t.view(&Filter::default(), &metrics.routes, splicer.as_ref(), metrics::now_ns(), (0, 100));
        assert!(rows.len() <= 100);
    };
    metrics.live_totals(splicer.as_ref());
    let (scrape0, page0) = (median(21, scrape), median(21, page));

    // The worker's side: open N WebSockets through the hooks, and close as many more.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let slot = slots.into_iter().next().unwrap();
    let (open_ns, churn_ns) = local.block_on(&rt, async move {
        let recorder = Recorder::start(slot);
        let base = Instant::now();
        let client = "127.0.0.1:40000".parse().unwrap();
        let upstream = "127.0.0.1:9000".parse().unwrap();
        let open = |i: u32| {
            let started = base + Duration::from_nanos(u64::from(i));
            let mut c = recorder.accepted(started);
            let opened = Opened { client, upstream, route: 0, started_ns: metrics::id_of(started) };
            c.upgraded(0, Duration::from_micros(300), opened);
            c
        };
        let s = Instant::now();
        for i in 0..n {
            let mut c = open(i);
            if i % 2 == 0 {
                c.spliced(LiveSlot::unallocated(i), [10, 20]);
            }
            c.park();
        }
        let open_ns = s.elapsed().as_nanos() / u128::from(n);
        // Open and close (the access log's record) as many again.
        let record = wsgate::accesslog::AccessRecord {
            remote_addr: client,
            host: String::new(),
            time: 0.0,
            request: String::new(),
            status: 101,
            bytes_sent: 0,
            request_time: 1.0,
            upstream_response_time: None,
            user_agent: String::new(),
            upstream_addr: Some(upstream),
            bytes_in: 0,
            bytes_out: 0,
            close: wsgate::close::Close::ClientFin,
            mode: wsgate::close::Mode::Userspace,
        };
        let s = Instant::now();
        for i in 0..n {
            open(n + i).closed(&record);
        }
        (open_ns, s.elapsed().as_nanos() / u128::from(n))
    });
    // The first read folds the queued events into the table; then it is steady state.
    let catch_up = median(1, page);
    let (scrape_n, page_n) = (median(21, scrape), median(21, page));
    let kind = if splicer.is_some() { "half spliced" } else { "userspace only: no BPF here" };
    println!("admin_scrape: {n} live WebSockets ({kind})");
    println!(
        "  /metrics render      {scrape_n:>10.2?}  (none open: {scrape0:.2?}, ratio {:.1})",
        ratio(scrape_n, scrape0)
    );
    println!("  /connections page    {page_n:>10.2?}  (none open: {page0:.2?}, ratio {:.1})", ratio(page_n, page0));
    println!("  first read after {}k opens and closes (folds the events): {catch_up:.2?}", 2 * n / 1000);
    println!("  data-plane hooks: open {open_ns} ns per WebSocket, open+close {churn_ns} ns");
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
