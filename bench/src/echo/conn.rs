//! One echo connection: read the request head, answer it (101, health 200, or an error),
//! then run the frame engine until the close handshake or the peer goes away.
//!
//! An idle upgraded connection holds only its socket and its [`Engine`]; it waits for
//! readability and reads into the thread's buffer. While its output is queued (the peer reads
//! slowly) it stops reading, so a slow peer costs at most one read's worth of bytes.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Config;
use super::engine::{Engine, Flow};
use crate::sock::{self, Read};
use crate::ws::handshake::{self, MAX_HEAD, Request};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection to the end.
pub async fn serve(stream: TcpStream, cfg: Config) {
    let _ = stream.set_nodelay(true);
    // Boxed: the handshake state is short-lived and must not size every idle task.
    let Ok(Some(early)) = Box::pin(tokio::time::timeout(HEAD_TIMEOUT, upgrade(&stream))).await else {
        return;
    };
    let _ = frames(&stream, cfg, early).await;
}

/// Reads and answers the request head; on a successful upgrade returns the bytes that came
/// after the head (early frames).
async fn upgrade(stream: &TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let end = loop {
        sock::readable(stream).await.ok()?;
        let got = sock::with_bufs(|b| match sock::try_read(stream, &mut b.read) {
            Ok(Read::Data(n)) => {
                head.extend_from_slice(&b.read[..n]);
                Some(true)
            }
            Ok(Read::Again) => Some(false),
            Ok(Read::Eof) | Err(_) => None,
        })?;
        if !got {
            continue;
        }
        if let Some(end) = handshake::head_end(&head) {
            break end;
        }
        if head.len() > MAX_HEAD {
            let resp = handshake::plain_response(431, "Request Header Fields Too Large", "");
            let _ = reply_and_close(stream, resp.as_bytes()).await;
            return None;
        }
    };
    let (resp, upgraded) = match handshake::read_request(&head[..end]) {
        Request::Upgrade { accept } => (handshake::switching_protocols(&accept), true),
        Request::Health => (handshake::plain_response(200, "OK", "ok\n"), false),
        Request::Reject { status, reason } => {
            (handshake::plain_response(status, reason, &format!("{status} {reason}\n")), false)
        }
    };
    if !upgraded {
        let _ = reply_and_close(stream, resp.as_bytes()).await;
        return None;
    }
    let mut pending = Vec::new();
    sock::write_or_queue(stream, resp.as_bytes(), &mut pending).ok()?;
    sock::flush(stream, &mut pending).await.ok()?;
    head.drain(..end);
    head.shrink_to_fit();
    Some(head)
}

async fn reply_and_close(stream: &TcpStream, resp: &[u8]) -> std::io::Result<()> {
    let mut pending = Vec::new();
    sock::write_or_queue(stream, resp, &mut pending)?;
    sock::flush(stream, &mut pending).await?;
    shutdown_write(stream);
    Ok(())
}

fn shutdown_write(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// The upgraded phase: echo until close.
async fn frames(stream: &TcpStream, cfg: Config, mut early: Vec<u8>) -> std::io::Result<()> {
    let mut engine = Engine::new(cfg.fault, cfg.max_frame);
    let mut pending = Vec::new();
    let mut flow = Flow::Continue;
    if !early.is_empty() {
        let out = sock::with_bufs(|b| {
            flow = engine.feed(&mut early, &mut b.out);
            sock::write_or_queue(stream, &b.out, &mut pending)
        });
        out?;
    }
    drop(early);
    loop {
        sock::flush(stream, &mut pending).await?;
        if flow == Flow::Close {
            shutdown_write(stream);
            return Ok(());
        }
        sock::readable(stream).await?;
        let eof = sock::with_bufs(|b| -> std::io::Result<bool> {
            match sock::try_read(stream, &mut b.read)? {
                Read::Data(n) => {
                    let sock::Bufs { read, out } = b;
                    flow = engine.feed(&mut read[..n], out);
                    sock::write_or_queue(stream, out, &mut pending)?;
                    Ok(false)
                }
                Read::Again => Ok(false),
                Read::Eof => Ok(true),
            }
        })?;
        if eof {
            return Ok(());
        }
    }
}
