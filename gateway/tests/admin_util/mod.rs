//! Shared helpers of the admin-plane tests: find the admin address a wsgate printed,
//! make HTTP requests to it over real sockets, and read samples out of `/metrics`.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::utils::Gateway;

/// The admin address `g` printed (`wsgate: admin on …`).
pub fn admin_addr(g: &Gateway) -> SocketAddr {
    let line = g.wait_log("wsgate: admin on ");
    line.trim_start_matches("wsgate: admin on ").trim().parse().unwrap()
}

/// One GET with an optional `Accept`; returns status, headers and body.
pub fn request(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n{accept}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, head.to_owned(), body.to_owned())
}

/// GET `path`; status and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = request(addr, path, None);
    (status, body)
}

/// `/metrics` in the Prometheus text format.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (n, l) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        if n != name || !labels.iter().all(|(k, v)| l.split(',').any(|kv| kv == format!("{k}=\"{v}\""))) {
            continue;
        }
        found = true;
        sum += value.parse::<f64>().unwrap();
    }
    assert!(found, "no sample {name}{labels:?} in:\n{text}");
    sum
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`sample`] for a count: a whole, non-negative number.
pub fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> usize {
    let v = sample(text, name, labels);
    assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v} is not a count");
    #[allow(clippy::cast_sign_loss, reason = "checked just above")]
    let n = v as usize;
    n
}
