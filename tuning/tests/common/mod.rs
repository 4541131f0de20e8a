//! Test harness shared by the integration tests: scratch directories standing in for
//! `/proc/sys`, test profiles, and fresh network namespaces. Real sysctl writes happen only on
//! a thread that has just entered a network namespace of its own, checked by inode before
//! anything runs; the host's sysctls are never written.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, unshare};
use tuning::{LimitsCheck, Target};

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tuning-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes `text` to `rel`, creating directories.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Fills a fake sysctl tree under `rel` with `name = value` pairs.
    pub fn sysctls(&self, rel: &str, values: &[(&str, &str)]) -> PathBuf {
        let root = self.path(rel);
        for (name, value) in values {
            let path = tuning::sysctl::path(&root, name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        root
    }

    /// A `/proc/PID/limits` stand-in with this open-files limit.
    pub fn limits(&self, soft: u64, hard: u64) -> LimitsCheck {
        let text = format!(
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            {soft:<20} {hard:<20} files     \n"
        );
        LimitsCheck { limits_file: self.write("limits", &text), hard: false }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Default values of the knobs of the shipped profiles, as a fresh kernel has them.
pub const GLOBAL_DEFAULTS: &[(&str, &str)] = &[
    ("fs.nr_open", "1048576"),
    ("fs.file-max", "2466183"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.ipv4.tcp_mem", "287901\t383869\t575802"),
];

pub const NETNS_DEFAULTS: &[(&str, &str)] = &[
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_tw_reuse", "2"),
    ("net.ipv4.tcp_fin_timeout", "60"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("net.ipv4.tcp_max_syn_backlog", "2048"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("net.ipv4.tcp_keepalive_time", "7200"),
    ("net.ipv4.tcp_keepalive_intvl", "75"),
    ("net.ipv4.tcp_keepalive_probes", "9"),
];

/// A shipped profile.
pub fn shipped(name: &str) -> tuning::Profile {
    tuning::profile::load(&tuning::shipped_profiles_dir(), name).unwrap()
}

/// Whether this process is root; if not, says loudly that `test` is skipped.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: needs root: {test} creates network namespaces and writes sysctls");
    }
    root
}

/// This thread's network namespace inode.
pub fn netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// Runs `f` on a new thread inside a fresh network namespace of its own (gone when the thread
/// ends). Refuses to run `f` unless the namespace really changed.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let before = netns_inode();
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            assert_ne!(before, netns_inode(), "still in the old network namespace");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The target of a fresh namespace: its own `/proc/sys` for netns knobs, `global` (a scratch
/// tree, or nothing) for global ones, a fake limits file.
pub fn fresh_target(global: Option<&Path>, limits: LimitsCheck) -> Target {
    Target {
        netns_root: PathBuf::from("/proc/sys"),
        global_root: global.map(Path::to_path_buf),
        limits,
        netns_name: None,
    }
}

/// The current value of `name` under `root`, as text.
pub fn value(root: &Path, name: &str) -> String {
    tuning::sysctl::read(root, name).unwrap().unwrap().to_string()
}

/// Every value of `names` under `root`.
pub fn snapshot(root: &Path, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| value(root, n)).collect()
}
