//! Raising the open-files soft limit to the hard limit, since every connection is a file.
//!
//! Never tries to raise the hard limit (that needs privileges these machines lack); callers
//! learn the resulting limit and plan around it.

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}
