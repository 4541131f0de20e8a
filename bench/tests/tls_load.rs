//! `wsbench load --tls` against a real TLS terminator: wsgate with a TLS listener (its
//! certificate issued by a CA made here) in front of `wsbench echo`. Every message is
//! verified through TLS, the connections really are TLS (a plain client gets nowhere on
//! the same port), and a client that trusts another CA fails fast with a certificate
//! error instead of hanging.
//!
//! wsgate is the binary built next to wsbench (`cargo test --workspace` builds it), or
//! `WSGATE_BIN`, or built here with cargo when neither exists. Traffic stays on 127.0.0.1;
//! every process is killed on drop and every load bounded by `--max-time`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, Run, load, report_path, wsbench};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA made at test time and the directory its files go to.
struct Ca {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("wsbench test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = report_path(name).parent().unwrap().to_path_buf();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Self { dir, cert, key }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for localhost and 127.0.0.1 (chain: leaf, CA) and its key.
    fn issue(&self) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), self.cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// One build of wsgate for all the tests of this binary (they run in parallel).
static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The wsgate binary to run.
fn wsgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WSGATE_BIN") {
        return p.into();
    }
    let next_to_us = Path::new(env!("CARGO_BIN_EXE_wsbench")).with_file_name("wsgate");
    let _once = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !next_to_us.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "wsgate", "--bin", "wsgate"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p wsgate");
        assert!(status.success(), "cannot build wsgate for the TLS load tests");
    }
    next_to_us
}

/// wsgate with one TLS listener in front of `upstream`, killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    /// Starts it; its diagnostics go to `log`.
    fn start(cert: &Path, key: &Path, upstream: SocketAddr, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(wsgate_bin())
            .args(["--listen", &addr.to_string(), "--upstream", &upstream.to_string()])
            .args(["--workers", "1", "--splice", "userspace", "--access-log", "off"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start wsgate");
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "wsgate exited at start");
            assert!(start.elapsed() < Duration::from_secs(30), "wsgate did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_clean(run: &Run) {
    for bad in ["lost", "mismatched", "out_of_order", "closed_early", "connect_failed", "handshake_failed"] {
        assert_eq!(run.count(bad), 0, "{bad}");
    }
    assert_eq!(run.report["clean"], true);
}

#[test]
fn echo_over_tls_through_wsgate_verifies_every_message() {
    let ca = Ca::new("echo");
    let (cert, key) = ca.issue();
    let echo = Echo::start(&[]);
    let gw = Gateway::start(&cert, &key, echo.addr, &ca.dir.join("wsgate.log"));
    let ca_file = ca.file();
    let ca_file = ca_file.to_str().unwrap();
    let run = load(
        "echo",
        gw.addr,
        &["--tls", "--tls-ca", ca_file, "--conns", "20", "--duration", "2", "--interval-ms", "50"],
    );
    assert_eq!(run.code, 0);
    assert_clean(&run);
    assert_eq!(run.count("connected"), 20);
    assert_eq!(run.count("tls_handshakes"), 20, "every connection did a TLS handshake");
    assert_eq!(run.count("tls_resumed"), 0, "full handshakes unless --tls-resume");
    let sent = run.count("sent");
    assert!(sent >= 20 * 5, "only {sent} messages sent");
    assert_eq!(run.count("received"), sent);
    assert_eq!(run.count("closed_clean"), 20);
    assert!(run.report["tls"].as_str().is_some_and(|t| t.contains("full handshakes")), "{}", run.report["tls"]);
    // The port speaks only TLS: the plain client's upgrade gets nowhere.
    let plain = load("echo", gw.addr, &["--conns", "3", "--duration", "0.5", "--connect-timeout", "5"]);
    assert_eq!(plain.code, 2);
    assert_eq!(plain.count("connected"), 0);
    assert_eq!(plain.count("handshake_failed") + plain.count("connect_failed"), 3);
}

#[test]
fn bulk_and_handshakes_over_a_pinned_tls12_suite_with_sni() {
    let ca = Ca::new("bulk");
    let (cert, key) = ca.issue();
    let echo = Echo::start(&[]);
    let gw = Gateway::start(&cert, &key, echo.addr, &ca.dir.join("wsgate.log"));
    let ca_file = ca.file();
    let tls = [
        "--tls",
        "--tls-ca",
        ca_file.to_str().unwrap(),
        "--tls-server-name",
        "localhost",
        "--tls-cipher",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ];
    // Messages larger than the socket buffers and than a TLS record, both ways at once.
    let bulk = load("bulk", gw.addr, &[&tls[..], &["--conns", "2", "--duration", "1", "--size", "1000000"]].concat());
    assert_eq!(bulk.code, 0);
    assert_clean(&bulk);
    assert!(bulk.count("received") >= 2);
    assert_eq!(bulk.count("received"), bulk.count("sent"));
    assert_eq!(bulk.count("bytes_received"), bulk.count("received") * 1_000_000);
    assert_eq!(bulk.count("tls_handshakes"), 2);
    let hs = load("handshake", gw.addr, &[&tls[..], &["--conns", "2", "--duration", "1"]].concat());
    assert_eq!(hs.code, 0);
    assert_clean(&hs);
    let n = hs.count("connected");
    assert!(n >= 4, "only {n} handshakes");
    assert_eq!(hs.count("tls_handshakes"), n);
    assert_eq!(hs.count("tls_resumed"), 0);
}

#[test]
fn a_client_that_trusts_another_ca_fails_with_a_certificate_error_not_a_hang() {
    let ca = Ca::new("server");
    let (cert, key) = ca.issue();
    let other = Ca::new("other");
    let echo = Echo::start(&[]);
    let gw = Gateway::start(&cert, &key, echo.addr, &ca.dir.join("wsgate.log"));
    let path = report_path("wrong-ca");
    let started = Instant::now();
    let out = wsbench()
        .args(["load", "echo", "--quiet", "--max-time", "60", "--target", &gw.addr.to_string()])
        .arg("--tls")
        .arg("--tls-ca")
        .arg(other.file())
        .args(["--conns", "4", "--duration", "1", "--connect-timeout", "10", "--report"])
        .arg(&path)
        .output()
        .expect("run wsbench load");
    assert!(started.elapsed() < Duration::from_secs(45), "took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(2), "a refused certificate fails the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"), "{stderr}");
    let report = common::read_json(&path);
    assert_eq!(report["counts"]["handshake_failed"], 4);
    assert_eq!(report["counts"]["connected"], 0);
    assert_eq!(report["clean"], false);
}
