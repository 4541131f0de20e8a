//! Health over real sockets: active checks (own thread) taking servers out and back in
//! within `fall × interval` / `rise × interval`, backups used only while every primary
//! is down, passive failure marking and its expiry, and a server killed mid-run.

mod upstream_common;
mod utils;

use std::time::{Duration, Instant};

use upstream_common::{Origin, config, gateway, many, tally};

fn servers(list: &[String]) -> String {
    format!("servers = [{}]", list.join(", "))
}

fn plain(o: &Origin) -> String {
    format!("\"{}\"", o.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_server_out_within_fall_intervals_and_back_within_rise() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let (interval_ms, fall, rise) = (200u64, 3u64, 2u64);
    let hc = format!(
        "[upstream.g.health_check]\ninterval = \"{interval_ms}ms\"\ntimeout = \"500ms\"\nfall = {fall}\nrise = {rise}\n"
    );
    let gw = gateway(&format!("{}{hc}", config(&servers(&[plain(&a), plain(&b)]), "")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = tally(&many(gw.addr, 100, 8, |_| (None, "/".into(), String::new())).await);
    assert_eq!((t.get("a"), t.get("b")), (Some(&50), Some(&50)), "{t:?}");

    let flipped = Instant::now();
    a.set_health(503);
    let out = gw.wait_stderr("out of service", Duration::from_secs(5));
    let took = out - flipped;
    eprintln!("taken out {took:?} after /health turned 503 (fall × interval = {} ms)", fall * interval_ms);
    assert!(took <= Duration::from_millis(fall * interval_ms + 250), "{took:?}");
    let t = tally(&many(gw.addr, 100, 8, |_| (None, "/".into(), String::new())).await);
    assert_eq!(t.get("b"), Some(&100), "{t:?}");

    let flipped = Instant::now();
    a.set_health(204);
    let back = gw.wait_stderr("back in service", Duration::from_secs(5));
    let took = back - flipped;
    eprintln!("back {took:?} after /health turned 204 (rise × interval = {} ms)", rise * interval_ms);
    assert!(took <= Duration::from_millis(rise * interval_ms + 250), "{took:?}");
    let t = tally(&many(gw.addr, 100, 8, |_| (None, "/".into(), String::new())).await);
    assert_eq!((t.get("a"), t.get("b")), (Some(&50), Some(&50)), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_used_only_while_every_primary_is_down() {
    let (p1, p2, bk) = (Origin::start("p1"), Origin::start("p2"), Origin::start("bk"));
    let group = servers(&[plain(&p1), plain(&p2), format!("{{ address = \"{}\", backup = true }}", bk.addr)]);
    let hc = "[upstream.g.health_check]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 2\n";
    let gw = gateway(&format!("{}{hc}", config(&group, "")));
    let run = || many(gw.addr, 200, 8, |_| (None, "/".into(), String::new()));

    let t = tally(&run().await);
    assert_eq!((t.get("p1"), t.get("p2"), t.get("bk")), (Some(&100), Some(&100), None), "{t:?}");

    p1.set_health(500);
    let t = tally(&run().await);
    assert!(!t.contains_key("bk"), "one primary left, backup unused: {t:?}");
    p2.set_health(500);
    gw.wait_stderr_count("out of service", 2, Duration::from_secs(5));
    let t = tally(&run().await);
    assert_eq!(t.get("bk"), Some(&200), "{t:?}");

    p1.set_health(200);
    p2.set_health(200);
    gw.wait_stderr_count("back in service", 2, Duration::from_secs(5));
    let t = tally(&run().await);
    assert_eq!((t.get("p1"), t.get("p2"), t.get("bk")), (Some(&100), Some(&100), None), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_mark_a_server_down_until_fail_timeout() {
    let a = Origin::start("a");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let group = format!("max_fails = 2\nfail_timeout = \"1s\"\nservers = [\"{}\", \"{dead}\"]", a.addr);
    let gw = gateway(&config(&group, ""));

    let t = tally(&many(gw.addr, 100, 4, |_| (None, "/".into(), String::new())).await);
    assert_eq!(t.get("a"), Some(&100), "every handshake moved on to the live server: {t:?}");
    let marked = gw.wait_stderr("marked down", Duration::from_secs(2));
    let refused = gw.stderr().iter().filter(|l| l.contains("upstream connect failed")).count();
    assert_eq!(refused, 2, "max_fails = 2 attempts, then no more: {:#?}", gw.stderr());

    // The server comes back at once, but stays out until fail_timeout has passed.
    let d = Origin::start_on("d", dead);
    let t = tally(&many(gw.addr, 50, 4, |_| (None, "/".into(), String::new())).await);
    assert!(Instant::now() < marked + Duration::from_millis(900), "test too slow to observe the mark");
    assert_eq!(t.get("d"), None, "{t:?}");
    tokio::time::sleep((marked + Duration::from_millis(1100)).saturating_duration_since(Instant::now())).await;
    let t = tally(&many(gw.addr, 100, 4, |_| (None, "/".into(), String::new())).await);
    assert_eq!((t.get("a"), t.get("d")), (Some(&50), Some(&50)), "{t:?}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_costs_no_handshake() {
    let (a, mut b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let group = format!("max_fails = 1\nfail_timeout = \"30s\"\n{}", servers(&[plain(&a), plain(&b), plain(&c)]));
    let hc = "[upstream.g.health_check]\ninterval = \"100ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 2\n";
    let gw = gateway(&format!("{}{hc}", config(&group, "")));
    let addr = gw.addr;
    let load = tokio::spawn(async move {
        let started = Instant::now();
        let mut batches = Vec::new();
        while started.elapsed() < Duration::from_secs(3) && batches.len() < 2000 {
            let at = Instant::now();
            batches.push((at, many(addr, 64, 8, |_| (None, "/".into(), String::new())).await));
        }
        batches
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b_before = b.upgrades();
    let killed = Instant::now();
    b.kill();
    let detected = gw.wait_stderr("out of service", Duration::from_secs(3));
    let batches = load.await.unwrap();
    let results: Vec<_> = batches.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
    let after: Vec<_> = batches.iter().filter(|(at, _)| *at > detected).flat_map(|(_, r)| r.iter().cloned()).collect();
    let t = tally(&results);
    let t_after = tally(&after);
    eprintln!(
        "killed b: detected by active checks after {:?}; whole run {t:?}; after detection {t_after:?}",
        detected - killed
    );
    // Handshakes b had accepted when it died are retried on another server (b answered
    // nothing), so not one handshake fails, before or after detection.
    assert!(!t.contains_key("ERR"), "{t:?}");
    assert!(after.len() > 1000 && !t_after.contains_key("ERR") && !t_after.contains_key("b"), "{t_after:?}");
    assert!(b_before > 0 && t["a"] > t["b"] && t["c"] > t["b"], "{t:?}");
    let (ta, tc) = (t_after["a"] as f64, t_after["c"] as f64);
    assert!((ta - tc).abs() / (ta + tc) < 0.05, "b's share went to one server: {t_after:?}");
    let late = gw.stderr_since(detected, &b.addr.to_string());
    assert!(late.iter().all(|l| !l.contains("connect failed")), "b was still tried after detection: {late:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_before_the_101_is_skipped_and_marked_down() {
    let (mute, a) = (Origin::start("mute"), Origin::start("a"));
    mute.state.mute.store(true, std::sync::atomic::Ordering::Relaxed);
    let group = format!("max_fails = 2\nfail_timeout = \"30s\"\n{}", servers(&[plain(&mute), plain(&a)]));
    let gw = gateway(&config(&group, ""));
    let t = tally(&many(gw.addr, 50, 1, |_| (None, "/".into(), String::new())).await);
    assert_eq!(t.get("a"), Some(&50), "{t:?}");
    gw.wait_stderr("marked down", Duration::from_secs(2));
    let closed = gw.stderr().iter().filter(|l| l.contains("closed before answering")).count();
    assert_eq!(closed, 2, "{:#?}", gw.stderr());
}
