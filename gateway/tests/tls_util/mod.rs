//! What the TLS tests share: a test CA made at test time with rcgen, certificates it
//! issues (PEM files in a temporary directory), a blocking rustls client that trusts
//! the CA, a WebSocket exchange over any stream, and the addresses of every listener
//! of a gateway.
//!
//! Makes no network traffic of its own beyond what a test asks, to 127.0.0.1 only.

#![allow(dead_code)] // each test binary uses its own share of these helpers

use std::fmt::Write as _;

use base64::Engine as _;
use sha1::Digest as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::utils::{Gateway, TempDir, client_frame, next_head, read_head, server_frame, upgrade_request};

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

/// What a [`TlsEcho`] saw of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client certificate's DER, when the client sent one.
    pub client_cert: Option<Vec<u8>>,
    /// The request line.
    pub request: String,
    /// The connection it came on, numbered in accept order.
    pub conn: usize,
}

/// A TLS upstream (rustls, blocking, a thread per connection) presenting `issued`:
/// a WebSocket upgrade is answered 101 and every message echoed (a Close too, then the
/// connection ends); any other request gets `200` with a body naming the SNI and the
/// path, `Connection: close` — but for a path under `/keep`, which is answered
/// keep-alive and the connection waits for the next request. With `client_ca`, it requires a client certificate
/// issued by that CA (mutual TLS). Records what it saw of every connection.
pub struct TlsEcho {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    /// The status code of every Close frame received (0: none in it).
    pub closes: Arc<std::sync::Mutex<Vec<u16>>>,
}

impl TlsEcho {
    pub fn start(issued: &Issued, client_ca: Option<&Pki>) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&issued.cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pki) => {
                let mut roots = RootCertStore::empty();
                roots.add(pki.ca.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let closes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = (seen.clone(), closes.clone());
        std::thread::spawn(move || {
            for (n, tcp) in listener.incoming().enumerate() {
                let Ok(tcp) = tcp else { return };
                let (config, record) = (config.clone(), record.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = StreamOwned::new(conn, tcp);
                    let _ = serve_one(&mut tls, n, &record.0, &record.1);
                });
            }
        });
        Self { addr, seen, closes }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(
    tls: &mut StreamOwned<rustls::ServerConnection, TcpStream>,
    conn: usize,
    record: &std::sync::Mutex<Vec<Seen>>,
    closes: &std::sync::Mutex<Vec<u16>>,
) -> std::io::Result<()> {
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let (key, early) = loop {
        let Some((head, early)) = next_head(tls)? else { return Ok(()) };
        let request = head.lines().next().unwrap_or_default().to_owned();
        let sni = tls.conn.server_name().map(str::to_owned);
        let client_cert = tls.conn.peer_certificates().map(|c| c[0].to_vec());
        record.lock().unwrap().push(Seen { sni: sni.clone(), client_cert, request: request.clone(), conn });
        let key = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
        });
        if let Some(key) = key {
            break (key, early);
        }
        let path = request.split(' ').nth(1).unwrap_or_default();
        let body = format!("sni={} path={path}", sni.unwrap_or_default());
        let keep = path.starts_with("/keep");
        let connection = if keep { "" } else { "Connection: close\r\n" };
        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{connection}\r\n{body}", body.len());
        tls.write_all(response.as_bytes())?;
        if !keep {
            tls.conn.send_close_notify();
            return tls.flush();
        }
        tls.flush()?;
    };
    let accept = base64::engine::general_purpose::STANDARD
        .encode(sha1::Sha1::digest(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()));
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tls.write_all(response.as_bytes())?;
    tls.flush()?;
    let mut input = std::io::Read::chain(std::io::Cursor::new(early), ReadHalf(tls));
    loop {
        let (opcode, payload) = masked_frame(&mut input)?;
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&payload);
        let inner = &mut *input.get_mut().1.0;
        inner.write_all(&out)?;
        inner.flush()?;
        if opcode == 8 {
            let code = payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
            closes.lock().unwrap().push(code);
            inner.conn.send_close_notify();
            return inner.flush();
        }
    }
}

/// Reads from a TLS stream that is also written to between reads.
struct ReadHalf<'a>(&'a mut StreamOwned<rustls::ServerConnection, TcpStream>);

impl Read for ReadHalf<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// One masked client frame: (opcode, unmasked payload).
fn masked_frame(s: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut mask)?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    s.read_exact(&mut payload)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((h[0] & 0x0f, payload))
}
