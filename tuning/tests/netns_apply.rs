//! Apply, verify and revert for real, inside network namespaces the tests create themselves:
//! a fresh one per test (`unshare(CLONE_NEWNET)` on a thread of its own), and one named
//! namespace (`ip netns add`, always deleted) for the `--netns NAME` path. Global knobs go to a
//! scratch directory; the host's sysctls are only ever read, to check they did not move.

mod common;

use std::path::Path;
use std::process::Command;

use common::{GLOBAL_DEFAULTS, Scratch, fresh_target, in_fresh_netns, root_or_skip, snapshot, value};
use tuning::revert::revert;
use tuning::{Error, Status, Step, Target, netns, plan, verify};

const BASELINE_NETNS: &[&str] = &["net.core.somaxconn", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_fin_timeout"];

const PROC_SYS: &str = "/proc/sys";

fn host_values() -> Vec<String> {
    snapshot(Path::new(PROC_SYS), BASELINE_NETNS)
}

#[test]
fn baseline_verify_fails_then_apply_verify_passes_and_revert_restores_exactly() {
    if !root_or_skip("baseline_verify_fails_then_apply_verify_passes_and_revert_restores_exactly") {
        return;
    }
    let host_before = host_values();
    let scratch = Scratch::new("baseline");
    let state = scratch.path("state.toml");
    let profile = common::shipped("baseline");
    in_fresh_netns(|| {
        let target = fresh_target(None, scratch.limits(200_000, 200_000));
        let before = snapshot(Path::new(PROC_SYS), BASELINE_NETNS);

        let report = verify(&profile, &target);
        assert!(!report.ok(), "a fresh namespace already meets baseline:\n{report}");
        assert_eq!(report.row("net.core.somaxconn").unwrap().status, Status::Miss);
        assert_eq!(report.row("rlimit.nofile").unwrap().status, Status::Ok);

        let p = plan(&profile, &target).unwrap();
        let mut reported = Vec::new();
        let n = p.execute(&state, |w| reported.push(w.knob.clone())).unwrap();
        assert_eq!(n, reported.len());
        assert!(n >= 1);
        let report = verify(&profile, &target);
        assert!(report.ok(), "after apply:\n{report}");
        assert_eq!(value(Path::new(PROC_SYS), "net.core.somaxconn"), "65535");
        assert_eq!(value(Path::new(PROC_SYS), "net.ipv4.tcp_tw_reuse"), "1");
        assert_eq!(value(Path::new(PROC_SYS), "net.ipv4.tcp_fin_timeout"), "15");

        // Applying again changes nothing and keeps the original previous values.
        let state_text = std::fs::read_to_string(&state).unwrap();
        let again = plan(&profile, &target).unwrap();
        assert_eq!(again.writes().count(), 0);
        assert_eq!(again.execute(&state, |_| panic!("no write expected")).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&state).unwrap(), state_text);

        let restored = revert(&state, |_| {}).unwrap();
        assert_eq!(restored, n);
        assert_eq!(snapshot(Path::new(PROC_SYS), BASELINE_NETNS), before);
        assert!(!state.exists(), "an emptied state file is removed");
        assert!(!verify(&profile, &target).ok());
    });
    assert_eq!(host_values(), host_before, "the host's sysctls moved");
}

#[test]
fn dry_run_plans_every_write_and_changes_nothing() {
    if !root_or_skip("dry_run_plans_every_write_and_changes_nothing") {
        return;
    }
    let scratch = Scratch::new("dry");
    let global = scratch.sysctls("sys", GLOBAL_DEFAULTS);
    let profile = common::shipped("edge-1m");
    in_fresh_netns(|| {
        let target = fresh_target(Some(&global), scratch.limits(1024, 4096));
        let names: Vec<&str> =
            profile.knobs.iter().filter(|k| k.scope == tuning::Scope::Netns).map(|k| k.name.as_str()).collect();
        let before = snapshot(Path::new(PROC_SYS), &names);
        let global_before = snapshot(&global, &["fs.nr_open", "net.ipv4.tcp_mem"]);

        let p = plan(&profile, &target).unwrap();
        let writes: Vec<&str> = p.writes().map(|w| w.knob.as_str()).collect();
        assert!(writes.contains(&"net.ipv4.ip_local_port_range"), "{writes:?}");
        assert!(writes.contains(&"fs.nr_open"), "{writes:?}");
        let port = p.writes().find(|w| w.knob == "net.ipv4.ip_local_port_range").unwrap();
        assert_eq!(port.to.to_string(), "1024 65535");
        assert!(p.steps.iter().any(|s| matches!(s,
            Step::Skipped { knob, .. } if knob == "net.netfilter.nf_conntrack_max")));

        assert_eq!(snapshot(Path::new(PROC_SYS), &names), before);
        assert_eq!(snapshot(&global, &["fs.nr_open", "net.ipv4.tcp_mem"]), global_before);
    });
    assert!(!scratch.path("state.toml").exists());
}

#[test]
fn edge_1m_netns_knobs_for_real_global_knobs_in_scratch() {
    if !root_or_skip("edge_1m_netns_knobs_for_real_global_knobs_in_scratch") {
        return;
    }
    let scratch = Scratch::new("edge");
    let global = scratch.sysctls("sys", GLOBAL_DEFAULTS);
    let state = scratch.path("state.toml");
    let profile = common::shipped("edge-1m");
    in_fresh_netns(|| {
        let target = fresh_target(Some(&global), scratch.limits(2_100_000, 2_100_000));
        let netns_before = snapshot(Path::new(PROC_SYS), &["net.ipv4.tcp_rmem", "net.ipv4.ip_local_port_range"]);
        assert!(!verify(&profile, &target).ok());
        plan(&profile, &target).unwrap().execute(&state, |_| {}).unwrap();
        let report = verify(&profile, &target);
        assert!(report.ok(), "after apply:\n{report}");
        assert_eq!(value(&global, "net.ipv4.tcp_mem"), "786432 1048576 1572864");
        // `*` keeps the field that is there.
        let rmem: Vec<String> = netns_before[0].split(' ').map(str::to_owned).collect();
        assert!(value(Path::new(PROC_SYS), "net.ipv4.tcp_rmem").ends_with(&rmem[2]));

        revert(&state, |_| {}).unwrap();
        assert_eq!(snapshot(Path::new(PROC_SYS), &["net.ipv4.tcp_rmem", "net.ipv4.ip_local_port_range"]), netns_before);
        assert_eq!(value(&global, "net.ipv4.tcp_mem"), "287901 383869 575802");
        assert_eq!(value(&global, "fs.nr_open"), "1048576");
    });
}

#[test]
fn a_read_only_sysctl_is_refused_with_file_and_line_before_any_write() {
    if !root_or_skip("a_read_only_sysctl_is_refused_with_file_and_line_before_any_write") {
        return;
    }
    let scratch = Scratch::new("ro");
    let state = scratch.path("state.toml");
    in_fresh_netns(|| {
        // A child namespace sees the machine's net.core.rmem_max read-only. `plan` only reads;
        // nothing below ever writes it.
        let rmem_max: u64 = value(Path::new(PROC_SYS), "net.core.rmem_max").parse().unwrap();
        let file = scratch.write(
            "ro.toml",
            &format!(
                "description = \"ro\"\n\n\
                 [[knob]]\nname = \"net.core.somaxconn\"\nwant = 65535\ncompare = \"at-least\"\n\
                 scope = \"netns\"\nwhy = \"first, would be written\"\n\n\
                 [[knob]]\nname = \"net.core.rmem_max\"\nwant = {}\ncompare = \"at-least\"\n\
                 scope = \"global\"\nwhy = \"read-only here\"\n",
                rmem_max + 1
            ),
        );
        let profile = tuning::profile::load(&scratch.0, "ro").unwrap();
        let somaxconn = value(Path::new(PROC_SYS), "net.core.somaxconn");
        let target = Target { global_root: Some(PROC_SYS.into()), ..fresh_target(None, scratch.limits(1, 1)) };
        let err = plan(&profile, &target).unwrap_err();
        let Error::NotWritable { at, knob, .. } = &err else {
            panic!("expected NotWritable, got {err:?}");
        };
        assert_eq!((&at.file, at.line, knob.as_str()), (&file, 11, "net.core.rmem_max"));
        let message = err.to_string();
        assert!(message.starts_with(&format!("{}:11: net.core.rmem_max", file.display())), "{message}");
        assert!(message.contains("nothing was applied"), "{message}");
        assert_eq!(value(Path::new(PROC_SYS), "net.core.somaxconn"), somaxconn);
    });
    assert!(!state.exists());
}

/// A named namespace made with `ip netns add`, deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn add() -> Self {
        let name = format!("tuning-test-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
        assert!(ok, "ip netns add {name}");
        Self(name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[test]
fn a_named_namespace_is_tuned_from_the_outside_and_reverted_there() {
    if !root_or_skip("a_named_namespace_is_tuned_from_the_outside_and_reverted_there") {
        return;
    }
    let host_before = host_values();
    let scratch = Scratch::new("named");
    let state = scratch.path("state.toml");
    let profile = common::shipped("baseline");
    let ns = NamedNetns::add();
    let target = Target { limits: scratch.limits(200_000, 200_000), ..Target::named_netns(&ns.0) };
    let before = netns::run_in(&ns.0, || snapshot(Path::new(PROC_SYS), BASELINE_NETNS)).unwrap();
    let p = netns::run_in(&ns.0, || plan(&profile, &target)).unwrap().unwrap();
    assert!(p.writes().count() >= 1);
    netns::run_in(&ns.0, || p.execute(&state, |_| {})).unwrap().unwrap();
    assert!(netns::run_in(&ns.0, || verify(&profile, &target)).unwrap().ok());
    assert_eq!(host_values(), host_before, "the host's sysctls moved");
    assert!(std::fs::read_to_string(&state).unwrap().contains(&format!("netns = \"{}\"", ns.0)));

    // Revert runs here, in the host namespace; the state file sends it back into `ns`.
    revert(&state, |_| {}).unwrap();
    let after = netns::run_in(&ns.0, || snapshot(Path::new(PROC_SYS), BASELINE_NETNS)).unwrap();
    assert_eq!(after, before);
    assert_eq!(host_values(), host_before);
    drop(ns);
    assert!(matches!(netns::run_in("tuning-test-none", || ()), Err(Error::Netns { .. })));
}
