//! What a load run counts and measures: counters, latency histograms (one recorder per
//! thread and per process, merged at the end), and their serialized form for crossing
//! process boundaries.
//!
//! Recording never allocates after start-up (histograms are sized up front) and never
//! blocks: each thread owns its recorder.

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Every counter of a run; all sums, so merging is addition.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Connections upgraded.
    pub connected: u64,
    /// TCP connect failures (refused, timed out, out of ports or files).
    pub connect_failed: u64,
    /// Upgrades refused or malformed.
    pub handshake_failed: u64,
    /// Data messages sent.
    pub sent: u64,
    /// Data messages received back.
    pub received: u64,
    /// Messages never echoed.
    pub lost: u64,
    /// Echoes whose content differs from what was sent.
    pub mismatched: u64,
    /// Echoes that came back after a later message.
    pub out_of_order: u64,
    /// Connections the server (or proxy) closed before the client did.
    pub closed_early: u64,
    /// Pings sent as heartbeats.
    pub pings: u64,
    /// Pongs that matched their ping.
    pub pongs: u64,
    /// Heartbeats without a pong before the next one (or the end).
    pub pongs_missing: u64,
    /// Pongs of an earlier heartbeat that came after the next ping went out (already
    /// counted as missing; a sign of overload, not of corruption).
    #[serde(default)]
    pub pongs_late: u64,
    /// Connections that echoed a message after the hold.
    pub verified: u64,
    /// Close handshakes completed.
    pub closed_clean: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received back intact.
    pub bytes_received: u64,
    /// Connections upgraded over TLS (`--tls`).
    #[serde(default)]
    pub tls_handshakes: u64,
    /// Of those, the ones whose TLS session was resumed (`--tls-resume`).
    #[serde(default)]
    pub tls_resumed: u64,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, o: &Counts) {
        let Counts {
            connected,
            connect_failed,
            handshake_failed,
            sent,
            received,
            lost,
            mismatched,
            out_of_order,
            closed_early,
            pings,
            pongs,
            pongs_missing,
            pongs_late,
            verified,
            closed_clean,
            bytes_sent,
            bytes_received,
            tls_handshakes,
            tls_resumed,
        } = o;
        self.connected += connected;
        self.connect_failed += connect_failed;
        self.handshake_failed += handshake_failed;
        self.sent += sent;
        self.received += received;
        self.lost += lost;
        self.mismatched += mismatched;
        self.out_of_order += out_of_order;
        self.closed_early += closed_early;
        self.pings += pings;
        self.pongs += pongs;
        self.pongs_missing += pongs_missing;
        self.pongs_late += pongs_late;
        self.verified += verified;
        self.closed_clean += closed_clean;
        self.bytes_sent += bytes_sent;
        self.bytes_received += bytes_received;
        self.tls_handshakes += tls_handshakes;
        self.tls_resumed += tls_resumed;
    }

    /// Nothing lost, corrupted, reordered, closed early or failed.
    pub fn clean(&self) -> bool {
        self.lost + self.mismatched + self.out_of_order + self.closed_early + self.pongs_missing == 0
            && self.connect_failed + self.handshake_failed == 0
    }
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One thread's (or process's) counters and histograms.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Counters.
    pub counts: Counts,
    /// Round trip of echoed messages and heartbeats, µs.
    pub rtt: Histogram<u64>,
    /// Connect + upgrade time, µs.
    pub handshake: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self { counts: Counts::default(), rtt: new_histogram(), handshake: new_histogram() }
    }
}

impl Recorder {
    /// Records a round trip.
    pub fn rtt_us(&mut self, us: u64) {
        self.rtt.saturating_record(us.max(1));
    }

    /// Records a handshake time.
    pub fn handshake_us(&mut self, us: u64) {
        self.handshake.saturating_record(us.max(1));
    }

    /// Merges `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        self.counts.add(&other.counts);
        self.rtt.add(&other.rtt).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
    }

    /// The form sent from a worker process to its parent.
    pub fn to_wire(&self) -> Result<WireRecorder> {
        Ok(WireRecorder { counts: self.counts.clone(), rtt: encode(&self.rtt)?, handshake: encode(&self.handshake)? })
    }

    /// Reads what a worker process sent.
    pub fn from_wire(w: &WireRecorder) -> Result<Self> {
        let mut r = Recorder { counts: w.counts.clone(), ..Recorder::default() };
        r.rtt.add(decode(&w.rtt)?).context("rtt histogram out of bounds")?;
        r.handshake.add(decode(&w.handshake)?).context("handshake histogram out of bounds")?;
        Ok(r)
    }
}

/// A recorder as JSON: counters and base64 of the `HdrHistogram` V2 encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRecorder {
    /// Counters.
    pub counts: Counts,
    /// Round-trip histogram, V2 + base64.
    pub rtt: String,
    /// Handshake histogram, V2 + base64.
    pub handshake: String,
}

/// A report's histograms, serialized (`HdrHistogram` V2 + base64), so that reports of
/// shards merge exactly: percentiles of the merged run come from the merged histograms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histograms {
    /// Round trips, µs.
    pub rtt: String,
    /// Connect + upgrade times, µs.
    pub handshake: String,
}

impl Histograms {
    /// The histograms of `rec`.
    pub fn of(rec: &Recorder) -> Result<Self> {
        Ok(Self { rtt: encode(&rec.rtt)?, handshake: encode(&rec.handshake)? })
    }

    /// A recorder with these histograms and `counts`.
    pub fn recorder(&self, counts: &Counts) -> Result<Recorder> {
        Recorder::from_wire(&WireRecorder {
            counts: counts.clone(),
            rtt: self.rtt.clone(),
            handshake: self.handshake.clone(),
        })
    }
}

fn encode(h: &Histogram<u64>) -> Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| anyhow::anyhow!("serialize histogram: {e:?}"))?;
    Ok(STANDARD.encode(bytes))
}

fn decode(s: &str) -> Result<Histogram<u64>> {
    let bytes = STANDARD.decode(s).context("histogram is not base64")?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| anyhow::anyhow!("deserialize histogram: {e:?}"))
}

/// Percentiles of a histogram, in µs.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// Summarizes `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// (percentile, µs) points for a percentile-distribution plot.
pub fn distribution(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    const PCTS: [f64; 16] =
        [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9999, 100.0];
    if h.is_empty() {
        return Vec::new();
    }
    PCTS.iter().map(|p| [*p, h.value_at_percentile(*p) as f64]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_everything() {
        let mut r = Recorder::default();
        r.counts.sent = 5;
        for v in [1, 10, 100, 1000, 1_000_000] {
            r.rtt_us(v);
        }
        r.handshake_us(42);
        let json = serde_json::to_string(&r.to_wire().unwrap()).unwrap();
        let back = Recorder::from_wire(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.counts, r.counts);
        assert_eq!(back.rtt, r.rtt);
        assert_eq!(back.handshake.len(), 1);
    }
}
