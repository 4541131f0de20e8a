//! A minimal HTTP/1.1 server for the admin endpoints: one request per connection
//! (`Connection: close`), heads parsed with `httparse`, bounded in size and time.
//!
//! Must never panic on what a client sends, and never hold a connection open
//! past [`REQUEST_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::State;
use super::endpoints::{self, Request, Response};

/// Longest request head accepted.
const MAX_HEAD: usize = 8192;
/// Time a client has to send its head and take the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

/// Accepts and serves until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let registry = Arc::new(super::exposition::registry(state.clone()));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Keeps the live view's queue short even when nobody asks for it.
    let catch_up = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(mut t) = catch_up.metrics.live.as_ref().and_then(|t| t.lock().ok()) {
                t.catch_up();
            }
        }
    });
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                let (state, registry) = (state.clone(), registry.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, one(stream, &state, &registry)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request, answers it, closes.
async fn one(mut stream: TcpStream, state: &State, registry: &prometheus_client::registry::Registry) {
    let response = match read_request(&mut stream).await {
        Ok(Some(req)) => endpoints::answer(&req, state, registry).await,
        Ok(None) => return,
        Err(r) => r,
    };
    let _ = stream.write_all(&response.into_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The request head, `None` if the client left first, or the error response.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, Response> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let accept = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("accept"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                return Ok(Some(Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    target: req.path.unwrap_or_default().to_owned(),
                    accept,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(Response::text(431, "request head too large\n")),
            Err(e) => return Err(Response::text(400, &format!("bad request: {e}\n"))),
        }
    }
}
