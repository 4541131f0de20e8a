//! One HTTP/2 stream: its request turned into an HTTP/1 head and put through the
//! same phases as an HTTP/1.1 connection (parse, route and admit, connect), then
//! either a WebSocket (RFC 8441: extended CONNECT, 200 on the upstream's 101, DATA
//! relayed both ways) or a plain request (body streamed, response head and body
//! passed back).
//!
//! A client that resets the stream while wsgate is still connecting upstream stops
//! that work at once and is counted towards `http2.max_resets_per_second`. Must never
//! send upstream anything `http::request::parse` did not accept, pass on a response
//! head it could not parse, or buffer more of a stream than its flow-control window.

use std::future::poll_fn;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use sha1::Digest as _;

use super::ResetMeter;
use crate::close::{Close, Mode};
use crate::config::Scheme;
use crate::conn::peer_io::PeerIo;
use crate::conn::teardown::{self, ActiveConn, Facts};
use crate::conn::{Worker, connect, response, route_admit};
use crate::error::{ErrorKind, ProxyError};
use crate::http::MAX_RESPONSE_HEADERS;
use crate::http::body::Framing;
use crate::http::request::{self, RequestHead};
use crate::http::response::ResponseHead;
use crate::readiness::Ring;
use crate::reload::Generation;
use crate::stats::Stats;

/// Largest request body buffered when the client gave no `content-length` (it goes
/// upstream as HTTP/1.0, which has no chunked coding).
const MAX_UNSIZED_BODY: usize = 1024 * 1024;
/// Hop-by-hop headers an HTTP/1 response may carry and HTTP/2 forbids.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];
/// The GUID of RFC 6455 §1.3, for `Sec-WebSocket-Accept`.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Header fields of a response, names in lower case.
type Headers = Vec<(String, Vec<u8>)>;

/// Serves one stream to its end and writes its access-log line.
pub async fn serve(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    generation: Arc<Generation>,
    worker: Rc<Worker>,
    resets: Rc<ResetMeter>,
) {
    let active = ActiveConn::new(&worker.stats);
    let mut facts = Facts::new(peer, &worker.metrics, generation);
    facts.scheme = Scheme::Https;
    facts.mode = Mode::Userspace;
    let (parts, recv) = request.into_parts();
    let websocket = parts.method == Method::CONNECT
        && parts.extensions.get::<h2::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let result = if websocket {
        Box::pin(websocket_stream(&parts, recv, &mut respond, &worker, &mut facts, &resets)).await
    } else if parts.method == Method::CONNECT {
        facts.request = format!("CONNECT {} HTTP/2", parts.uri);
        Err(ProxyError::new(ErrorKind::BadRequest, "CONNECT over HTTP/2 is only for `:protocol websocket`"))
    } else {
        Box::pin(plain_stream(&parts, recv, &mut respond, &worker, &mut facts, &resets)).await
    };
    if let Err(err) = &result
        && err.kind.respond()
    {
        facts.bytes_sent = send_error(&mut respond, err.kind);
    }
    teardown::finish(result.map(|()| None), None, facts, worker, active).await;
}

/// A WebSocket stream (RFC 8441).
async fn websocket_stream(
    parts: &Parts,
    recv: RecvStream,
    respond: &mut SendResponse<Bytes>,
    worker: &Worker,
    facts: &mut Facts,
    resets: &ResetMeter,
) -> Result<(), ProxyError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let bytes = h1_head(parts, Some(&key), None)?;
    let head = parse_head(&bytes, facts, "CONNECT")?;
    let upstream = until_reset(respond, resets, async {
        let generation = facts.generation.clone();
        let admit = route_admit::route_admit(&head, worker, &generation, facts)?;
        let upstream = connect::connect(&head, &bytes, &admit, worker, facts).await?;
        Ok((upstream, admit.slots))
    })
    .await?;
    let (mut upstream, _slots) = upstream;
    let peeked = upstream.response.clone().ok_or_else(|| ProxyError::new(ErrorKind::Internal, "no response head"))?;
    facts.upstream_response_time = Some(upstream.started.elapsed().as_secs_f64());
    facts.status = peeked.status;
    // A plain upstream's head was read with what followed it: those bytes go first.
    let mut first = std::mem::take(&mut upstream.read);
    let (status, headers) = if first.is_empty() {
        take_head(&upstream.stream, &peeked)?
    } else {
        if first.len() < peeked.len {
            return Err(ProxyError::new(ErrorKind::Internal, "response head longer than what was read"));
        }
        let rest = first.split_off(peeked.len);
        parse_response(&std::mem::replace(&mut first, rest))?
    };
    if status != 101 {
        // Refused upstream: its status and headers go back; its body does not (the
        // WebSocket's client reads the status only).
        facts.close = Close::Done;
        return send_head(respond, status, &headers, true).map(|_| ());
    }
    let accept = header(&headers, "sec-websocket-accept").unwrap_or_default();
    if accept != expected_accept(&key).as_bytes() {
        return Err(ProxyError::new(ErrorKind::UpstreamInvalid, "101 with a wrong Sec-WebSocket-Accept"));
    }
    let kept: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("sec-websocket-protocol") || n.eq_ignore_ascii_case("sec-websocket-extensions")
        })
        .collect();
    let send =
        send_head(respond, 200, &kept, false)?.ok_or_else(|| ProxyError::new(ErrorKind::Internal, "no stream"))?;
    Stats::bump(&worker.stats.upgrades_succeeded);
    facts.status = 200;
    teardown::opened(facts);
    // A reload that removes its server from a group with `drain_removed` closes the
    // stream with 1001, as it does an HTTP/1.1 WebSocket relayed in userspace.
    let removal = worker.generations.removals.watch(upstream.live.server_live());
    super::relay::relay((recv, send), (&upstream.stream, first), (worker, &removal), facts, resets).await;
    Ok(())
}

/// A plain request: goes upstream as HTTP/1.0 with its body; the response comes back
/// as HEADERS and DATA.
async fn plain_stream(
    parts: &Parts,
    mut recv: RecvStream,
    respond: &mut SendResponse<Bytes>,
    worker: &Worker,
    facts: &mut Facts,
    resets: &ResetMeter,
) -> Result<(), ProxyError> {
    let declared = header_u64(parts, "content-length")?;
    // A body of unknown length is read first, up to a limit, so it can be sized.
    let buffered = if declared.is_none() && !recv.is_end_stream() {
        Some(read_whole(&mut recv, MAX_UNSIZED_BODY).await?)
    } else {
        None
    };
    let length = declared.or(buffered.as_ref().map(|b| b.len() as u64));
    let bytes = h1_head(parts, None, length)?;
    let method = parts.method.as_str();
    let head = parse_head(&bytes, facts, method)?;
    let (upstream, head_in) = until_reset(respond, resets, async {
        let generation = facts.generation.clone();
        let admit = route_admit::route_admit(&head, worker, &generation, facts)?;
        let upstream = connect::connect(&head, &bytes, &admit, worker, facts).await?;
        let sent = match buffered {
            Some(body) => upstream.stream.write_slice(&worker.ring, &body).await.map(|()| body.len() as u64),
            None => send_body(&mut recv, &worker.ring, &upstream.stream, length.unwrap_or(0)).await,
        }
        .map_err(|e| ProxyError::new(ErrorKind::UpstreamClosed, format!("sending the body: {e}")))?;
        facts.bytes_in = sent;
        let deadline = Instant::now() + facts.generation.config.timeouts.response;
        let max = facts.generation.config.limits.max_response_header_bytes;
        let head_in = response::peek_head(&worker.ring, &upstream.stream, max, deadline, method).await?;
        Ok((upstream, head_in))
    })
    .await?;
    facts.upstream_response_time = Some(upstream.started.elapsed().as_secs_f64());
    let (status, headers) = take_head(&upstream.stream, &head_in)?;
    facts.status = status;
    let end = matches!(head_in.framing, Framing::Empty | Framing::Length(0));
    let Some(send) = send_head(respond, status, &headers, end)? else {
        facts.close = Close::Done;
        return Ok(());
    };
    let passed =
        pass_body(send, &upstream.stream, head_in.framing, facts.generation.config.timeouts.response, worker).await;
    facts.bytes_out = passed.unwrap_or_else(|s| s);
    facts.bytes_sent = facts.bytes_out;
    facts.close = if passed.is_ok() { Close::Done } else { Close::Error };
    upstream.stream.shutdown(Shutdown::Both);
    Ok(())
}

/// Runs `work`, unless the client resets the stream first (counted, and the work
/// dropped: an upstream connection being made is closed).
async fn until_reset<T>(
    respond: &mut SendResponse<Bytes>,
    resets: &ResetMeter,
    work: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::select! {
        done = work => done,
        reason = poll_fn(|cx| respond.poll_reset(cx)) => {
            resets.count();
            let why = reason.map_or_else(|e| e.to_string(), |r| format!("{r:?}"));
            Err(ProxyError::new(ErrorKind::ClientClosed, format!("stream reset by the client ({why})")))
        }
    }
}

/// The HTTP/1 head an HTTP/2 request stands for: `GET … HTTP/1.1` with an Upgrade
/// and `key` for a WebSocket, `METHOD … HTTP/1.0` with `length` otherwise. Cookies
/// split over several fields are joined (RFC 9113 §8.2.3).
fn h1_head(parts: &Parts, key: Option<&str>, length: Option<u64>) -> Result<Vec<u8>, ProxyError> {
    let bad = |d: &str| ProxyError::new(ErrorKind::BadRequest, d.to_owned());
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => parts.headers.get(http::header::HOST).map(HeaderValue::as_bytes).ok_or_else(|| bad("no :authority"))?,
    };
    if authority.contains(&b'@') {
        return Err(bad(":authority with user information"));
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(if key.is_some() { "GET" } else { parts.method.as_str() }.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(if key.is_some() { b" HTTP/1.1\r\n" } else { b" HTTP/1.0\r\n" });
    push(&mut out, b"host", authority);
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n == "cookie" {
            cookies.push(value.as_bytes());
            continue;
        }
        // Host is :authority's; framing and the upgrade are wsgate's to write.
        let ours = ["host", "content-length", "transfer-encoding", "upgrade", "connection", "sec-websocket-key", "te"];
        if !ours.contains(&n) && !HOP_BY_HOP.contains(&n) {
            push(&mut out, n.as_bytes(), value.as_bytes());
        }
    }
    if !cookies.is_empty() {
        push(&mut out, b"cookie", &cookies.join(&b"; "[..]));
    }
    if let Some(key) = key {
        push(&mut out, b"upgrade", b"websocket");
        push(&mut out, b"connection", b"upgrade");
        push(&mut out, b"sec-websocket-key", key.as_bytes());
    } else if let Some(len) = length.filter(|&l| l > 0 || parts.method != Method::GET) {
        push(&mut out, b"content-length", len.to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

fn push(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the synthesized head like any client's, and notes it for the access log.
fn parse_head(bytes: &[u8], facts: &mut Facts, method: &str) -> Result<RequestHead, ProxyError> {
    let max = facts.generation.config.limits.max_header_bytes;
    if bytes.len() > max {
        return Err(ProxyError::new(ErrorKind::HeadersTooLarge, format!("request head larger than {max} bytes")));
    }
    let head = request::parse(bytes, facts.generation.config.limits.max_headers)?
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal, "incomplete synthesized head"))?;
    facts.request = format!("{method} {} HTTP/2", head.target);
    facts.host = head.host().unwrap_or_default().into_owned();
    facts.user_agent = head.header("user-agent").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    Ok(head)
}

/// Reads the response head `peeked` saw off the socket, and its headers.
fn take_head(upstream: &PeerIo, peeked: &ResponseHead) -> Result<(u16, Headers), ProxyError> {
    parse_response(&crate::conn::response::take_head(upstream, peeked.len)?)
}

/// The status and headers of a response head already parsed once (`buf` is exactly it).
fn parse_response(buf: &[u8]) -> Result<(u16, Headers), ProxyError> {
    let invalid = |d: String| ProxyError::new(ErrorKind::UpstreamInvalid, d);
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("response head no longer parses".into())),
    }
    let status = resp.code.unwrap_or(502);
    let headers = resp.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
    Ok((status, headers))
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

fn header_u64(parts: &Parts, name: &str) -> Result<Option<u64>, ProxyError> {
    let mut found = None;
    for v in parts.headers.get_all(name) {
        let n = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
        match (n, found) {
            (None, _) => return Err(ProxyError::new(ErrorKind::BadRequest, format!("invalid {name}"))),
            (Some(n), Some(prev)) if n != prev => {
                return Err(ProxyError::new(ErrorKind::BadRequest, format!("conflicting {name}")));
            }
            (Some(n), _) => found = Some(n),
        }
    }
    Ok(found)
}

fn expected_accept(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Sends the response head (hop-by-hop headers left out). `Ok(None)` when `end`
/// (no body follows).
fn send_head(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    headers: &[(String, Vec<u8>)],
    end: bool,
) -> Result<Option<SendStream<Bytes>>, ProxyError> {
    let invalid = |d: String| ProxyError::new(ErrorKind::UpstreamInvalid, d);
    let mut response = Response::new(());
    *response.status_mut() =
        http::StatusCode::from_u16(status).map_err(|e| invalid(format!("status {status}: {e}")))?;
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || (end && name == "content-length") {
            continue;
        }
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) else {
            return Err(invalid(format!("response header `{name}` cannot go over HTTP/2")));
        };
        response.headers_mut().append(n, v);
    }
    let send = respond
        .send_response(response, end)
        .map_err(|e| ProxyError::new(ErrorKind::ClientClosed, format!("sending the response: {e}")))?;
    Ok((!end).then_some(send))
}

/// A short error response of wsgate's own; returns the body's length.
fn send_error(respond: &mut SendResponse<Bytes>, kind: ErrorKind) -> u64 {
    let body = Bytes::from(format!("{} {}\n", kind.status(), kind.reason()));
    let mut response = Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(kind.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let len = body.len() as u64;
    match respond.send_response(response, false) {
        Ok(mut send) => send.send_data(body, true).map_or(0, |()| len),
        Err(_) => 0,
    }
}

/// Reads a request body whole, at most `max` bytes.
async fn read_whole(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, ProxyError> {
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| ProxyError::new(ErrorKind::ClientClosed, format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!("a request body without content-length may be at most {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    Ok(body)
}

/// Streams exactly `length` body bytes from the client to the upstream.
async fn send_body(recv: &mut RecvStream, ring: &Ring, upstream: &PeerIo, length: u64) -> std::io::Result<u64> {
    let mut sent = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        if sent > length {
            return Err(std::io::Error::other("more body than its content-length"));
        }
        upstream.write_slice(ring, &chunk).await?;
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    if sent == length { Ok(sent) } else { Err(std::io::Error::other("less body than its content-length")) }
}

/// Passes a response body as framed (`UntilClose`: to the upstream's FIN) as DATA,
/// within the client's window. `Err` holds the bytes sent before it failed.
async fn pass_body(
    mut send: SendStream<Bytes>,
    upstream: &PeerIo,
    framing: Framing,
    timeout: std::time::Duration,
    worker: &Worker,
) -> Result<u64, u64> {
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::UntilClose => u64::MAX,
        // Only a response to HTTP/1.1 may be chunked; wsgate sends plain requests as 1.0.
        Framing::Chunked | Framing::Empty => {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            return Err(0);
        }
    };
    let mut out = 0u64;
    while left > 0 {
        let ready = tokio::time::timeout(timeout, upstream.readable(&worker.ring));
        if !matches!(ready.await, Ok(Ok(_))) {
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            return Err(out);
        }
        let mut buf = worker.buffers.take();
        let limit = usize::try_from(left).unwrap_or(usize::MAX);
        let read = upstream.recv_into_max(&mut buf, limit);
        let data = Bytes::copy_from_slice(&buf);
        worker.buffers.put(buf);
        match read {
            Ok(0) if framing == Framing::UntilClose => break,
            Ok(0) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(out);
            }
            Ok(n) => left -= n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(out);
            }
        }
        out += data.len() as u64;
        if send_within_window(&mut send, data).await.is_err() {
            return Err(out);
        }
    }
    let _ = send.send_data(Bytes::new(), true);
    Ok(out)
}

/// Sends `data` as DATA frames, each no larger than the window the client gave.
pub(super) async fn send_within_window(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
            Some(granted) => granted?,
        };
        if granted > 0 {
            send.send_data(data.split_to(granted.min(data.len())), false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn websocket_head_is_an_upgrade_with_our_key_and_joined_cookies() {
        let p = parts(
            Request::builder()
                .method(Method::CONNECT)
                .uri("https://chat.example:8443/ws?room=1")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-protocol", "chat")
                .header("sec-websocket-key", "forged")
                .header("cookie", "a=1")
                .header("cookie", "b=2"),
        );
        let head = String::from_utf8(h1_head(&p, Some("dGhlIHNhbXBsZSBub25jZQ=="), None).unwrap()).unwrap();
        assert_eq!(
            head,
            "GET /ws?room=1 HTTP/1.1\r\nhost: chat.example:8443\r\nsec-websocket-version: 13\r\n\
             sec-websocket-protocol: chat\r\ncookie: a=1; b=2\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let parsed = request::parse(head.as_bytes(), 64).unwrap().unwrap();
        assert_eq!(crate::http::upgrade::classify(&parsed).unwrap(), crate::http::upgrade::Intent::WebSocket);
    }

    #[test]
    fn plain_head_is_http10_with_its_length() {
        let p = parts(Request::builder().method(Method::POST).uri("https://a.example/x").header("content-length", "9"));
        let head = String::from_utf8(h1_head(&p, None, Some(3)).unwrap()).unwrap();
        assert_eq!(head, "POST /x HTTP/1.0\r\nhost: a.example\r\ncontent-length: 3\r\n\r\n");
        let p = parts(Request::builder().uri("https://u@a.example/x"));
        assert_eq!(h1_head(&p, None, None).unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn accept_is_rfc6455s() {
        assert_eq!(expected_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
