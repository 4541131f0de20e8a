//! Reload: SIGHUP (or `wsgate reload`) re-reads the file the process was started
//! with, validates it as `wsgate check` does, and publishes it as a new
//! [`Generation`] for new connections; every live connection keeps the generation it
//! started with, spliced or relayed in userspace.
//!
//! - [`generation`]: what a generation holds and how it is built and published;
//! - [`listeners`]: listeners added and removed (bound before anything changes);
//! - [`restart_only`]: the sections kept until a restart, each named in a warning;
//! - [`pid_file`]: how `wsgate reload` and `wsgate drain` find the running process;
//! - [`tls_watch`]: the TLS listeners' certificate files watched, reloaded when they
//!   change (only the files: the configuration in force is built again).
//!
//! An invalid file, a certificate that does not load or a name that does not resolve
//! refuses the reload: the running generation stays, and the error is logged with its
//! field (and line). A reload closes no connection, with one exception: the
//! WebSockets of servers removed from a group with `drain_removed = true` get a Close
//! 1001 over `drain.window` (see [`crate::drain::removed`]); those of other removed
//! servers run to their natural end.

pub mod generation;
pub mod listeners;
pub mod pid_file;
mod restart_only;
pub mod tls_watch;

use std::sync::{Arc, Mutex};

pub use generation::{BuildError, Generation, Generations};

use crate::admission::Admission;
use crate::config::{CliOptions, ConfigError};
use crate::metrics::Metrics;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Listeners(String),
    #[error("{0}")]
    Build(#[from] BuildError),
}

/// Everything a reload reads and writes.
#[derive(Debug)]
pub struct Reloader {
    /// Where the configuration came from (file and command-line overrides), read again
    /// on each reload.
    pub source: CliOptions,
    pub generations: Generations,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    /// The workers' listeners, which a reload may add to or remove from.
    pub listeners: listeners::Listeners,
    /// Held by each reload, so two (a SIGHUP and the file watch) never both build on
    /// the same generation and publish over each other.
    serial: Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: CliOptions,
        generations: Generations,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        listeners: listeners::Listeners,
    ) -> Self {
        Self { source, generations, admission, metrics, listeners, serial: Mutex::new(()) }
    }

    /// One reload, from the service manager's `RELOADING=1` to its `READY=1`.
    /// Blocking (files, name resolution): runs off the data plane.
    pub fn reload(&self) {
        crate::systemd::reloading();
        let serial = self.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = self.try_reload();
        drop(serial);
        let status = match result {
            Ok(g) => {
                self.metrics.reloads.applied(g);
                tracing::info!(
                    generation = g,
                    "configuration reloaded: new connections use generation {g}; live ones keep theirs"
                );
                format!("configuration generation {g}")
            }
            Err(e) => {
                self.metrics.reloads.refused();
                let running = self.generations.current().number;
                tracing::error!(generation = running, "reload refused, still running generation {running}: {e}");
                format!("reload refused (running generation {running}): {e}")
            }
        };
        crate::systemd::reloaded(&status);
    }

    /// The certificate files of the configuration in force changed (`which`, for the
    /// log): builds the next generation from the same configuration, which reads them
    /// again, and publishes it for new connections; live ones keep theirs. Counted with
    /// the reloads. A file that does not load keeps the generation in force, said in one
    /// error line. Blocking: for the watch thread. Returns whether it was applied.
    pub fn reload_certificates(&self, which: &str) -> bool {
        let serial = self.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.generations.current();
        let built = Generation::build(old.number + 1, old.config.clone(), Some(&old));
        drop(old);
        match built {
            Ok(next) => {
                let number = self.put_in_force(next);
                self.metrics.reloads.applied(number);
                tracing::info!(
                    generation = number,
                    "certificate files changed ({which}): certificates reloaded; new connections use generation {number}, live ones keep theirs"
                );
                drop(serial);
                true
            }
            Err(e) => {
                drop(serial);
                self.metrics.reloads.refused();
                let running = self.generations.current().number;
                tracing::error!(
                    generation = running,
                    "certificate files changed ({which}) but do not load; still serving those of generation {running}: {e}"
                );
                false
            }
        }
    }

    fn try_reload(&self) -> Result<u64, ReloadError> {
        let config = self.source.load()?;
        let old = self.generations.current();
        let listeners = self.listeners.plan(&old.config, &config).map_err(ReloadError::Listeners)?;
        let next = Generation::build(old.number + 1, Arc::new(config), Some(&old))?;
        let number = next.number;
        // Said once the new generation is sure to be applied.
        for section in restart_only::kept_until_restart(&old.config, &next.config) {
            tracing::warn!("reload: `{section}` changed; it keeps its start value until wsgate restarts");
        }
        if crate::admin::route_labels(&old.config.routes) != crate::admin::route_labels(&next.config.routes) {
            tracing::warn!(
                "reload: routes changed; new connections follow them, but the per-route metrics keep the labels of the routes at start until wsgate restarts"
            );
        }
        // The servers the new configuration removed from groups that drain them.
        let removed: Vec<_> = next
            .groups
            .iter()
            .filter(|g| g.drain_removed)
            .filter_map(|g| old.group(&g.name).map(|before| g.removed_since(before)))
            .flatten()
            .collect();
        self.admission.set_global_limit(next.config.limits.max_connections);
        self.put_in_force(next);
        self.listeners.apply(listeners);
        if !removed.is_empty() {
            let planned = self.generations.removals.announce(&removed);
            tracing::info!(
                generation = number,
                servers = removed.len(),
                connections = planned,
                "reload: {} upstream server(s) removed from groups with drain_removed; their WebSockets close with 1001 over drain.window",
                removed.len()
            );
        }
        Ok(number)
    }

    /// Publishes `next` for new connections, then starts its health checks and name
    /// resolution (they run while it is in force). Returns its number.
    fn put_in_force(&self, next: Generation) -> u64 {
        let number = next.number;
        let tenure = self.generations.tenure(number);
        self.generations.publish(next);
        if let Err(e) = self.generations.current().start_background(&tenure) {
            tracing::error!(error = %e, "reload: the health checks or name resolution of generation {number} did not start");
        }
        number
    }
}
