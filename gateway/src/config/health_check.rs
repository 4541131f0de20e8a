//! `[upstream.NAME.health_check]`: the active health checks of one group.
//!
//! Data only: the checks themselves run on the admin thread (`upstream::health`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Active health checks of one group: an HTTP request to every server (backups too)
/// each `interval`, from the admin thread. Servers start in service; `fall` failed
/// checks in a row take one out, `rise` passed checks in a row bring it back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Time between two checks of one server. Default 5s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for connecting and receiving the response head. Default 2s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passed checks that bring a down server back. Default 2.
    pub rise: u32,
    /// Consecutive failed checks that take a server out. Default 3.
    pub fall: u32,
    /// Request target of the check. Default `/health`.
    pub path: String,
    /// Host header of the check. Default: the server's `IP:PORT`.
    pub host: Option<String>,
    /// Statuses that count as alive: `"200"`, `"2xx"` or `"200-299"`. Default 2xx and 3xx.
    pub statuses: Vec<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            path: "/health".into(),
            host: None,
            statuses: vec!["2xx".into(), "3xx".into()],
        }
    }
}

/// Parses `statuses` of a health check into inclusive ranges.
pub fn parse_statuses(specs: &[String]) -> Result<Vec<(u16, u16)>, String> {
    specs
        .iter()
        .map(|s| {
            let s = s.trim();
            let bad = || format!("`{s}` is not a status, `Nxx` or `LOW-HIGH` between 100 and 599");
            let range = if let Some(d) = s.strip_suffix("xx").filter(|d| d.len() == 1) {
                let d: u16 = d.parse().map_err(|_| bad())?;
                (d * 100, d * 100 + 99)
            } else if let Some((lo, hi)) = s.split_once('-') {
                (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?)
            } else {
                let v: u16 = s.parse().map_err(|_| bad())?;
                (v, v)
            };
            if range.0 < 100 || range.1 > 599 || range.0 > range.1 {
                return Err(bad());
            }
            Ok(range)
        })
        .collect()
}
