//! `/healthz` and `/readyz` over real requests: a worker blocked on purpose makes
//! `/healthz` fail until it answers again; `/readyz` turns 503 at once on SIGTERM and
//! while no upstream server is up.

mod admin_util;
mod utils;

use std::io::Write;
use std::time::{Duration, Instant};

use admin_util::{admin_addr, count, eventually, get, scrape};
use utils::{Gateway, RawUpstream, read_head, refused_addr, status_of, upgrade_request};

#[test]
fn a_blocked_worker_makes_healthz_fail_until_it_answers() {
    let up = RawUpstream::switching(b"");
    let toml = format!(
        "workers = 2\nsplice = \"userspace\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{}\"\n",
        up.addr
    );
    // Worker 1 blocks its thread for 4 s when its first ping arrives.
    let g = Gateway::builder().config(&toml).env("WSGATE_TEST_STALL_WORKER", "1:4000").start();
    let admin = admin_addr(&g);
    let asked = Instant::now();
    let (status, body) = get(admin, "/healthz");
    assert_eq!(status, 503, "{body}");
    // Worker 0 may be late too on a loaded machine; worker 1 cannot be on time.
    assert!(body.contains("1]"), "the stuck worker is named: {body}");
    // It is back once the block is over (the ping deadline is 1 s; allow a loaded machine).
    let mut last = (0, String::new());
    assert!(eventually(Duration::from_secs(15), || {
        last = get(admin, "/healthz");
        last.0 == 200
    }));
    assert!(asked.elapsed() >= Duration::from_secs(3), "healthy again before the block ended: {last:?}");
    assert_eq!(last.1, "ok\n");
}

#[test]
fn readyz_turns_503_at_once_on_sigterm() {
    let up = RawUpstream::switching(b"");
    let toml = format!(
        "workers = 2\nsplice = \"userspace\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[timeouts]\ndrain = \"10s\"\n[drain]\nwindow = \"60s\"\njitter = 0.0\n[[route]]\nupstream = \"u\"\n[[upstream.u.servers]]\naddress = \"{}\"\n",
        up.addr
    );
    let g = Gateway::with_config(&toml, &[]);
    let admin = admin_addr(&g);
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".to_owned()));
    // A live WebSocket keeps the process draining (and the admin plane up) after SIGTERM.
    let mut ws = g.connect();
    ws.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut ws).0), 101);

    g.terminate();
    let sent = Instant::now();
    let mut flipped = None;
    while sent.elapsed() < Duration::from_secs(5) {
        if get(admin, "/readyz") == (503, "draining\n".to_owned()) {
            flipped = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let flipped = flipped.expect("/readyz still 200 five seconds after SIGTERM");
    eprintln!("/readyz answered 503 {flipped:?} after SIGTERM");
    // The product flips when the signal thread sees the signal (well under 100 ms on an
    // idle machine); the bound leaves room for a loaded one.
    assert!(flipped < Duration::from_secs(1), "{flipped:?}");
    assert_eq!(count(&scrape(admin), "wsgate_draining", &[]), 1);
}

#[test]
fn readyz_is_503_while_no_upstream_server_is_up() {
    let g = Gateway::one_line(&[refused_addr()], &["--admin", "127.0.0.1:0"]);
    let admin = admin_addr(&g);
    assert_eq!(get(admin, "/readyz").0, 200);
    // One refused connect marks the only server down (max_fails 1, fail_timeout 10 s).
    let mut c = g.connect();
    c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut c).0), 502);
    let (status, body) = get(admin, "/readyz");
    assert_eq!((status, body.as_str()), (503, "no upstream server is up\n"));
    let text = scrape(admin);
    assert_eq!(count(&text, "wsgate_upstream_up", &[]), 0);
    assert_eq!(count(&text, "wsgate_upstream_passive_marks_total", &[("upstream", "default")]), 1);
}
