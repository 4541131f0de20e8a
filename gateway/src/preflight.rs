//! Start-up preflight: checks that the kernel and the process limits can carry what the
//! configuration asks for (open files for the connection limit, `somaxconn` for the listen
//! backlog, the local port range for upstream connections per source address), raises the
//! soft open-files limit, and reports each shortfall once. It never changes a sysctl: tuning
//! the host is the operator's decision (`cargo xtask tune apply edge-1m`).

use std::fmt;
use std::path::Path;

use tuning::{rlimit, sysctl};

/// Open files kept for everything that is not a proxied connection: listeners (one per
/// core), the admin plane, log files, eBPF maps and programs, `io_uring` rings.
const FD_MARGIN: u64 = 1024;

/// What the gateway's configuration needs from the kernel and the process limits.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Most concurrent client connections (each proxied one holds two sockets).
    pub max_connections: u64,
    /// The backlog passed to listen(2).
    pub listen_backlog: u32,
    /// Most concurrent connections to one upstream address from one source address.
    pub upstream_conns_per_source: u64,
}

/// One thing the machine falls short of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// What is short (`open files`, `net.core.somaxconn` …).
    pub what: &'static str,
    /// What the configuration needs.
    pub needed: u64,
    /// What there is (`None`: it could not be read).
    pub actual: Option<u64>,
    /// What it means and what to do.
    pub advice: String,
}

/// The outcome of the preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The soft open-files limit after raising it.
    pub open_files: u64,
    /// Every shortfall, in the order checked.
    pub shortfalls: Vec<Shortfall>,
}

/// Why the preflight stops the start-up.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The open-files limit could not be read or raised at all.
    #[error("open-files limit: {0}")]
    OpenFiles(#[from] tuning::Error),
    /// `--strict-tuning` and the machine falls short.
    #[error("--strict-tuning: {} shortfall(s): {}", .0.len(), list(.0))]
    Strict(Vec<Shortfall>),
}

fn list(shortfalls: &[Shortfall]) -> String {
    shortfalls.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Raises the soft open-files limit, checks every need, logs one `tracing::warn!` per shortfall;
/// with `strict` a shortfall is an error naming every shortfall.
pub fn run(needs: &Needs, strict: bool) -> Result<Report, PreflightError> {
    let report = check(needs, Path::new(sysctl::PROC_SYS))?;
    for s in &report.shortfalls {
        tracing::warn!(what = s.what, needed = s.needed, actual = s.actual, "preflight: {s}");
    }
    if strict && !report.shortfalls.is_empty() {
        return Err(PreflightError::Strict(report.shortfalls));
    }
    Ok(report)
}

/// The open files `needs` calls for: two sockets per connection, plus the margin.
pub fn open_files_needed(needs: &Needs) -> u64 {
    needs.max_connections.saturating_mul(2).saturating_add(FD_MARGIN)
}

/// The checks of [`run`], reading sysctls under `sysctl_root`.
fn check(needs: &Needs, sysctl_root: &Path) -> Result<Report, PreflightError> {
    let mut shortfalls = Vec::new();
    let files = open_files_needed(needs);

    let mut limit = rlimit::raise_soft_to_hard()?;
    if limit.soft < files {
        match rlimit::raise_to(files) {
            Ok(raised) => limit = raised,
            Err(e) => shortfalls.push(Shortfall {
                what: "open files",
                needed: files,
                actual: Some(limit.soft),
                advice: format!("max_connections {} needs 2 per connection + {FD_MARGIN}; {e}", needs.max_connections),
            }),
        }
    }

    let file_max = read_first(sysctl_root, "fs.file-max");
    if file_max.is_none_or(|n| n < files) {
        shortfalls.push(Shortfall {
            what: "fs.file-max",
            needed: files,
            actual: file_max,
            advice: "the machine-wide open-files cap is below what this gateway alone may \
                     open; `cargo xtask tune apply edge-1m`"
                .to_owned(),
        });
    }

    let somaxconn = read_first(sysctl_root, "net.core.somaxconn");
    let backlog = u64::from(needs.listen_backlog);
    if somaxconn.is_none_or(|n| n < backlog) {
        shortfalls.push(Shortfall {
            what: "net.core.somaxconn",
            needed: backlog,
            actual: somaxconn,
            advice: "the kernel silently cuts the listen backlog down to it; \
                     `cargo xtask tune apply baseline`"
                .to_owned(),
        });
    }

    let ports = read_port_count(sysctl_root);
    if ports.is_none_or(|n| n < needs.upstream_conns_per_source) {
        shortfalls.push(Shortfall {
            what: "net.ipv4.ip_local_port_range",
            needed: needs.upstream_conns_per_source,
            actual: ports,
            advice: "each upstream connection from one source address to one upstream takes \
                     a local port; widen the range (`cargo xtask tune apply edge-1m`) or add \
                     source addresses"
                .to_owned(),
        });
    }

    Ok(Report { open_files: limit.soft, shortfalls })
}

/// The first field of a sysctl; `None` when it cannot be read.
fn read_first(root: &Path, name: &str) -> Option<u64> {
    sysctl::read(root, name).ok()??.0.first().copied()
}

/// How many ports `ip_local_port_range` holds.
fn read_port_count(root: &Path) -> Option<u64> {
    match sysctl::read(root, "net.ipv4.ip_local_port_range").ok()??.0[..] {
        [low, high] if high >= low => Some(high - low + 1),
        _ => None,
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.actual {
            Some(actual) => {
                write!(f, "{} is {actual}, the configuration needs {}: {}", self.what, self.needed, self.advice)
            }
            None => write!(f, "{} cannot be read, the configuration needs {}: {}", self.what, self.needed, self.advice),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A scratch directory standing in for /proc/sys, removed on drop.
    struct FakeSysctl(PathBuf);

    impl FakeSysctl {
        fn new(tag: &str, values: &[(&str, &str)]) -> Self {
            let root = std::env::temp_dir().join(format!("wsgate-preflight-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for (name, value) in values {
                let path = sysctl::path(&root, name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, format!("{value}\n")).unwrap();
            }
            Self(root)
        }
    }

    impl Drop for FakeSysctl {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small() -> Needs {
        Needs { max_connections: 100, listen_backlog: 1024, upstream_conns_per_source: 1000 }
    }

    #[test]
    fn a_machine_that_fits_has_no_shortfall_and_soft_equals_hard() {
        let sys = FakeSysctl::new(
            "fits",
            &[
                ("fs.file-max", "1000000"),
                ("net.core.somaxconn", "4096"),
                ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ],
        );
        let report = check(&small(), &sys.0).unwrap();
        assert_eq!(report.shortfalls, vec![]);
        assert_eq!(report.open_files, rlimit::nofile().unwrap().hard);
    }

    #[test]
    fn every_shortfall_is_named_once() {
        let sys = FakeSysctl::new(
            "short",
            &[("fs.file-max", "1000"), ("net.core.somaxconn", "128"), ("net.ipv4.ip_local_port_range", "60000 60999")],
        );
        let hard = rlimit::nofile().unwrap().hard;
        let needs = Needs {
            // More than the hard limit allows, unless this process may raise it.
            max_connections: hard,
            listen_backlog: 4096,
            upstream_conns_per_source: 5000,
        };
        let report = check(&needs, &sys.0).unwrap();
        let what: Vec<_> = report.shortfalls.iter().map(|s| s.what).collect();
        let port = report.shortfalls.last().unwrap();
        assert_eq!(port.actual, Some(1000));
        assert!(what.ends_with(&["fs.file-max", "net.core.somaxconn", "net.ipv4.ip_local_port_range"]));
        if what.len() == 4 {
            assert_eq!(what[0], "open files");
            assert!(
                report.shortfalls[0].advice.contains("CAP_SYS_RESOURCE")
                    || report.shortfalls[0].advice.contains("fs.nr_open")
            );
        }
    }

    #[test]
    fn unreadable_sysctls_are_shortfalls_not_panics() {
        let sys = FakeSysctl::new("empty", &[]);
        let report = check(&small(), &sys.0).unwrap();
        assert_eq!(report.shortfalls.len(), 3);
        assert!(report.shortfalls.iter().all(|s| s.actual.is_none()));
    }
}
