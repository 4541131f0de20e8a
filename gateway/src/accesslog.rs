//! The access log: one line per connection at close, written by its own thread.
//!
//! Workers hand a finished [`AccessRecord`] to a bounded channel and never wait: when
//! the writer falls behind, records are dropped and counted (reported by the writer),
//! because a data-plane thread must never block on a disk. Nor is it woken per record:
//! it drains the channel every [`WRITE_PERIOD`], so logging costs a worker no system
//! call (a blocked receiver would cost a futex wake-up per connection).
//!
//! [`request_reopen`] (SIGUSR1, for logrotate) makes every writer reopen its file
//! destination before its next batch. Each configuration generation whose access log
//! differs from the one before has its own writer; [`finish_all`] ends them all at exit.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::close::{Close, Mode};
use crate::config::{AccessLogConfig, AccessLogFormat};

/// Everything logged about one connection.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    pub remote_addr: SocketAddr,
    pub host: String,
    /// Unix time of the log line, seconds; rendered as `time_local` in text.
    pub time: f64,
    pub request: String,
    pub status: u16,
    /// Bytes sent to the client (response head and body, or all WebSocket bytes).
    pub bytes_sent: u64,
    /// Whole connection, seconds.
    pub request_time: f64,
    /// Connect → response head, seconds (`None`: no upstream response).
    pub upstream_response_time: Option<f64>,
    pub user_agent: String,
    pub upstream_addr: Option<SocketAddr>,
    /// Bytes relayed client → upstream after the request head.
    pub bytes_in: u64,
    /// Bytes relayed upstream → client.
    pub bytes_out: u64,
    /// How the connection ended.
    pub close: Close,
    /// `userspace`, `splice`, `userspace+splice` (handed to the kernel mid-stream), or
    /// `-` when nothing was relayed.
    pub mode: Mode,
}

/// How often the writer drains the channel (the most a line waits to be written).
pub const WRITE_PERIOD: Duration = Duration::from_millis(50);

/// One more per [`request_reopen`]: each writer reopens its file when this moved past
/// the value it last saw (after a reload two writers may be running: each reopens).
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every writer to reopen its file (after logrotate moved it away).
pub fn request_reopen() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// Every writer thread started (one per access-log destination of each configuration
/// generation) and its stop flag, for [`finish_all`] at exit.
static WRITERS: Mutex<Vec<(Arc<AtomicBool>, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Writes what every writer has queued and stops them all: call at exit, once the
/// workers are gone. Handles may still be held elsewhere (the admin plane, the reload);
/// a line submitted after this is lost.
pub fn finish_all() {
    let writers = WRITERS.lock().map(|mut w| std::mem::take(&mut *w)).unwrap_or_default();
    for (stop, _) in &writers {
        stop.store(true, Ordering::Relaxed);
    }
    for (_, h) in writers {
        let _ = h.join();
    }
}

/// Handle used by workers to submit records.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<AccessRecord>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log that discards everything (`path = "off"`).
    pub fn off() -> Self {
        Self { tx: None, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Opens the destination and starts the writer thread.
    pub fn start(cfg: &AccessLogConfig) -> io::Result<Self> {
        // Every field, by name: a new one cannot be left unread here.
        // (`log_open` is the connections' business: they write the open lines.)
        let AccessLogConfig { path, format, log_open: _ } = cfg;
        let (out, file): (Box<dyn Write + Send>, _) = match path.as_str() {
            "off" => return Ok(Self::off()),
            "stdout" => (Box::new(io::stdout()), None),
            path => (Box::new(open(path)?), Some(path.to_owned())),
        };
        let (tx, rx) = mpsc::sync_channel(64 * 1024);
        let dropped = Arc::new(AtomicU64::new(0));
        let format = *format;
        let d = dropped.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("wsgate-accesslog".into())
            .spawn(move || writer(&rx, out, (file.as_deref(), &stopped), format, &d))?;
        if let Ok(mut w) = WRITERS.lock() {
            // Writers that ended by themselves (their generation is gone) leave.
            w.retain(|(_, h)| !h.is_finished());
            w.push((stop, handle));
        }
        Ok(Self { tx: Some(tx), dropped })
    }

    /// Submits a record without blocking.
    pub fn log(&self, record: AccessRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn open(path: &str) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open access log {path}: {e}")))
}

fn writer(
    rx: &Receiver<AccessRecord>,
    out: Box<dyn Write + Send>,
    (file, stop): (Option<&str>, &AtomicBool),
    format: AccessLogFormat,
    dropped: &AtomicU64,
) {
    let mut out = BufWriter::new(out);
    let mut reported = 0;
    let mut reopened = REOPEN.load(Ordering::Relaxed);
    let (mut clock, mut line) = (Clock::default(), String::new());
    loop {
        let asked = REOPEN.load(Ordering::Relaxed);
        if let (true, Some(path)) = (asked != reopened, file) {
            reopened = asked;
            let _ = out.flush();
            match open(path) {
                Ok(f) => out = BufWriter::new(Box::new(f)),
                Err(e) => tracing::error!(error = %e, "reopening the access log failed; still writing to the old file"),
            }
        }
        // Everything queued, then one flush: bursts are batched.
        let mut wrote = false;
        // Read before the queue is drained: what was queued before the stop is written.
        let stopping = stop.load(Ordering::Relaxed);
        let open = loop {
            match rx.try_recv() {
                Ok(r) => {
                    line.clear();
                    render_into(&mut line, &r, format, &mut clock);
                    if out.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if wrote {
            let _ = out.flush();
        }
        if !open || stopping {
            return;
        }
        let d = dropped.load(Ordering::Relaxed);
        if d > reported {
            tracing::warn!(dropped = d - reported, "access log writer fell behind; records dropped");
            reported = d;
        }
        std::thread::sleep(WRITE_PERIOD);
    }
}

/// Renders one line (with its newline).
#[cfg(test)]
fn render(r: &AccessRecord, format: AccessLogFormat) -> String {
    let mut line = String::new();
    render_into(&mut line, r, format, &mut Clock::default());
    line
}

/// Appends one line (with its newline) to `out`, with the time from `clock`. The
/// writer renders every line into one buffer: nothing is allocated per text line.
fn render_into(out: &mut String, r: &AccessRecord, format: AccessLogFormat, clock: &mut Clock) {
    // Writing to a String cannot fail: the results are ignored.
    match format {
        AccessLogFormat::Json => {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
        AccessLogFormat::Text => {
            // By hand rather than through `core::fmt`, which was most of the writer's CPU.
            push_ip(out, r.remote_addr.ip());
            out.push_str(" - - [");
            out.push_str(clock.time_local(r.time));
            out.push_str("] \"");
            escape_into(out, &r.request);
            out.push_str("\" ");
            push_int(out, r.status);
            out.push(' ');
            push_int(out, r.bytes_sent);
            out.push_str(" \"");
            escape_into(out, &r.user_agent);
            out.push_str("\" host=\"");
            escape_into(out, &r.host);
            out.push_str("\" rt=");
            push_secs(out, r.request_time);
            out.push_str(" urt=");
            match r.upstream_response_time {
                Some(t) => push_secs(out, t),
                None => out.push('-'),
            }
            out.push_str(" ua=");
            match r.upstream_addr {
                Some(SocketAddr::V4(a)) => {
                    push_ip(out, IpAddr::V4(*a.ip()));
                    out.push(':');
                    push_int(out, a.port());
                }
                Some(a) => {
                    let _ = write!(out, "{a}");
                }
                None => out.push('-'),
            }
            out.push_str(" in=");
            push_int(out, r.bytes_in);
            out.push_str(" out=");
            push_int(out, r.bytes_out);
            out.push_str(" close=");
            out.push_str(r.close.as_str());
            out.push_str(" mode=");
            out.push_str(r.mode.as_str());
            out.push('\n');
        }
    }
}

fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// An address as `Display` writes it.
fn push_ip(out: &mut String, ip: IpAddr) {
    // SAFETY: an address is written in ASCII, so the string stays UTF-8.
    crate::http::rewrite::push_ip(unsafe { out.as_mut_vec() }, ip);
}

/// Seconds with three decimals, exactly as `{:.3}` writes them: by integer arithmetic
/// when the thousandths are clear, through `{:.3}` near a half thousandth (where the
/// product `t × 1000` may round otherwise than the exact value) and past 10⁶ s.
fn push_secs(out: &mut String, t: f64) {
    let ms = t * 1000.0;
    if !(t.is_finite() && (0.0..1e6).contains(&t)) || (ms - ms.floor() - 0.5).abs() < 1e-6 {
        let _ = write!(out, "{t:.3}");
        return;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked above: 0 ≤ t < 10⁶")]
    let ms = ms.round() as u64;
    push_int(out, ms / 1000);
    let frac = ms % 1000;
    out.push_str(if frac < 10 {
        ".00"
    } else if frac < 100 {
        ".0"
    } else {
        "."
    });
    push_int(out, frac);
}

/// `$time_local` of the second last asked for: formatted once a second, not per line
/// (the formatting was a quarter of the writer's CPU).
#[derive(Debug, Default)]
struct Clock {
    second: Option<i64>,
    text: String,
}

impl Clock {
    fn time_local(&mut self, unix: f64) -> &str {
        let second = unix.floor() as i64;
        if self.second != Some(second) {
            self.second = Some(second);
            self.text = time_local(unix);
        }
        &self.text
    }
}

/// Now as Unix seconds.
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// nginx's `$time_local`: `22/Nov/2026:02:03:39 +0000`, in the local time zone.
fn time_local(unix: f64) -> String {
    time_in(unix, &chrono::Local)
}

/// `$time_local`'s format in the zone `tz`.
fn time_in<Tz: chrono::TimeZone>(unix: f64, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    chrono::DateTime::from_timestamp(unix.floor() as i64, 0)
        .map_or_else(|| "-".into(), |t| t.with_timezone(tz).format("%d/%b/%Y:%H:%M:%S %z").to_string())
}

/// Appends `s` with quotes, backslashes and control characters escaped the way nginx
/// does (`\xHH`, per byte).
fn escape_into(out: &mut String, s: &str) {
    let plain = |b: &u8| b.is_ascii() && *b != b'"' && *b != b'\\' && !b.is_ascii_control();
    if s.bytes().all(|b| plain(&b)) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "\\x{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            remote_addr: "127.0.0.1:5000".parse().unwrap(),
            host: "example.com".into(),
            time: 0.0,
            request: "GET /ws/ HTTP/1.1".into(),
            status: 101,
            bytes_sent: 129,
            request_time: 1.5,
            upstream_response_time: Some(0.002),
            user_agent: "test \"agent\"".into(),
            upstream_addr: Some("127.0.0.1:9001".parse().unwrap()),
            bytes_in: 10,
            bytes_out: 129,
            close: Close::ClientFin,
            mode: Mode::Userspace,
        }
    }

    #[test]
    fn text_line_has_the_recipe_fields() {
        let line = render(&record(), AccessLogFormat::Text);
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("] \"GET /ws/ HTTP/1.1\" 101 129 \"test \\x22agent\\x22\" host=\"example.com\" rt=1.500 urt=0.002 ua=127.0.0.1:9001 in=10 out=129 close=client_fin mode=userspace\n"), "{line}");
    }

    #[test]
    fn time_is_nginx_time_local() {
        let utc = chrono::FixedOffset::east_opt(0).unwrap();
        assert_eq!(time_in(1_764_720_000.9, &utc), "03/Dec/2025:00:00:00 +0000");
        let new_york = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
        assert_eq!(time_in(1_764_720_000.0, &new_york), "02/Dec/2025:19:00:00 -0500");
        let kolkata = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        assert_eq!(time_in(1_764_720_000.0, &kolkata), "03/Dec/2025:05:30:00 +0530");
        assert_eq!(time_in(f64::MAX, &utc), "-");
        assert_eq!(time_local(0.0).len(), "01/Jan/1970:00:00:00 +0000".len());
    }

    #[test]
    fn escaping_takes_quotes_backslashes_and_control_characters() {
        let escaped = |s: &str| {
            let mut out = String::from(">");
            escape_into(&mut out, s);
            out
        };
        assert_eq!(escaped("Mozilla/5.0 (X11) é"), ">Mozilla/5.0 (X11) é");
        assert_eq!(escaped("a\"b\\c\nd\u{7f}\u{85}é"), ">a\\x22b\\x5Cc\\x0Ad\\x7F\\xC2\\x85é");
    }

    /// The writer's clock formats a second once; the next second gets its own text.
    #[test]
    fn lines_of_one_second_share_its_time_and_the_next_gets_its_own() {
        let mut clock = Clock::default();
        let (mut a, mut b) = (record(), record());
        a.time = 1_764_720_000.2;
        b.time = 1_764_720_001.0;
        let mut lines = String::new();
        for r in [&a, &a, &b] {
            render_into(&mut lines, r, AccessLogFormat::Text, &mut clock);
        }
        let times: Vec<&str> = lines.lines().map(|l| &l[l.find('[').unwrap() + 1..l.find(']').unwrap()]).collect();
        assert_eq!(times, [time_local(a.time).as_str(), &time_local(a.time), &time_local(b.time)]);
        assert_ne!(times[1], times[2]);
        assert_eq!(lines.lines().next(), Some(render(&a, AccessLogFormat::Text).trim_end()));
    }

    /// The line as `format!` wrote it before the writer wrote it by hand.
    fn formatted(r: &AccessRecord) -> String {
        let urt = r.upstream_response_time.map_or_else(|| "-".to_owned(), |t| format!("{t:.3}"));
        let ua = r.upstream_addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let esc = |s: &str| {
            let mut out = String::new();
            escape_into(&mut out, s);
            out
        };
        format!(
            "{} - - [{}] \"{}\" {} {} \"{}\" host=\"{}\" rt={:.3} urt={} ua={} in={} out={} close={} mode={}\n",
            r.remote_addr.ip(),
            time_local(r.time),
            esc(&r.request),
            r.status,
            r.bytes_sent,
            esc(&r.user_agent),
            esc(&r.host),
            r.request_time,
            urt,
            ua,
            r.bytes_in,
            r.bytes_out,
            r.close,
            r.mode,
        )
    }

    #[test]
    fn seconds_are_written_as_format_rounds_them() {
        // Every half thousandth up to 3 s as the nearest double (whose product by 1000
        // may land on an exact tie, as for 0.0045 and 1.0005), and its neighbours.
        for k in 0..6000u32 {
            let t = f64::from(k) / 2000.0;
            for x in [t, t + 1e-9, t - 1e-9, t + 0.0002] {
                let mut out = String::new();
                push_secs(&mut out, x.max(0.0));
                assert_eq!(out, format!("{:.3}", x.max(0.0)), "{x}");
            }
        }
        for x in [1e6, 1e12, f64::NAN, -1.0] {
            let mut out = String::new();
            push_secs(&mut out, x);
            assert_eq!(out, format!("{x:.3}"));
        }
    }

    #[test]
    fn lines_written_by_hand_are_what_format_wrote() {
        // Half thousandths among them: `{:.3}` rounds their exact values.
        let times = [0.0, 0.0004, 0.002, 0.0045, 0.0105, 0.0625, 0.25, 1.0005, 1.5, 59.999, 3600.1234, 86_400.0];
        let addrs = ["127.0.0.1:5000", "10.200.3.45:65535", "[::1]:443", "[2001:db8::7]:9001"];
        for (i, &t) in times.iter().enumerate() {
            let mut r = record();
            r.time = 1_764_720_000.0 + t;
            r.request_time = t;
            r.upstream_response_time = (i % 3 != 0).then_some(t / 3.0);
            r.remote_addr = addrs[i % addrs.len()].parse().unwrap();
            r.upstream_addr = (i % 4 != 1).then(|| addrs[(i + 1) % addrs.len()].parse().unwrap());
            r.bytes_in = (i as u64).pow(7);
            r.status = [101, 200, 404, 502][i % 4];
            assert_eq!(render(&r, AccessLogFormat::Text), formatted(&r));
        }
    }

    #[test]
    fn json_line_parses() {
        let line = render(&record(), AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 101);
        assert_eq!(v["close"], "client_fin");
        assert_eq!(v["mode"], "userspace");
    }
}
