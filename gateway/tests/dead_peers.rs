//! Dead peers: a client that vanishes without a FIN or RST (its link goes down) is
//! found by TCP keepalive within seconds, not at the idle timeout.
//!
//! The client lives in one network namespace and wsgate with its upstream in another,
//! joined by a veth pair; both namespaces are made (and removed) by the test, so the
//! host's network is not touched. Needs root and `ip` (iproute2).

mod utils;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use utils::{LineChild, RawUpstream, TempDir, client_frame, read_exact, read_head, status_of, upgrade_request};

/// Two namespaces joined by a veth pair: `client` (10.251.0.2) and `gateway` (10.251.0.1).
struct Namespaces {
    client: String,
    gateway: String,
    client_link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Namespaces {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let ns = Self {
            client: format!("wsg-{tag}-{id}-c"),
            gateway: format!("wsg-{tag}-{id}-g"),
            client_link: format!("wc{}", id % 100_000_000),
        };
        let gateway_link = format!("wg{}", id % 100_000_000);
        ip(&["netns", "add", &ns.client]);
        ip(&["netns", "add", &ns.gateway]);
        ip(&[
            "link",
            "add",
            &ns.client_link,
            "netns",
            &ns.client,
            "type",
            "veth",
            "peer",
            "name",
            &gateway_link,
            "netns",
            &ns.gateway,
        ]);
        for (netns, link, addr) in
            [(&ns.client, &ns.client_link, "10.251.0.2/30"), (&ns.gateway, &gateway_link, "10.251.0.1/30")]
        {
            ip(&["-n", netns, "addr", "add", addr, "dev", link]);
            ip(&["-n", netns, "link", "set", link, "up"]);
            ip(&["-n", netns, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Runs `f` on a thread that has entered namespace `name`: sockets it creates
    /// belong there, wherever they are used afterwards.
    fn within<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{name}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    }

    /// Takes the client's link down: its packets, and the probes to it, go nowhere.
    fn cut_client(&self) {
        ip(&["-n", &self.client, "link", "set", &self.client_link, "down"]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.client]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.gateway]).status();
    }
}

/// wsgate started inside a namespace; killed on drop.
struct NsGateway {
    child: LineChild,
    addr: SocketAddr,
    _dir: TempDir,
}

impl NsGateway {
    fn start(netns: &str, toml: &str) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("wsgate.toml");
        std::fs::write(&path, toml).unwrap();
        let child = LineChild::spawn(
            Command::new("ip")
                .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_wsgate"), "-c"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::null()),
            "start wsgate",
        );
        let ready = child.line(Duration::from_secs(20)).expect("wsgate did not start");
        let addr = ready.strip_prefix("wsgate: listening on ").expect("ready line").parse().unwrap();
        Self { child, addr, _dir: dir }
    }

    /// The first access-log line within `within`, if any.
    fn next_line(&self, within: Duration) -> Option<String> {
        self.child.line(within)
    }
}

#[test]
fn a_vanished_client_is_found_by_keepalive_long_before_the_idle_timeout() {
    for splice in ["userspace", "auto"] {
        let ns = Namespaces::new(&splice[..2]);
        let upstream = Namespaces::within(&ns.gateway, || RawUpstream::switching(b"").addr);
        let gw = NsGateway::start(
            &ns.gateway,
            &format!(
                "workers = 1\nsplice = \"{splice}\"\n[[listener]]\naddress = \"10.251.0.1:0\"\n[timeouts]\nidle = \"600s\"\n\
                 [keepalive]\nidle = \"1s\"\ninterval = \"1s\"\ncount = 2\n\
                 [upstream.main]\nservers = [\"{upstream}\"]\n[[route]]\nupstream = \"main\"\n"
            ),
        );
        let addr = gw.addr;
        let mut c: TcpStream = Namespaces::within(&ns.client, move || TcpStream::connect(addr).unwrap());
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(upgrade_request("/", "").as_bytes()).unwrap();
        assert_eq!(status_of(&read_head(&mut c).0), 101);
        // The pair works (the upstream echoes raw bytes: the frame comes back as sent).
        let frame = client_frame(true, 2, b"ping");
        c.write_all(&frame).unwrap();
        assert_eq!(read_exact(&mut c, frame.len()), frame, "{splice}");
        std::thread::sleep(Duration::from_millis(300));
        let cut = Instant::now();
        ns.cut_client();
        // Keepalive: 1 s of silence, then 2 probes 1 s apart: ~3 s. The idle timeout is
        // 600 s; 20 s leaves room for a loaded machine.
        let line = gw.next_line(Duration::from_secs(20));
        let waited = cut.elapsed();
        let line = line.unwrap_or_else(|| panic!("splice = {splice}: no access-log line 20 s after the cut"));
        assert!(line.contains("\" 101 ") && line.contains("close=client_reset"), "splice = {splice}: {line}");
        assert!(waited >= Duration::from_secs(2), "splice = {splice}: closed after {waited:?}, before keepalive could");
        drop(c);
    }
}
