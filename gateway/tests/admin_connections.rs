//! `/connections` over real requests: a spliced WebSocket shows with byte counts
//! that grow while it streams (read live from the kernel splice's counters), and so
//! does one relayed in userspace (its relay's counters), in `/connections` and in
//! `/metrics`, with exact totals once it ends (a wss one too, counted by its TLS
//! relay); rows filter by route, upstream and client prefix, and page.

mod admin_util;
mod splice_util;
mod tls_util;
mod utils;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use admin_util::{admin_addr, count, eventually, get, scrape};
use serde_json::Value;
use utils::{Gateway, RawUpstream, read_head, status_of, upgrade_request};

fn config(upstream: std::net::SocketAddr, splice: &str) -> String {
    format!(
        "workers = 2\nsplice = \"{splice}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[relay]\nsplice_after = \"0s\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{upstream}\"\n"
    )
}

fn upgrade(g: &Gateway) -> TcpStream {
    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    c
}

fn connections(admin: std::net::SocketAddr, query: &str) -> Value {
    let (status, body) = get(admin, &format!("/connections{query}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The row of the connection whose client address is `client`.
/// The row of `client` once both its byte counts passed those of `first` (within 10 s).
fn grown(admin: std::net::SocketAddr, client: &str, first: &Value) -> Value {
    let mut later = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            later = row_of(&connections(admin, ""), client).unwrap_or_default();
            later["bytes_to_upstream"].as_u64() > first["bytes_to_upstream"].as_u64()
                && later["bytes_to_client"].as_u64() > first["bytes_to_client"].as_u64()
        }),
        "byte counts did not grow while streaming: {first} then {later}"
    );
    later
}

fn row_of(view: &Value, client: &str) -> Option<Value> {
    view["connections"].as_array()?.iter().find(|r| r["client"] == client).cloned()
}

#[test]
fn a_spliced_websocket_shows_with_growing_byte_counts() {
    if splice_util::splicer_or_skip("admin_connections_spliced", 16, 1 << 20).is_none() {
        return;
    }
    let up = RawUpstream::switching(b"");
    let g = Gateway::with_config(&config(up.addr, "sockmap"), &[]);
    let admin = admin_addr(&g);
    let c = upgrade(&g);
    let me = c.local_addr().unwrap().to_string();

    // Stream both ways (the upstream echoes) until told to stop; bounded to 30 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (mut writer, mut reader) = (c.try_clone().unwrap(), c.try_clone().unwrap());
    let s = stop.clone();
    let write = std::thread::spawn(move || {
        let started = Instant::now();
        while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            if writer.write_all(&[1u8; 4096]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let read = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });

    let mut first = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            first = row_of(&connections(admin, ""), &me)
                .filter(|r| r["mode"] == "splice" && r["bytes_to_upstream"].as_u64() > Some(0));
            first.is_some()
        }),
        "no spliced row with bytes for {me}: {}",
        connections(admin, "")
    );
    let first = first.unwrap();
    assert_eq!(first["bytes_live"], true, "{first}");
    assert_eq!(first["route"], "/");
    assert_eq!(first["upstream_group"], "u");
    assert_eq!(first["upstream"], up.addr.to_string());
    let metric = |text: &str| count(text, "wsgate_relayed_bytes_total", &[("direction", "to_upstream")]);
    let scraped = metric(&scrape(admin));
    let later = grown(admin, &me, &first);
    assert!(later["age_seconds"].as_f64() > first["age_seconds"].as_f64(), "{first} then {later}");
    // The metric moves while the pair is still open, not only when it closes.
    assert!(
        eventually(Duration::from_secs(10), || metric(&scrape(admin)) > scraped),
        "relayed bytes did not move while spliced"
    );
    assert_eq!(count(&scrape(admin), "wsgate_connections_active", &[("mode", "splice")]), 1);

    stop.store(true, Ordering::Relaxed);
    write.join().unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    read.join().unwrap();
    assert!(eventually(Duration::from_secs(10), || connections(admin, "")["total"] == 0));
}

#[test]
fn a_userspace_websocket_shows_growing_byte_counts_and_exact_totals_after_close() {
    let up = RawUpstream::switching(b"");
    let g = Gateway::with_config(&config(up.addr, "userspace"), &[]);
    let admin = admin_addr(&g);
    let bytes = |text: &str, direction: &str| count(text, "wsgate_relayed_bytes_total", &[("direction", direction)]);
    let text = scrape(admin);
    assert_eq!((bytes(&text, "to_upstream"), bytes(&text, "to_client")), (0, 0), "{text}");

    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut c);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(rest.is_empty());
    let me = c.local_addr().unwrap().to_string();

    // Stream (the upstream echoes) until told to stop; bounded to 30 s. Both ends count.
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (mut writer, mut reader) = (c.try_clone().unwrap(), c.try_clone().unwrap());
    let (s, n) = (stop.clone(), sent.clone());
    let write = std::thread::spawn(move || {
        let started = Instant::now();
        while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            if writer.write_all(&[2u8; 1000]).is_err() {
                return;
            }
            n.fetch_add(1000, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let read = std::thread::spawn(move || {
        let (mut buf, mut got) = (vec![0u8; 65536], 0u64);
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            got += n as u64;
        }
        got
    });

    let mut first = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            // (The 101 head is the relay's first bytes to the client.)
            first = row_of(&connections(admin, ""), &me).filter(|r| {
                r["bytes_to_upstream"].as_u64() > Some(0) && r["bytes_to_client"].as_u64() > Some(head.len() as u64)
            });
            first.is_some()
        }),
        "no row with bytes for {me}: {}",
        connections(admin, "")
    );
    let first = first.unwrap();
    assert_eq!(first["mode"], "userspace", "{first}");
    assert_eq!(first["bytes_live"], true, "{first}");
    // Streaming every 5 ms: the last byte is recent (a loaded machine may lag seconds).
    assert!(first["idle_seconds"].as_f64().is_some_and(|s| s < 5.0), "{first}");
    grown(admin, &me, &first);
    // The metric moves while the WebSocket is open, both ways, and never back.
    let scraped = scrape(admin);
    let (up0, down0) = (bytes(&scraped, "to_upstream"), bytes(&scraped, "to_client"));
    assert!(up0 > 0 && down0 > 0, "{scraped}");
    let (mut up1, mut down1) = (up0, down0);
    assert!(
        eventually(Duration::from_secs(10), || {
            let text = scrape(admin);
            let (up, down) = (bytes(&text, "to_upstream"), bytes(&text, "to_client"));
            assert!(up >= up1 && down >= down1, "relayed bytes went back: {up1} {down1} then {up} {down}");
            (up1, down1) = (up, down);
            up > up0 && down > down0
        }),
        "relayed bytes did not move while the WebSocket streamed: {up0} {down0} then {up1} {down1}"
    );
    assert_eq!(count(&scrape(admin), "wsgate_connections_active", &[("mode", "userspace")]), 1);

    stop.store(true, Ordering::Relaxed);
    write.join().unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let received = read.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert_eq!(received, sent, "the echo lost bytes");
    assert!(eventually(Duration::from_secs(10), || connections(admin, "")["total"] == 0));
    // Exact once it ended: what the client sent, and what it got (the 101 head included).
    let text = scrape(admin);
    assert_eq!(bytes(&text, "to_upstream"), usize::try_from(sent).unwrap(), "{text}");
    assert_eq!(bytes(&text, "to_client"), usize::try_from(received).unwrap() + head.len(), "{text}");
    assert_eq!(count(&text, "wsgate_connections_closed_total", &[("reason", "client_fin")]), 1, "{text}");
}

#[test]
fn rows_filter_and_page() {
    let up = RawUpstream::switching(b"");
    let g = Gateway::with_config(&config(up.addr, "userspace"), &[]);
    let admin = admin_addr(&g);
    let conns: Vec<TcpStream> = (0..3).map(|_| upgrade(&g)).collect();
    assert!(eventually(Duration::from_secs(10), || connections(admin, "")["total"] == 3));
    let one = conns[1].local_addr().unwrap().to_string();
    let row = row_of(&connections(admin, ""), &one).unwrap();
    assert_eq!(row["mode"], "userspace");
    // The userspace relay publishes its counts as it moves bytes.
    assert_eq!(row["bytes_live"], true);

    let total = |q: &str| connections(admin, q)["total"].as_u64().unwrap();
    let rows = |q: &str| connections(admin, q)["connections"].as_array().unwrap().len();
    assert_eq!(total("?client=127.0.0.1"), 3);
    assert_eq!(total(&format!("?client={one}")), 1);
    assert_eq!(total("?client=10."), 0);
    assert_eq!(total("?route=%2F"), 3);
    assert_eq!(total("?route=/other"), 0);
    assert_eq!(total("?upstream=u"), 3);
    assert_eq!(total("?upstream=nope"), 0);
    assert_eq!(rows("?limit=1"), 1);
    assert_eq!(total("?limit=1"), 3);
    assert_eq!(rows("?offset=2&limit=5"), 1);
    assert_eq!(rows("?offset=3"), 0);
    // Oldest first.
    let first = &connections(admin, "?limit=1")["connections"][0];
    assert_eq!(first["client"], conns[0].local_addr().unwrap().to_string());

    for bad in ["?limit=x", "?offset=-1", "?colour=red"] {
        let (status, body) = get(admin, &format!("/connections{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(get(admin, "/nothing").0, 404);
    drop(conns);
    assert!(eventually(Duration::from_secs(10), || connections(admin, "")["total"] == 0));
}

#[test]
fn a_wss_websocket_shows_growing_byte_counts_while_it_streams() {
    let up = RawUpstream::switching(b"");
    let pki = tls_util::Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let config = format!(
        "workers = 1\n{}[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{}\"\n",
        tls_util::tls_listener(Some(&cert), &[]),
        up.addr
    );
    let g = Gateway::with_config(&config, &[]);
    let admin = admin_addr(&g);
    let mut tls = tls_util::tls_connect(g.addr, "gw.test", &pki.client(&[b"http/1.1"])).unwrap();
    let me = tls.sock.local_addr().unwrap().to_string();
    tls.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut tls);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(rest.is_empty());

    // One thread owns the TLS stream: 1000 bytes out, their echo back, every 5 ms,
    // until told to stop (bounded to 30 s).
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let streaming = std::thread::spawn(move || {
        let (started, mut moved) = (Instant::now(), 0u64);
        while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            let out = [moved as u8; 1000];
            tls.write_all(&out).unwrap();
            let mut back = [0u8; 1000];
            tls.read_exact(&mut back).unwrap();
            assert_eq!(back, out, "the echo changed bytes");
            moved += 1000;
            std::thread::sleep(Duration::from_millis(5));
        }
        moved
    });
    let mut first = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            first = row_of(&connections(admin, ""), &me).filter(|r| r["bytes_to_upstream"].as_u64() > Some(0));
            first.is_some()
        }),
        "no row with bytes for {me}: {}",
        connections(admin, "")
    );
    let first = first.unwrap();
    assert_eq!((first["mode"].as_str(), first["bytes_live"].as_bool()), (Some("userspace"), Some(true)), "{first}");
    grown(admin, &me, &first);
    stop.store(true, Ordering::Relaxed);
    let moved = streaming.join().unwrap();
    assert!(moved > 0);
}
