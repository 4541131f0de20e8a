//! What the benchmark's own sides cost during a scale run: the echo upstream's CPU and
//! memory (from `/proc`), the load generator's CPU (from `getrusage` of the children this
//! process reaped meanwhile: the load and, through it, its workers) and its memory (sampled
//! from `/proc` while it ran), so that a reader sees how much of the machine the proxy did
//! not get.
//!
//! Read-only: it never signals or waits for a process.

use nix::sys::resource::{UsageWho, getrusage};

use super::procfs::{cpu_secs, status_kib};

/// CPU seconds of the reaped children so far.
fn children_cpu() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// Readings before the load.
#[derive(Debug, Clone, Copy)]
pub(super) struct Before {
    echo_cpu: f64,
    echo_anon_kib: u64,
    children_cpu: f64,
}

/// What the sides cost over a load.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cost {
    /// CPU seconds of the echo processes.
    pub(super) echo_cpu: f64,
    /// Growth of their anonymous RSS, KiB (connections still held).
    pub(super) echo_anon_kib: u64,
    /// CPU seconds of the load processes.
    pub(super) load_cpu: f64,
    /// Largest anonymous RSS of the load processes together, KiB.
    pub(super) load_anon_kib: u64,
}

/// Reads the echo processes before the load starts.
pub(super) fn before(echo_pids: &[u32]) -> Before {
    Before {
        echo_cpu: cpu_secs(echo_pids),
        echo_anon_kib: status_kib(echo_pids, "RssAnon"),
        children_cpu: children_cpu(),
    }
}

/// Reads the echo processes at the end of the hold (`echo_anon_peak`: their largest
/// anonymous RSS seen) and the load once reaped (`load_anon`: its largest, sampled).
pub(super) fn after(b: Before, echo_pids: &[u32], echo_anon_peak_kib: u64, load_anon_kib: u64) -> Cost {
    Cost {
        echo_cpu: cpu_secs(echo_pids) - b.echo_cpu,
        echo_anon_kib: echo_anon_peak_kib.saturating_sub(b.echo_anon_kib),
        load_cpu: children_cpu() - b.children_cpu,
        load_anon_kib,
    }
}
