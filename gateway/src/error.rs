//! One error type for the life of a connection: a closed kind, the side that failed,
//! and a detail for the log. The HTTP status, the log line and the access-log reason
//! all come from here, so they can never disagree. It must never do I/O: it
//! describes a failure; the connection's phases act on it.

pub use crate::close::Side;

/// What went wrong, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request or malformed WebSocket upgrade → 400.
    BadRequest,
    /// No route matches host and path → 404.
    NoRoute,
    /// Upgrade with an unsupported `Sec-WebSocket-Version` → 426.
    UnsupportedVersion,
    /// Request head larger than `max_header_bytes` → 431.
    HeadersTooLarge,
    /// The client did not send its head within `header_timeout` → closed, 408 logged.
    HeaderTimeout,
    /// The client closed or reset before its head was complete → closed, 499 logged.
    ClientClosed,
    /// Every upstream server refused or reset the connection → 502.
    UpstreamRefused,
    /// The upstream's response head was malformed or too large → 502.
    UpstreamInvalid,
    /// The upstream closed or reset before its response head was complete → 502.
    UpstreamClosed,
    /// No upstream server is eligible (all down or over their limits) → 503.
    NoUpstream,
    /// Connecting to, or waiting for the head of, the upstream timed out → 504.
    UpstreamTimeout,
    /// A local resource failed (sockets, memory) → 500.
    Internal,
    /// The request's `Origin` is not in the route's `allowed_origins` → 403.
    Forbidden,
    /// Over an admission limit (connections or handshake rate), `admission.status = 503`.
    OverLimit,
    /// Over an admission limit, `admission.status = 429`.
    TooManyRequests,
}

impl ErrorKind {
    /// The status sent to the client (or logged when nothing can be sent).
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Forbidden => 403,
            Self::NoRoute => 404,
            Self::HeaderTimeout => 408,
            Self::UnsupportedVersion => 426,
            Self::HeadersTooLarge => 431,
            Self::ClientClosed => 499,
            Self::Internal => 500,
            Self::UpstreamRefused | Self::UpstreamInvalid | Self::UpstreamClosed => 502,
            Self::NoUpstream | Self::OverLimit => 503,
            Self::TooManyRequests => 429,
            Self::UpstreamTimeout => 504,
        }
    }

    /// The side at fault.
    pub fn side(self) -> Side {
        match self {
            Self::BadRequest
            | Self::NoRoute
            | Self::UnsupportedVersion
            | Self::HeadersTooLarge
            | Self::HeaderTimeout
            | Self::ClientClosed
            | Self::Forbidden
            | Self::OverLimit
            | Self::TooManyRequests => Side::Client,
            Self::UpstreamRefused
            | Self::UpstreamInvalid
            | Self::UpstreamClosed
            | Self::NoUpstream
            | Self::UpstreamTimeout => Side::Upstream,
            Self::Internal => Side::Internal,
        }
    }

    /// Whether the client can still be sent a response (it has not gone away).
    pub fn respond(self) -> bool {
        !matches!(self, Self::HeaderTimeout | Self::ClientClosed)
    }

    /// Whether this is an admission refusal: counted and summarised once per period
    /// instead of logged per connection.
    pub fn is_refusal(self) -> bool {
        matches!(self, Self::OverLimit | Self::TooManyRequests)
    }

    /// Short reason phrase, also the body of the error response.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Forbidden => "Forbidden",
            Self::TooManyRequests => "Too Many Requests",
            Self::NoRoute => "Not Found",
            Self::HeaderTimeout => "Request Timeout",
            Self::UnsupportedVersion => "Upgrade Required",
            Self::HeadersTooLarge => "Request Header Fields Too Large",
            Self::ClientClosed => "Client Closed Request",
            Self::Internal => "Internal Server Error",
            Self::UpstreamRefused | Self::UpstreamInvalid | Self::UpstreamClosed => "Bad Gateway",
            Self::NoUpstream | Self::OverLimit => "Service Unavailable",
            Self::UpstreamTimeout => "Gateway Timeout",
        }
    }
}

/// A failed connection phase.
#[derive(Debug, thiserror::Error)]
#[error("{} error {}: {detail}", kind.side(), kind.status())]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    /// Whether the same request may go to the next upstream server: the server failed
    /// before answering anything (refused, reset or closed before a response head), so
    /// nothing of a response was consumed, and an upgrade is a GET. A malformed head or
    /// a response timeout is not: a slow or broken server is not hammered with retries.
    pub fn retry_safe(&self) -> bool {
        matches!(self.kind, ErrorKind::UpstreamRefused | ErrorKind::UpstreamClosed)
    }
}
