//! The Kubernetes manifests (`deploy/kubernetes/`) checked offline: they validate
//! against the Kubernetes API schemas (`kubernetes-validate`, strict), the ConfigMap's
//! `wsgate.toml` passes `wsgate check`, the probes point at admin endpoints a running
//! wsgate answers (on the admin port the ConfigMap sets), and the grace period is above
//! the drain.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec::{exec, workspace_root};

const MANIFESTS: &[&str] = &["deploy/kubernetes/daemonset.yaml", "deploy/kubernetes/configmap.yaml"];

/// `kubernetes-validate` (PyPI) and its PyYAML, installed under `target/` (never into the system).
fn python_deps() -> Result<PathBuf> {
    let dir = workspace_root().join("target/pydeps");
    if !dir.join("kubernetes_validate").is_dir() {
        exec(
            Command::new("/usr/bin/python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("kubernetes-validate==1.37.0"),
        )?;
    }
    Ok(dir)
}

fn python(deps: &Path) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.env("PYTHONPATH", deps);
    cmd
}

pub fn run(wsgate: &Path) -> Result<()> {
    let root = workspace_root();
    let deps = python_deps()?;
    exec(python(&deps).args(["-m", "kubernetes_validate", "--strict"]).args(MANIFESTS.iter().map(|m| root.join(m))))?;
    let out = python(&deps)
        .arg(root.join("deploy/kubernetes/facts.py"))
        .args(MANIFESTS.iter().map(|m| root.join(m)))
        .output()
        .context("running facts.py")?;
    if !out.status.success() {
        bail!("reading the manifests: {}", String::from_utf8_lossy(&out.stderr));
    }
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let config = facts["config"].as_str().context("ConfigMap without wsgate.toml")?;
    let file = root.join("target/deploy-check.toml");
    std::fs::write(&file, config)?;
    exec(Command::new(wsgate).arg("check").arg("-c").arg(&file))?;

    let admin: toml::Value = toml::from_str(config)?;
    let listen: SocketAddr = admin["admin"]["listen"].as_str().context("no [admin] listen")?.parse()?;
    let drain = admin["timeouts"]["drain"].as_str().unwrap_or("30s");
    let drain_secs: u64 = drain.trim_end_matches('s').parse().context("drain in whole seconds")?;
    if facts["grace"].as_u64().unwrap_or(0) <= drain_secs {
        bail!("terminationGracePeriodSeconds {} is not above the drain ({drain})", facts["grace"]);
    }
    check_pre_stop(&facts, &admin)?;
    let probes = facts["probes"].as_object().context("no probes")?;
    for (kind, p) in probes {
        if p["port"].as_u64() != Some(u64::from(listen.port())) || p["host"].as_str() != Some(&listen.ip().to_string())
        {
            bail!("{kind} probes {}:{} but the admin plane listens on {listen}", p["host"], p["port"]);
        }
    }
    // The probed paths exist: a wsgate with the admin plane on answers them (not 404).
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut child = Command::new(wsgate)
        .args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--splice", "userspace", "--admin"])
        .arg(admin_addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wsgate")?;
    let answers: Result<Vec<(String, u16)>> =
        probes.values().map(|p| Ok((p["path"].as_str().unwrap_or("").to_owned(), status(admin_addr, p)?))).collect();
    let _ = child.kill();
    let _ = child.wait();
    for (path, code) in answers? {
        if !(code == 200 || code == 503) {
            bail!("the probe path {path} answers {code}");
        }
    }
    eprintln!("xtask: manifests valid (strict), ConfigMap config valid, probes answered, grace above drain");
    Ok(())
}

/// The preStop hook is `wsgate drain … --wait` (so the kubelet's SIGTERM that follows
/// does not cut the drain short), ends within the grace period, and finds the pid file
/// on a writable mount (the root file system is read-only).
fn check_pre_stop(facts: &serde_json::Value, config: &toml::Value) -> Result<()> {
    let command: Vec<&str> =
        facts["pre_stop"].as_array().context("no preStop")?.iter().filter_map(serde_json::Value::as_str).collect();
    if command.get(1) != Some(&"drain") || !command.contains(&"--wait") {
        bail!("the preStop hook must run `wsgate drain --wait`, not {command:?}");
    }
    let timeout = command.iter().position(|a| *a == "--wait-timeout").and_then(|i| command.get(i + 1));
    let timeout: u64 = timeout.unwrap_or(&"120s").trim_end_matches('s').parse().context("--wait-timeout in seconds")?;
    if facts["grace"].as_u64().unwrap_or(0) <= timeout {
        bail!("the preStop wait ({timeout} s) is not within terminationGracePeriodSeconds {}", facts["grace"]);
    }
    let pid_file = config.get("pid_file").and_then(toml::Value::as_str).context("the ConfigMap sets no pid_file")?;
    let writable = facts["writable"].as_array().context("no mounts")?;
    if !writable.iter().filter_map(serde_json::Value::as_str).any(|m| Path::new(pid_file).starts_with(m)) {
        bail!("pid_file {pid_file} is on no writable mount of the wsgate container");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The status code of `GET path` on `addr`, retrying while wsgate starts (15 s).
fn status(addr: SocketAddr, probe: &serde_json::Value) -> Result<u16> {
    let path = probe["path"].as_str().context("probe without path")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            if let Some(code) = code {
                return Ok(code);
            }
        }
        if Instant::now() > deadline {
            bail!("no answer to GET {path} on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
