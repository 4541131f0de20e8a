//! Global knobs (`fs.*`, `net.core.netdev_max_backlog`, `net.ipv4.tcp_mem`) through the same
//! code path as the real ones, against scratch directories standing in for `/proc/sys`; plus
//! `--persist`, an apply that fails half-way, and one read-only verify of the real global knobs.

mod common;

use std::path::Path;

use common::{GLOBAL_DEFAULTS, NETNS_DEFAULTS, Scratch, snapshot, value};
use tuning::persist::{self, PersistPaths};
use tuning::revert::{Restored, revert};
use tuning::{Error, Scope, Status, Target, plan, verify};

fn scratch_target(scratch: &Scratch) -> (Target, std::path::PathBuf) {
    let root = scratch.sysctls("sys", GLOBAL_DEFAULTS);
    scratch.sysctls("sys", NETNS_DEFAULTS);
    let target = Target {
        netns_root: root.clone(),
        global_root: Some(root.clone()),
        limits: scratch.limits(2_100_000, 2_100_000),
        netns_name: None,
    };
    (target, root)
}

fn all_names() -> Vec<&'static str> {
    GLOBAL_DEFAULTS.iter().chain(NETNS_DEFAULTS).map(|(n, _)| *n).collect()
}

#[test]
fn edge_1m_applies_verifies_and_reverts_exactly_in_a_scratch_tree() {
    let scratch = Scratch::new("global");
    let (target, root) = scratch_target(&scratch);
    let state = scratch.path("state.toml");
    let profile = common::shipped("edge-1m");
    let before = snapshot(&root, &all_names());

    let report = verify(&profile, &target);
    assert_eq!(report.row("fs.nr_open").unwrap().status, Status::Miss);
    assert!(matches!(report.row("net.netfilter.nf_conntrack_max").unwrap().status, Status::Skipped(_)));

    let p = plan(&profile, &target).unwrap();
    let mut written = Vec::new();
    p.execute(&state, |w| written.push((w.knob.clone(), w.scope))).unwrap();
    assert!(written.contains(&("fs.file-max".to_owned(), Scope::Global)));
    assert!(written.contains(&("net.core.netdev_max_backlog".to_owned(), Scope::Global)));
    assert!(verify(&profile, &target).ok(), "{}", verify(&profile, &target));
    assert_eq!(value(&root, "fs.nr_open"), "2100000");
    assert_eq!(value(&root, "net.ipv4.tcp_wmem"), "4096 16384 4194304");

    assert_eq!(plan(&profile, &target).unwrap().writes().count(), 0);
    assert_eq!(revert(&state, |_| {}).unwrap(), written.len());
    assert_eq!(snapshot(&root, &all_names()), before);
}

#[test]
fn a_write_that_fails_half_way_undoes_the_earlier_writes() {
    let scratch = Scratch::new("rollback");
    let (target, root) = scratch_target(&scratch);
    let state = scratch.path("state.toml");
    let profile = common::shipped("edge-1m");
    let before = snapshot(&root, &all_names());
    let p = plan(&profile, &target).unwrap();

    // Something changes under the plan: fs.file-max turns into a directory.
    let file_max = tuning::sysctl::path(&root, "fs.file-max");
    std::fs::remove_file(&file_max).unwrap();
    std::fs::create_dir(&file_max).unwrap();

    let err = p.execute(&state, |_| {}).unwrap_err();
    let Error::RolledBack { undone, .. } = &err else {
        panic!("expected RolledBack, got {err:?}");
    };
    assert!(*undone >= 1, "fs.nr_open and baseline's knobs come before fs.file-max");
    assert!(err.to_string().contains("fs/file-max"), "{err}");
    let names: Vec<&str> = all_names().into_iter().filter(|n| *n != "fs.file-max").collect();
    let before: Vec<String> =
        all_names().iter().zip(before).filter(|(n, _)| **n != "fs.file-max").map(|(_, v)| v).collect();
    assert_eq!(snapshot(&root, &names), before);
    assert!(!state.exists(), "the state file is put back as it was (absent)");
}

#[test]
fn persist_writes_sysctl_d_and_limitnofile_and_revert_puts_them_back() {
    let scratch = Scratch::new("persist");
    let (target, _) = scratch_target(&scratch);
    let state = scratch.path("state.toml");
    scratch.sysctls("sys", &[("net.netfilter.nf_conntrack_max", "262144")]);
    let paths = PersistPaths::under(&scratch.path("root"));
    let old_conf = "# an operator's earlier file\nnet.core.somaxconn = 1024\n";
    scratch.write("root/etc/sysctl.d/90-wsgate.conf", old_conf);
    let profile = common::shipped("edge-1m");
    let p = plan(&profile, &target).unwrap();

    let files = persist::render(&profile, &p, &paths);
    persist::write(&files, &state).unwrap();
    let conf = std::fs::read_to_string(&paths.sysctl_conf).unwrap();
    assert!(conf.contains("\nnet.core.somaxconn = 65535\n"), "{conf}");
    assert!(conf.contains("\nnet.ipv4.ip_local_port_range = 1024 65535\n"), "{conf}");
    assert!(conf.contains("\nnet.ipv4.tcp_rmem = 4096 131072 6291456\n"), "{conf}");
    assert!(!conf.contains("\nrlimit.nofile ="), "{conf}");
    // An optional knob may be missing at boot: `-` tells systemd-sysctl to skip it quietly.
    assert!(conf.contains("\n-net.netfilter.nf_conntrack_max = 2200000\n"), "{conf}");
    // Global knobs are written as they will be at boot, even those apply changes live.
    assert!(conf.contains("\nfs.nr_open = 2100000\n"), "{conf}");
    let dropin = std::fs::read_to_string(&paths.nofile_dropin).unwrap();
    assert!(dropin.contains("[Service]\nLimitNOFILE=2100000\n"), "{dropin}");

    let mut restored = Vec::new();
    revert(&state, |r| restored.push(r.clone())).unwrap();
    assert_eq!(restored.len(), 2);
    assert!(restored.iter().all(|r| matches!(r, Restored::File(_))));
    assert_eq!(std::fs::read_to_string(&paths.sysctl_conf).unwrap(), old_conf);
    assert!(!paths.nofile_dropin.exists());
}

#[test]
fn the_real_global_knobs_can_be_read() {
    // Read-only: verify never writes.
    let report = verify(&common::shipped("edge-1m"), &Target::host());
    for row in report.rows.iter().filter(|r| r.scope == Scope::Global) {
        assert!(matches!(row.status, Status::Ok | Status::Miss | Status::Skipped(_)), "{}: {}", row.knob, row.status);
        if !matches!(row.status, Status::Skipped(_)) {
            assert_ne!(row.actual, "-", "{}", row.knob);
        }
    }
    let _ = Path::new("/proc/sys");
    println!("{report}");
}
