//! Compiles the eBPF C programs in `../ebpf` into `OUT_DIR` for the splice module.
//!
//! Every `ebpf/NAME.bpf.c` becomes `OUT_DIR/NAME.bpf.o`, embedded by
//! `src/splice/splicer.rs` with `aya::include_bytes_aligned!`. The kernel types
//! (`vmlinux.h`) are generated here from the running kernel's BTF with bpftool,
//! never committed. This script must never touch anything outside `OUT_DIR`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let src_dir = manifest.join("..").join("ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");
    println!("cargo:rerun-if-changed={}", src_dir.display());

    let vmlinux = out_dir.join("vmlinux.h");
    generate_vmlinux_h(&vmlinux)?;

    let mut entries: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .map_err(|e| format!("reading {}: {e}", src_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in &entries {
        if path.extension().is_some_and(|e| e == "c" || e == "h") {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    for path in entries.iter().filter(|p| p.to_str().is_some_and(|s| s.ends_with(".bpf.c"))) {
        let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".c");
        let object = out_dir.join(format!("{stem}.o"));
        let status = clang_command(path, &object, &src_dir, &out_dir)
            .status()
            .map_err(|e| tool_missing("clang", "CLANG", "clang-19", &e))?;
        if !status.success() {
            return Err(format!("clang failed ({status}) compiling {}", path.display()));
        }
    }
    Ok(())
}

/// The one place the clang command line is assembled: `NAME.bpf.c` → `NAME.bpf.o`.
fn clang_command(source: &Path, object: &Path, include: &Path, generated: &Path) -> Command {
    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang-19"));
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        _ => "x86",
    };
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(generated)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    cmd
}

/// Writes `vmlinux.h` from the running kernel's BTF (`BPFTOOL` overrides the tool).
fn generate_vmlinux_h(dest: &Path) -> Result<(), String> {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        return Err(format!(
            "{} missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y to build the eBPF programs",
            btf.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", btf.display());
    let tool = env::var_os("BPFTOOL").unwrap_or_else(|| OsString::from("bpftool"));
    let out = Command::new(&tool)
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output()
        .map_err(|e| tool_missing("bpftool", "BPFTOOL", "bpftool", &e))?;
    if !out.status.success() {
        return Err(format!("bpftool btf dump failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::write(dest, out.stdout).map_err(|e| format!("writing {}: {e}", dest.display()))
}

fn tool_missing(tool: &str, var: &str, package: &str, e: &std::io::Error) -> String {
    format!(
        "cannot run {tool} ({e}): install it (Debian/Ubuntu: `apt-get install {package} libbpf-dev`) \
         or point {var} at it"
    )
}
