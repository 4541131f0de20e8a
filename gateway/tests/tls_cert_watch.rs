//! The certificate file watch (`[reload] watch_tls`), over real sockets: a TLS
//! listener's certificate and key replaced on disk (written aside, then renamed, one
//! after the other) are served to new handshakes without a signal, while a live wss
//! WebSocket streams on through the swap with every echo byte for byte; a garbage
//! certificate afterwards leaves the new one in service, said in one error line however
//! many times the watch looks at it. Reloads are counted in `/metrics`.

mod admin_util;
mod tls_util;
mod utils;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use admin_util::{admin_addr, count, eventually, scrape};
use tls_util::{Issued, Pki, Tls, peer_leaf, tls_connect};
use utils::{Gateway, TempDir, WsEcho, client_frame, read_head, server_frame, status_of, upgrade_request};

/// How long a change may take to be served on a loaded machine (the watch looks every
/// 500 ms and loads a change seen the same twice).
const WITHIN: Duration = Duration::from_secs(15);

/// Writes `path` aside, then renames it into place.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Puts `issued`'s certificate, then its key, where the listener reads them.
fn install(dir: &Path, issued: &Issued) {
    replace(&dir.join("live.crt"), &std::fs::read(&issued.cert).unwrap());
    replace(&dir.join("live.key"), &std::fs::read(&issued.key).unwrap());
}

/// Message `seq` of the stream: its size and bytes vary with `seq`.
fn message(seq: u64) -> Vec<u8> {
    let len = [1usize, 125, 126, 3000, 70_000][(seq % 5) as usize];
    (0..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq.wrapping_mul(7)) as u8).collect()
}

/// A wss WebSocket that sends one message after another and checks each echo, until
/// told to stop; counts the echoes.
struct Stream {
    echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Stream {
    fn start(mut tls: Tls) -> Self {
        use std::io::Write as _;
        tls.write_all(upgrade_request("/live", "").as_bytes()).unwrap();
        tls.flush().unwrap();
        let (head, rest) = read_head(&mut tls);
        assert_eq!(status_of(&head), 101, "{head}");
        assert!(rest.is_empty());
        let (echoed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (e, s) = (echoed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                let payload = message(seq);
                tls.write_all(&client_frame(true, 2, &payload)).unwrap();
                tls.flush().unwrap();
                let (fin, opcode, data) = server_frame(&mut tls);
                assert!(fin && opcode == 2 && data == payload, "message {seq}: not echoed byte for byte");
                seq += 1;
                e.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            seq
        });
        Self { echoed, stop, thread }
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Waits until `more` echoes came after now (the stream is alive).
    fn flows(&self, more: u64) -> bool {
        let from = self.echoed();
        eventually(WITHIN, || self.echoed() >= from + more)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the live WebSocket failed")
    }
}

#[test]
fn changed_certificate_files_are_served_without_a_signal_and_live_websockets_go_on() {
    let echo = WsEcho::start();
    let pki = Pki::new();
    let (a, b) = (pki.issue("a", &["localhost"]), pki.issue("b", &["localhost"]));
    let dir = TempDir::new();
    install(&dir.0, &a);
    let config = format!(
        "workers = 2\n[reload]\nwatch_tls = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[route]]\nupstream = \"echo\"\n[upstream.echo]\nservers = [\"{}\"]\n",
        dir.0.join("live.crt").display(),
        dir.0.join("live.key").display(),
        echo.addr
    );
    let gw = Gateway::builder().config(&config).log_level("wsgate=info").start();
    let admin = admin_addr(&gw);
    let client = pki.client(&[b"http/1.1"]);
    let served = || peer_leaf(&tls_connect(gw.addr, "localhost", &client).unwrap());
    assert!(served() == a.der, "certificate A at start");

    let live = Stream::start(tls_connect(gw.addr, "localhost", &client).unwrap());
    assert!(live.flows(20), "the live WebSocket does not stream");

    // B replaces A on disk; no signal.
    install(&dir.0, &b);
    let swapped = Instant::now();
    assert!(eventually(WITHIN, || served() == b.der), "certificate B not served within {WITHIN:?}");
    eprintln!("certificate B served {:?} after the swap", swapped.elapsed());
    let said = gw.stderr().into_iter().find(|l| l.contains("certificates reloaded")).expect("a reload line");
    assert!(said.contains("live.crt"), "the line names the changed file: {said}");
    assert!(live.flows(20), "the live WebSocket stopped after the swap");

    // Garbage instead of B: refused once, B still served, the live WebSocket untouched.
    replace(&dir.0.join("live.crt"), b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    let refused = "do not load";
    gw.wait_stderr(refused, WITHIN);
    // Long enough for the watch to look at the garbage again and again.
    let looks = Instant::now();
    while looks.elapsed() < Duration::from_secs(3) {
        assert!(served() == b.der, "certificate B no longer served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let errors: Vec<String> = gw.stderr().into_iter().filter(|l| l.contains(refused)).collect();
    assert_eq!(errors.len(), 1, "one error line for one bad change: {errors:#?}");
    assert!(errors[0].contains("ERROR") && errors[0].contains("listener[0].tls"), "{}", errors[0]);
    assert!(live.flows(20), "the live WebSocket stopped after the refused change");

    let text = scrape(admin);
    assert_eq!(count(&text, "wsgate_reloads_total", &[("result", "ok")]), 1, "{text}");
    assert_eq!(count(&text, "wsgate_reloads_total", &[("result", "failed")]), 1, "{text}");
    assert_eq!(count(&text, "wsgate_config_generation", &[]), 2, "{text}");

    // The good files again: served after the refused change.
    install(&dir.0, &a);
    assert!(eventually(WITHIN, || served() == a.der), "certificate A not served again");
    // One WebSocket connection upstream all along, without an error: the live one was
    // never dropped (looked at before it ends: its abrupt end is an error there).
    assert_eq!(echo.requests.lock().unwrap().len(), 1);
    assert!(!echo.events.lock().unwrap().iter().any(|(_, e)| e.starts_with("error")));
    let echoed = live.finish();
    assert!(echoed >= 80, "{echoed} echoes");
}
