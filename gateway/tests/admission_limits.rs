//! Admission over real sockets: limits exact under 1,000 concurrent attempts across all
//! workers, refusals logged once per period, handshake rate, trusted proxies (a spoofed
//! X-Forwarded-For from anyone else is ignored) and allowed origins.

#[path = "upstream_common/mod.rs"]
mod upstream_common;
mod utils;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use upstream_common::{Answer, Origin, config, gateway, handshake};

fn one(o: &Origin) -> String {
    format!("servers = [\"{}\"]", o.addr)
}

/// `n` concurrent handshakes from `from(i)`, all held open until every one has its
/// answer; returns the statuses.
async fn concurrent(gw: std::net::SocketAddr, n: usize, from: impl Fn(usize) -> IpAddr) -> (Vec<u16>, Vec<Answer>) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (b, ip) = (barrier.clone(), from(i));
            tokio::spawn(async move {
                let r = handshake(gw, Some(ip), "/", "").await;
                b.wait().await;
                r
            })
        })
        .collect();
    barrier.wait().await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        let a = t.await.unwrap().expect("every attempt gets an answer");
        statuses.push(a.status);
        if a.status == 101 {
            held.push(a);
        }
    }
    (statuses, held)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_is_exact_under_1000_concurrent_attempts_from_one_address() {
    let a = Origin::start("a");
    let gw = gateway(&config(&one(&a), "[admission]\nlimit_conn = 100\nlog_period = \"60s\""));
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let (statuses, held) = concurrent(gw.addr, 1000, |_| ip).await;
    eprintln!("1000 concurrent from {ip}: {} × 101, {} × 503", count(&statuses, 101), count(&statuses, 503));
    assert_eq!((count(&statuses, 101), count(&statuses, 503)), (100, 900));
    assert_eq!(a.live(), 100);
    // Another address is not affected.
    let other = handshake(gw.addr, Some("127.0.0.3".parse().unwrap()), "/", "").await.unwrap();
    assert_eq!(other.status, 101);
    // 900 refusals, one log line for the period.
    gw.wait_stderr("connections refused since the last report", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    let lines = gw.stderr().iter().filter(|l| l.contains("refused")).count();
    assert_eq!(lines, 1, "{:#?}", gw.stderr());
    // Closing releases the counts.
    drop(held);
    drop(other);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.live() > 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (statuses, _held) = concurrent(gw.addr, 300, |_| ip).await;
    assert_eq!((count(&statuses, 101), count(&statuses, 503)), (100, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_and_route_limits_are_exact_and_429_is_configurable() {
    let a = Origin::start("a");
    let extra = "[limits]\nmax_connections = 150\n[admission]\nstatus = 429";
    let gw = gateway(&config(&one(&a), extra));
    let (statuses, held) = concurrent(gw.addr, 1000, |i| IpAddr::from([127, 0, 1, (i % 50 + 1) as u8])).await;
    assert_eq!((count(&statuses, 101), count(&statuses, 429)), (150, 850));
    drop(held);

    let route = "[[route]]\npath = \"/small\"\nupstream = \"g\"\nmax_connections = 7\n";
    let toml = config(&one(&a), "").replacen("[[route]]", &format!("{route}[[route]]"), 1);
    let gw = gateway(&toml);
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = handshake(gw.addr, None, "/small/x", "").await.unwrap();
        statuses.push(r.status);
        held.push(r);
    }
    assert_eq!((count(&statuses, 101), count(&statuses, 503)), (7, 13));
    assert_eq!(handshake(gw.addr, None, "/other", "").await.unwrap().status, 101, "other routes unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rate_per_address_allows_the_burst_then_refuses() {
    let a = Origin::start("a");
    let gw = gateway(&config(&one(&a), "[admission]\nrate = 0.5\nburst = 5"));
    let ip: IpAddr = "127.0.0.4".parse().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(handshake(gw.addr, Some(ip), "/", "").await.unwrap().status);
    }
    assert_eq!((count(&statuses, 101), count(&statuses, 503)), (5, 15), "{statuses:?}");
    assert_eq!(handshake(gw.addr, Some("127.0.0.5".parse().unwrap()), "/", "").await.unwrap().status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let a = Origin::start("a");
    // Untrusted peer: the headers are replaced, and limits apply to the peer address.
    let gw = gateway(&config(&one(&a), "[admission]\nlimit_conn = 1"));
    let first = handshake(gw.addr, None, "/", "X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 1.1.1.1\r\n").await.unwrap();
    assert_eq!(first.status, 101);
    assert_eq!(first.header("x-seen-real-ip"), "127.0.0.1");
    assert_eq!(first.header("x-seen-xff"), "127.0.0.1");
    let second = handshake(gw.addr, None, "/", "X-Forwarded-For: 2.2.2.2\r\n").await.unwrap();
    assert_eq!(second.status, 503, "a spoofed address must not escape limit_conn");
    drop((first, second, gw));

    // Trusted peer: believed for limits and passed on with the peer appended.
    let gw = gateway(&config(&one(&a), "[admission]\nlimit_conn = 1\ntrusted_proxies = [\"127.0.0.0/8\"]"));
    let first = handshake(gw.addr, None, "/", "X-Forwarded-For: 1.1.1.1\r\n").await.unwrap();
    assert_eq!(first.status, 101);
    assert_eq!(first.header("x-seen-real-ip"), "1.1.1.1");
    assert_eq!(first.header("x-seen-xff"), "1.1.1.1, 127.0.0.1");
    let second = handshake(gw.addr, None, "/", "X-Forwarded-For: 2.2.2.2\r\n").await.unwrap();
    assert_eq!(second.status, 101);
    let third = handshake(gw.addr, None, "/", "X-Forwarded-For: 1.1.1.1\r\n").await.unwrap();
    assert_eq!(third.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_origin_is_refused() {
    let a = Origin::start("a");
    let route = "[[route]]\npath = \"/app\"\nupstream = \"g\"\nallowed_origins = [\"https://app.example\"]\n";
    let toml = config(&one(&a), "").replacen("[[route]]", &format!("{route}[[route]]"), 1);
    let gw = gateway(&toml);
    let evil = handshake(gw.addr, None, "/app", "Origin: https://evil.example\r\n").await.unwrap();
    assert_eq!(evil.status, 403);
    assert!(evil.head.contains("Connection: close"), "{}", evil.head);
    assert_eq!(handshake(gw.addr, None, "/app", "Origin: https://APP.example\r\n").await.unwrap().status, 101);
    assert_eq!(handshake(gw.addr, None, "/app", "").await.unwrap().status, 101, "non-browser clients send no Origin");
    assert_eq!(
        handshake(gw.addr, None, "/other", "Origin: https://evil.example\r\n").await.unwrap().status,
        101,
        "off by default"
    );
    assert_eq!(a.upgrades(), 3);
}
