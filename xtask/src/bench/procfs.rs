//! Reading `/proc`: CPU seconds and memory of processes, kernel slab, TCP memory and
//! sockets in use, open descriptors.
//!
//! Read-only: it never writes to `/proc` and never fails a run over an unreadable file
//! (a process that exited counts as zero).

/// `pid` and its direct children (nginx workers).
pub(super) fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(fields) = stat_fields(p)
                && fields.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid)
            {
                pids.push(p);
            }
        }
    }
    pids
}

/// Fields of /proc/PID/stat after the command name (state is index 0, ppid 1, utime 11,
/// stime 12).
pub(super) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system) used so far by these processes.
pub(super) fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            (n(11) + n(12)) as f64 / tick
        })
        .sum()
}

/// Sum of one `/proc/PID/status` field (`VmRSS`, `RssAnon`, …) over `pids`, KiB.
pub(super) fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

pub(super) fn rss_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "VmRSS")
}

pub(super) fn meminfo_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// TCP sockets in use (/proc/net/sockstat).
pub(super) fn tcp_inuse() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()).unwrap_or(0)
}

/// TCP memory in KiB from /proc/net/sockstat (`mem` is in pages).
pub(super) fn tcp_mem_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter().position(|x| *x == "mem").and_then(|i| w.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    pages * page / 1024
}

/// Memory figures at one moment, all in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mem {
    /// RSS of the sampled processes.
    pub(super) rss: u64,
    /// Their anonymous RSS: heap and stacks, the userspace memory proper. The rest of
    /// the RSS is mapped files and shared memory, such as the splice's mmap-ed BPF
    /// array (kernel memory that is also counted in the process's RSS once touched).
    pub(super) anon: u64,
    /// Kernel slab (/proc/meminfo).
    pub(super) slab: u64,
    /// TCP buffers (/proc/net/sockstat).
    pub(super) tcp: u64,
    /// `MemAvailable`.
    pub(super) available: u64,
}

pub(super) fn mem_now(pids: &[u32]) -> Mem {
    Mem {
        rss: rss_kib(pids),
        anon: status_kib(pids, "RssAnon"),
        slab: meminfo_kib("Slab"),
        tcp: tcp_mem_kib(),
        available: meminfo_kib("MemAvailable"),
    }
}

/// Open descriptors of `pids` (two per proxied connection, plus a fixed few).
pub(super) fn fd_count(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok()).map(|d| d.count() as u64).sum()
}
