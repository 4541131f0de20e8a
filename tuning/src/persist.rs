//! `--persist`: the files that make a profile survive a reboot, an `/etc/sysctl.d/` file with
//! the sysctl values and a systemd drop-in with `LimitNOFILE` for the wsgate unit. Renders
//! them from a [`Plan`], and writes them after remembering what they held in the state file.
//! Writes only the two paths it is given; never reloads systemd or runs `sysctl --system`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::catalogue::NOFILE;
use crate::error::Error;
use crate::profile::Profile;
use crate::state::{SavedFile, State};
use crate::value::Field;
use crate::{Plan, Step};

/// Where the persisted files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistPaths {
    /// The sysctl.d file.
    pub sysctl_conf: PathBuf,
    /// The systemd drop-in of the wsgate unit.
    pub nofile_dropin: PathBuf,
}

impl PersistPaths {
    /// The real locations.
    pub fn system() -> Self {
        Self::under(Path::new("/"))
    }

    /// The same layout under `root` (for a scratch directory).
    pub fn under(root: &Path) -> Self {
        Self {
            sysctl_conf: root.join("etc/sysctl.d/90-wsgate.conf"),
            nofile_dropin: root.join("etc/systemd/system/wsgate.service.d/90-wsgate-nofile.conf"),
        }
    }
}

/// The persisted files of `plan` (made from `profile`) and their contents.
pub fn render(profile: &Profile, plan: &Plan, paths: &PersistPaths) -> Vec<(PathBuf, String)> {
    let header = format!(
        "# Written by `cargo xtask tune apply {} --persist`; `cargo xtask tune revert` restores \
         what was here.\n",
        profile.name
    );
    let mut conf = header.clone();
    for step in &plan.steps {
        let (knob, value) = match step {
            Step::Write(w) => (&w.knob, w.to.to_string()),
            Step::AlreadyOk { knob, actual } if knob != NOFILE => (knob, actual.to_string()),
            _ => continue,
        };
        if let Some(k) = profile.knobs.iter().find(|k| &k.name == knob) {
            // `-`: systemd-sysctl skips the key quietly if its module is not loaded at boot.
            let quiet = if k.optional { "-" } else { "" };
            let _ = writeln!(conf, "# {}\n{quiet}{knob} = {value}", k.why);
        }
    }
    let mut files = vec![(paths.sysctl_conf.clone(), conf)];
    let nofile = profile.knobs.iter().find(|k| k.name == NOFILE);
    if let Some(Field::Int(n)) = nofile.and_then(|k| k.want.0.first()) {
        files.push((paths.nofile_dropin.clone(), format!("{header}[Service]\nLimitNOFILE={n}\n")));
    }
    files
}

/// Remembers what each file held in `state_file`, then writes it.
pub fn write(files: &[(PathBuf, String)], state_file: &Path) -> Result<(), Error> {
    let mut state = State::load(state_file)?;
    for (path, _) in files {
        let previous = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(Error::Io { what: "cannot read", path: path.clone(), err });
            }
        };
        state.remember_file(SavedFile { path: path.clone(), previous });
    }
    state.save(state_file)?;
    for (path, text) in files {
        let io = |err| Error::Io { what: "cannot write", path: path.clone(), err };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, text).map_err(io)?;
    }
    Ok(())
}
