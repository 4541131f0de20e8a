//! The live progress line, as a person running the load sees it (plain lines when stderr is
//! not a terminal): it carries the p99 handshake of the last second, summed over workers.

mod common;

use common::{Echo, wsbench};

#[test]
fn progress_line_shows_the_p99_handshake_of_all_workers() {
    let echo = Echo::start(&[]);
    let out = wsbench()
        .args(["load", "hold", "--max-time", "30", "--target", &echo.addr.to_string()])
        .args(["--procs", "2", "--threads", "1", "--conns", "300", "--duration", "5", "--heartbeat", "1"])
        .output()
        .expect("run wsbench load");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // While connections open, a line gives their p99 as a bucket bound in ms.
    let p99s: Vec<f64> = stderr
        .lines()
        .filter_map(|l| l.split("p99 handshake ≤").nth(1))
        .filter_map(|rest| rest.split(" ms").next()?.parse().ok())
        .collect();
    assert!(!p99s.is_empty(), "no p99 in the progress lines:\n{stderr}");
    assert!(p99s.iter().all(|&ms| ms > 0.0 && ms < 30_000.0), "p99s {p99s:?}");
    // In the 5 s hold, a second passes with every connection open and no handshake.
    assert!(stderr.lines().any(|l| l.contains("open 300/300") && l.contains("p99 handshake -")), "{stderr}");
}
