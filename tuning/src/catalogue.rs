//! The catalogue of knobs a profile may name: how many fields each takes, its scope as
//! measured on Linux 6.18 (`unshare -n` shows which sysctls a fresh network namespace owns,
//! which it cannot see, and which it sees read-only), and its largest legal field. A name not
//! here is an unknown knob. Never reads or writes the system.

/// Where a knob lives, which decides where `apply` may change it and what `revert` restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Each network namespace has its own copy (`net.core.somaxconn`, `net.ipv4.tcp_*`).
    Netns,
    /// One value for the whole machine (`fs.*`, `net.core.rmem_max`, `net.ipv4.tcp_mem`).
    Global,
    /// A per-process resource limit (`rlimit.nofile`).
    Process,
}

impl Scope {
    /// The spelling used in profiles.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "netns" => Some(Self::Netns),
            "global" => Some(Self::Global),
            "process" => Some(Self::Process),
            _ => None,
        }
    }

    /// The spelling used in profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netns => "netns",
            Self::Global => "global",
            Self::Process => "process",
        }
    }
}

/// What the catalogue knows of one knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Sysctl name (`net.core.somaxconn`) or `rlimit.nofile`.
    pub name: &'static str,
    /// Number of whitespace-separated fields of its value.
    pub fields: usize,
    /// Where it lives.
    pub scope: Scope,
    /// Largest legal field.
    pub max: u64,
}

/// The open-files limit, the one `process` knob.
pub const NOFILE: &str = "rlimit.nofile";

const INT_MAX: u64 = i32::MAX as u64;
const LONG_MAX: u64 = i64::MAX as u64;

const fn spec(name: &'static str, fields: usize, scope: Scope, max: u64) -> Spec {
    Spec { name, fields, scope, max }
}

/// Every knob a profile may name.
pub const KNOBS: &[Spec] = &[
    // Own copy in every network namespace (writable after `unshare -n`, host value untouched).
    spec("net.core.somaxconn", 1, Scope::Netns, INT_MAX),
    spec("net.ipv4.tcp_tw_reuse", 1, Scope::Netns, 2),
    spec("net.ipv4.tcp_fin_timeout", 1, Scope::Netns, INT_MAX),
    spec("net.ipv4.ip_local_port_range", 2, Scope::Netns, 65535),
    spec("net.ipv4.tcp_max_syn_backlog", 1, Scope::Netns, INT_MAX),
    spec("net.ipv4.tcp_keepalive_time", 1, Scope::Netns, 32767),
    spec("net.ipv4.tcp_keepalive_intvl", 1, Scope::Netns, 32767),
    spec("net.ipv4.tcp_keepalive_probes", 1, Scope::Netns, 127),
    spec("net.ipv4.tcp_rmem", 3, Scope::Netns, INT_MAX),
    spec("net.ipv4.tcp_wmem", 3, Scope::Netns, INT_MAX),
    // Absent in a child network namespace: only the initial one has them.
    spec("net.core.netdev_max_backlog", 1, Scope::Global, INT_MAX),
    spec("net.ipv4.tcp_mem", 3, Scope::Global, LONG_MAX),
    // Visible but read-only in a child network namespace.
    spec("net.core.rmem_max", 1, Scope::Global, INT_MAX),
    spec("net.core.wmem_max", 1, Scope::Global, INT_MAX),
    spec("net.core.rmem_default", 1, Scope::Global, INT_MAX),
    spec("net.core.wmem_default", 1, Scope::Global, INT_MAX),
    spec("net.netfilter.nf_conntrack_max", 1, Scope::Global, INT_MAX),
    // Not network at all: one value for the machine, whatever the namespace.
    spec("fs.nr_open", 1, Scope::Global, INT_MAX),
    spec("fs.file-max", 1, Scope::Global, LONG_MAX),
    spec(NOFILE, 1, Scope::Process, LONG_MAX),
];

/// The catalogue entry of `name`, if it is a known knob.
pub fn lookup(name: &str) -> Option<&'static Spec> {
    KNOBS.iter().find(|s| s.name == name)
}

/// The names of every known knob, for error messages.
pub fn names() -> String {
    KNOBS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}
