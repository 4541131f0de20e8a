//! Non-blocking socket helpers shared by the echo server and the load client: a per-thread
//! read buffer and output buffer, and "write now or queue the rest".
//!
//! Idle connections must hold no buffer: data is read into the thread's buffer only after the
//! socket reports readability, and a connection keeps bytes of its own only while the kernel
//! refuses to take its output. Never hold the thread-local borrow across an `.await`.

use std::cell::RefCell;
use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of each thread's read buffer.
pub const READ_BUF: usize = 64 * 1024;

/// One thread's scratch buffers.
pub struct Bufs {
    /// Where every connection of this thread reads into.
    pub read: Box<[u8]>,
    /// Where frames to send are built before the write.
    pub out: Vec<u8>,
}

thread_local! {
    static BUFS: RefCell<Bufs> = RefCell::new(Bufs {
        read: vec![0; READ_BUF].into_boxed_slice(),
        out: Vec::with_capacity(READ_BUF + 1024),
    });
}

/// Runs `f` with this thread's buffers (`out` starts empty). Must not be nested.
pub fn with_bufs<R>(f: impl FnOnce(&mut Bufs) -> R) -> R {
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        b.out.clear();
        let r = f(&mut b);
        if b.out.capacity() > 4 * READ_BUF {
            b.out = Vec::with_capacity(READ_BUF + 1024);
        }
        r
    })
}

/// Waits until the socket may be readable. Unlike `TcpStream::readable`, this keeps no
/// waiter in the future (the waker goes to the socket's reader slot), so a connection
/// parked here costs a few bytes, not ~150. One reader per socket at a time.
pub async fn readable(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until the socket may be writable (the writer-slot twin of [`readable`]).
pub async fn writable(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// What a non-blocking read produced.
#[derive(Debug)]
pub enum Read {
    /// This many bytes.
    Data(usize),
    /// Nothing now (spurious readiness).
    Again,
    /// The peer closed its side.
    Eof,
}

/// One non-blocking read into `buf`. A read that leaves room in `buf` has drained the
/// socket, so its readiness is cleared then and there (as tokio's own `poll_read` does):
/// the next wait parks at once instead of costing a second `read` that finds nothing.
/// Nothing is missed: bytes that come later raise a new edge.
pub fn try_read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    match stream.try_read(buf) {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => {
            if n < buf.len() {
                let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
            Ok(Read::Data(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::Again),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Read::Again),
        Err(e) => Err(e),
    }
}

/// Writes what the socket takes now; the rest is appended to `pending` for [`flush`].
pub fn write_or_queue(stream: &TcpStream, data: &[u8], pending: &mut Vec<u8>) -> io::Result<()> {
    let mut at = 0;
    if pending.is_empty() {
        while at < data.len() {
            match stream.try_write(&data[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    pending.extend_from_slice(&data[at..]);
    Ok(())
}

/// Waits until every byte of `pending` is written, then frees it.
pub async fn flush(stream: &TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    if !pending.is_empty() {
        write_all(stream, pending).await?;
        *pending = Vec::new();
    }
    Ok(())
}

/// Writes all of `data`, waiting for writability as needed (needs only `&TcpStream`, so a
/// reader of the same socket can run concurrently).
pub async fn write_all(stream: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < data.len() {
        writable(stream).await?;
        match stream.try_write(&data[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
