//! Network namespaces a test makes (and removes) itself, joined by a veth pair, and
//! wsgate started inside one: the host's network is not touched. Needs root and `ip`
//! (iproute2).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{LineChild, TempDir};

/// Two namespaces joined by a veth pair: `client` (10.251.0.2) and `gateway` (10.251.0.1).
pub struct Namespaces {
    pub client: String,
    pub gateway: String,
    client_link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Namespaces {
    pub fn new(tag: &str) -> Self {
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
    pub fn within<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
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
    pub fn cut_client(&self) {
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
pub struct NsGateway {
    child: LineChild,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl NsGateway {
    pub fn start(netns: &str, toml: &str) -> Self {
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
    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.child.line(within)
    }
}
