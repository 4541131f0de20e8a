//! System packages the build and the tests need, installed with apt when missing.
//!
//! Only ever installs when running as root on a Debian/Ubuntu system; otherwise it says
//! exactly which packages to install. It never removes or upgrades anything.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::exec::exec;

/// What the gateway's build needs: clang for the eBPF C, bpftool for `vmlinux.h`,
/// libbpf's headers for the helper definitions.
pub const BUILD: &[Need] = &[
    Need::Program("clang-19", "clang-19"),
    Need::Program("bpftool", "bpftool"),
    Need::File("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
];

/// What the test suite needs beyond the build: network namespaces, the eBPF format
/// check, the TLS clients, the Python Prometheus parser the admin tests feed `/metrics`
/// to, `h11` (the reference of the request head's differential test) and the Python
/// `websockets` clients of the drain and TLS tests (the system `python3`'s, at
/// `/usr/bin/python3`), and haproxy for the bench's haproxy target.
pub const TEST: &[Need] = &[
    Need::Program("ip", "iproute2"),
    Need::Program("unshare", "util-linux"),
    Need::Program("clang-format-19", "clang-format-19"),
    Need::File("/usr/lib/python3/dist-packages/prometheus_client/__init__.py", "python3-prometheus-client"),
    // pip, to put `kubernetes-validate` under target/ for the manifests' check.
    Need::File("/usr/lib/python3/dist-packages/pip/__init__.py", "python3-pip"),
    // The reference parser of the request head's differential test.
    Need::File("/usr/lib/python3/dist-packages/h11/__init__.py", "python3-h11"),
    // The drain and TLS tests' strict WebSocket clients.
    Need::File("/usr/lib/python3/dist-packages/websockets/__init__.py", "python3-websockets"),
    // The HTTP/2 tests' client (RFC 8441 WebSocket streams, plain requests, resets).
    Need::File("/usr/lib/python3/dist-packages/h2/__init__.py", "python3-h2"),
    // libFuzzer (libfuzzer-sys) is C++: the fuzz step of the suite builds it.
    Need::Program("g++", "g++"),
    // The TLS tests' clients: `openssl s_client`, Python `websockets` (the system
    // python3's) and Node `ws` (Debian's, found through NODE_PATH=/usr/share/nodejs).
    Need::Program("openssl", "openssl"),
    Need::Program("node", "nodejs"),
    Need::File("/usr/share/nodejs/ws/package.json", "node-ws"),
    // The browser test: headless Chromium (driven over DevTools by Node), with the test
    // CA put in its NSS database by certutil.
    Need::Program("chromium", "chromium"),
    Need::Program("certutil", "libnss3-tools"),
    // The text of the bench reports' PNG plots.
    Need::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
    // The bench's haproxy target, run for real by xtask's `haproxy_bench` test.
    Need::Program("haproxy", "haproxy"),
];

/// A thing that must exist, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    Program(&'static str, &'static str),
    File(&'static str, &'static str),
}

impl Need {
    fn present(self) -> bool {
        match self {
            Need::Program(p, _) => which(p),
            Need::File(f, _) => Path::new(f).exists(),
        }
    }

    fn package(self) -> &'static str {
        match self {
            Need::Program(_, pkg) | Need::File(_, pkg) => pkg,
        }
    }
}

/// Whether `program` is on PATH (or in the sbin directories root uses).
pub fn which(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin"]).any(|d| Path::new(d).join(program).is_file())
}

/// Installs whatever of `needs` is missing (root + apt), or explains what to install.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let missing: Vec<&str> = needs.iter().filter(|n| !n.present()).map(|n| n.package()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = nix::unistd::Uid::effective().is_root();
    if !root || !which("apt-get") {
        bail!(
            "missing system packages: {} (install them with: apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing system packages: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}
