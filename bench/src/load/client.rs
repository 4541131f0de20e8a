//! One client WebSocket connection: connect from a chosen source address (with
//! `IP_BIND_ADDRESS_NO_PORT`, so the port is picked per destination and the ~28k ports of one
//! address pair are not the limit), upgrade, send masked frames, receive messages.
//!
//! An idle connection holds its socket, a [`Receiver`] and an empty output queue: no buffer.
//! Reads go to the thread's buffer after readiness. Every wait here is bounded by the caller.
//! With `--tls` the same happens through a rustls session (see [`Link`]): a full TLS
//! handshake, then the upgrade, inside the same connect timeout.

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConnection;
use rustls::HandshakeKind;
use tokio::net::{TcpSocket, TcpStream};

use super::link::Link;
use super::receiver::{Msg, ProtocolError, Receiver};
use crate::sock::{self, Read};
use crate::tls::TlsClient;
use crate::ws::frame;
use crate::ws::handshake::{self, MAX_HEAD};

/// Why a connection could not be established.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect (or bind) failed or timed out.
    Connect(io::Error),
    /// The upgrade failed: status, accept key, timeout or early close.
    Handshake(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Connect(e) => write!(f, "connect: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

/// What a receive step saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// The connection is still open.
    Open,
    /// The server closed the TCP connection.
    Eof,
}

/// A small xorshift generator for masks and keys (not for secrets).
#[derive(Debug, Clone, Copy)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An upgraded client connection.
#[derive(Debug)]
pub struct Conn {
    link: Link,
    rx: Receiver,
    pending: Vec<u8>,
    rng: Rng,
    early: bool,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Gateway or echo server address.
    pub target: SocketAddr,
    /// Source address to bind (port chosen at connect time), if any.
    pub source: Option<IpAddr>,
    /// `Host` header value.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Bound on connect plus upgrade.
    pub timeout: Duration,
    /// TLS settings (None: plain TCP).
    pub tls: Option<TlsClient>,
}

fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int that
    // lives across the call and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl Conn {
    /// Connects and upgrades within `dial.timeout`.
    pub async fn open(dial: &Dial, seed: u64) -> Result<Self, ConnectError> {
        match tokio::time::timeout(dial.timeout, Self::open_inner(dial, seed)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Handshake("timed out".into())),
        }
    }

    async fn open_inner(dial: &Dial, seed: u64) -> Result<Self, ConnectError> {
        let socket = if dial.target.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(ConnectError::Connect)?;
        if let Some(src) = dial.source {
            bind_address_no_port(&socket).map_err(ConnectError::Connect)?;
            socket.bind(SocketAddr::new(src, 0)).map_err(ConnectError::Connect)?;
        }
        let stream = socket.connect(dial.target).await.map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        let mut rng = Rng::new(seed);
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        key_bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let key = handshake::client_key(key_bytes);
        let req = handshake::client_request(&dial.host, &dial.path, &key);
        let mut head = Vec::new();
        let link = match &dial.tls {
            None => {
                sock::write_all(&stream, req.as_bytes()).await.map_err(ConnectError::Connect)?;
                Link::plain(stream)
            }
            Some(tls) => tls_handshake(stream, tls, dial.target.ip(), req.as_bytes(), &mut head).await?,
        };
        let end = loop {
            if let Some(end) = handshake::head_end(&head) {
                break end;
            }
            if head.len() > MAX_HEAD {
                return Err(ConnectError::Handshake("response head too long".into()));
            }
            sock::readable(link.stream()).await.map_err(ConnectError::Connect)?;
            let read = link.read_with(&mut |p| {
                head.extend_from_slice(p);
                Ok(())
            });
            match read {
                Ok(Read::Data(_) | Read::Again) => {}
                Ok(Read::Eof) => return Err(ConnectError::Handshake("closed before the response".into())),
                Err(e) => return Err(ConnectError::Connect(e)),
            }
        };
        handshake::check_response(&head[..end], &key).map_err(ConnectError::Handshake)?;
        let early = head.len() > end;
        Ok(Self { link, rx: Receiver::with_early(&head[end..]), pending: Vec::new(), rng, early })
    }

    /// Whether the TLS handshake resumed a session (None: plain connection).
    pub fn tls_resumed(&self) -> Option<bool> {
        self.link.session().map(|s| s.borrow().handshake_kind() == Some(HandshakeKind::Resumed))
    }

    /// The socket, for waits that need only a shared reference.
    pub fn stream(&self) -> &TcpStream {
        self.link.stream()
    }

    /// Queues one masked frame and writes what the socket takes now.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = (self.rng.next_u64() as u32).to_ne_bytes();
        let Self { link, pending, .. } = self;
        sock::with_bufs(|b| {
            frame::write_frame(&mut b.out, true, opcode, Some(mask), payload);
            link.write_or_queue(&b.out, pending)
        })
    }

    /// Waits until everything queued is written.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.link.flush(&mut self.pending).await
    }

    /// A fresh mask key for frames built by the caller.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_ne_bytes()
    }

    /// Waits for readability (except for frames that came with the 101), reads once, and hands every
    /// complete message to `on_msg`. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn recv(&mut self, on_msg: &mut impl FnMut(Msg<'_>)) -> io::Result<Recv> {
        if self.early {
            // Frames that came with the 101: deliver them before waiting for more.
            self.early = false;
            self.rx.feed(&[], on_msg).map_err(protocol_error)?;
            return Ok(Recv::Open);
        }
        recv_parts(&self.link, &mut self.rx, on_msg).await
    }

    /// Whether frames that came with the 101 wait to be read (then [`Conn::read_now`] must
    /// be called before waiting for readability).
    pub fn has_early(&self) -> bool {
        self.early
    }

    /// The non-waiting half of [`Conn::recv`]: reads once (or delivers the early frames) and
    /// hands every complete message to `on_msg`. For callers that wait for readiness
    /// themselves.
    pub fn read_now(&mut self, on_msg: &mut impl FnMut(Msg<'_>)) -> io::Result<Recv> {
        if self.early {
            self.early = false;
            self.rx.feed(&[], on_msg).map_err(protocol_error)?;
            return Ok(Recv::Open);
        }
        self.link.read_now(&mut self.rx, on_msg)
    }

    /// The socket and the receiver, for a writer and a reader running side by side. Not for
    /// use before the first [`Conn::recv`] when frames came with the 101.
    pub fn parts(&mut self) -> (&Link, &mut Receiver) {
        (&self.link, &mut self.rx)
    }

    /// Sends close 1000 and waits (up to `wait`) for the server's close frame; true when the
    /// close handshake completed.
    pub async fn close(mut self, wait: Duration) -> bool {
        let code = frame::CLOSE_NORMAL.to_be_bytes();
        if self.send(frame::OP_CLOSE, &code).is_err() {
            return false;
        }
        let closed = async {
            self.flush().await.ok()?;
            let mut got = false;
            while !got {
                if self.recv(&mut |m| got |= matches!(m, Msg::Close(_))).await.ok()? == Recv::Eof {
                    return Some(got);
                }
            }
            Some(true)
        };
        let done = matches!(tokio::time::timeout(wait, closed).await, Ok(Some(true)));
        self.link.close_notify();
        done
    }
}

/// [`Conn::recv`] on borrowed parts: wait for readability, read once, deliver messages.
pub async fn recv_parts(link: &Link, rx: &mut Receiver, on_msg: &mut impl FnMut(Msg<'_>)) -> io::Result<Recv> {
    sock::readable(link.stream()).await?;
    link.read_now(rx, on_msg)
}

/// The TLS handshake on a connected socket, with the upgrade request queued so that it
/// leaves with the client's last flight; plaintext that comes meanwhile goes to `head`.
async fn tls_handshake(
    stream: TcpStream,
    tls: &TlsClient,
    ip: IpAddr,
    request: &[u8],
    head: &mut Vec<u8>,
) -> Result<Link, ConnectError> {
    let failed = |e: &dyn std::fmt::Display| {
        let e = e.to_string();
        ConnectError::Handshake(format!("TLS handshake: {}", e.strip_prefix("TLS: ").unwrap_or(&e)))
    };
    let mut session = ClientConnection::new(Arc::clone(&tls.config), tls.server_name(ip)).map_err(|e| failed(&e))?;
    // The caller bounds what it queues (one message at a time).
    session.set_buffer_limit(None);
    session.writer().write_all(request).map_err(|e| failed(&e))?;
    let session = RefCell::new(session);
    crate::tls::io::handshake(&stream, &session, &mut |p| {
        head.extend_from_slice(p);
        Ok(())
    })
    .await
    .map_err(|e| failed(&e))?;
    Ok(Link::tls(stream, session))
}

/// A receiver's error as the I/O error the caller sees.
pub(super) fn protocol_error(e: ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("server broke the protocol: {e:?}"))
}
