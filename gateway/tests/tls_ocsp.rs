//! OCSP stapling and chain order, with `openssl` as both the OCSP responder (it signs
//! responses as the test CA from an index file, the way a CA's responder answers) and
//! the client (`s_client -status` prints the staple it received): a good response is
//! stapled to the certificate it was made for; `wsgate check` and start-up refuse a
//! response for another certificate, a revoked one, garbage, and a chain out of order.
//!
//! `cargo xtask test` installs openssl.

mod tls_util;
mod utils;

use std::path::{Path, PathBuf};
use std::process::Command;

use tls_util::{Issued, Pki};
use utils::{Gateway, WsEcho};

const BASE: &str = "workers = 1\n[timeouts]\nheader = \"2s\"\n";

/// Runs `openssl ARGS`; panics with its output when it fails.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("openssl (cargo xtask test installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An OCSP response from the test CA for `cert`, with status `V` (good) or `R`
/// (revoked), written to `out` (DER).
fn ocsp_response(pki: &Pki, cert: &Issued, status: char, out: &str) -> PathBuf {
    let dir = &pki.dir.0;
    // `serial=1A2B…`, `subject=CN = …` as openssl prints them; the index wants the
    // serial in hex and the subject in the old slash form.
    let serial = openssl(&["x509", "-in", s(&cert.cert), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=");
    let subject = openssl(&["x509", "-in", s(&cert.cert), "-noout", "-subject", "-nameopt", "compat"]);
    let subject = subject.trim().trim_start_matches("subject=");
    let revoked = if status == 'R' { "250101000000Z" } else { "" };
    let index = dir.join(format!("{out}.index"));
    std::fs::write(&index, format!("{status}\t991231235959Z\t{revoked}\t{serial}\tunknown\t{subject}\n")).unwrap();
    let req = dir.join(format!("{out}.req"));
    let resp = dir.join(out);
    let (ca, ca_key) = (pki.ca_file(), pki.ca_key_file());
    openssl(&["ocsp", "-issuer", s(&ca), "-cert", s(&cert.cert), "-no_nonce", "-reqout", s(&req)]);
    openssl(&[
        "ocsp",
        "-index",
        s(&index),
        "-rsigner",
        s(&ca),
        "-rkey",
        s(&ca_key),
        "-CA",
        s(&ca),
        "-reqin",
        s(&req),
        "-respout",
        s(&resp),
        "-ndays",
        "2",
    ]);
    resp
}

/// A TLS listener with `cert` as its default certificate and `ocsp` as its staple.
fn config(cert: &Issued, ocsp: Option<&Path>, upstream: std::net::SocketAddr) -> String {
    let staple = ocsp.map(|p| format!(", ocsp = \"{}\"", p.display())).unwrap_or_default();
    format!(
        "{BASE}[[listener]]\naddress = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\"{staple} }}\n\
         [[route]]\nupstream = \"main\"\n[upstream.main]\nservers = [\"{upstream}\"]\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// `wsgate check -c FILE`: exit status and output.
fn check(config: &str) -> (bool, String) {
    let dir = utils::TempDir::new();
    let path = dir.0.join("wsgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate")).arg("check").arg("-c").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn s_client_status(gw: &Gateway, pki: &Pki) -> String {
    let addr = gw.addr.to_string();
    openssl(&[
        "s_client",
        "-connect",
        &addr,
        "-servername",
        "gw.test",
        "-status",
        "-verify_return_error",
        "-CAfile",
        s(&pki.ca_file()),
    ])
}

#[test]
fn a_good_response_is_stapled_and_seen_by_openssl() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let staple = ocsp_response(&pki, &cert, 'V', "good.der");
    let echo = WsEcho::start();

    let (ok, out) = check(&config(&cert, Some(&staple), echo.addr));
    assert!(ok && !out.contains("warning"), "{out}");

    let gw = Gateway::builder().config(&config(&cert, Some(&staple), echo.addr)).start();
    let out = s_client_status(&gw, &pki);
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    // The bytes stapled are the file's: openssl prints the responder's serial line too.
    let serial = openssl(&["x509", "-in", s(&cert.cert), "-noout", "-serial"]);
    assert!(out.contains(&format!("Serial Number: {}", serial.trim().trim_start_matches("serial="))), "{out}");

    // Without `ocsp`, nothing is stapled.
    let plain = Gateway::builder().config(&config(&cert, None, echo.addr)).start();
    let out = s_client_status(&plain, &pki);
    assert!(out.contains("OCSP response: no response sent"), "{out}");
}

#[test]
fn wrong_revoked_and_garbage_responses_are_refused_with_the_field() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    let other = pki.issue("other", &["other.test"]);
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();

    let for_other = ocsp_response(&pki, &other, 'V', "other.der");
    let (ok, out) = check(&config(&cert, Some(&for_other), up));
    assert!(!ok && out.contains("listener[0].tls.ocsp:") && out.contains("not this certificate's"), "{out}");

    let revoked = ocsp_response(&pki, &cert, 'R', "revoked.der");
    let (ok, out) = check(&config(&cert, Some(&revoked), up));
    assert!(!ok && out.contains("listener[0].tls.ocsp:") && out.contains("revoked"), "{out}");

    let garbage = pki.dir.0.join("garbage.der");
    std::fs::write(&garbage, b"-----BEGIN OCSP RESPONSE-----\n").unwrap();
    let (ok, out) = check(&config(&cert, Some(&garbage), up));
    assert!(!ok && out.contains("listener[0].tls.ocsp:") && out.contains("not a DER OCSP response"), "{out}");

    // Start-up refuses what check refuses, naming the field.
    let started = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("-c")
        .arg({
            let p = pki.dir.0.join("revoked.toml");
            std::fs::write(&p, config(&cert, Some(&revoked), up)).unwrap();
            p
        })
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success() && text.contains("listener[0].tls.ocsp"), "{text}");
}

#[test]
fn a_chain_out_of_order_is_refused_by_check() {
    let pki = Pki::new();
    let cert = pki.issue("gw", &["gw.test"]);
    // The issued file is leaf then CA; reversed, the CA comes first.
    let pem = std::fs::read_to_string(&cert.cert).unwrap();
    let mut blocks: Vec<String> = pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), 2, "{pem}");
    blocks.reverse();
    let reversed = pki.dir.0.join("reversed.pem");
    std::fs::write(&reversed, blocks.concat()).unwrap();
    let bad = Issued { cert: reversed, key: cert.key.clone(), der: cert.der.clone() };
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (ok, out) = check(&config(&bad, None, up));
    assert!(!ok && out.contains("listener[0].tls.cert:") && out.contains("out of order"), "{out}");
    // The same files in the right order pass, and check says what the kernel offers.
    let (ok, out) = check(&config(&cert, None, up));
    assert!(ok, "{out}");
    assert!(out.contains("kTLS"), "{out}");
}
