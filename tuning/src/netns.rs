//! Running code inside a named network namespace (`ip netns add NAME` makes
//! `/run/netns/NAME`). The code runs on a thread of its own that enters the namespace, so the
//! calling thread, and the rest of the process, never leave theirs. Never creates or deletes a
//! namespace.

use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::Error;

/// Where `ip netns` keeps its namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// The file of namespace `name`, refusing names that would escape `/run/netns`.
pub fn path(name: &str) -> Result<PathBuf, Error> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Netns { name: name.to_owned(), message: "not a network namespace name".to_owned() });
    }
    Ok(Path::new(RUN_NETNS).join(name))
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).is_ok_and(|p| p.exists())
}

/// Runs `f` on a new thread inside network namespace `name` and returns its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let file = std::fs::File::open(path(name)?).map_err(|e| Error::Netns {
        name: name.to_owned(),
        message: format!("cannot open {RUN_NETNS}/{name}: {e} (create it with `ip netns add {name}`)"),
    })?;
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                name: name.to_owned(),
                message: format!("cannot enter: {e} (needs root)"),
            })?;
            Ok(f())
        });
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
