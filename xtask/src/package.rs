//! `cargo xtask package`: the Debian package of wsgate (`dpkg-deb`, no other tool): the
//! release binary, `/etc/wsgate/wsgate.toml` (a conffile: the documented example), the
//! tuning profiles (`wsgate tune …` needs no source tree), the systemd units, the README,
//! and maintainer scripts that never lose a modified configuration (`deploy/debian/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec::{cargo, exec, workspace_root};

/// Options of `cargo xtask package`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Directory for the `.deb` [default: target/package].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead: install the package on this machine, check, upgrade and purge it (root;
    /// the test suite's package step).
    #[arg(long, conflicts_with = "out")]
    pub install_check: bool,
    /// Instead: check the Kubernetes manifests offline (schemas, their config, probes).
    #[arg(long, conflicts_with_all = ["out", "install_check"])]
    pub check_manifests: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.install_check {
        return install_check();
    }
    if opts.check_manifests {
        exec(cargo().args(["build", "--release", "-p", "wsgate"]))?;
        return crate::deploy_check::run(&workspace_root().join("target/release/wsgate"));
    }
    let out = opts.out.clone().unwrap_or_else(|| workspace_root().join("target/package"));
    exec(cargo().args(["build", "--release", "-p", "wsgate"]))?;
    let deb = build(&out, env!("CARGO_PKG_VERSION"))?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package of version `version` into `out` from the release binary already
/// built; returns its path.
pub fn build(out: &Path, version: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?;
    let stage = out.join(format!("wsgate_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        std::fs::create_dir_all(dest.parent().unwrap_or(&stage))?;
        std::fs::copy(from, &dest).with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    put(&root.join("target/release/wsgate"), "usr/bin/wsgate", 0o755)?;
    put(&root.join("gateway/wsgate.example.toml"), "etc/wsgate/wsgate.toml", 0o640)?;
    for unit in ["wsgate.service", "wsgate-tune.service", "wsgate.socket"] {
        put(&root.join("deploy/systemd").join(unit), &format!("lib/systemd/system/{unit}"), 0o644)?;
    }
    for entry in std::fs::read_dir(root.join("tuning/profiles"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            put(&path, &format!("usr/share/wsgate/profiles/{name}"), 0o644)?;
        }
    }
    put(&root.join("README.md"), "usr/share/doc/wsgate/README.md", 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(&root.join("deploy/debian").join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    std::fs::write(stage.join("DEBIAN/conffiles"), "/etc/wsgate/wsgate.toml\n")?;
    let size_kib = dir_size(&stage)? / 1024;
    std::fs::write(stage.join("DEBIAN/control"), control(version, &arch, size_kib))?;
    let deb = out.join(format!("wsgate_{version}_{arch}.deb"));
    exec(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

fn control(version: &str, arch: &str, size_kib: u64) -> String {
    format!(
        "Package: wsgate\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: wsgate developers <wsgate@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: adduser, libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: WebSocket reverse proxy for Linux edge nodes\n \
         A thread-per-core io_uring WebSocket reverse proxy that splices upgraded\n \
         connections in the kernel with an eBPF sockmap, with load balancing, health\n \
         checks, per-client limits, Prometheus metrics and kernel tuning profiles.\n"
    )
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The package's life on this machine, as an operator lives it: install, the installed
/// configuration checks, the units verify, an upgrade keeps a modified configuration,
/// purge leaves nothing. Needs root and dpkg, and refuses to touch a machine where
/// wsgate is already installed; leaves the machine as it found it.
pub fn install_check() -> Result<()> {
    if Command::new("dpkg").args(["-s", "wsgate"]).output().is_ok_and(|o| o.status.success()) {
        bail!("a wsgate package is installed on this machine: the install check would replace it");
    }
    let out = workspace_root().join("target/package");
    exec(cargo().args(["build", "--release", "-p", "wsgate"]))?;
    let version = env!("CARGO_PKG_VERSION");
    let first = build(&out.join("first"), version)?;
    let next = build(&out.join("next"), &format!("{version}+upgrade1"))?;
    let result = install_upgrade_purge(&first, &next);
    // Whatever happened, the machine ends without the package.
    let _ = Command::new("dpkg").args(["--purge", "wsgate"]).output();
    result?;
    for gone in LEFT_BEHIND {
        if Path::new(gone).exists() {
            bail!("purge left {gone} behind");
        }
    }
    if Command::new("getent").args(["passwd", "wsgate"]).output().is_ok_and(|o| o.status.success()) {
        bail!("purge left the wsgate user behind");
    }
    eprintln!("xtask: package installed, checked, upgraded (modified config kept) and purged (nothing left)");
    Ok(())
}

/// What purge must remove.
const LEFT_BEHIND: &[&str] = &[
    "/usr/bin/wsgate",
    "/etc/wsgate",
    "/lib/systemd/system/wsgate.service",
    "/lib/systemd/system/wsgate-tune.service",
    "/lib/systemd/system/wsgate.socket",
    "/usr/share/wsgate",
    "/usr/share/doc/wsgate",
    "/var/lib/wsgate",
    "/var/lib/dpkg/info/wsgate.list",
];

const CONFIG: &str = "/etc/wsgate/wsgate.toml";
const OPERATOR_EDIT: &str = "\n# edited by the operator: kept across upgrades\n";

fn install_upgrade_purge(first: &Path, next: &Path) -> Result<()> {
    exec(Command::new("dpkg").arg("-i").arg(first))?;
    exec(Command::new("/usr/bin/wsgate").args(["check", "-c", CONFIG]))?;
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            "/lib/systemd/system/wsgate.service",
            "/lib/systemd/system/wsgate-tune.service",
            "/lib/systemd/system/wsgate.socket",
        ])
        .output()
        .context("running systemd-analyze verify")?;
    let complaints = String::from_utf8_lossy(&verify.stderr).trim().to_owned();
    if !verify.status.success() || !complaints.is_empty() {
        bail!("systemd-analyze verify of the installed units: {complaints}");
    }
    let profiles = command_output(Command::new("/usr/bin/wsgate").args(["tune", "list"]))?;
    if !profiles.contains("edge-1m") {
        bail!("wsgate tune list does not show the installed profiles: {profiles}");
    }
    if !Command::new("getent").args(["passwd", "wsgate"]).output().is_ok_and(|o| o.status.success()) {
        bail!("the package did not create the wsgate user");
    }
    let mut config = std::fs::read_to_string(CONFIG)?;
    config.push_str(OPERATOR_EDIT);
    std::fs::write(CONFIG, &config)?;
    exec(Command::new("dpkg").arg("-i").arg(next))?;
    let after = std::fs::read_to_string(CONFIG)?;
    if after != config {
        bail!("the upgrade replaced the operator's modified {CONFIG}");
    }
    let installed = command_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "wsgate"]))?;
    if !installed.ends_with("+upgrade1") {
        bail!("after the upgrade dpkg has version {installed}");
    }
    exec(Command::new("/usr/bin/wsgate").args(["check", "-c", CONFIG]))?;
    exec(Command::new("dpkg").args(["--purge", "wsgate"]))?;
    Ok(())
}
