//! Either side of a connection as the phases see it — the client's or the upstream's:
//! a plain TCP socket or a TLS stream over one ([`PeerIo`]), with the few operations
//! the phases use — wait until readable, read what is there without waiting, write
//! all of a buffer, shut down.
//!
//! Buffers move by ownership, as io_uring wants them. Must never hide a TLS stream
//! from a caller that would hand its socket to the kernel splice (`as_plain`).

use std::io;
use std::net::Shutdown;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::readiness::{self, Ring};
use crate::tls::TlsStream;

/// A client or upstream connection: plain, or TLS once its handshake is done.
pub enum PeerIo {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl std::fmt::Debug for PeerIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if matches!(self, Self::Plain(_)) { "PeerIo::Plain" } else { "PeerIo::Tls" })
    }
}

impl PeerIo {
    /// The TCP socket under it (for socket options, readiness, resets).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.tcp(),
        }
    }

    /// The TCP socket (plain), `None` for TLS (bytes on its socket are records).
    pub fn as_plain(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(_) => None,
        }
    }

    /// TLS bytes already decrypted (or held) and waiting to be read.
    pub fn has_plaintext(&self) -> bool {
        matches!(self, Self::Tls(t) if t.has_plaintext())
    }

    /// Waits until a read may return something (bytes, the end, an error). TLS:
    /// decrypted bytes already waiting count as readable at once.
    pub async fn readable(&self, ring: &Ring) -> io::Result<u32> {
        match self {
            _ if self.has_plaintext() => Ok(libc::POLLIN as u32),
            Self::Plain(s) => ring.ready(s, readiness::READABLE).await,
            Self::Tls(t) => ring.ready(t.tcp(), readiness::READABLE).await,
        }
    }

    /// Reads what is there into the spare capacity of `buf`, without waiting.
    /// `Ok(0)` is the end of the peer's stream; `WouldBlock`: wait with [`Self::readable`].
    pub fn recv_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Self::Plain(s) => crate::io::recv_into(s, buf),
            Self::Tls(t) => t.recv_into(buf),
        }
    }

    /// Like [`Self::recv_into`], taking at most `limit` bytes.
    pub fn recv_into_max(&self, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
        match self {
            Self::Plain(s) => crate::io::recv_into_max(s, buf, limit),
            Self::Tls(t) => t.recv_into_max(buf, limit),
        }
    }

    /// Writes all of `buf`, waiting for room (a slow reader holds the writer), and
    /// gives the buffer back.
    pub async fn write_all(&self, ring: &Ring, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Self::Plain(s) => {
                let sent = match crate::io::send_now(s, &buf) {
                    Ok(k) => k,
                    Err(e) => return (Err(e), buf),
                };
                if sent == buf.len() {
                    return (Ok(()), buf);
                }
                let (res, slice) = s.write_all(buf.slice(sent..)).await;
                (res, slice.into_inner())
            }
            Self::Tls(t) => (t.write_all(ring, &buf).await, buf),
        }
    }

    /// Writes all of `data`, lent: at once when the socket takes it (no copy), the
    /// rest copied and written by io_uring; TLS encrypts from it.
    pub async fn write_slice(&self, ring: &Ring, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => {
                let sent = crate::io::send_now(s, data)?;
                if sent < data.len() {
                    crate::io::write_all(s, data[sent..].to_vec()).await?;
                }
                Ok(())
            }
            Self::Tls(t) => t.write_all(ring, data).await,
        }
    }

    /// Shuts the connection down (`how`); TLS sends its close_notify first when
    /// writing stops. Never closes the socket (dropping does).
    pub fn shutdown(&self, how: Shutdown) {
        match self {
            Self::Plain(s) => crate::io::shutdown_quietly(s, how),
            Self::Tls(t) => t.shutdown(how),
        }
    }
}
