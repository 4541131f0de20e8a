//! The errors of the tuning library. Every error a person reads names the profile file and
//! line, or the path, it is about, and what to try next; none is a bare errno.

use std::fmt;
use std::path::PathBuf;

/// Where in a profile file something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The profile file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl Source {
    /// The source of byte offset `offset` in `text`, the contents of `file`.
    pub fn at(file: &std::path::Path, text: &str, offset: usize) -> Self {
        let end = offset.min(text.len());
        let line = text.as_bytes()[..end].split(|&b| b == b'\n').count();
        Self { file: file.to_path_buf(), line }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Everything that can go wrong while loading, verifying, applying or reverting a profile.
///
/// Each message is complete on its own (the underlying OS error is part of the text rather
/// than a `source()`), because the gateway logs it with `{}` and xtask prints it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile text is wrong: syntax, unknown knob, malformed value, wrong scope.
    #[error("{at}: {message}")]
    Profile { at: Source, message: String },

    /// A profile (or the file it extends) could not be found or read.
    #[error("cannot read profile {}: {err}", path.display())]
    ProfileFile { path: PathBuf, err: std::io::Error },

    /// A knob the profile needs to change cannot be written here; nothing was written.
    #[error("{at}: {knob}: cannot write {}: {reason}; nothing was applied", path.display())]
    NotWritable { at: Source, knob: String, path: PathBuf, reason: String },

    /// A knob the profile names does not exist on this kernel (and is not marked optional).
    #[error(
        "{at}: {knob}: {} does not exist on this kernel (mark the knob `optional = true` if it \
         depends on a module); nothing was applied",
        path.display()
    )]
    Missing { at: Source, knob: String, path: PathBuf },

    /// Reading or writing a sysctl, limits or state file failed.
    #[error("{what} {}: {err}", path.display())]
    Io { what: &'static str, path: PathBuf, err: std::io::Error },

    /// A file held something this library cannot parse.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    /// The kernel accepted a write but kept another value.
    #[error("{knob}: wrote `{wrote}` to {} but the kernel kept `{kept}`", path.display())]
    NotTaken { knob: String, path: PathBuf, wrote: String, kept: String },

    /// A write failed part-way through an apply; the earlier writes were undone.
    #[error("{failed}; the {undone} earlier write(s) of this apply were undone")]
    RolledBack { failed: Box<Error>, undone: usize },

    /// The open-files hard limit cannot be raised by this process.
    #[error(
        "cannot raise the open-files hard limit above {hard}: needs CAP_SYS_RESOURCE \
         (wanted {wanted}); start the process with a higher limit instead: \
         `LimitNOFILE={wanted}` in its systemd unit (`cargo xtask tune apply edge-1m --persist` \
         writes it), `--ulimit nofile={wanted}:{wanted}` for a container, or `ulimit -Hn {wanted}` \
         in a root shell before starting it"
    )]
    HardLimitLocked { hard: u64, wanted: u64 },

    /// The open-files hard limit cannot exceed `fs.nr_open`, capability or not.
    #[error(
        "cannot raise the open-files hard limit to {wanted}: the kernel caps it at fs.nr_open = \
         {nr_open}; raise fs.nr_open first (`cargo xtask tune apply edge-1m`)"
    )]
    AboveNrOpen { wanted: u64, nr_open: u64 },

    /// A resource-limit system call failed for another reason.
    #[error("{call}(RLIMIT_NOFILE) failed: {err}")]
    Rlimit { call: &'static str, err: nix::Error },

    /// A named network namespace could not be entered.
    #[error("network namespace `{name}`: {message}")]
    Netns { name: String, message: String },
}
