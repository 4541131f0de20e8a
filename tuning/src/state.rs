//! The state file: the values `apply` replaced and the files `--persist` overwrote, so that
//! `revert` restores exactly them. Saved before anything is written, so an apply cut short
//! can still be reverted. Reads and writes only the state file itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalogue::Scope;
use crate::error::Error;

/// Where `cargo xtask tune` keeps its state unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/wsgate/tuning-state.toml";

/// Everything `revert` needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sysctl values replaced, oldest first.
    #[serde(default)]
    pub sysctl: Vec<SavedSysctl>,
    /// Files written by `--persist`, oldest first.
    #[serde(default)]
    pub file: Vec<SavedFile>,
}

/// A sysctl value as it was before the first apply that changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSysctl {
    /// Sysctl name.
    pub name: String,
    /// `netns` or `global`.
    pub scope: String,
    /// The sysctl root it was written under.
    pub root: PathBuf,
    /// The named network namespace it was written in (absent: the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The value before.
    pub previous: String,
    /// The profile that changed it.
    pub profile: String,
}

/// A file as it was before `--persist` wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// The file.
    pub path: PathBuf,
    /// Its contents before (absent: it did not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl SavedSysctl {
    /// The scope as recorded.
    pub fn scope(&self) -> Option<Scope> {
        Scope::parse(&self.scope)
    }

    fn same_place(&self, other: &Self) -> bool {
        self.name == other.name && self.root == other.root && self.netns == other.netns
    }
}

impl State {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                message: format!("not a tuning state file: {}", e.message().trim()),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(Error::Io { what: "cannot read state file", path: path.to_path_buf(), err }),
        }
    }

    /// Saves the state file (write to a temporary file, then rename); an empty state removes
    /// the file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |what, err| Error::Io { what, path: path.to_path_buf(), err };
        if self.is_empty() {
            return match std::fs::remove_file(path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io("cannot remove state file", err)),
                _ => Ok(()),
            };
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        let text =
            toml::to_string(self).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| io("cannot write state file", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("cannot write state file", e))
    }

    /// Whether there is nothing to revert.
    pub fn is_empty(&self) -> bool {
        self.sysctl.is_empty() && self.file.is_empty()
    }

    /// Remembers a sysctl's value before a write; a value already remembered for the same
    /// place is kept, since it is the one from before the first apply.
    pub fn remember_sysctl(&mut self, saved: SavedSysctl) {
        if !self.sysctl.iter().any(|s| s.same_place(&saved)) {
            self.sysctl.push(saved);
        }
    }

    /// Remembers a file's contents before a write; the first contents remembered are kept.
    pub fn remember_file(&mut self, saved: SavedFile) {
        if !self.file.iter().any(|f| f.path == saved.path) {
            self.file.push(saved);
        }
    }
}
