//! The processes of a benchmark: building them, starting them (`wsbench echo`, wsgate),
//! waiting until they listen, and killing them again.
//!
//! A [`Proc`] never outlives the run that started it: it is killed and reaped on drop.
//! It only ever starts the workspace's own binaries and only binds loopback addresses.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec::{cargo, describe, exec, workspace_root};

/// Where `cargo build --release` puts binaries (respects `CARGO_TARGET_DIR`).
pub(super) fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("release")
}

/// Builds wsbench (required) and wsgate (when wanted); returns whether wsgate is usable.
pub(super) fn build(want_wsgate: bool) -> Result<bool> {
    eprintln!("bench: building wsbench …");
    exec(cargo().args(["build", "--quiet", "--release", "-p", "wsbench"]))?;
    if !want_wsgate {
        return Ok(false);
    }
    eprintln!("bench: building wsgate …");
    match exec(cargo().args(["build", "--quiet", "--release", "-p", "wsgate"])) {
        Ok(()) => Ok(true),
        Err(e) => {
            eprintln!("bench: wsgate is left out of this run: {e:#}");
            Ok(false)
        }
    }
}

/// A child process, killed and reaped on drop.
pub(super) struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    pub(super) fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("failed to start `{}`", describe(cmd)))?;
        Ok(Self { child, name: name.into() })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process already exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a master process (nginx) takes its workers down with it; SIGKILL
    /// after 5 s.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wsbench echo` and waits for its ready line; returns it with its address.
pub(super) fn start_echo(listen: SocketAddr, threads: usize) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(bin_dir().join("wsbench"));
    cmd.args(["echo", "--listen", &listen.to_string(), "--threads", &threads.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut p = Proc::spawn(&mut cmd, "wsbench echo")?;
    let stdout = p.child.stdout.take().context("echo stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).context("wsbench echo did not report ready within 10 s")?;
    let addr = line
        .strip_prefix("wsbench echo: listening on ")
        .with_context(|| format!("unexpected first line from wsbench echo: {line:?}"))?
        .parse()?;
    Ok((p, addr))
}

/// A free loopback port (bound and released; the race with other programs is accepted).
pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections.
pub(super) fn wait_port(addr: SocketAddr, p: &mut Proc) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not listen on {addr} within 15 s", p.name)
}

/// The relays `--targets wsgate` compares, as `wsgate --splice MODE` names them: the
/// userspace relay and the kernel splice. `auto` is one of them, so it is measured only
/// when asked for (`wsgate/auto`). A mode wsgate refuses to start in (the splice
/// without its capabilities) is reported and left out of the table.
pub(super) const SPLICE_MODES: [&str; 2] = ["userspace", "sockmap"];

/// The wsgate binary this workspace built (release).
pub(super) fn wsgate_bin() -> PathBuf {
    bin_dir().join("wsgate")
}

/// Starts `bin` (a wsgate binary) and waits until it listens; with `tls`, its listener
/// is a TLS listener presenting that certificate.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_wsgate(
    bin: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    workers: usize,
    splice: Option<&str>,
    max_connections: Option<u64>,
    tls: Option<&super::tls::TlsFiles>,
    log: &Path,
) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &listen.to_string(), "--workers", &workers.to_string()]);
    if let Some(t) = tls {
        cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
    }
    if let Some(n) = max_connections {
        cmd.args(["--max-connections", &n.to_string()]);
    }
    for u in upstreams {
        cmd.args(["--upstream", &u.to_string()]);
    }
    if let Some(mode) = splice {
        // `MODE+admin`: the admin plane on, on a port of its own.
        let (mode, admin) = mode.strip_suffix("+admin").map_or((mode, false), |m| (m, true));
        cmd.args(["--splice", mode]);
        if admin {
            cmd.args(["--admin", &SocketAddr::from(([127, 0, 0, 1], free_port()?)).to_string()]);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let name = splice.map_or_else(|| "wsgate".to_string(), |m| format!("wsgate --splice {m}"));
    let mut p = Proc::spawn(&mut cmd, &name)?;
    wait_port(listen, &mut p)?;
    Ok(p)
}

/// Load processes needed so that none passes its open-files limit (one file per
/// client connection).
pub(super) fn load_procs_for(conns: u64) -> u64 {
    conns.div_ceil(nofile_hard().saturating_sub(500).max(1000)).max(1)
}

pub(super) fn nofile_hard() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard)
}

/// The first of `paths` that exists; when none does and this runs as root, installs
/// Debian's `package` (as `cargo xtask test` does) and returns the first path.
pub(super) fn ensure_installed(paths: &[&str], package: &str) -> Result<PathBuf> {
    if let Some(p) = paths.iter().find(|p| Path::new(p).is_file()) {
        return Ok(p.into());
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("{package} is not installed: apt-get install {package}");
    }
    eprintln!("bench: installing {package} …");
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(paths[0].into())
}
