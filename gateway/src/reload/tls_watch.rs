//! The certificate file watch (`reload.watch_tls`): one thread of the control side
//! looks at the TLS listeners' `cert`, `key` and `ocsp` files every interval (size,
//! modification and change times, inode: a `stat`, nothing read) and compares them with
//! how the generation in force found them when it loaded them ([`Stamps`], taken just
//! before). A change that stays the same for one more interval (a file still being
//! written is not loaded) reloads the certificates
//! ([`super::Reloader::reload_certificates`]): the same build as SIGHUP, from the
//! configuration in force, published for new connections while live ones keep theirs.
//!
//! A change that does not load keeps the certificates in service and is said once (one
//! error line), not at every look; the next change is tried again. A SIGHUP reload
//! that read the new files first leaves nothing to do. Never runs on a worker, never
//! reads a certificate itself, and must never reload during the drain.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Reloader;
use crate::config::Config;
use crate::shutdown::{Phase, ShutdownRx};

/// How a file looked: what a rewrite or a rename onto it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    /// `path` now (through symbolic links); `None` when it cannot be looked at.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Every watched file with how it looked.
pub type Stamps = Vec<(PathBuf, Option<Stamp>)>;

/// The certificate, key and OCSP files of every TLS listener of `config`, in order.
pub fn files(config: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        out.extend([&tls.cert, &tls.key, &tls.ocsp].into_iter().flatten().cloned());
        for e in &tls.sni {
            out.extend([&e.cert, &e.key].into_iter().cloned().chain(e.ocsp.clone()));
        }
    }
    out
}

/// How `config`'s certificate files look now (taken before a generation reads them).
pub fn stamps(config: &Config) -> Stamps {
    look_at(files(config))
}

fn look_at(paths: impl IntoIterator<Item = PathBuf>) -> Stamps {
    paths
        .into_iter()
        .map(|p| {
            let stamp = Stamp::of(&p);
            (p, stamp)
        })
        .collect()
}

/// What the watch remembers between two looks.
#[derive(Debug, Default)]
struct Watch {
    /// Files seen changed at the last look, as they were.
    pending: Option<Stamps>,
    /// Files whose reload was refused, as they were (not tried again until they change).
    refused: Option<Stamps>,
}

impl Watch {
    /// One look: `now` how the files are, `loaded` how the generation in force read
    /// them. True when they changed and stayed so since the last look: reload.
    fn changed(&mut self, now: &Stamps, loaded: &Stamps) -> bool {
        if now == loaded || self.refused.as_ref() == Some(now) {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(now) {
            self.pending = None;
            return true;
        }
        self.pending = Some(now.clone());
        false
    }
}

/// How long the watch waits to look again while it is off (`watch_tls = "0s"`, or no
/// TLS listener): a reload may turn it on.
const OFF_RECHECK: Duration = Duration::from_secs(1);

/// Starts the watch thread; it ends at the drain.
pub fn spawn(reloader: Arc<Reloader>, shutdown: ShutdownRx) -> std::io::Result<()> {
    std::thread::Builder::new().name("wsgate-tls-watch".into()).spawn(move || run(&reloader, &shutdown))?;
    Ok(())
}

fn run(reloader: &Reloader, shutdown: &ShutdownRx) {
    let mut watch = Watch::default();
    while shutdown.phase() == Phase::Running {
        let generation = reloader.generations.current();
        let every = generation.config.reload.watch_tls;
        if every.is_zero() || generation.tls_files.is_empty() {
            watch = Watch::default();
            std::thread::sleep(OFF_RECHECK);
            continue;
        }
        let now = look_at(generation.tls_files.iter().map(|(p, _)| p.clone()));
        if watch.changed(&now, &generation.tls_files) {
            let which = changed_names(&now, &generation.tls_files);
            drop(generation);
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reloader.reload_certificates(&which)));
            if !matches!(applied, Ok(true)) {
                watch.refused = Some(now);
            }
        }
        std::thread::sleep(every);
    }
}

/// The files of `now` that differ from `loaded`, for the log line.
fn changed_names(now: &Stamps, loaded: &Stamps) -> String {
    let changed: Vec<String> =
        now.iter().zip(loaded).filter(|(n, l)| n.1 != l.1).map(|((p, _), _)| p.display().to_string()).collect();
    changed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(len: u64) -> Stamps {
        let s = Stamp { dev: 1, ino: 2, len, modified: (3, 0), changed: (3, 0) };
        vec![(PathBuf::from("/c.pem"), Some(s)), (PathBuf::from("/c.key"), None)]
    }

    #[test]
    fn a_change_reloads_once_it_stayed_put_for_one_look() {
        let (loaded, mut w) = (stamps(10), Watch::default());
        assert!(!w.changed(&loaded, &loaded));
        // Still being written: every look sees another size.
        assert!(!w.changed(&stamps(11), &loaded));
        assert!(!w.changed(&stamps(12), &loaded));
        // The same twice: reload.
        assert!(w.changed(&stamps(12), &loaded));
    }

    #[test]
    fn a_refused_change_is_not_tried_again_until_the_files_change() {
        let (loaded, mut w) = (stamps(10), Watch::default());
        assert!(!w.changed(&stamps(0), &loaded));
        assert!(w.changed(&stamps(0), &loaded));
        w.refused = Some(stamps(0));
        for _ in 0..3 {
            assert!(!w.changed(&stamps(0), &loaded));
        }
        assert!(!w.changed(&stamps(20), &loaded));
        assert!(w.changed(&stamps(20), &loaded));
    }

    #[test]
    fn files_loaded_by_another_reload_leave_nothing_to_do() {
        let mut w = Watch::default();
        assert!(!w.changed(&stamps(12), &stamps(10)));
        // A SIGHUP read them meanwhile: the generation in force has them.
        assert!(!w.changed(&stamps(12), &stamps(12)));
        assert!(!w.changed(&stamps(12), &stamps(12)));
    }

    #[test]
    fn every_certificate_key_and_staple_is_watched() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
                    [listener.tls]\ncert = \"/a.pem\"\nkey = \"/a.key\"\nocsp = \"/a.der\"\n\
                    [[listener.tls.sni]]\nnames = [\"x.test\"]\ncert = \"/x.pem\"\nkey = \"/x.key\"\n";
        let config = Config::from_toml(text).unwrap();
        let names: Vec<PathBuf> = ["/a.pem", "/a.key", "/a.der", "/x.pem", "/x.key"].map(PathBuf::from).into();
        assert_eq!(files(&config), names);
        // Missing files are looked at too (a reload of them is what says what is wrong).
        assert!(super::stamps(&config).iter().all(|(_, s)| s.is_none()));
    }
}
