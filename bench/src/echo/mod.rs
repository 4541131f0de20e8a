//! `wsbench echo`: a WebSocket echo upstream (RFC 6455), multi-threaded, one `SO_REUSEPORT`
//! listener per thread so several processes can share the port too.
//!
//! Each thread runs its own single-threaded runtime; connections never move between threads,
//! so per-thread buffers serve all of a thread's connections. It must stay cheap per idle
//! connection (no per-connection read buffer) and must never panic on what a client sends.

pub mod conn;
pub mod engine;
pub mod fault;

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use fault::Fault;

/// Options of `wsbench echo`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Address to listen on (port 0 picks a free port; the line printed names it).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Worker threads, each with its own `SO_REUSEPORT` listener (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest accepted frame payload in bytes; larger frames are refused with close 1009.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_frame: u64,
    /// Test only: corrupt-every=N or drop-every=N data frames per connection.
    #[arg(long, hide = true)]
    pub fault: Option<Fault>,
    /// Test only: accept at most this many connections per second per thread (a slow
    /// upstream, to prove the load's ramp backs off; the rest wait in the backlog).
    #[arg(long, hide = true)]
    pub accept_rate: Option<f64>,
}

/// What every connection needs to know; copied into each.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Fault injection (tests only).
    pub fault: Fault,
    /// Frame payload limit.
    pub max_frame: u64,
}

/// A listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`, non-blocking.
pub fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("cannot bind {addr}: is the port taken?"))?;
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// Runs the echo server until the process is killed.
pub fn run(opts: &Options) -> Result<()> {
    crate::limits::raise_nofile();
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
    let cfg = Config { fault: opts.fault.unwrap_or_default(), max_frame: opts.max_frame };
    let first = reuseport_listener(opts.listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(addr)?);
    }
    let accept_every = opts.accept_rate.map(|r| std::time::Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let h = std::thread::Builder::new()
            .name(format!("echo-{i}"))
            .spawn(move || serve_thread(l, cfg, accept_every))
            .context("cannot start an echo thread")?;
        handles.push(h);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "wsbench echo: listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("an echo thread panicked"))??;
    }
    Ok(())
}

fn serve_thread(listener: std::net::TcpListener, cfg: Config, accept_every: Option<std::time::Duration>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut next = tokio::time::Instant::now();
        loop {
            if let Some(every) = accept_every {
                tokio::time::sleep_until(next).await;
                next = next.max(tokio::time::Instant::now()) + every;
            }
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(conn::serve(stream, cfg));
                }
                // Out of files or memory: back off instead of spinning; connections in the
                // backlog wait.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
}
