//! `cargo xtask bench handshake --targets direct,haproxy` (plain, then `--tls`) with tiny
//! counts: the haproxy target starts from its generated configuration, proxies the load
//! cleanly, its CPU is measured, and it is stopped again.
//!
//! It builds wsbench in release mode (as `cargo xtask bench` does). Without haproxy and
//! without root to install it, it is skipped and says so.

use std::path::Path;
use std::process::Command;

fn haproxy_usable() -> bool {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().any(|p| Path::new(p).is_file())
        || nix::unistd::Uid::effective().is_root()
}

/// Runs a short handshake bench against direct and haproxy; returns haproxy's row.
fn haproxy_row(tls: bool) -> serde_json::Value {
    let name = if tls { "tls" } else { "plain" };
    let out = std::env::temp_dir().join(format!("xtask-haproxy-bench-{name}-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["bench", "handshake", "--targets", "direct,haproxy", "--conns", "4", "--duration", "2", "--out"])
        .arg(&out);
    if tls {
        cmd.arg("--tls");
    }
    let status = cmd.status().expect("run cargo xtask bench handshake");
    assert!(status.success(), "cargo xtask bench handshake failed with {status}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rows = summary["rows"].as_array().unwrap();
    let want = if tls { "haproxy/tls" } else { "haproxy" };
    let row = rows.iter().find(|r| r["target"] == want).unwrap_or_else(|| panic!("no {want} row: {summary}")).clone();
    // Stopped at the end of its target: nothing listens on its configuration any more.
    let conf = std::fs::read_to_string(out.join(format!("{}-tmp/haproxy.cfg", want.replace('/', "-")))).unwrap();
    let bind = conf.lines().find_map(|l| l.trim().strip_prefix("bind ")).unwrap();
    let addr = bind.split_whitespace().next().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "haproxy still listens on {addr}");
    let _ = std::fs::remove_dir_all(&out);
    row
}

fn assert_measured(row: &serde_json::Value) {
    let report = &row["report"];
    assert_eq!(report["clean"], true, "{row}");
    assert!(report["counts"]["connected"].as_u64().unwrap() > 0, "{row}");
    assert_eq!(report["counts"]["handshake_failed"], 0, "{row}");
    assert!(report["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["proxy_cpu_secs"].as_f64().unwrap() > 0.0, "haproxy's CPU was not measured: {row}");
    assert!(row["rss_kib_peak"].as_u64().unwrap() > 0, "haproxy's memory was not sampled: {row}");
}

#[test]
fn haproxy_target_proxies_handshakes_plain_and_over_tls() {
    if !haproxy_usable() {
        eprintln!("haproxy is not installed (apt-get install haproxy) and this is not root: skipped");
        return;
    }
    assert_measured(&haproxy_row(false));
    assert_measured(&haproxy_row(true));
}
