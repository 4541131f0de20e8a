//! Shards over real sockets: two `wsbench load --shard I/2` processes started together by
//! a barrier file, each from its own source addresses, merged by `wsbench report merge`
//! into one report that adds up to a single run of the same total.
//!
//! Bounded: every load has `--max-time`; the polls of `/proc/net/tcp` stop after 20 s.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, load, read_json, report_path, wsbench};
use wsbench::load::stats::Counts;
use wsbench::report::Report;

const CONNS: &str = "400";

fn shard(target: SocketAddr, i: u32, report: &Path, barrier: &Path, duration: &str) -> Child {
    wsbench()
        .args(["load", "hold", "--quiet", "--max-time", "60", "--threads", "1", "--heartbeat", "1"])
        .args(["--conns", CONNS, "--duration", duration, "--source", "127.0.0.2-127.0.0.5"])
        .args(["--target", &target.to_string(), "--shard", &format!("{i}/2")])
        .arg("--barrier")
        .arg(barrier)
        .arg("--report")
        .arg(report)
        .stdout(Stdio::null())
        .spawn()
        .expect("start a shard")
}

fn finish(mut c: Child) {
    let status = c.wait().unwrap();
    assert!(status.success(), "shard exited with {status}");
}

/// The counters that do not depend on timing (heartbeats do).
fn fixed(c: &Counts) -> [u64; 7] {
    [c.connected, c.connect_failed + c.handshake_failed, c.sent, c.received, c.verified, c.closed_clean, c.lost]
}

#[test]
fn two_shards_merge_into_the_report_of_one_run() {
    let echo = Echo::start(&[]);
    let one = load("hold", echo.addr, &["--conns", CONNS, "--duration", "1", "--heartbeat", "1", "--threads", "1"]);
    let one: Report = serde_json::from_value(one.report).unwrap();

    let dir = report_path("shards").parent().unwrap().to_path_buf();
    let (a, b, barrier) = (dir.join("a.json"), dir.join("b.json"), dir.join("go"));
    let s0 = shard(echo.addr, 0, &a, &barrier, "2");
    let s1 = shard(echo.addr, 1, &b, &barrier, "2");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&barrier, b"").unwrap();
    finish(s0);
    finish(s1);
    let merged_path = dir.join("merged.json");
    let out =
        wsbench().args(["report", "merge", "--quiet", "--out"]).arg(&merged_path).arg(&a).arg(&b).output().unwrap();
    assert!(out.status.success(), "merge failed: {}", String::from_utf8_lossy(&out.stderr));
    let merged: Report = serde_json::from_value(read_json(&merged_path)).unwrap();
    let (ra, rb) = (Report::read(&a).unwrap(), Report::read(&b).unwrap());

    // Each shard did its half, from its own addresses.
    assert_eq!((ra.conns, rb.conns), (200, 200));
    assert_eq!(ra.sources, ["127.0.0.2", "127.0.0.4"]);
    assert_eq!(rb.sources, ["127.0.0.3", "127.0.0.5"]);
    assert_eq!((ra.shard.as_deref(), rb.shard.as_deref()), (Some("0/2"), Some("1/2")));

    // Counts add up exactly, to those of one run of the same total.
    assert_eq!(merged.conns, 400);
    assert_eq!(merged.shards, 2);
    assert_eq!(fixed(&merged.counts), fixed(&one.counts));
    assert_eq!(fixed(&merged.counts), [400, 0, 400, 400, 400, 400, 0]);
    assert_eq!(merged.counts.pings, ra.counts.pings + rb.counts.pings);
    assert!(merged.clean);

    // Percentiles come from the merged histograms: exactly those of both shards' samples.
    let hist = |r: &Report| r.histograms.as_ref().unwrap().recorder(&r.counts).unwrap();
    let mut both = hist(&ra);
    both.merge(&hist(&rb));
    let m = hist(&merged);
    assert_eq!(m.handshake, both.handshake);
    assert_eq!(m.rtt, both.rtt);
    assert_eq!(merged.handshake_us.count, 400);
    assert_eq!(merged.handshake_us.count, one.handshake_us.count);
    for q in [0.5, 0.9, 0.99, 0.999] {
        assert_eq!(m.handshake.value_at_quantile(q), both.handshake.value_at_quantile(q));
    }
    assert_eq!(merged.handshake_us.p99, both.handshake.value_at_quantile(0.99));
    assert_eq!(merged.latency_us.count, ra.latency_us.count + rb.latency_us.count);
    // The shards ran together: the merged timeline held all 400 at once.
    assert_eq!(merged.peak_open, 400, "timeline: {:?}", merged.timeline);
}

/// Source addresses of the established connections to `target`, from the kernel's table.
///
/// The echo's own accepted sockets are left out by their local address (the echo's):
/// one of them has `target`'s port as its remote port whenever a client of another
/// test on this machine drew that number as its ephemeral port.
fn sources_to(target: SocketAddr) -> Vec<Ipv4Addr> {
    let SocketAddr::V4(target) = target else { panic!("the echo listens on IPv4") };
    let port = target.port();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let (_, rport) = remote.split_once(':')?;
            if *state != "01" || u16::from_str_radix(rport, 16).ok()? != port {
                return None;
            }
            // /proc/net/tcp prints the address as the host-order u32 of network bytes.
            let ip = |hex: &str| Some(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?.swap_bytes()));
            let (rip, _) = remote.split_once(':')?;
            let (lip, _) = local.split_once(':')?;
            let (rip, lip) = (ip(rip)?, ip(lip)?);
            (rip == *target.ip() && lip != *target.ip()).then_some(lip)
        })
        .collect()
}

#[test]
fn a_shard_connects_from_its_own_source_addresses() {
    let echo = Echo::start(&[]);
    let dir = report_path("one-shard").parent().unwrap().to_path_buf();
    let barrier = dir.join("go");
    std::fs::write(&barrier, b"").unwrap();
    let s1 = shard(echo.addr, 1, &dir.join("b.json"), &barrier, "4");
    let since = Instant::now();
    let mut seen = Vec::new();
    while since.elapsed() < Duration::from_secs(20) {
        seen = sources_to(echo.addr);
        if seen.len() == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.len(), 200, "shard 1 of 2 holds 200 of 400 connections");
    let used: BTreeSet<Ipv4Addr> = seen.iter().copied().collect();
    assert_eq!(used, BTreeSet::from([Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 5)]));
    // Spread evenly over its two addresses.
    assert_eq!(seen.iter().filter(|a| a.octets()[3] == 3).count(), 100);
    finish(s1);
}
