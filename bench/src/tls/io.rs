//! Driving a rustls client session over a non-blocking tokio `TcpStream`, the way the plain
//! path drives the socket: wait for readiness, one `read` into the thread's buffer, then
//! hand what it decrypted to the caller; write what the socket takes now, and leave the
//! rest queued (in rustls) for a flush.
//!
//! Ciphertext is read with one system call into the thread's read buffer and given to
//! rustls from there (rustls's own reads are 4 KiB each); plaintext goes to the caller
//! straight from rustls's buffer (`fill_buf`), never copied again. A session is only
//! borrowed between awaits, never across one, so a reader and a writer of the same
//! connection can run side by side.

use std::cell::RefCell;
use std::io::{self, BufRead as _, IoSlice, Write};

use rustls::ClientConnection;
use tokio::net::TcpStream;

use crate::sock::{self, Read};

/// One connection's TLS state.
pub type Session = RefCell<ClientConnection>;

/// `Write` over a non-blocking socket: what it takes now, `WouldBlock` when full.
struct Out<'a>(&'a TcpStream);

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls error as an I/O error that says it is TLS.
fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Writes the session's queued records while the socket takes them.
fn write_now(stream: &TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut Out(stream)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encrypts `data` and writes what the socket takes now; the rest stays queued in the
/// session for [`flush`] (the session's buffer is unbounded: the caller bounds what it
/// sends).
pub fn write_or_queue(stream: &TcpStream, tls: &Session, data: &[u8]) -> io::Result<()> {
    let mut t = tls.borrow_mut();
    t.writer().write_all(data)?;
    write_now(stream, &mut t)
}

/// Waits until every queued record is written.
pub async fn flush(stream: &TcpStream, tls: &Session) -> io::Result<()> {
    loop {
        {
            let mut t = tls.borrow_mut();
            write_now(stream, &mut t)?;
            if !t.wants_write() {
                return Ok(());
            }
        }
        sock::writable(stream).await?;
    }
}

/// Writes all of `data`, waiting for writability as needed.
pub async fn write_all(stream: &TcpStream, tls: &Session, data: &[u8]) -> io::Result<()> {
    write_or_queue(stream, tls, data)?;
    flush(stream, tls).await
}

/// One non-blocking read of the socket into `buf` (the thread's buffer), decrypted; every
/// plaintext byte goes to `feed`, in order. `Eof` once the peer closed (TCP or
/// `close_notify`), after feeding what came before. Records the session must answer
/// (alerts, key updates) are written as far as the socket takes them.
pub fn read_now(
    stream: &TcpStream,
    tls: &Session,
    buf: &mut [u8],
    feed: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Read> {
    let n = match sock::try_read(stream, buf)? {
        Read::Data(n) => n,
        Read::Again => return Ok(Read::Again),
        Read::Eof => 0,
    };
    let mut t = tls.borrow_mut();
    let mut src = &buf[..n];
    let mut closed = false;
    loop {
        // At EOF an empty read tells rustls that the stream ended.
        t.read_tls(&mut src)?;
        t.process_new_packets().map_err(|e| tls_error(&e))?;
        let mut r = t.reader();
        loop {
            match r.fill_buf() {
                Ok([]) => {
                    closed = true;
                    break;
                }
                Ok(chunk) => {
                    let len = chunk.len();
                    feed(chunk)?;
                    r.consume(len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    closed = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if src.is_empty() || closed {
            break;
        }
    }
    write_now(stream, &mut t)?;
    Ok(if closed || n == 0 { Read::Eof } else { Read::Data(n) })
}

/// Completes the handshake: sends the queued flights and reads the server's until the
/// session is established and its last flight (with any plaintext queued before, such as
/// the upgrade request) is written. Plaintext that arrives meanwhile goes to `feed`.
pub async fn handshake(
    stream: &TcpStream,
    tls: &Session,
    feed: &mut impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        flush(stream, tls).await?;
        if !tls.borrow().is_handshaking() {
            return Ok(());
        }
        sock::readable(stream).await?;
        let read = sock::with_bufs(|b| read_now(stream, tls, &mut b.read, feed))?;
        if matches!(read, Read::Eof) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed during the TLS handshake"));
        }
    }
}

/// Queues a `close_notify` and writes it if the socket takes it now (best effort: the
/// connection is about to be dropped).
pub fn close_notify(stream: &TcpStream, tls: &Session) {
    let mut t = tls.borrow_mut();
    t.send_close_notify();
    let _ = write_now(stream, &mut t);
}
