//! What the TLS tests share: a test CA made at test time with rcgen, certificates it
//! issues (PEM files in a temporary directory), a blocking rustls client that trusts
//! the CA, a WebSocket exchange over any stream, and the addresses of every listener
//! of a gateway.
//!
//! Makes no network traffic of its own beyond what a test asks, to 127.0.0.1 only.

#![allow(dead_code)] // each test binary uses its own share of these helpers

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::utils::{Gateway, TempDir, client_frame, read_head, server_frame, upgrade_request};

/// A test CA and the directory its files go to.
pub struct Pki {
    pub dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// One issued certificate: its files and its DER (to compare with what a client saw).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "wsgate test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = TempDir::new();
        std::fs::write(dir.0.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// The CA's private key, written to a PEM file (for tools that sign as the CA,
    /// such as `openssl ocsp`).
    pub fn ca_key_file(&self) -> PathBuf {
        let path = self.dir.0.join("ca.key");
        std::fs::write(&path, self.ca_key.serialize_pem()).unwrap();
        path
    }

    /// Issues a certificate for `names` (CN = the first), valid for `days` from now;
    /// its file holds the leaf, then the CA (a chain).
    pub fn issue_for(&self, stem: &str, names: &[&str], days: i64) -> Issued {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let day = |d: i64| {
            use chrono::Datelike as _;
            let t = chrono::Utc::now() + chrono::Duration::days(d);
            rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
        };
        params.not_before = day(-1);
        params.not_after = day(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) = (self.dir.0.join(format!("{stem}.pem")), self.dir.0.join(format!("{stem}.key")));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// [`Self::issue_for`] valid for a year.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        self.issue_for(stem, names, 365)
    }

    /// A rustls client configuration trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS client stream.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes a handshake asking for `sni`.
pub fn tls_connect(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The leaf certificate the server presented.
pub fn peer_leaf(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().expect("a certificate")[0].clone().into_owned()
}

/// Upgrades `s` on `path`, then sends `messages` binary frames of growing sizes with
/// seeded contents and checks each echo byte for byte.
pub fn ws_echo(s: &mut (impl Read + Write), path: &str, messages: usize) {
    s.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    s.flush().unwrap();
    let (head, _) = read_head(s);
    assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
    for i in 0..messages {
        let len = [1, 125, 126, 4000, 65_536, 200_000][i % 6];
        let payload: Vec<u8> = (0..len).map(|j| (j * 31 + i * 7) as u8).collect();
        s.write_all(&client_frame(true, 2, &payload)).unwrap();
        s.flush().unwrap();
        let (fin, opcode, echoed) = server_frame(s);
        assert!(fin && opcode == 2, "frame {i}: fin {fin} opcode {opcode}");
        assert!(echoed == payload, "frame {i}: {} bytes echoed of {len}, or different", echoed.len());
    }
}

/// Every listener's address, in the configuration's order, from the `listening on`
/// lines of a gateway started with a log level of `info` or finer.
pub fn listeners(gw: &Gateway, n: usize) -> Vec<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addrs: Vec<SocketAddr> = gw
            .stderr()
            .iter()
            .filter_map(|l| l.split_once("listening on ").and_then(|(_, a)| a.split(' ').next()?.parse().ok()))
            .collect();
        if addrs.len() >= n {
            return addrs;
        }
        assert!(Instant::now() < deadline, "{n} ready lines expected, got {addrs:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `[[listener]]` table with TLS (default certificate `default`) and extra SNI entries.
pub fn tls_listener(default: Option<&Issued>, sni: &[(&[&str], &Issued)]) -> String {
    let mut s = String::from("[[listener]]\naddress = \"127.0.0.1:0\"\n");
    if let Some(d) = default {
        let _ = write!(s, "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n", d.cert.display(), d.key.display());
    }
    for (names, c) in sni {
        let (cert, key) = (c.cert.display(), c.key.display());
        let _ = write!(s, "[[listener.tls.sni]]\nnames = {names:?}\ncert = \"{cert}\"\nkey = \"{key}\"\n");
    }
    s
}
