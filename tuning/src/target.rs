//! What a verify or apply is aimed at: which sysctl root holds the per-namespace knobs, which
//! holds the global ones (or none, to leave them alone), and whose open-files limit counts.
//! Only describes; reading and writing happen in `verify` and `apply`.

use std::path::PathBuf;

use crate::sysctl::PROC_SYS;

/// Where each scope of knob is read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The sysctl root of the network namespace being tuned (`netns` knobs).
    pub netns_root: PathBuf,
    /// The sysctl root of the machine (`global` knobs); `None` leaves them out, as when
    /// tuning one named network namespace.
    pub global_root: Option<PathBuf>,
    /// Whose open-files limit the `process` knob is checked against.
    pub limits: LimitsCheck,
    /// The named network namespace the work runs in, recorded in the state file so `revert`
    /// goes back there; `None` is the namespace of the caller.
    pub netns_name: Option<String>,
}

/// Which open-files limit of which process the `rlimit.nofile` knob is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsCheck {
    /// A `/proc/PID/limits` file (or a scratch copy of one).
    pub limits_file: PathBuf,
    /// Compare the hard limit (what a process started from here can raise itself to) rather
    /// than the soft one (what a running process can use now).
    pub hard: bool,
}

impl LimitsCheck {
    /// A running process: its soft limit, as read from `/proc/PID/limits`.
    pub fn pid(pid: u32) -> Self {
        Self { limits_file: PathBuf::from(format!("/proc/{pid}/limits")), hard: false }
    }

    /// Processes started from here: this process's hard limit, which wsgate raises its soft
    /// limit to at start-up.
    pub fn inherited() -> Self {
        Self { limits_file: PathBuf::from("/proc/self/limits"), hard: true }
    }
}

impl Target {
    /// The machine as the caller sees it: `/proc/sys` for both scopes, inherited limits.
    pub fn host() -> Self {
        Self {
            netns_root: PathBuf::from(PROC_SYS),
            global_root: Some(PathBuf::from(PROC_SYS)),
            limits: LimitsCheck::inherited(),
            netns_name: None,
        }
    }

    /// Only the per-namespace knobs of the named namespace the caller has entered.
    pub fn named_netns(name: &str) -> Self {
        Self {
            netns_root: PathBuf::from(PROC_SYS),
            global_root: None,
            limits: LimitsCheck::inherited(),
            netns_name: Some(name.to_owned()),
        }
    }
}
