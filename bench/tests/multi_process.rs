//! Spreading over worker processes and source addresses: counts and histograms of every
//! worker arrive merged; the histogram wire format round-trips.

mod common;

use common::{Echo, load};
use wsbench::load::stats::Recorder;

#[test]
fn workers_results_are_merged() {
    let echo = Echo::start(&[]);
    let run = load(
        "echo",
        echo.addr,
        &[
            "--procs",
            "3",
            "--threads",
            "1",
            "--conns",
            "12",
            "--duration",
            "1",
            "--interval-ms",
            "100",
            "--source",
            "127.0.0.2-127.0.0.4",
        ],
    );
    assert_eq!(run.code, 0);
    assert_eq!(run.report["procs"], 3);
    assert_eq!(run.count("connected"), 12);
    let received = run.count("received");
    assert_eq!(received, run.count("sent"));
    assert_eq!(run.report["latency_us"]["count"].as_u64(), Some(received));
    assert_eq!(run.report["handshake_us"]["count"].as_u64(), Some(12));
    assert_eq!(run.report["peak_open"], 12);
}

#[test]
fn histograms_merge_across_the_wire() {
    let mut a = Recorder::default();
    let mut b = Recorder::default();
    for v in 1..=1000 {
        a.rtt_us(v);
    }
    for v in 1001..=2000 {
        b.rtt_us(v);
    }
    a.counts.sent = 1000;
    b.counts.sent = 1000;
    let mut merged = Recorder::default();
    for r in [&a, &b] {
        let json = serde_json::to_string(&r.to_wire().unwrap()).unwrap();
        merged.merge(&Recorder::from_wire(&serde_json::from_str(&json).unwrap()).unwrap());
    }
    assert_eq!(merged.counts.sent, 2000);
    assert_eq!(merged.rtt.len(), 2000);
    assert!(merged.rtt.equivalent(merged.rtt.max(), 2000));
    let p50 = merged.rtt.value_at_quantile(0.5);
    assert!(merged.rtt.equivalent(p50, 1000), "p50 {p50}");
}

#[test]
fn workers_hold_their_connections_together() {
    // Worker 0 starts its ramp 5 s after the others (a hidden test flag). Had the others
    // started their 1 s hold when their own ramps ended, they would have closed before
    // worker 0 opened any connection; the parent starts the hold in all of them once
    // every ramp is over, so all 600 are open at once.
    let echo = Echo::start(&[]);
    let run = load(
        "hold",
        echo.addr,
        &[
            "--procs",
            "3",
            "--threads",
            "1",
            "--conns",
            "600",
            "--duration",
            "1",
            "--heartbeat",
            "1",
            "--slow-worker-ms",
            "5000",
        ],
    );
    assert_eq!(run.code, 0, "report: {}", run.report);
    assert_eq!(run.count("connected"), 600);
    assert_eq!(run.count("verified"), 600);
    assert_eq!(run.report["peak_open"], 600, "report: {}", run.report);
    assert!(run.report["ramp"]["stopped"].is_null());
    // The hold began once the slow worker had ramped, so the run outlasted its delay.
    assert!(run.report["elapsed_secs"].as_f64().unwrap() > 5.0);
}
