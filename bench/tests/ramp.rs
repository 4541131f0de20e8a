//! The closed-loop ramp over real sockets: against an upstream that accepts only a few
//! hundred connections a second, a fixed rate above that times out in the backlog while
//! the closed loop backs off, converges, and opens every connection without a failure.
//!
//! Sized for a loaded 2-core machine: the upstream's limit (250/s) is far under what the
//! machine does, and the connect timeout (4 s) far over a handshake at that rate.

mod common;

use common::{Echo, load};

const ARGS: [&str; 12] = [
    "--conns",
    "1500",
    "--rate",
    "20000",
    "--connect-timeout",
    "4",
    "--duration",
    "1",
    "--heartbeat",
    "1",
    "--threads",
    "1",
];

#[test]
fn the_ramp_backs_off_against_a_slow_upstream_and_opens_every_connection() {
    let echo = Echo::start(&["--accept-rate", "250"]);
    let run = load("hold", echo.addr, &ARGS);
    let r = &run.report;
    assert_eq!(run.count("connected"), 1500, "report: {r}");
    assert_eq!(run.count("connect_failed") + run.count("handshake_failed"), 0);
    assert_eq!(run.count("verified"), 1500);
    assert_eq!(run.code, 0);
    assert_eq!(r["ramp"]["adaptive"], true);
    assert!(r["ramp"]["stopped"].is_null(), "stopped: {}", r["ramp"]["stopped"]);
    assert!(r["ramp"]["backoffs"].as_u64().unwrap() >= 1, "never backed off: {}", r["ramp"]);
    // It found a rate near what the upstream takes, far under the cap of 20000/s.
    let final_rate = r["ramp"]["final_rate"].as_f64().unwrap();
    assert!(final_rate < 2000.0, "final rate {final_rate}");
    // Every handshake well inside the connect timeout.
    assert!(r["handshake_us"]["max"].as_u64().unwrap() < 4_000_000);
}

#[test]
fn a_fixed_rate_above_what_the_upstream_takes_fails_where_the_closed_loop_does_not() {
    let echo = Echo::start(&["--accept-rate", "250"]);
    let mut args = ARGS.to_vec();
    args.extend(["--fixed-rate", "--max-failures", "100000"]);
    let run = load("hold", echo.addr, &args);
    // 1500 connections at 250/s need 6 s of accepting: the last ones time out at 4 s.
    assert!(run.count("handshake_failed") + run.count("connect_failed") > 0, "report: {}", run.report);
    assert_eq!(run.code, 2);
    assert_eq!(run.report["ramp"]["adaptive"], false);
}
