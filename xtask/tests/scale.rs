//! `cargo xtask bench scale --conns 20000` as a new user runs it: no flag but the count
//! (and a short hold, for CI's time), through wsgate, with the closed-loop ramp and the
//! tuned namespace (or this one when none may be created). Every connection must be held,
//! heartbeated and verified, and the run clean.
//!
//! It builds wsbench and wsgate in release mode (as `cargo xtask bench` does) and runs
//! alone: it starts several wsgate, echo and load processes and needs the machine's cores.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_scale_run_of_20k_with_defaults_holds_and_verifies_every_connection() {
    let out = std::env::temp_dir().join(format!("xtask-scale-test-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "scale", "--conns", "20000", "--duration", "5", "--out"])
        .arg(&out)
        .status()
        .expect("run cargo xtask bench scale");
    assert!(status.success(), "cargo xtask bench scale failed with {status}");
    let summary: PathBuf = out.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let report = &summary["report"];
    assert_eq!(summary["held"], 20_000, "summary: {summary}");
    assert_eq!(summary["verified"], 20_000);
    assert_eq!(report["counts"]["connect_failed"], 0);
    assert_eq!(report["counts"]["handshake_failed"], 0);
    assert_eq!(report["counts"]["pongs_missing"], 0);
    assert!(report["ramp"]["stopped"].is_null(), "stopped: {}", report["ramp"]["stopped"]);
    assert_eq!(report["ramp"]["adaptive"], true);
    assert_eq!(report["clean"], true);
    let _ = std::fs::remove_dir_all(&out);
}
