//! Reading and writing sysctl files under a root directory: `/proc/sys` of the calling
//! thread's network namespace, or a scratch directory standing in for it. Touches only the
//! one file it is asked about; never walks the tree or guesses a path.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::AccessFlags;

use crate::error::Error;
use crate::value::Actual;

/// The real sysctl root.
pub const PROC_SYS: &str = "/proc/sys";

/// The file of sysctl `name` under `root` (`net.core.somaxconn` → `root/net/core/somaxconn`).
pub fn path(root: &Path, name: &str) -> PathBuf {
    root.join(name.replace('.', "/"))
}

/// The current value of `name` under `root`; `None` when the file does not exist.
pub fn read(root: &Path, name: &str) -> Result<Option<Actual>, Error> {
    let path = path(root, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Actual::parse(&text).map(Some).map_err(|message| Error::Parse { path, message }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::Io { what: "cannot read", path, err }),
    }
}

/// Why `path` cannot be written by this process, if it cannot. Asks the kernel (`access(2)`),
/// which applies /proc/sys's own permission rules, so read-only mounts and sysctls a child
/// network namespace sees read-only are both caught before anything is written.
pub fn unwritable_reason(path: &Path) -> Option<String> {
    match nix::unistd::access(path, AccessFlags::W_OK) {
        Ok(()) => None,
        Err(Errno::EROFS) => Some(
            "read-only file system (a container's /proc/sys is often mounted read-only; \
             apply on the host instead)"
                .to_owned(),
        ),
        Err(Errno::EACCES | Errno::EPERM) => Some(
            "permission denied (read-only here: run as root, or this is a global knob seen \
             from a child network namespace)"
                .to_owned(),
        ),
        Err(e) => Some(e.desc().to_owned()),
    }
}

/// Writes `text` to sysctl `name` under `root` in one write, then reads it back: a value the
/// kernel did not keep is an error.
pub fn write(root: &Path, name: &str, text: &str) -> Result<(), Error> {
    let path = path(root, name);
    let io_err = |err| Error::Io { what: "cannot write", path: path.clone(), err };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        // As sysctl(8) does: /proc/sys ignores it, a scratch file needs it.
        .truncate(true)
        .open(&path)
        .map_err(io_err)?;
    file.write_all(format!("{text}\n").as_bytes()).map_err(io_err)?;
    drop(file);
    let wrote = Actual::parse(text).map_err(|message| Error::Parse { path: path.clone(), message })?;
    let kept = read(root, name)?;
    if kept.as_ref() != Some(&wrote) {
        return Err(Error::NotTaken {
            knob: name.to_owned(),
            path,
            wrote: text.to_owned(),
            kept: kept.map_or_else(|| "nothing".to_owned(), |k| k.to_string()),
        });
    }
    Ok(())
}
