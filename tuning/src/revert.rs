//! Reverting: writes back every value the state file remembers, newest first, each in the
//! network namespace it was changed in, and puts back (or removes) every file `--persist`
//! wrote. Entries are dropped from the state file as they are restored, so a revert cut short
//! can be run again. Touches only what the state file names.

use std::path::Path;

use crate::error::Error;
use crate::netns;
use crate::state::{SavedFile, SavedSysctl, State};
use crate::sysctl;

/// One thing restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// A sysctl value written back.
    Sysctl(SavedSysctl),
    /// A sysctl that lived in a network namespace that no longer exists (nothing to do).
    NamespaceGone(SavedSysctl),
    /// A file put back as it was (or removed, if `--persist` created it).
    File(SavedFile),
}

/// Restores everything `state_file` remembers, calling `on_restore` after each, and removes
/// the state file once it is empty. Returns how many things were restored.
pub fn revert(state_file: &Path, mut on_restore: impl FnMut(&Restored)) -> Result<usize, Error> {
    let mut state = State::load(state_file)?;
    let mut count = 0;
    while let Some(saved) = state.file.last().cloned() {
        if let Err(e) = restore_file(&saved) {
            state.save(state_file)?;
            return Err(e);
        }
        state.file.pop();
        count += 1;
        on_restore(&Restored::File(saved));
    }
    while let Some(saved) = state.sysctl.last().cloned() {
        let done = match &saved.netns {
            Some(name) if !netns::exists(name) => Ok(Restored::NamespaceGone(saved.clone())),
            Some(name) => {
                netns::run_in(name, || write_back(&saved)).and_then(|r| r).map(|()| Restored::Sysctl(saved.clone()))
            }
            None => write_back(&saved).map(|()| Restored::Sysctl(saved.clone())),
        };
        match done {
            Ok(restored) => {
                state.sysctl.pop();
                count += 1;
                on_restore(&restored);
            }
            Err(e) => {
                state.save(state_file)?;
                return Err(e);
            }
        }
    }
    state.save(state_file)?;
    Ok(count)
}

fn write_back(saved: &SavedSysctl) -> Result<(), Error> {
    sysctl::write(&saved.root, &saved.name, &saved.previous)
}

fn restore_file(saved: &SavedFile) -> Result<(), Error> {
    let io = |what, err| Error::Io { what, path: saved.path.clone(), err };
    match &saved.previous {
        Some(text) => std::fs::write(&saved.path, text).map_err(|e| io("cannot restore", e)),
        None => match std::fs::remove_file(&saved.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("cannot remove", e)),
            _ => Ok(()),
        },
    }
}
