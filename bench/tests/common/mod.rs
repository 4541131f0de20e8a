//! Shared harness of the wsbench integration tests: start `wsbench echo` (optionally with a
//! deliberate fault), run `wsbench load` against it, read the JSON report back.
//!
//! Every process started here is killed on drop, and every load run is bounded by its own
//! `--max-time`, so a failing test cannot leave anything running or hang.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The binary under test.
pub fn wsbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsbench"))
}

/// A running `wsbench echo`, killed on drop.
pub struct Echo {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Echo {
    /// Starts an echo server on a free port with extra arguments (e.g. `--fault`).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// Starts an echo server on `listen`.
    pub fn start_on(listen: &str, extra: &[&str]) -> Self {
        let mut child = wsbench()
            .args(["echo", "--listen", listen, "--threads", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wsbench echo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("wsbench echo: listening on ")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh report path in a per-test temporary directory.
pub fn report_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir =
        std::env::temp_dir().join(format!("wsbench-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.json"))
}

/// The outcome of one `wsbench load` run.
pub struct Run {
    /// Exit code (0 clean, 2 not clean).
    pub code: i32,
    /// The parsed JSON report.
    pub report: serde_json::Value,
    /// Where the report was written.
    pub path: PathBuf,
}

impl Run {
    /// A counter of the report.
    pub fn count(&self, name: &str) -> u64 {
        self.report["counts"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// Runs `wsbench load SCENARIO --target ADDR ARGS… --report …` and reads the report.
pub fn load(scenario: &str, target: SocketAddr, args: &[&str]) -> Run {
    let path = report_path(scenario);
    let out = wsbench()
        .args(["load", scenario, "--quiet", "--max-time", "30", "--target", &target.to_string()])
        .args(args)
        .arg("--report")
        .arg(&path)
        .output()
        .expect("run wsbench load");
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 2, "wsbench load failed ({code}): {}", String::from_utf8_lossy(&out.stderr));
    let report = read_json(&path);
    Run { code, report, path }
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
