//! Socket activation (`LISTEN_FDS`): wsgate started with a listening socket passed the
//! way systemd passes it (descriptor 3, `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`)
//! serves on it with every worker, and clients that connected while no wsgate ran
//! (before the first start, and between a stop and the next start) wait in the
//! socket's queue and are served, not refused. A passed socket that no listener
//! claims stops the start with the descriptor and address named.

mod utils;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use utils::{Gateway, WsEcho, client_frame, read_head, server_frame, status_of, upgrade_request};

/// Two workers, the listener on `addr`, everything to `echo`; drains at once.
fn config(addr: SocketAddr, echo: &WsEcho) -> String {
    format!(
        "workers = 2\n[[listener]]\naddress = \"{addr}\"\n[drain]\nwindow = \"1s\"\njitter = 0.0\n\
         [[route]]\nupstream = \"e\"\n[upstream.e]\nservers = [\"{}\"]\n",
        echo.addr
    )
}

/// A client that connects to `addr` and sends its upgrade request at once (the kernel
/// queues both while nobody accepts).
fn early_client(addr: SocketAddr, n: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(upgrade_request(&format!("/early/{n}"), "").as_bytes()).unwrap();
    s
}

/// Reads the client's 101 and checks an echo of a message naming it.
fn served(s: &mut TcpStream, n: usize) {
    let (head, rest) = read_head(s);
    assert_eq!(status_of(&head), 101, "client {n}: {head}");
    assert!(rest.is_empty(), "client {n}: bytes after the 101");
    let payload = format!("client {n} says hello").into_bytes();
    s.write_all(&client_frame(true, 2, &payload)).unwrap();
    assert_eq!(server_frame(s), (true, 2, payload), "client {n}");
}

fn start(listener: &TcpListener, echo: &WsEcho) -> Gateway {
    let addr = listener.local_addr().unwrap();
    Gateway::builder().config(&config(addr, echo)).pass_listener(listener).log_level("wsgate=info").start()
}

#[test]
fn the_passed_socket_is_served_and_its_queue_kept_across_a_restart() {
    let echo = WsEcho::start();
    // The "service manager" owns the socket for the whole test.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let mut before: Vec<_> = (0..8).map(|n| early_client(addr, n)).collect();
    let mut gw = start(&listener, &echo);
    assert_eq!(gw.addr, addr, "the ready line names the passed socket's address");
    gw.wait_stderr("socket from the service manager", Duration::from_secs(10));
    for (n, s) in before.iter_mut().enumerate() {
        served(s, n);
    }
    // More clients while it runs: both workers accept from the one socket.
    let mut during: Vec<_> = (8..40).map(|n| early_client(addr, n)).collect();
    for (n, s) in during.iter_mut().enumerate() {
        served(s, n + 8);
    }
    drop((before, during));

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)), "wsgate did not stop");
    // Nobody accepts now; these wait in the queue of the socket the manager kept.
    let mut between: Vec<_> = (40..48).map(|n| early_client(addr, n)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let gw2 = start(&listener, &echo);
    for (n, s) in between.iter_mut().enumerate() {
        served(s, n + 40);
    }
    assert_eq!(echo.requests.lock().unwrap().len(), 48);
    drop(gw2);
}

#[test]
fn a_passed_socket_no_listener_claims_stops_the_start() {
    let echo = WsEcho::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = "127.0.0.1:0".parse().unwrap();
    let exited = Gateway::builder()
        .config(&config(other, &echo))
        .pass_listener(&listener)
        .start_or_exit()
        .err()
        .expect("wsgate must refuse a passed socket it was not configured for");
    let text = exited.stderr.join("\n");
    let expected =
        format!("descriptor 3 (web) listens on {}, which is no [[listener]] address", listener.local_addr().unwrap());
    assert!(text.contains(&expected), "{text}");
    assert!(!exited.status.success());
}
