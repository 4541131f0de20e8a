//! Dead peers: a client that vanishes without a FIN or RST (its link goes down) is
//! found by TCP keepalive within seconds, not at the idle timeout.
//!
//! The client lives in one network namespace and wsgate with its upstream in another,
//! joined by a veth pair; both namespaces are made (and removed) by the test, so the
//! host's network is not touched. Needs root and `ip` (iproute2).

mod utils;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use utils::netns::{Namespaces, NsGateway};
use utils::{RawUpstream, client_frame, read_exact, read_head, status_of, upgrade_request};

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
