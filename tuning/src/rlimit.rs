//! The open-files limit (`RLIMIT_NOFILE`): of this process through getrlimit/setrlimit, of any
//! process through `/proc/PID/limits`. Raises the soft limit to the hard one always, and the
//! hard limit only where the kernel allows, with an error that says why not and what to do.
//! Never lowers the hard limit: without `CAP_SYS_RESOURCE` that could not be undone.

use std::path::Path;

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::error::Error;
use crate::sysctl;

/// `RLIM_INFINITY` as read back: no limit.
pub const UNLIMITED: u64 = u64::MAX;

/// A soft and a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the process may use now.
    pub soft: u64,
    /// What the process may raise its soft limit to without privilege.
    pub hard: u64,
}

/// This process's open-files limit.
pub fn nofile() -> Result<Limit, Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|err| Error::Rlimit { call: "getrlimit", err })?;
    Ok(Limit { soft, hard })
}

/// Raises this process's soft open-files limit to its hard limit (always allowed).
pub fn raise_soft_to_hard() -> Result<Limit, Error> {
    let now = nofile()?;
    if now.soft < now.hard {
        set(now.hard, now.hard, now)?;
    }
    nofile()
}

/// Makes this process's open-files limit at least `wanted`, soft and hard: raises the hard
/// limit where the kernel allows (`CAP_SYS_RESOURCE`, and never above `fs.nr_open`), then the
/// soft limit to the hard one. A limit already at or above `wanted` is left as it is.
pub fn raise_to(wanted: u64) -> Result<Limit, Error> {
    let now = nofile()?;
    if now.hard < wanted {
        let nr_open = nr_open()?;
        if wanted > nr_open {
            return Err(Error::AboveNrOpen { wanted, nr_open });
        }
        set(wanted, wanted, now)?;
        return nofile();
    }
    raise_soft_to_hard()
}

fn set(soft: u64, hard: u64, now: Limit) -> Result<(), Error> {
    match setrlimit(Resource::RLIMIT_NOFILE, soft, hard) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) if hard > now.hard => Err(Error::HardLimitLocked { hard: now.hard, wanted: hard }),
        Err(err) => Err(Error::Rlimit { call: "setrlimit", err }),
    }
}

/// `fs.nr_open`: the most open files any process may be allowed.
pub fn nr_open() -> Result<u64, Error> {
    let root = Path::new(sysctl::PROC_SYS);
    let value = sysctl::read(root, "fs.nr_open")?
        .ok_or_else(|| Error::Parse { path: sysctl::path(root, "fs.nr_open"), message: "missing".to_owned() })?;
    Ok(value.0[0])
}

/// The open-files limit in a `/proc/PID/limits` file.
pub fn nofile_of(limits_file: &Path) -> Result<Limit, Error> {
    let text = std::fs::read_to_string(limits_file).map_err(|err| Error::Io {
        what: "cannot read",
        path: limits_file.to_path_buf(),
        err,
    })?;
    parse_limits(&text).ok_or_else(|| Error::Parse {
        path: limits_file.to_path_buf(),
        message: "no parsable `Max open files` line".to_owned(),
    })
}

/// Parses the `Max open files  SOFT  HARD  files` line of a limits file.
fn parse_limits(text: &str) -> Option<Limit> {
    let rest = text.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    let mut fields = rest.split_whitespace().map(|f| match f {
        "unlimited" => Some(UNLIMITED),
        n => n.parse().ok(),
    });
    Some(Limit { soft: fields.next()??, hard: fields.next()?? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(parse_limits(text), Some(Limit { soft: 1024, hard: 20000 }));
        let text = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_limits(text), Some(Limit { soft: UNLIMITED, hard: UNLIMITED }));
        assert_eq!(parse_limits("Max processes 1 2 processes\n"), None);
    }
}
