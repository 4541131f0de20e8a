//! A worker built by hand, outside the runtime: its phases serve a connection with the
//! worker's own relay buffers and counters, over real sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wsgate::admission::Admission;
use wsgate::bufpool::BufPool;
use wsgate::config::Config;
use wsgate::conn::{Worker, accept};
use wsgate::lifetimes::Lifetimes;
use wsgate::reload::{Generation, Generations};
use wsgate::stats::Stats;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// Reads until the end of a head (bounded in bytes and time).
fn read_head(s: &mut StdStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 64 * 1024 {
        let n = s.read(&mut buf).expect("read within the timeout");
        assert!(n > 0, "closed before the end of the head: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn a_worker_built_by_hand_serves_plain_http_with_its_own_buffers() {
    let upstream = StdListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let origin = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = read_head(&mut s);
        s.write_all(RESPONSE).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        String::from_utf8(head).unwrap()
    });
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[relay]\nbuffer_size = 4096\npool_buffers = 4\n\
         [[route]]\npath = \"/\"\nupstream = \"origin\"\n[upstream.origin]\nservers = [\"{up_addr}\"]\n"
    );
    let config = Arc::new(Config::from_toml(&toml).unwrap());
    config.validate().unwrap();
    let generations = Generations::new(Generation::build(1, config.clone(), None).unwrap());
    let (_tx, shutdown) = wsgate::shutdown::channel();

    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = StdStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(
            b"GET /hello HTTP/1.1\r\nHost: example.test\r\nUser-Agent: worker-test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });

    tokio_uring::start(async move {
        let ring = wsgate::readiness::Ring::start(256).unwrap();
        let events = wsgate::drain::events::Hub::start(shutdown.clone(), &generations.removals);
        let worker = Rc::new(Worker {
            generations,
            stats: Arc::new(Stats::default()),
            shutdown,
            admission: Arc::new(Admission::new(&config)),
            splicer: None,
            ring,
            pairs: None,
            buffers: BufPool::new(4096, 4),
            lifetimes: Lifetimes::default(),
            metrics: wsgate::metrics::Recorder::default(),
            pacer: Rc::new(wsgate::drain::Pacer::new(&config.drain, 1)),
            pool: wsgate::upstream::pool::Pool::default(),
            upgrade: Arc::default(),
            events,
        });
        let listener = socket2::Socket::from(listener);
        let key = wsgate::reload::listeners::key(&config.listeners[0]);
        let (_keep, removed) = tokio::sync::oneshot::channel();
        let accepting = tokio_uring::spawn(accept::accept_loop(
            listener,
            (key, wsgate::config::Scheme::Http, false),
            worker.clone(),
            removed,
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        // One connection accepted and ended (its active count back to 0).
        while worker.stats.accepted.load(Ordering::Relaxed) == 0 || worker.stats.active.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "the connection did not end in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(worker.stats.relayed_userspace.load(Ordering::Relaxed), 1);
        assert!(worker.buffers.free_count() >= 1, "the relay did not borrow from the worker's pool");
        assert!(worker.buffers.free_count() <= 4, "the pool kept more than pool_buffers");
        accepting.abort();
    });
    assert_eq!(client.join().unwrap(), RESPONSE);
    let head = origin.join().unwrap();
    assert!(head.starts_with("GET /hello HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
}
