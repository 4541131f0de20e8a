//! Fallback: when the kernel splice is unavailable — its self-test fails
//! (forced with `WSGATE_SPLICE_SELFTEST_FAIL=1`) or the process lacks
//! CAP_BPF/CAP_NET_ADMIN — `auto` falls back to the userspace relay with the
//! reason, `sockmap` refuses to start with a clear message, and `userspace`
//! never tries. Each case runs in a child process (environment and
//! credentials are per process): this binary itself, started again with
//! `WSGATE_SPLICE_TEST_ROLE` set, which `main` turns into the child's part
//! instead of the tests (so the child's part is not a test of its own).

mod reexec;
mod splice_util;

use std::os::unix::process::CommandExt;
use std::process::Command;

use wsgate::splice::{FORCE_FAIL_ENV, SpliceMode, SpliceOptions, StartError, start};

const ROLE: &str = "WSGATE_SPLICE_TEST_ROLE";

fn opts(mode: SpliceMode) -> SpliceOptions {
    SpliceOptions { mode, capacity: 64, ..SpliceOptions::default() }
}

fn main() {
    reexec::main(
        ROLE,
        child,
        reexec::trials![
            forced_self_test_failure_falls_back_in_auto_and_refuses_in_sockmap,
            missing_capabilities_fall_back_in_auto_and_refuse_in_sockmap,
            splice_mode_reads_from_config_and_command_line,
        ],
    );
}

/// Runs this binary again as a child process in `role` (see [`child`]).
fn run_child(role: &str, customize: impl FnOnce(&mut Command)) -> String {
    run_child_of(&std::env::current_exe().unwrap(), role, customize)
}

/// [`run_child`] with the binary at `exe` (a copy of this one).
fn run_child_of(exe: &std::path::Path, role: &str, customize: impl FnOnce(&mut Command)) -> String {
    let mut cmd = Command::new(exe);
    cmd.env(ROLE, role);
    customize(&mut cmd);
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {role} failed:\n{text}");
    assert!(text.contains("CHILD OK"), "child {role} did not run:\n{text}");
    text
}

/// The child side: the three modes under whatever made the splice unavailable.
/// A failed assertion panics, so the child exits non-zero and `run_child` reports it.
fn child(role: &str) {
    let expect = if role == "forced" { FORCE_FAIL_ENV } else { "not permitted" };
    let auto = start(&opts(SpliceMode::Auto)).expect("auto starts anyway");
    assert!(auto.splicer.is_none(), "auto must fall back");
    let why = auto.fallback.expect("auto says why");
    assert!(why.contains(expect), "fallback reason {why:?} should mention {expect:?}");
    match start(&opts(SpliceMode::Sockmap)) {
        Err(e @ StartError::Unavailable(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("sockmap") && msg.contains(expect), "unclear refusal: {msg}");
            println!("refusal: {msg}");
        }
        other => panic!("sockmap mode must refuse to start, got {other:?}"),
    }
    let user = start(&opts(SpliceMode::Userspace)).unwrap();
    assert!(user.splicer.is_none() && user.fallback.is_none());
    println!("CHILD OK ({role}): {why}");
}

fn forced_self_test_failure_falls_back_in_auto_and_refuses_in_sockmap() {
    if splice_util::splicer_or_skip("forced_self_test_failure", 16, 1 << 20).is_none() {
        return;
    }
    let text = run_child("forced", |c| {
        c.env(FORCE_FAIL_ENV, "1");
    });
    eprintln!("{text}");
}

fn missing_capabilities_fall_back_in_auto_and_refuse_in_sockmap() {
    if splice_util::splicer_or_skip("missing_capabilities", 16, 1 << 20).is_none() {
        return;
    }
    // An unprivileged uid without capabilities: BPF is refused (kernel.unprivileged_bpf_disabled).
    // `nobody` may not reach this binary (a checkout under a 0700 `mktemp -d`
    // directory): it runs a copy in a directory of its own.
    let dir = std::env::temp_dir().join(format!("wsgate-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("splice_fallback");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let text = run_child_of(&copy, "nocap", |c| {
        // std also drops the supplementary groups when it changes the uid.
        c.uid(65_534).gid(65_534);
    });
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{text}");
}

fn splice_mode_reads_from_config_and_command_line() {
    #[derive(serde::Deserialize)]
    struct Cfg {
        splice: SpliceMode,
    }
    let parse = |s: &str| toml::from_str::<Cfg>(&format!("splice = \"{s}\"")).map(|c| c.splice);
    assert_eq!(parse("auto").unwrap(), SpliceMode::Auto);
    assert_eq!(parse("sockmap").unwrap(), SpliceMode::Sockmap);
    assert_eq!(parse("userspace").unwrap(), SpliceMode::Userspace);
    assert!(parse("kernel").is_err());
    assert_eq!(<SpliceMode as clap::ValueEnum>::from_str("sockmap", false).unwrap(), SpliceMode::Sockmap);
    assert_eq!(SpliceMode::default(), SpliceMode::Auto);
}
