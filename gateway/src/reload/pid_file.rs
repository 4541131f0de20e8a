//! The pid file (`pid_file`, `--pid-file`): written at start, removed at exit, and
//! read by `wsgate reload` and `wsgate drain` to signal the running process (SIGHUP,
//! SIGTERM), as `systemctl reload` and a Kubernetes `preStop` do.
//!
//! Never signals a process it did not read from the file, and checks that the pid
//! still runs a `wsgate` before signalling it (a stale file after a crash may name an
//! unrelated process).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Why the running process could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("no pid file: set `pid_file` in the configuration or pass --pid-file")]
    NoPidFile,
    #[error("cannot read the pid file {path}: {source} (is wsgate running with this pid_file?)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the pid file {path} does not hold a process id: `{text}`")]
    Garbled { path: PathBuf, text: String },
    #[error("process {pid} (from {path}) is not a running wsgate: the pid file is stale; remove it")]
    Stale { pid: i32, path: PathBuf },
    #[error("cannot send {signal} to wsgate (pid {pid}): {source}")]
    Kill { signal: Signal, pid: i32, source: nix::Error },
}

/// The pid file of this process: removed when dropped (at exit).
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path` (replacing a stale file).
    pub fn write(path: &Path) -> std::io::Result<Self> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write pid file {}: {e}", path.display())))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only this process's own file: another wsgate may have replaced it since.
        let ours = std::fs::read_to_string(&self.0).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours && let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the pid file");
        }
    }
}

/// Sends `signal` to the wsgate whose pid `path` holds; returns that pid.
pub fn signal(path: &Path, signal: Signal) -> Result<i32, SignalError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignalError::Read { path: path.to_owned(), source })?;
    let pid: i32 =
        text.trim().parse().ok().filter(|&p| p > 0).ok_or_else(|| SignalError::Garbled {
            path: path.to_owned(),
            text: text.trim().chars().take(40).collect(),
        })?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "wsgate" {
        return Err(SignalError::Stale { pid, path: path.to_owned() });
    }
    nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|source| SignalError::Kill { signal, pid, source })?;
    Ok(pid)
}
