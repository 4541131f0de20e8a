//! The one way the integration tests start the real `wsgate` binary: a builder for
//! its configuration (a TOML file or the one-line form), flags, environment and user,
//! and a handle that collects its stdout (ready line, access log) and stderr
//! (diagnostics) with the time each line came.
//!
//! Every wait is bounded in time; the process is killed on drop, and its diagnostics
//! are printed when the test is failing. It never starts anything but `wsgate`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long wsgate may take to print its ready line on a loaded machine.
const START_WITHIN: Duration = Duration::from_secs(20);
/// How long a test waits for an access-log or diagnostics line.
const LINE_WITHIN: Duration = Duration::from_secs(10);
/// The line wsgate prints on stdout once it accepts connections.
const READY: &str = "wsgate: listening on ";

/// What a wsgate process is started with; see [`Gateway::builder`].
#[derive(Debug, Default)]
pub struct GatewayBuilder {
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_level: Option<String>,
    unprivileged: bool,
    passed: Option<std::os::fd::OwnedFd>,
}

impl GatewayBuilder {
    /// A TOML configuration (its listener must be 127.0.0.1:0), passed with `-c`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// The one-line form: `--listen 127.0.0.1:0` and one `--upstream` per address.
    pub fn one_line(mut self, upstreams: &[SocketAddr]) -> Self {
        self.args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        for u in upstreams {
            self.args.extend(["--upstream".to_owned(), u.to_string()]);
        }
        self
    }

    /// More command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `RUST_LOG` of the process (default: the test's own `RUST_LOG`, else `warn`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_owned());
        self
    }

    /// Passes `socket` as a service manager would (socket activation): descriptor 3,
    /// `LISTEN_FDS=1`, `LISTEN_FDNAMES=web` and `LISTEN_PID` the process's own pid (set
    /// by a shell that then execs wsgate, so the pid is wsgate's). The test keeps its
    /// own copy of the socket.
    pub fn pass_listener(mut self, socket: &std::net::TcpListener) -> Self {
        self.passed = Some(socket.try_clone().unwrap().into());
        self
    }

    /// Runs the process as `nobody` (no capabilities).
    pub fn unprivileged(mut self) -> Self {
        self.unprivileged = true;
        self
    }

    /// Starts wsgate and waits for its ready line; panics (with its diagnostics) when
    /// it exits or stays silent instead.
    pub fn start(self) -> Gateway {
        match self.start_or_exit() {
            Ok(gw) => gw,
            Err(exited) => panic!("wsgate did not start ({}); stderr:\n{}", exited.status, exited.stderr.join("\n")),
        }
    }

    /// Starts wsgate and waits for its ready line or its exit, whichever comes first.
    pub fn start_or_exit(self) -> Result<Gateway, Exited> {
        let dir = TempDir::new();
        let mut cmd = match &self.passed {
            // `nobody` may not reach the build's binary (a checkout under a 0700
            // directory, as `mktemp -d` makes): it runs a copy in the test's directory.
            None if self.unprivileged => {
                let bin = dir.0.join("wsgate");
                std::fs::copy(env!("CARGO_BIN_EXE_wsgate"), &bin).expect("copy wsgate for nobody");
                Command::new(bin)
            }
            None => Command::new(env!("CARGO_BIN_EXE_wsgate")),
            Some(fd) => {
                let mut sh = Command::new("/bin/sh");
                sh.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" \"$@\""]);
                sh.arg(env!("CARGO_BIN_EXE_wsgate"));
                let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
                // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child
                // between fork and exec. Descriptor 3 is left without close-on-exec
                // (dup2 onto itself would keep the flag, so it is cleared).
                unsafe {
                    sh.pre_exec(move || {
                        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
                        nix::unistd::dup2(raw, 3)?;
                        fcntl(3, FcntlArg::F_SETFD(FdFlag::empty()))?;
                        Ok(())
                    });
                }
                sh
            }
        };
        if let Some(toml) = &self.config {
            let path = dir.0.join("wsgate.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("-c").arg(path);
        }
        let level = self.log_level.or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "warn".into());
        cmd.args(&self.args).envs(self.env).env("RUST_LOG", level).stdout(Stdio::piped()).stderr(Stdio::piped());
        if self.unprivileged {
            cmd.uid(65_534).gid(65_534);
        }
        let mut child = cmd.spawn().expect("start wsgate");
        let (ready_tx, ready_rx) = mpsc::channel();
        let out = collect(child.stdout.take().unwrap(), Some(ready_tx));
        let err = collect(child.stderr.take().unwrap(), None);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(addr) = ready_rx.recv_timeout(Duration::from_millis(20)) {
                return Ok(Gateway { child, addr, out, err, _dir: dir });
            }
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader take the last lines of the closed pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Err(Exited { status, stderr: texts(&err) });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsgate printed no ready line within {START_WITHIN:?}: {:#?}", texts(&err));
            }
        }
    }
}

/// A wsgate that exited instead of listening.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: Vec<String>,
}

/// Lines of one stream, each with the time it was read.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// Reads `stream` line by line on a thread; the ready line goes to `ready` instead.
fn collect(stream: impl std::io::Read + Send + 'static, ready: Option<mpsc::Sender<SocketAddr>>) -> Lines {
    let lines = Lines::default();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            match (&ready, line.strip_prefix(READY)) {
                (Some(tx), Some(addr)) => {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
                _ => l.lock().unwrap().push((Instant::now(), line)),
            }
        }
    });
    lines
}

/// A running wsgate process; killed on drop.
pub struct Gateway {
    child: Child,
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// Access-log lines (stdout, without the ready line).
    out: Lines,
    /// Diagnostics (stderr).
    err: Lines,
    _dir: TempDir,
}

impl Gateway {
    /// What to start; end with [`GatewayBuilder::start`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// wsgate with a TOML configuration and more arguments.
    pub fn with_config(toml: &str, extra_args: &[&str]) -> Self {
        Self::builder().config(toml).args(extra_args).start()
    }

    /// wsgate in its one-line form, two workers, in front of `upstreams`.
    pub fn one_line(upstreams: &[SocketAddr], extra_args: &[&str]) -> Self {
        Self::builder().one_line(upstreams).args(&["--workers", "2"]).args(extra_args).start()
    }

    /// Access-log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        texts(&self.out)
    }

    /// Waits (bounded) until an access-log line contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_any(&[needle])
    }

    /// Waits (bounded) until an access-log line contains one of `needles`.
    pub fn wait_log_any(&self, needles: &[&str]) -> String {
        let (_, line) = wait_for(&self.out, "access-log", needles, 1, LINE_WITHIN);
        line
    }

    /// When each diagnostics line containing `needle` came, so far.
    pub fn stderr_times(&self, needle: &str) -> Vec<Instant> {
        self.err.lock().unwrap().iter().filter(|(_, l)| l.contains(needle)).map(|(t, _)| *t).collect()
    }

    /// Diagnostics lines so far.
    pub fn stderr(&self) -> Vec<String> {
        texts(&self.err)
    }

    /// Waits (bounded) for a diagnostics line containing `needle`; returns when it came.
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> Instant {
        self.wait_stderr_count(needle, 1, within)
    }

    /// Waits (bounded) until `n` diagnostics lines contain `needle`; returns when the
    /// n-th came.
    pub fn wait_stderr_count(&self, needle: &str, n: usize, within: Duration) -> Instant {
        wait_for(&self.err, "stderr", &[needle], n, within).0
    }

    /// Diagnostics lines containing `needle` that came after `since`.
    pub fn stderr_since(&self, since: Instant, needle: &str) -> Vec<String> {
        let lines = self.err.lock().unwrap();
        lines.iter().filter(|(t, l)| *t > since && l.contains(needle)).map(|(_, l)| l.clone()).collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (bounded) for the process to exit; returns its exit success.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "wsgate did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw client connection with a read timeout.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("wsgate stderr:\n{}", self.stderr().join("\n"));
        }
    }
}

fn texts(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
}

/// Waits until `n` lines contain one of `needles`; returns the n-th and when it came.
fn wait_for(lines: &Lines, what: &str, needles: &[&str], n: usize, within: Duration) -> (Instant, String) {
    let deadline = Instant::now() + within;
    loop {
        let found = {
            let lines = lines.lock().unwrap();
            lines.iter().filter(|(_, l)| needles.iter().any(|x| l.contains(x))).nth(n - 1).cloned()
        };
        if let Some(hit) = found {
            return hit;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} {what} lines containing {needles:?} within {within:?}; got {:#?}",
            texts(lines)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
