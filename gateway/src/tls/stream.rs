//! One TLS connection — a client's (rustls `ServerConnection`) or one to an upstream
//! (`ClientConnection`) — driven over the non-blocking socket with
//! `read_tls`/`write_tls`, decrypting into buffers the caller lends (the worker's
//! pool) and encrypting from them.
//!
//! Reads never wait: `WouldBlock` means "wait for the socket to be readable" (see
//! [`TlsStream::has_plaintext`] first). Writes wait for room on the worker's poll
//! ring, so a slow reader stops the writer. A `RefCell` borrow of the connection
//! never spans an `.await`; both relay directions may use one stream at once, and
//! rustls keeps the order of what they queue.
//!
//! An upstream's response head is parsed before it is consumed (the phases peek it):
//! [`TlsStream::peek_more`] decrypts into a held buffer that every read serves first,
//! so what was peeked is read again, in order, exactly once.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::Shutdown;

use rustls::Connection;
use tokio_uring::net::TcpStream;

use crate::readiness::{self, Ring};

/// A connection speaking TLS.
pub struct TlsStream {
    tcp: TcpStream,
    conn: RefCell<Connection>,
    /// Decrypted bytes peeked and not read yet (empty, unallocated, but while an
    /// upstream's response head is parsed).
    held: RefCell<Vec<u8>>,
    /// The last read from the socket emptied it: when rustls has no plaintext left,
    /// the next read would be `EAGAIN`, so it is not made (one system call less per
    /// message); the caller waits for readiness instead.
    drained: Cell<bool>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

/// The socket as rustls's non-blocking `Read`/`Write`; a read notes whether it
/// emptied the socket (it returned less than rustls asked for).
struct Sock<'a>(&'a TcpStream, Option<&'a Cell<bool>>);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = crate::io::recv(self.0, buf, 0)?;
        if let Some(drained) = self.1 {
            drained.set(n < buf.len());
        }
        Ok(n)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::io::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most plaintext one TLS record carries (RFC 8446 §5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// A rustls error as an I/O error (a bad record, an alert from the client).
fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsStream {
    /// Wraps a socket and a fresh rustls connection (handshake not done): a server
    /// one for an accepted client, a client one towards an upstream.
    pub fn new(tcp: TcpStream, conn: impl Into<Connection>) -> Self {
        Self { tcp, conn: RefCell::new(conn.into()), held: RefCell::new(Vec::new()), drained: Cell::new(false) }
    }

    /// The socket under the TLS layer.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The rustls connection (for the handshake and its facts). Never held over an `.await`.
    pub fn conn(&self) -> std::cell::RefMut<'_, Connection> {
        self.conn.borrow_mut()
    }

    /// Decrypted bytes are waiting: a reader must not wait for the socket.
    pub fn has_plaintext(&self) -> bool {
        !self.held.borrow().is_empty()
            || self.conn.borrow_mut().process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Reads TLS records from the socket (without waiting) into rustls and decrypts
    /// them. `Ok(0)`: the client closed its side of the TCP connection.
    pub fn read_records(&self) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        let n = loop {
            match conn.read_tls(&mut Sock(&self.tcp, Some(&self.drained))) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        let state = conn.process_new_packets();
        if let Err(e) = state {
            // rustls queued an alert telling the client why: send it if it fits now.
            let _ = conn.write_tls(&mut Sock(&self.tcp, None));
            return Err(tls_error(&e));
        }
        Ok(n)
    }

    /// Decrypts into the spare capacity of `buf` without waiting, and extends its
    /// length. `Ok(0)` is the end of the client's stream (close_notify, or FIN
    /// without it); `WouldBlock` means nothing is buffered nor queued on the socket.
    pub fn recv_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.recv_into_max(buf, usize::MAX)
    }

    /// Like [`Self::recv_into`], taking at most `limit` bytes.
    pub fn recv_into_max(&self, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
        if buf.len() == buf.capacity() || limit == 0 {
            return Err(io::Error::other("recv_into with a full buffer"));
        }
        let start = buf.len();
        let room = (buf.capacity() - start).min(limit);
        // rustls reads into initialised bytes: zero only what it can fill now — the
        // plaintext waiting, or one record's worth when it must decrypt first (not the
        // whole pooled buffer for a 64-byte message).
        let waiting = self.held.borrow().len()
            + self.conn.borrow_mut().process_new_packets().map_or(0, |s| s.plaintext_bytes_to_read());
        let fill = if waiting > 0 { waiting } else { MAX_RECORD_PLAINTEXT };
        buf.resize(start + room.min(fill), 0);
        let read = self.read_plain(&mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Decrypts into `out` (not empty) without waiting: as [`Self::recv_into`].
    pub fn read_plain(&self, out: &mut [u8]) -> io::Result<usize> {
        {
            let mut held = self.held.borrow_mut();
            if !held.is_empty() {
                let n = held.len().min(out.len());
                out[..n].copy_from_slice(&held[..n]);
                held.drain(..n);
                if held.is_empty() {
                    *held = Vec::new();
                }
                return Ok(n);
            }
        }
        self.read_plain_unheld(out)
    }

    /// Decrypts into `out` what rustls has or the socket brings, ignoring held bytes.
    fn read_plain_unheld(&self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let read = self.conn.borrow_mut().reader().read(out);
            match read {
                Ok(n) => return Ok(n),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {}
                    io::ErrorKind::UnexpectedEof => return Ok(0),
                    _ => return Err(e),
                },
            }
            // The last read emptied the socket: nothing more until it is readable again.
            if self.drained.replace(false) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Nothing decrypted: take more records from the socket (`WouldBlock` when none).
            self.read_records()?;
            // Anything rustls must answer (a key update) goes with the next write, or now.
            self.send_queued_now()?;
        }
    }

    /// Decrypts what has arrived (without waiting) onto the held bytes, which stay to
    /// be read, and shows all of them to `look`. `Ok(None)`: nothing new (wait for the
    /// socket); `Ok(Some(true))` after `look`: the peer's stream ended after them.
    pub fn peek_more<T>(&self, look: impl FnOnce(&[u8], bool) -> T) -> io::Result<Option<T>> {
        let mut chunk = [0u8; 4096];
        let n = match self.read_plain_unheld(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            r => r?,
        };
        let mut held = self.held.borrow_mut();
        held.extend_from_slice(&chunk[..n]);
        Ok(Some(look(&held, n == 0)))
    }

    /// Takes exactly `len` held bytes (peeked before), or `None` when fewer are held.
    pub fn take_held(&self, len: usize) -> Option<Vec<u8>> {
        let mut held = self.held.borrow_mut();
        if held.len() < len {
            return None;
        }
        let rest = held.split_off(len);
        Some(std::mem::replace(&mut *held, rest))
    }

    /// Encrypts all of `data` and writes it, waiting for room on the socket.
    pub async fn write_all(&self, ring: &Ring, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        while sent < data.len() {
            // rustls takes what fits under its buffer limit; the rest after a flush.
            sent += self.conn.borrow_mut().writer().write(&data[sent..])?;
            self.flush(ring).await?;
        }
        Ok(())
    }

    /// Writes every queued TLS record, waiting for room on the socket.
    pub async fn flush(&self, ring: &Ring) -> io::Result<()> {
        loop {
            self.send_queued_now()?;
            if !self.conn.borrow().wants_write() {
                return Ok(());
            }
            ring.ready(&self.tcp, readiness::WRITABLE).await?;
        }
    }

    /// Encrypts what of `data` fits under rustls's buffer limit, without waiting;
    /// [`Self::send_queued_now`] then writes it.
    pub fn queue_plain(&self, data: &[u8]) -> io::Result<usize> {
        self.conn.borrow_mut().writer().write(data)
    }

    /// TLS records are queued that the socket has not taken yet.
    pub fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Writes what of the queued TLS records the socket takes now.
    pub fn send_queued_now(&self) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        while conn.wants_write() {
            match conn.write_tls(&mut Sock(&self.tcp, None)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends the server's side: close_notify (if it fits in the socket buffer now),
    /// then `SHUT_WR`.
    pub fn close_write(&self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.send_queued_now();
        crate::io::shutdown_quietly(&self.tcp, Shutdown::Write);
    }

    /// Shuts the socket down (`how`), after a close_notify when writing stops.
    pub fn shutdown(&self, how: Shutdown) {
        if how != Shutdown::Read {
            self.conn.borrow_mut().send_close_notify();
            let _ = self.send_queued_now();
        }
        crate::io::shutdown_quietly(&self.tcp, how);
    }
}
