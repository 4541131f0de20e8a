//! Process shutdown as a small state broadcast on a `watch` channel.
//!
//! SIGTERM/SIGINT → `Draining`: listeners stop accepting, each WebSocket is closed at
//! its turn in the paced drain (`drain`, with the reason "drain") and other
//! connections continue; then → `Stop`: every connection left is closed with the
//! reason "shutdown". A second signal goes straight to `Stop`. Data-plane threads only
//! read the channel; the signal thread is the only writer. SIGHUP reloads the
//! configuration (`reload`), one reload at a time, until the drain starts. SIGUSR1
//! asks the access log to reopen its file; SIGUSR2 starts a binary upgrade (`upgrade`:
//! `Handing` while the live WebSockets move to the new process, then `Draining` for
//! what could not move); SIGALRM is logged and ignored, never fatal.

use std::time::Duration;

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// A binary upgrade: not accepting (the new process accepts on the same
    /// sockets); WebSockets pass to the new process at their next quiet moment.
    Handing,
    /// Not accepting; established connections finish.
    Draining,
    /// Close everything now.
    Stop,
}

/// The receiving side, cloned into every worker and connection.
#[derive(Debug, Clone)]
pub struct ShutdownRx(watch::Receiver<Phase>);

impl ShutdownRx {
    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&mut self, phase: Phase) {
        // An error means the sender is gone, which only happens when the process exits.
        let _ = self.0.wait_for(|p| *p >= phase).await;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// Resolves at the next change of phase (`false`: the sender is gone, and none
    /// can come).
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// The sending side, owned by the signal thread (and lent to a binary upgrade).
#[derive(Debug, Clone)]
pub struct ShutdownTx(std::sync::Arc<watch::Sender<Phase>>);

impl ShutdownTx {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// `Running` → `Handing` (a binary upgrade hands over); false when a signal
    /// started the drain first.
    pub fn begin_handing(&self) -> bool {
        self.0.send_if_modified(|p| {
            let running = *p == Phase::Running;
            if running {
                *p = Phase::Handing;
            }
            running
        })
    }

    pub fn set(&self, phase: Phase) {
        self.0.send_if_modified(|p| {
            let changed = phase > *p;
            if changed {
                *p = phase;
            }
            changed
        });
    }
}

/// A new channel in `Running`.
pub fn channel() -> (ShutdownTx, ShutdownRx) {
    let (tx, rx) = watch::channel(Phase::Running);
    (ShutdownTx(std::sync::Arc::new(tx)), ShutdownRx(rx))
}

/// Signals that would end the process by default and mean nothing to wsgate: each is
/// logged and ignored.
const IGNORED: [(libc::c_int, &str); 1] = [(libc::SIGALRM, "SIGALRM: ignored")];

/// Runs on its own thread: turns SIGTERM/SIGINT into phases. Says so on `installed` once
/// its handlers replace the default action (which kills the process). Returns when
/// `Stop` is set: `stop_after` after the first signal, or at a second one.
pub fn signal_thread(
    tx: &ShutdownTx,
    stop_after: Duration,
    reloader: std::sync::Arc<crate::reload::Reloader>,
    upgrade: crate::upgrade::parent::Context,
    installed: &std::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SIGUSR1 (logrotate): reopen the access log file; it must not end the process.
        let mut usr1 = signal(SignalKind::user_defined1())?;
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the access log");
                crate::accesslog::request_reopen();
            }
        });
        // SIGHUP: reload, one at a time (signals that arrive meanwhile make one more),
        // off this thread's runtime so a SIGTERM is still heard during a slow reload.
        let mut hup = signal(SignalKind::hangup())?;
        let draining = tx.0.subscribe();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if *draining.borrow() != Phase::Running {
                    tracing::warn!("SIGHUP: draining; the configuration is not reloaded");
                    continue;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let r = reloader.clone();
                if tokio::task::spawn_blocking(move || r.reload()).await.is_err() {
                    tracing::error!("the reload panicked; still running the previous configuration");
                }
            }
        });
        // SIGUSR2: a binary upgrade, one at a time, off this thread's runtime too.
        let mut usr2 = signal(SignalKind::user_defined2())?;
        tokio::spawn(async move {
            while usr2.recv().await.is_some() {
                tracing::info!("SIGUSR2: binary upgrade");
                let ctx = upgrade.clone();
                match tokio::task::spawn_blocking(move || crate::upgrade::parent::run(&ctx)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e @ crate::upgrade::parent::UpgradeError::Draining { .. })) => {
                        tracing::warn!("binary upgrade not done: {e}");
                    }
                    Ok(Err(e)) => tracing::error!("binary upgrade not done, this process keeps every connection: {e}"),
                    Err(_) => tracing::error!("the binary upgrade panicked"),
                }
            }
        });
        for (raw, what) in IGNORED {
            let mut s = signal(SignalKind::from_raw(raw))?;
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::warn!("{what}");
                }
            });
        }
        let _ = installed.send(());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(
            stop_secs = stop_after.as_secs_f64(),
            "shutdown signal: not accepting; closing the WebSockets over drain.window (send it again to stop at once)"
        );
        tx.set(Phase::Draining);
        crate::systemd::stopping();
        tokio::select! {
            () = tokio::time::sleep(stop_after) => tracing::info!("drain period over: closing remaining connections"),
            _ = term.recv() => tracing::info!("second signal: closing all connections"),
            _ = int.recv() => tracing::info!("second signal: closing all connections"),
        }
        tx.set(Phase::Stop);
        Ok(())
    })
}
