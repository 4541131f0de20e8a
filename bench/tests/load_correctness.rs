//! The load generator's own correctness against the echo server, without a proxy: counts
//! add up, and verification catches what a faulty upstream does (a corrupted byte, a
//! dropped message).

mod common;

use common::{Echo, load};

#[test]
fn echo_counts_match_without_proxy() {
    let echo = Echo::start(&[]);
    let run =
        load("echo", echo.addr, &["--conns", "20", "--duration", "1", "--interval-ms", "50", "--drain-ms", "2000"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.count("connected"), 20);
    let sent = run.count("sent");
    // 20 a connection on an idle machine; a loaded 2-core one slips timer ticks, and the
    // point here is that every message sent comes back, not the rate.
    assert!(sent >= 20 * 5, "only {sent} messages sent");
    assert_eq!(run.count("received"), sent);
    for bad in ["lost", "mismatched", "out_of_order", "closed_early", "connect_failed", "handshake_failed"] {
        assert_eq!(run.count(bad), 0, "{bad}");
    }
    assert_eq!(run.count("closed_clean"), 20);
    assert_eq!(run.report["latency_us"]["count"].as_u64(), Some(sent));
    assert_eq!(run.report["clean"], true);
}

#[test]
fn a_corrupted_byte_is_caught() {
    let echo = Echo::start(&["--fault", "corrupt-every=5"]);
    let run =
        load("echo", echo.addr, &["--conns", "4", "--duration", "1", "--interval-ms", "40", "--drain-ms", "1000"]);
    assert_eq!(run.code, 2, "a faulty upstream must fail the run");
    let (received, mismatched) = (run.count("received"), run.count("mismatched"));
    assert_eq!(received, run.count("sent"), "corruption is not loss");
    // Per connection, every 5th message is corrupted: floor(n/5) summed over 4 connections.
    assert!(mismatched >= (received - 16) / 5 && mismatched <= received / 5, "{mismatched} of {received}");
    assert!(mismatched > 0);
    assert_eq!(run.count("lost"), 0);
    assert_eq!(run.count("out_of_order"), 0);
    assert_eq!(run.report["clean"], false);
}

#[test]
fn a_dropped_message_is_caught() {
    let echo = Echo::start(&["--fault", "drop-every=4"]);
    let run = load("echo", echo.addr, &["--conns", "3", "--duration", "1", "--interval-ms", "40", "--drain-ms", "500"]);
    assert_eq!(run.code, 2);
    let (sent, received, lost) = (run.count("sent"), run.count("received"), run.count("lost"));
    assert!(lost > 0);
    assert!(lost >= (sent - 9) / 4 && lost <= sent / 4, "{lost} of {sent}");
    assert_eq!(received + lost, sent);
    assert_eq!(run.count("mismatched"), 0);
    assert_eq!(run.count("out_of_order"), 0);
}

#[test]
fn hold_heartbeats_then_verifies_every_connection() {
    let echo = Echo::start(&[]);
    let run = load("hold", echo.addr, &["--conns", "50", "--rate", "500", "--duration", "1", "--heartbeat", "0.25"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.count("verified"), 50);
    assert!(run.count("pings") >= 50 * 3);
    assert_eq!(run.count("pongs"), run.count("pings"));
    assert_eq!(run.count("pongs_missing"), 0);
    assert_eq!(run.report["peak_open"], 50);
}

#[test]
fn a_late_pong_is_counted_late_and_missing_not_mismatched() {
    let echo = Echo::start(&["--fault", "late-pong-every=3"]);
    let run = load("hold", echo.addr, &["--conns", "5", "--rate", "500", "--duration", "2", "--heartbeat", "0.25"]);
    assert_eq!(run.code, 2, "missing pongs fail the run");
    let (late, missing) = (run.count("pongs_late"), run.count("pongs_missing"));
    assert!(late > 0, "no late pong seen");
    // Every late pong was first missed; the last held one may never come.
    assert!(missing >= late && missing <= late + 5, "missing {missing}, late {late}");
    assert_eq!(run.count("mismatched"), 0, "a late pong is not corruption");
    assert_eq!(run.count("verified"), 5);
}

#[test]
fn a_duplicated_pong_is_counted_mismatched_not_late() {
    let echo = Echo::start(&["--fault", "dup-pong-every=3"]);
    let run = load("hold", echo.addr, &["--conns", "5", "--rate", "500", "--duration", "2", "--heartbeat", "0.25"]);
    assert_eq!(run.code, 2, "a replayed pong fails the run");
    assert!(run.count("mismatched") > 0, "no duplicate pong seen");
    assert_eq!(run.count("pongs_late"), 0, "a replayed pong is not a late one");
    assert_eq!(run.count("pongs_missing"), 0);
}

#[test]
fn bulk_verifies_messages_larger_than_socket_buffers() {
    let echo = Echo::start(&[]);
    let run = load("bulk", echo.addr, &["--conns", "2", "--duration", "1", "--size", "3000000"]);
    assert_eq!(run.code, 0);
    assert!(run.count("received") >= 2);
    assert_eq!(run.count("received"), run.count("sent"));
    assert_eq!(run.count("bytes_received"), run.count("received") * 3_000_000);
    assert!(run.report["mb_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn handshake_loops_complete_and_close_cleanly() {
    let echo = Echo::start(&[]);
    let run = load("handshake", echo.addr, &["--conns", "2", "--duration", "1"]);
    assert_eq!(run.code, 0);
    let n = run.count("connected");
    assert!(n >= 6, "only {n} handshakes (bounded by the machine's load, not the rate)");
    assert_eq!(run.count("closed_clean"), n);
    assert_eq!(run.report["handshake_us"]["count"].as_u64(), Some(n));
}

#[test]
fn an_absent_server_is_counted_not_hung() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let run = load("echo", port, &["--conns", "5", "--duration", "0.5"]);
    assert_eq!(run.code, 2);
    assert_eq!(run.count("connect_failed"), 5);
    assert_eq!(run.count("connected"), 0);
}
