//! The service manager's side (systemd `Type=notify`): `READY=1` once every listener
//! listens and the splice self-test ran, `RELOADING=1` (with `MONOTONIC_USEC=`) then
//! `READY=1` around a reload, `STOPPING=1` when the drain starts, and a `STATUS=` line
//! with the live connections while running.
//!
//! Every message is a datagram to `$NOTIFY_SOCKET`; without it (not under systemd)
//! each call is a no-op. Must never block or fail the data plane: a notification that
//! cannot be sent is logged once at debug level and otherwise ignored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::stats::Stats;

/// How often `STATUS=` is refreshed under a service manager.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "service manager notification not sent");
    }
}

/// Whether a service manager listens for notifications.
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Every listener listens, the workers run: the service is up.
pub fn ready(listeners: usize, workers: usize) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("listening on {listeners} address(es), {workers} workers")),
    ]);
}

/// A reload starts: the service manager shows the unit as reloading until
/// [`reloaded`].
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
        Err(e) => {
            tracing::debug!(error = %e, "no monotonic clock for MONOTONIC_USEC");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]);
        }
    }
}

/// The reload is over (applied or refused, as `status` says): the service is up.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain started: the service manager shows the unit as stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Keeps `STATUS=` current (active connections, accepted so far) while a service
/// manager listens; starts nothing otherwise.
pub fn spawn_status(stats: Arc<Stats>) -> std::io::Result<()> {
    if !managed() {
        return Ok(());
    }
    std::thread::Builder::new().name("wsgate-notify".into()).spawn(move || {
        loop {
            std::thread::sleep(STATUS_PERIOD);
            let active = stats.active.load(Ordering::Relaxed);
            let accepted = stats.accepted.load(Ordering::Relaxed);
            send(&[NotifyState::Status(&format!("{active} active connections, {accepted} accepted"))]);
        }
    })?;
    Ok(())
}

/// A binary upgrade: the new process `pid` is the service's main process from now on
/// (its notifications count; this one exits once it holds nothing).
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid), NotifyState::Ready, NotifyState::Status("binary upgrade: handing over")]);
}
