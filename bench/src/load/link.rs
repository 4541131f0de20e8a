//! A client connection's byte stream: the plain socket, or the socket with a rustls
//! session on top (`--tls`). One `match` per operation picks the path; the plain path does
//! exactly what it did before TLS existed (no allocation, no extra copy, no indirection).
//!
//! Every method needs only `&self`, so a writer and a reader of the same connection can
//! run side by side (the TLS session is borrowed between awaits only).

use std::io;

use tokio::net::TcpStream;

use super::client::{Recv, protocol_error};
use super::receiver::{Msg, Receiver};
use crate::sock::{self, Read};
use crate::tls::io::{self as tls, Session};

/// A connected socket, plain or TLS.
#[derive(Debug)]
pub struct Link {
    stream: TcpStream,
    /// The TLS session (boxed: a plain connection pays one pointer for it).
    tls: Option<Box<Session>>,
}

impl Link {
    /// A plain connection.
    pub fn plain(stream: TcpStream) -> Self {
        Self { stream, tls: None }
    }

    /// A connection whose bytes go through `session`.
    pub fn tls(stream: TcpStream, session: Session) -> Self {
        Self { stream, tls: Some(Box::new(session)) }
    }

    /// The socket (for readiness waits).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The TLS session, if any.
    pub fn session(&self) -> Option<&Session> {
        self.tls.as_deref()
    }

    /// Writes what the socket takes now; the rest is queued (in `pending`, or in the TLS
    /// session) for [`Link::flush`].
    pub fn write_or_queue(&self, data: &[u8], pending: &mut Vec<u8>) -> io::Result<()> {
        match &self.tls {
            None => sock::write_or_queue(&self.stream, data, pending),
            Some(t) => tls::write_or_queue(&self.stream, t, data),
        }
    }

    /// Waits until everything queued is written.
    pub async fn flush(&self, pending: &mut Vec<u8>) -> io::Result<()> {
        match &self.tls {
            None => sock::flush(&self.stream, pending).await,
            Some(t) => tls::flush(&self.stream, t).await,
        }
    }

    /// Writes all of `data`, waiting for writability as needed.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        match &self.tls {
            None => sock::write_all(&self.stream, data).await,
            Some(t) => tls::write_all(&self.stream, t, data).await,
        }
    }

    /// One non-blocking read into the thread's buffer; every byte read (decrypted, with
    /// TLS) goes to `feed`, in order.
    pub fn read_with(&self, feed: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<Read> {
        sock::with_bufs(|b| match &self.tls {
            None => {
                let read = sock::try_read(&self.stream, &mut b.read)?;
                if let Read::Data(n) = read {
                    feed(&b.read[..n])?;
                }
                Ok(read)
            }
            Some(t) => tls::read_now(&self.stream, t, &mut b.read, feed),
        })
    }

    /// One non-blocking read; every complete message goes to `on_msg`.
    pub fn read_now(&self, rx: &mut Receiver, on_msg: &mut impl FnMut(Msg<'_>)) -> io::Result<Recv> {
        let read = self.read_with(&mut |p| rx.feed(p, on_msg).map_err(protocol_error))?;
        Ok(if matches!(read, Read::Eof) { Recv::Eof } else { Recv::Open })
    }

    /// Ends the TLS session with `close_notify` (plain: nothing).
    pub fn close_notify(&self) {
        if let Some(t) = &self.tls {
            tls::close_notify(&self.stream, t);
        }
    }
}
