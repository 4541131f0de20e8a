//! `validate()`: every rule a parsed configuration must meet before it runs, each
//! failure naming its field (`route[0].upstream: …`).
//!
//! Rules that concern one value's own syntax (addresses, durations, `hash_key`,
//! `trusted_proxies`) are the parser's; rules here span fields or ranges. This module
//! never changes the configuration it checks.

use super::error::invalid;
use super::{
    Balance, Config, ConfigError, MAX_WATCH_TLS, MIN_SPLICE_BUDGET, MIN_WATCH_TLS, TlsConfig, UpstreamConfig,
    parse_statuses, valid_sni_name,
};

impl Config {
    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] (or --listen) is required"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.backlog == 0 {
                return Err(invalid(format!("listener[{i}].backlog"), "must be at least 1"));
            }
            if let Some(tls) = &l.tls {
                validate_tls(&format!("listener[{i}].tls"), tls)?;
            }
        }
        self.validate_timeouts()?;
        self.validate_drain()?;
        self.validate_reload()?;
        self.validate_http2()?;
        if !(512..=1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes", "must be between 512 and 1048576"));
        }
        if !(1..=8192).contains(&self.limits.max_headers) {
            return Err(invalid("limits.max_headers", "must be between 1 and 8192"));
        }
        self.validate_keepalive()?;
        if !(512..=1024 * 1024).contains(&self.limits.max_response_header_bytes) {
            return Err(invalid("limits.max_response_header_bytes", "must be between 512 and 1048576"));
        }
        if self.limits.max_requests == 0 {
            return Err(invalid("limits.max_requests", "must be at least 1"));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.relay.buffer_size) {
            return Err(invalid("relay.buffer_size", "must be between 1024 and 16777216"));
        }
        if self.relay.splice_budget < MIN_SPLICE_BUDGET {
            return Err(invalid("relay.splice_budget", format!("must be at least {MIN_SPLICE_BUDGET}")));
        }
        if self.access_log.path.is_empty() {
            return Err(invalid("access_log.path", "must be `stdout`, `off` or a file path"));
        }
        if self.routes.is_empty() {
            return Err(invalid("route", "at least one [[route]] (or --upstream) is required"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path.starts_with('/') {
                return Err(invalid(format!("route[{i}].path"), format!("`{}` must start with `/`", r.path)));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                return Err(invalid(
                    format!("route[{i}].upstream"),
                    format!("no upstream group named `{}` (define [upstream.{}])", r.upstream, r.upstream),
                ));
            }
            if r.host.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(format!("route[{i}].host"), "must not be empty (omit it to match any host)"));
            }
            if let Some(o) = r.allowed_origins.iter().find(|o| o.trim().is_empty() || o.contains(char::is_whitespace)) {
                return Err(invalid(
                    format!("route[{i}].allowed_origins"),
                    format!("`{o}` is not an origin (like `https://app.example.com`)"),
                ));
            }
        }
        self.validate_admission()?;
        for (name, u) in &self.upstreams {
            if u.servers.is_empty() {
                return Err(invalid(format!("upstream.{name}.servers"), "needs at least one server"));
            }
            for (i, s) in u.servers.iter().enumerate() {
                if s.weight == 0 {
                    return Err(invalid(format!("upstream.{name}.servers[{i}].weight"), "must be at least 1"));
                }
                if s.address.port() == 0 {
                    return Err(invalid(format!("upstream.{name}.servers[{i}].address"), "port must not be 0"));
                }
            }
            if u.servers.iter().all(|s| s.backup) {
                return Err(invalid(
                    format!("upstream.{name}.servers"),
                    "needs at least one server that is not a backup",
                ));
            }
            validate_upstream(name, u)?;
            if u.keepalive > 0 && (u.keepalive_timeout.is_zero() || u.keepalive_requests == 0) {
                return Err(invalid(
                    format!("upstream.{name}.keepalive"),
                    "with a pool, keepalive_timeout and keepalive_requests must be greater than 0",
                ));
            }
        }
        Ok(())
    }

    fn validate_keepalive(&self) -> Result<(), ConfigError> {
        let ka = &self.keepalive;
        for (field, d) in [("keepalive.idle", ka.idle), ("keepalive.interval", ka.interval)] {
            if d.as_secs() > 32767 || (!d.is_zero() && d.as_secs() == 0) {
                return Err(invalid(field, "must be 0s or whole seconds from 1s to 32767s"));
            }
        }
        if ka.count > 127 {
            return Err(invalid("keepalive.count", "must be between 0 and 127"));
        }
        if ka.user_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(invalid("keepalive.user_timeout", "must be below 49 days"));
        }
        Ok(())
    }

    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        let t = &self.timeouts;
        for (name, d) in [
            ("timeouts.header", t.header),
            ("timeouts.connect", t.connect),
            ("timeouts.response", t.response),
            ("timeouts.idle", t.idle),
        ] {
            if d.is_zero() {
                return Err(invalid(name, "must be greater than 0"));
            }
        }
        Ok(())
    }

    fn validate_reload(&self) -> Result<(), ConfigError> {
        let watch = self.reload.watch_tls;
        if !watch.is_zero() && !(MIN_WATCH_TLS..=MAX_WATCH_TLS).contains(&watch) {
            return Err(invalid("reload.watch_tls", "must be 0s (off) or from 100ms to 1h"));
        }
        Ok(())
    }

    fn validate_http2(&self) -> Result<(), ConfigError> {
        const WINDOW: std::ops::RangeInclusive<u32> = 65_535..=(1 << 31) - 1;
        let h = &self.http2;
        if h.max_concurrent_streams == 0 {
            return Err(invalid("http2.max_concurrent_streams", "must be at least 1"));
        }
        if !(1024..=1024 * 1024).contains(&h.max_header_list_size) {
            return Err(invalid("http2.max_header_list_size", "must be between 1024 and 1048576"));
        }
        for (field, w) in [("http2.stream_window", h.stream_window), ("http2.connection_window", h.connection_window)] {
            if !WINDOW.contains(&w) {
                return Err(invalid(field, "must be between 65535 and 2147483647 bytes"));
            }
        }
        if h.max_resets_per_second == 0 {
            return Err(invalid("http2.max_resets_per_second", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_drain(&self) -> Result<(), ConfigError> {
        let d = &self.drain;
        if !d.rate.is_finite() || d.rate < 0.0 {
            return Err(invalid("drain.rate", "must be a number of closes per second, 0 (no cap) or more"));
        }
        if !(0.0..=1.0).contains(&d.jitter) {
            return Err(invalid("drain.jitter", "must be between 0 and 1"));
        }
        if d.close_timeout.is_zero() {
            return Err(invalid("drain.close_timeout", "must be greater than 0"));
        }
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        let a = &self.admission;
        if !a.rate.is_finite() || a.rate < 0.0 {
            return Err(invalid("admission.rate", "must be a number of handshakes per second, 0 or more"));
        }
        if a.rate > 0.0 && a.burst == 0 {
            return Err(invalid("admission.burst", "must be at least 1 when admission.rate is set"));
        }
        if !matches!(a.status, 429 | 503) {
            return Err(invalid("admission.status", "must be 503 or 429"));
        }
        if a.log_period.is_zero() {
            return Err(invalid("admission.log_period", "must be greater than 0"));
        }
        if !a.table_slots.is_power_of_two() || !(64..=1 << 26).contains(&a.table_slots) {
            return Err(invalid("admission.table_slots", "must be a power of two between 64 and 67108864"));
        }
        Ok(())
    }
}

fn validate_upstream(name: &str, u: &UpstreamConfig) -> Result<(), ConfigError> {
    let field = |f: &str| format!("upstream.{name}.{f}");
    match (u.balance, &u.hash_key) {
        (Balance::Hash, None) => {
            return Err(invalid(
                field("hash_key"),
                "is required with balance = \"hash\" (header:NAME, cookie:NAME or query:NAME)",
            ));
        }
        (Balance::Hash, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(invalid(field("hash_key"), "is only used with balance = \"hash\"")),
    }
    if u.max_fails > 0 && u.fail_timeout.is_zero() {
        return Err(invalid(field("fail_timeout"), "must be greater than 0 when max_fails is set"));
    }
    for (i, a) in u.source_addresses.iter().enumerate() {
        if u.servers.iter().filter_map(|s| s.address.ip()).any(|s| s.is_ipv4() != a.is_ipv4()) {
            return Err(invalid(
                field(&format!("source_addresses[{i}]")),
                format!("{a} is not of the same address family as every server"),
            ));
        }
    }
    if let Some(h) = &u.health_check {
        let hf = |f: &str| field(&format!("health_check.{f}"));
        if h.interval.is_zero() {
            return Err(invalid(hf("interval"), "must be greater than 0"));
        }
        if h.timeout.is_zero() {
            return Err(invalid(hf("timeout"), "must be greater than 0"));
        }
        if h.rise == 0 {
            return Err(invalid(hf("rise"), "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(invalid(hf("fall"), "must be at least 1"));
        }
        if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
            return Err(invalid(hf("path"), format!("`{}` must start with `/` and hold no spaces", h.path)));
        }
        if h.host.as_deref().is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace)) {
            return Err(invalid(hf("host"), "must be a host name without spaces"));
        }
        if h.statuses.is_empty() {
            return Err(invalid(hf("statuses"), "needs at least one status"));
        }
        parse_statuses(&h.statuses).map_err(|reason| invalid(hf("statuses"), reason))?;
    }
    if let Some(t) = &u.tls {
        match (&t.cert, &t.key) {
            (Some(_), None) => return Err(invalid(field("tls.key"), "required with `cert`")),
            (None, Some(_)) => return Err(invalid(field("tls.cert"), "required with `key`")),
            _ => {}
        }
        if let Some(n) = &t.server_name
            && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            return Err(invalid(field("tls.server_name"), format!("`{n}` is not a DNS name or an IP address")));
        }
    }
    Ok(())
}

/// A TLS listener needs a certificate to present, a key beside every certificate, and
/// well-formed SNI names (the files themselves are checked by `crate::tls`).
fn validate_tls(field: &str, tls: &TlsConfig) -> Result<(), ConfigError> {
    match (&tls.cert, &tls.key) {
        (Some(_), None) => return Err(invalid(format!("{field}.key"), "required with `cert`")),
        (None, Some(_)) => return Err(invalid(format!("{field}.cert"), "required with `key`")),
        (None, None) if tls.sni.is_empty() => {
            return Err(invalid(field, "needs `cert` and `key`, or at least one [[listener.tls.sni]] entry"));
        }
        _ => {}
    }
    for (j, entry) in tls.sni.iter().enumerate() {
        if entry.names.is_empty() {
            return Err(invalid(format!("{field}.sni[{j}].names"), "must list at least one name"));
        }
        if let Some(bad) = entry.names.iter().find(|n| !valid_sni_name(n)) {
            return Err(invalid(
                format!("{field}.sni[{j}].names"),
                format!("`{bad}` is not a host name (letters, digits, `-`, `.`; `*.` only in front)"),
            ));
        }
    }
    Ok(())
}
