//! Reload: SIGHUP (or `wsgate reload`) re-reads the file the process was started
//! with, validates it as `wsgate check` does, and publishes it as a new
//! [`Generation`] for new connections; every live connection keeps the generation it
//! started with, spliced or relayed in userspace.
//!
//! - [`generation`]: what a generation holds and how it is built and published;
//! - [`listeners`]: listeners added and removed (bound before anything changes);
//! - [`restart_only`]: the sections kept until a restart, each named in a warning;
//! - [`pid_file`]: how `wsgate reload` and `wsgate drain` find the running process.
//!
//! An invalid file, a certificate that does not load or a name that does not resolve
//! refuses the reload: the running generation stays, and the error is logged with its
//! field (and line). A reload never closes a connection: the WebSockets of servers
//! the new configuration removed run to their natural end.

pub mod generation;
pub mod listeners;
pub mod pid_file;
mod restart_only;

use std::sync::Arc;

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
}

impl Reloader {
    /// One reload, from the service manager's `RELOADING=1` to its `READY=1`.
    /// Blocking (files, name resolution): runs off the data plane.
    pub fn reload(&self) {
        crate::systemd::reloading();
        let status = match self.try_reload() {
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
        self.admission.set_global_limit(next.config.limits.max_connections);
        // Published first: the new health checks run while this generation is in force.
        let tenure = self.generations.tenure(number);
        self.generations.publish(next);
        self.listeners.apply(listeners);
        if let Err(e) = self.generations.current().start_background(&tenure) {
            tracing::error!(error = %e, "reload: the health checks or name resolution of generation {number} did not start");
        }
        Ok(number)
    }
}
