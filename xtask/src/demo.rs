//! `cargo xtask demo`: the gateway on its example configuration, in front of a real
//! WebSocket echo upstream, exercised by a real WebSocket client; prints what happened
//! and stops by itself (unless `--keep-running`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::exec::{cargo, exec, workspace_root};
use crate::packages;

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// WebSocket connections the demo client opens.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Messages each connection sends and expects echoed.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Relay mode passed to wsgate (auto, sockmap, userspace).
    #[arg(long, default_value = "auto")]
    pub splice: String,
    /// Leave the echo upstream and wsgate running after the demo (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
}

impl Options {
    /// What `cargo xtask demo` runs with no flags (the defaults above, in one place).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Plain {
            #[command(flatten)]
            options: Options,
        }
        <Plain as clap::Parser>::parse_from(["demo"]).options
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(opts: &Options) -> Result<()> {
    packages::ensure(packages::BUILD)?;
    eprintln!("demo: building wsgate and wsbench …");
    exec(cargo().args(["build", "--quiet", "--release", "-p", "wsgate", "-p", "wsbench"]))?;
    let bin = workspace_root().join("target/release");

    // 1. The upstreams: the example's group has two servers, so two of wsbench's
    //    WebSocket echo servers.
    let mut echoes = Vec::new();
    for _ in 0..2 {
        let mut echo = Command::new(bin.join("wsbench"));
        echo.args(["echo", "--listen", "127.0.0.1:0", "--threads", "1"]).stdout(Stdio::piped());
        let (proc, addr, _) = spawn_with_ready_line(echo, "wsbench echo: listening on ")?;
        echoes.push((proc, addr));
    }
    let echo_addrs: Vec<SocketAddr> = echoes.iter().map(|(_, a)| *a).collect();

    // 2. wsgate with the example configuration, its addresses moved to free ports.
    let example = std::fs::read_to_string(workspace_root().join("gateway/wsgate.example.toml"))?;
    let config = demo_config(&example, &echo_addrs)?;
    let config_path = std::env::temp_dir().join(format!("wsgate-demo-{}.toml", std::process::id()));
    std::fs::write(&config_path, config)?;
    let mut gw = Command::new(bin.join("wsgate"));
    gw.arg("-c").arg(&config_path).args(["--splice", &opts.splice]).stdout(Stdio::piped());
    let (gw, gw_addr, access_log) = spawn_with_ready_line(gw, "wsgate: listening on ")?;
    println!(
        "demo: echo upstreams on {} and {}, wsgate on {gw_addr} (config {})",
        echo_addrs[0],
        echo_addrs[1],
        config_path.display()
    );

    // 3. Traffic: a real WebSocket client, several connections, verified echoes.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = rt.block_on(client(gw_addr, opts.connections, opts.messages))?;
    let health = rt.block_on(plain_get(gw_addr))?;

    // 4. What happened.
    std::thread::sleep(Duration::from_millis(400));
    let lines: Vec<String> = access_log.try_iter().collect();
    println!("\ndemo: {} WebSocket connections through wsgate: {} got 101", opts.connections, summary.upgraded);
    println!(
        "demo: {} echo round trips verified, {} mismatched; RTT min {:.0} µs, median {:.0} µs, max {:.0} µs",
        summary.rtts_us.len(),
        summary.mismatched,
        summary.rtts_us.first().copied().unwrap_or(0.0),
        summary.rtts_us.get(summary.rtts_us.len() / 2).copied().unwrap_or(0.0),
        summary.rtts_us.last().copied().unwrap_or(0.0),
    );
    println!("demo: plain GET /health through wsgate: {health}");
    let served: Vec<usize> =
        echo_addrs.iter().map(|a| lines.iter().filter(|l| l.contains(&format!("ua={a} "))).count()).collect();
    println!(
        "demo: round robin over the group: {} connections to {}, {} to {}",
        served[0], echo_addrs[0], served[1], echo_addrs[1]
    );
    println!("demo: access log ({} lines):", lines.len());
    for l in &lines {
        println!("  {l}");
    }
    if opts.keep_running {
        println!(
            "\ndemo: still running: ws://{gw_addr}/ws/ → {} and {}. Ctrl-C to stop.",
            echo_addrs[0], echo_addrs[1]
        );
        loop {
            std::thread::sleep(Duration::from_hours(1));
        }
    }
    drop(gw);
    drop(echoes);
    let _ = std::fs::remove_file(&config_path);
    if summary.upgraded != opts.connections || summary.mismatched > 0 {
        bail!(
            "demo traffic failed: {} of {} upgraded, {} mismatched",
            summary.upgraded,
            opts.connections,
            summary.mismatched
        );
    }
    if !health.contains(" 200 ") {
        bail!("demo: the plain GET through wsgate got `{health}`, not 200");
    }
    println!("demo: ok");
    Ok(())
}

/// The example configuration on free ports: listening on an ephemeral port, its two
/// servers replaced by `upstreams`, and sized for a demo (a backlog and a connection
/// count that an untuned machine's `somaxconn` and open-files limit hold, so the
/// preflight has nothing to warn about). Fails when the example no longer has the addresses
/// this replaces (then the demo would point at servers it never started).
fn demo_config(example: &str, upstreams: &[SocketAddr]) -> Result<String> {
    let swaps = [
        ("127.0.0.1:8080", "127.0.0.1:0".to_owned()),
        ("\"127.0.0.1:9001\"", format!("\"{}\"", upstreams[0])),
        ("\"127.0.0.1:9002\"", format!("\"{}\"", upstreams[1])),
        ("backlog = 65535", "backlog = 1024".to_owned()),
        ("max_connections = 100000", "max_connections = 1000".to_owned()),
    ];
    let mut config = example.to_owned();
    for (from, to) in swaps {
        if !config.contains(from) {
            bail!("gateway/wsgate.example.toml no longer contains `{from}`: update xtask/src/demo.rs");
        }
        config = config.replace(from, &to);
    }
    Ok(config)
}

/// Starts `cmd`, waits (bounded) for its `prefix ADDR` line on stdout; later stdout
/// lines arrive on the returned channel.
fn spawn_with_ready_line(mut cmd: Command, prefix: &'static str) -> Result<(Proc, SocketAddr, mpsc::Receiver<String>)> {
    let mut child = cmd.spawn().with_context(|| format!("starting {}", cmd.get_program().display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let proc = Proc(child);
    let (addr_tx, addr_rx) = mpsc::channel();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix(prefix).and_then(|a| a.trim().parse::<SocketAddr>().ok()) {
                let _ = addr_tx.send(a);
            } else {
                let _ = line_tx.send(line);
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{} did not print `{prefix}…`", cmd.get_program().display()))?;
    Ok((proc, addr, line_rx))
}

struct Summary {
    upgraded: usize,
    mismatched: usize,
    rtts_us: Vec<f64>,
}

async fn client(gw: SocketAddr, connections: usize, messages: usize) -> Result<Summary> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = format!("ws://{gw}/ws/demo?conn={c}");
        tasks.push(tokio::spawn(async move {
            let (mut ws, resp) = tokio_tungstenite::connect_async(url).await?;
            let upgraded = resp.status() == 101;
            let (mut mismatched, mut rtts) = (0, Vec::new());
            for m in 0..messages {
                let msg = if m % 2 == 0 {
                    Message::text(format!("conn {c} message {m}"))
                } else {
                    Message::binary(vec![u8::try_from(m % 256).unwrap_or(0); 1 + m * 97])
                };
                let t0 = Instant::now();
                ws.send(msg.clone()).await?;
                let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
                rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                if back.transpose()?.as_ref() != Some(&msg) {
                    mismatched += 1;
                }
            }
            ws.close(None).await?;
            while let Some(Ok(_)) = ws.next().await {}
            anyhow::Ok((upgraded, mismatched, rtts))
        }));
    }
    let mut s = Summary { upgraded: 0, mismatched: 0, rtts_us: Vec::new() };
    for t in tasks {
        let (up, mis, rtts) = t.await??;
        s.upgraded += usize::from(up);
        s.mismatched += mis;
        s.rtts_us.extend(rtts);
    }
    s.rtts_us.sort_by(f64::total_cmp);
    Ok(s)
}

async fn plain_get(gw: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw).await?;
    // One request: the client asks wsgate to close after it (kept alive otherwise).
    s.write_all(b"GET /health HTTP/1.1\r\nHost: demo\r\nUser-Agent: wsgate-demo\r\nConnection: close\r\n\r\n").await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or("(no response)").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_runs_the_demo_as_a_user_does() {
        let o = Options::defaults();
        assert_eq!((o.connections, o.messages, o.splice.as_str(), o.keep_running), (8, 20, "auto", false));
    }

    #[test]
    fn demo_config_points_every_server_of_the_example_at_a_started_upstream() {
        let example = std::fs::read_to_string(workspace_root().join("gateway/wsgate.example.toml")).unwrap();
        let ups: Vec<SocketAddr> = vec!["127.0.0.1:41001".parse().unwrap(), "127.0.0.1:41002".parse().unwrap()];
        let config = demo_config(&example, &ups).unwrap();
        assert!(config.contains("\"127.0.0.1:41001\"") && config.contains("\"127.0.0.1:41002\""), "{config}");
        assert!(!config.contains("\"127.0.0.1:9001\"") && !config.contains("\"127.0.0.1:9002\""), "{config}");
        assert!(config.contains("address = \"127.0.0.1:0\""), "{config}");
        assert!(demo_config("workers = 0\n", &ups).is_err());
    }
}
