//! How a connection ends, in one vocabulary: the [`Side`] something happened on, the
//! [`Close`] reason and the relay [`Mode`]. The access log, the logs, the userspace
//! relay and the kernel splice all speak these words.
//!
//! The strings (Display and serde) are the access log's fields and must never change:
//! scripts and dashboards read them.

use std::fmt;

use serde::Serialize;

/// Which end of a connection something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The downstream client.
    Client,
    /// An upstream server.
    Upstream,
    /// wsgate itself (resources, configuration, a failed system call, bugs).
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection ended (the access log's `close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    /// Not known (yet): nothing was relayed.
    #[default]
    #[serde(rename = "-")]
    Unknown,
    /// The client closed first (FIN) and the upstream finished after.
    ClientFin,
    /// The upstream closed first (FIN) and the client finished after.
    UpstreamFin,
    /// The client reset the connection.
    ClientReset,
    /// The upstream reset the connection.
    UpstreamReset,
    /// No bytes in either direction for `idle_timeout`.
    IdleTimeout,
    /// Closed by the end of a graceful drain, or at once by a second signal.
    Shutdown,
    /// Closed by the paced drain: a Close 1001 "going away" to each side between
    /// frames, then FIN.
    Drain,
    /// Closed like [`Close::Drain`] because a reload removed the upstream server from a
    /// group with `drain_removed = true`.
    Removed,
    /// The response was complete (error responses, plain HTTP, passed-back responses).
    Done,
    /// Not a close: the userspace relay stopped at a quiet moment (no bytes held, both
    /// directions open) so the pair can be handed to the kernel splice.
    Paused,
    /// A failure on wsgate's side, or one the connection could not survive.
    Error,
    /// Not a close: the line written when a WebSocket opens (`access_log.log_open`).
    Open,
    /// Not a close: a binary upgrade passed the pair to the new process (which
    /// writes its line).
    Handed,
}

impl Close {
    /// Both sides sent FIN; `first` sent it first.
    pub fn fin(first: Side) -> Self {
        if first == Side::Upstream { Self::UpstreamFin } else { Self::ClientFin }
    }

    /// `side` reset the connection (wsgate's own failures are errors).
    pub fn reset(side: Side) -> Self {
        match side {
            Side::Client => Self::ClientReset,
            Side::Upstream => Self::UpstreamReset,
            Side::Internal => Self::Error,
        }
    }

    /// Both sides finished with FIN.
    pub fn is_fin(self) -> bool {
        matches!(self, Self::ClientFin | Self::UpstreamFin)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "-",
            Self::ClientFin => "client_fin",
            Self::UpstreamFin => "upstream_fin",
            Self::ClientReset => "client_reset",
            Self::UpstreamReset => "upstream_reset",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::Drain => "drain",
            Self::Removed => "removed",
            Self::Done => "done",
            Self::Paused => "paused",
            Self::Error => "error",
            Self::Open => "open",
            Self::Handed => "handed",
        }
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a connection's bytes were relayed (the access log's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub enum Mode {
    /// Nothing was relayed (an error, or a response passed back before any relay).
    #[default]
    #[serde(rename = "-")]
    None,
    /// The userspace relay.
    #[serde(rename = "userspace")]
    Userspace,
    /// The kernel splice, from the 101 on.
    #[serde(rename = "splice")]
    Splice,
    /// The userspace relay first, then handed to the kernel splice mid-stream.
    #[serde(rename = "userspace+splice")]
    UserspaceThenSplice,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Userspace => "userspace",
            Self::Splice => "splice",
            Self::UserspaceThenSplice => "userspace+splice",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_display_give_the_access_log_strings() {
        let all = [
            Close::Unknown,
            Close::ClientFin,
            Close::UpstreamFin,
            Close::ClientReset,
            Close::UpstreamReset,
            Close::IdleTimeout,
            Close::Shutdown,
            Close::Drain,
            Close::Removed,
            Close::Done,
            Close::Paused,
            Close::Error,
            Close::Open,
            Close::Handed,
        ];
        for c in all {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        for m in [Mode::None, Mode::Userspace, Mode::Splice, Mode::UserspaceThenSplice] {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!(Mode::UserspaceThenSplice.to_string(), "userspace+splice");
        assert_eq!(Close::Unknown.to_string(), "-");
        assert_eq!(Close::reset(Side::Internal), Close::Error);
        assert_eq!(Close::fin(Side::Upstream), Close::UpstreamFin);
    }
}
