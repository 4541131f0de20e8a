//! Phase 6, teardown: the one place a connection ends. Runs when the phases before it
//! return, or, for a spliced pair, when the kernel splice reports the pair's end.
//! Turns a [`ProxyError`] into its response, its log line and its access-log status
//! (so the three always agree), closes the client, feeds the worker's lifetimes,
//! releases the counts and guards, and writes the access-log line.
//!
//! Holds what is known of a connection ([`Facts`]), and what a parked pair keeps of it
//! ([`ParkedFacts`], [`SplicedEnd`]); [`ActiveConn`] counts it while alive. Returns
//! nothing. Must never block, wait for the network longer than one error response
//! takes to write, or log a connection twice.

use std::mem::take;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Worker;
use super::peer_io::PeerIo;
use super::relay_choice::Handoff;
use crate::accesslog::{AccessRecord, now_unix};
use crate::admission::Admitted;
use crate::close::{Close, Mode};
use crate::error::ProxyError;
use crate::http::response::error_response;
use crate::metrics;
use crate::reload::Generation;
use crate::splice::SpliceOutcome;
use crate::stats::Stats;
use crate::upstream::ActiveGuard;

/// What is known of the connection so far, for the access log.
pub struct Facts {
    /// The accept, or for a later request of a kept-alive connection its first byte.
    pub started: Instant,
    /// The client's address (as believed, once admission has looked at the head).
    pub peer: SocketAddr,
    /// The TCP peer's address (what admission believes `peer` from, for every request).
    pub origin: SocketAddr,
    pub host: String,
    pub request: String,
    pub user_agent: String,
    pub status: u16,
    pub bytes_sent: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_response_time: Option<f64>,
    pub close: Close,
    pub mode: Mode,
    /// The route's index, once routed (metrics).
    pub route: usize,
    /// Counts the connection in the metrics and the admin plane's live view.
    pub conn: metrics::Conn,
    /// What the accepting listener speaks (`X-Forwarded-Proto`).
    pub scheme: crate::config::Scheme,
    /// The configuration generation in force at accept: this connection's
    /// configuration, routes, upstream groups and access log to its end.
    pub generation: Arc<Generation>,
}

impl Facts {
    /// What a binary upgrade passes of this connection, relayed in userspace and
    /// handed at a quiet moment: its facts so far, where its frames stand, and how
    /// long it has been `idle`. [`Facts::adopted`] is the other side.
    pub fn passed(&self, frames: [crate::drain::FrameState; 2], idle: Duration) -> crate::upgrade::wire::PairFacts {
        crate::upgrade::wire::PairFacts {
            age_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            peer: self.peer,
            origin: self.origin,
            host: crate::upgrade::clip(&self.host),
            request: crate::upgrade::clip(&self.request),
            user_agent: crate::upgrade::clip(&self.user_agent),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream_addr: self.upstream_addr,
            upstream_response_time: self.upstream_response_time,
            mode: self.mode,
            https: self.scheme == crate::config::Scheme::Https,
            frames,
            idle_us: u64::try_from(idle.as_micros()).unwrap_or(u64::MAX),
            spliced: None,
        }
    }

    /// A connection another process passed in a binary upgrade ([`Facts::passed`]),
    /// counted by `metrics` here, under `generation` from now on.
    pub fn adopted(
        passed: &crate::upgrade::wire::PairFacts,
        metrics: &metrics::Recorder,
        generation: Arc<Generation>,
    ) -> Self {
        let mut facts = Self::new(passed.peer, metrics, generation);
        facts.started = Instant::now().checked_sub(Duration::from_micros(passed.age_us)).unwrap_or_else(Instant::now);
        facts.origin = passed.origin;
        facts.host.clone_from(&passed.host);
        facts.request.clone_from(&passed.request);
        facts.user_agent.clone_from(&passed.user_agent);
        facts.status = passed.status;
        facts.bytes_in = passed.bytes_in;
        facts.bytes_out = passed.bytes_out;
        facts.bytes_sent = passed.bytes_out;
        facts.upstream_addr = passed.upstream_addr;
        facts.upstream_response_time = passed.upstream_response_time;
        facts.mode = passed.mode;
        facts.scheme = if passed.https { crate::config::Scheme::Https } else { crate::config::Scheme::Http };
        facts
    }

    /// A connection just accepted from `peer`, counted by `metrics`.
    pub fn new(peer: SocketAddr, metrics: &metrics::Recorder, generation: Arc<Generation>) -> Self {
        let started = Instant::now();
        Self {
            started,
            peer,
            origin: peer,
            host: String::new(),
            request: String::new(),
            user_agent: String::new(),
            status: 0,
            bytes_sent: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_addr: None,
            upstream_response_time: None,
            close: Close::Unknown,
            mode: Mode::None,
            route: 0,
            conn: metrics.accepted(started),
            scheme: crate::config::Scheme::Http,
            generation,
        }
    }
}

impl Facts {
    /// The next request of a kept-alive connection, whose first byte came now: what
    /// the access log says of one request starts again; the connection's counts go on.
    pub fn next_request(&mut self) {
        self.started = Instant::now();
        self.peer = self.origin;
        self.host.clear();
        self.request.clear();
        self.user_agent.clear();
        self.status = 0;
        self.bytes_sent = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.upstream_addr = None;
        self.upstream_response_time = None;
        self.close = Close::Unknown;
        self.mode = Mode::None;
        self.route = 0;
    }

    /// The access-log line of the request these facts describe.
    fn record(&self) -> AccessRecord {
        self.record_with((self.host.clone(), self.request.clone(), self.user_agent.clone()))
    }

    /// [`Facts::record`] at the connection's end: its strings move into the line.
    fn last_record(&mut self) -> AccessRecord {
        let strings = (take(&mut self.host), take(&mut self.request), take(&mut self.user_agent));
        self.record_with(strings)
    }

    fn record_with(&self, (host, request, user_agent): (String, String, String)) -> AccessRecord {
        AccessRecord {
            remote_addr: self.peer,
            host,
            time: now_unix(),
            request,
            status: self.status,
            bytes_sent: self.bytes_sent,
            request_time: self.started.elapsed().as_secs_f64(),
            upstream_response_time: self.upstream_response_time,
            user_agent,
            upstream_addr: self.upstream_addr,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            close: self.close,
            mode: self.mode,
        }
    }
}

/// A request of a kept-alive connection is through and the connection waits for the
/// next: its access-log line (`close=done`), counted by status.
pub fn request_done(facts: &Facts) {
    let record = facts.record();
    facts.conn.exchanged(&record);
    facts.generation.access_log.log(record);
}

/// A kept-alive connection ended between two requests (`close`: the client's FIN or
/// reset, the idle timeout, the drain): closed without a response or a log line.
pub fn ended_idle(client: &PeerIo, mut facts: Facts, close: Close, active: ActiveConn) {
    client.shutdown(std::net::Shutdown::Both);
    facts.conn.take().ended_idle(close.as_str());
    drop(active);
}

/// The 101 is on its way: counts the upgrade, opens the pair's row in the live view,
/// and writes the access log's open line when `access_log.log_open` asks for it.
pub fn opened(facts: &mut Facts) {
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let opened = metrics::live::Opened {
        client: facts.peer,
        upstream: facts.upstream_addr.unwrap_or(unknown),
        route: facts.route,
        started_ns: metrics::id_of(facts.started),
    };
    facts.conn.upgraded(facts.route, facts.started.elapsed(), opened);
    if facts.generation.config.access_log.log_open {
        facts.generation.access_log.log(AccessRecord {
            remote_addr: facts.peer,
            host: facts.host.clone(),
            time: now_unix(),
            request: facts.request.clone(),
            status: 101,
            bytes_sent: 0,
            request_time: facts.started.elapsed().as_secs_f64(),
            upstream_response_time: facts.upstream_response_time,
            user_agent: facts.user_agent.clone(),
            upstream_addr: facts.upstream_addr,
            bytes_in: facts.bytes_in,
            bytes_out: 0,
            close: Close::Open,
            mode: Mode::None,
        });
    }
}

/// Ends a connection whose phases returned `result`: parks a spliced pair (which
/// comes back to [`SplicedEnd::finish`] when it ends), or answers an error, closes the
/// client and writes the access-log line. `client` is still there unless the splice
/// took it.
pub async fn finish(
    result: Result<Option<Handoff>, ProxyError>,
    client: Option<PeerIo>,
    mut facts: Facts,
    worker: Rc<Worker>,
    active: ActiveConn,
) {
    let err = match result {
        Ok(Some(handoff)) => return park(handoff, &mut facts, worker, active),
        Ok(None) => None,
        Err(err) => Some(err),
    };
    if let Some(err) = err {
        facts.status = err.kind.status();
        facts.close = Close::Error;
        if !err.kind.is_refusal() {
            tracing::info!(side = %err.kind.side(), status = err.kind.status(), client = %facts.peer, request = %facts.request, "{}", err.detail);
        } else if let Some(summary) = worker.admission.refusal_report() {
            // Refusals come in floods: one line per `admission.log_period`, with counts.
            tracing::warn!(status = err.kind.status(), "{summary}");
        }
        if let Some(client) = &client {
            if err.kind.respond() {
                let response = error_response(err.kind);
                let len = response.len() as u64;
                if client.write_all(&worker.ring, response).await.0.is_ok() {
                    facts.bytes_sent = len;
                }
            }
            client.shutdown(std::net::Shutdown::Both);
        }
    }
    drop(active);
    if facts.close == Close::Handed {
        // A binary upgrade passed it on: counted here, its line written by the new
        // process at its end.
        let conn = facts.conn.take();
        conn.closed(&facts.record());
        return;
    }
    if facts.status == 101 {
        worker.lifetimes.record(facts.started.elapsed(), facts.bytes_in, facts.generation.config.relay.splice_after);
    }
    let conn = facts.conn.take();
    let record = facts.last_record();
    conn.closed(&record);
    facts.generation.access_log.log(record);
}

/// Leaves a spliced pair to the kernel; its access-log line is written when it ends.
fn park(handoff: Handoff, facts: &mut Facts, worker: Rc<Worker>, active: ActiveConn) {
    let Handoff { pair, admitted, live, after_userspace } = handoff;
    // Found again by its upstream server if a reload removes it (`drain_removed`).
    let server = live.as_ref().map(ActiveGuard::server_live);
    let owner = server.as_ref().map_or(0, |s| Arc::as_ptr(s).addr());
    let turns = server.and_then(|s| worker.generations.removals.turns_of(&s));
    active.detach();
    // Counted as spliced until `SplicedEnd::finish` (by its start, which is its id).
    facts.conn.take().park();
    // Counted as live for the drain's schedule until it ends.
    let counted = worker.pacer.enter();
    let pairs = worker.pairs.clone();
    let end = SplicedEnd { facts: ParkedFacts::new(facts, after_userspace), worker, _admitted: admitted, live };
    let parked = pair.park(owner, move |outcome| {
        drop(counted);
        end.finish(outcome);
    });
    // Spliced after a reload removed its server: it closes at its turn too.
    if let (Some(turns), Some(pairs)) = (turns, pairs) {
        close_at(pairs, parked, turns.next());
    }
}

/// Closes the spliced pairs to the servers reloads remove from groups with
/// `drain_removed`, each at its turn (a Close 1001 at a frame boundary, as in the
/// drain; `close=removed`). Runs for the worker's life; the pairs spliced after a
/// removal are handled as they are parked.
pub async fn close_removed_spliced(worker: Rc<Worker>) {
    let Some(pairs) = worker.pairs.clone() else { return };
    let mut announcements = worker.generations.removals.announcements();
    while let Some(removed) = announcements.next().await {
        for (server, turns) in removed {
            for pair in pairs.owned_by(Arc::as_ptr(&server).addr()) {
                close_at(pairs.clone(), pair, turns.next());
            }
        }
    }
}

/// Ends `pair` for the removal of its server at `at`, if it still lives then.
fn close_at(pairs: crate::splice::WorkerPairs, pair: crate::splice::Owned, at: Instant) {
    tokio_uring::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        if pairs.remove_owned(pair) {
            tracing::debug!("a spliced pair's turn: its upstream server was removed");
        }
    });
}

/// What a parked pair keeps of its connection until it ends: the access log's facts
/// and the guards that count it (connection, admission, upstream server).
pub struct SplicedEnd {
    facts: ParkedFacts,
    worker: Rc<Worker>,
    _admitted: Admitted,
    /// The upstream server's count, when the server is known (a pair an old process
    /// passed in a binary upgrade may be to a server this configuration lacks).
    live: Option<ActiveGuard>,
}

// A parked pair is this, a pacer guard and 40 bytes of sockets, cookies and its owner
// key, boxed: 144 bytes, in the allocator's 160-byte class (with its row and log text,
// about 230 bytes).
const _: () = assert!(size_of::<SplicedEnd>() <= 96);

impl SplicedEnd {
    /// The end of a spliced pair, as the splice reports it.
    fn finish(self, outcome: SpliceOutcome) {
        // The pair's `ActiveConn` was detached when it was parked.
        self.worker.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(handed) = outcome.handed {
            self.pass_on(handed, outcome);
            return;
        }
        let lifetime = self.facts.lifetime();
        // One relayed in userspace first was counted when it outlived `splice_after`.
        if !self.facts.after_userspace {
            let client_bytes = self.facts.before_splice[0] + outcome.to_upstream;
            let splice_after = self.worker.generations.current().config.relay.splice_after;
            self.worker.lifetimes.record(lifetime, client_bytes, splice_after);
        }
        self.facts.log(&self.worker, self.live.as_ref().map(ActiveGuard::addr), outcome, lifetime);
    }
}

impl SplicedEnd {
    /// A binary upgrade passes the pair, still in the kernel, to the new process, which
    /// writes its line at its end. If that fails the pair ends here, with a line
    /// (`close=error`).
    fn pass_on(self, handed: crate::splice::Handed, outcome: SpliceOutcome) {
        let upstream = self.live.as_ref().map(ActiveGuard::addr);
        let pair = self.facts.passed(upstream, handed.kernel);
        let lifetime = self.facts.lifetime();
        let sent = self.worker.upgrade.send_pair(pair, [handed.client, handed.upstream]);
        let mut outcome = outcome;
        if sent.is_err() {
            // Its descriptors close when the callback returns: the pair ends with it.
            outcome.reason = Close::Error;
            if !self.worker.upgrade.passing()
                && let Some(splicer) = &self.worker.splicer
            {
                // The new process is gone: the other parked pairs stay, and splice here.
                splicer.kept();
            }
        }
        self.facts.log(&self.worker, upstream, outcome, lifetime);
    }
}

/// What the access log needs of a parked pair, kept compact: it lives as long as the
/// pair, and an idle pair should cost a couple of hundred bytes at most.
pub struct ParkedFacts {
    /// Nanoseconds from [`epoch`] to the accept.
    started_ns: u64,
    /// Client address, host, request line and user agent, each but the last ended by a
    /// newline (which none of them can contain).
    text: Box<str>,
    /// Bytes (client → upstream, upstream → client) moved before the splice: client
    /// bytes that came with the request head, and the userspace relay's before the pause.
    before_splice: [u64; 2],
    upstream_response_time: f32,
    /// The userspace relay ran before the splice (`mode=userspace+splice`).
    after_userspace: bool,
}

/// A fixed instant of this process, so a parked pair keeps its start in 8 bytes. Set
/// by [`start_clock`] before the first accept (a later first use would date earlier
/// connections from it).
pub(crate) fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        // Set back as far as the clock allows (up to a year): a WebSocket a binary
        // upgrade passes to this process started before this process did.
        let now = Instant::now();
        [365 * 24, 30 * 24, 24, 1]
            .into_iter()
            .find_map(|h| now.checked_sub(Duration::from_secs(h * 3600)))
            .unwrap_or(now)
    })
}

/// Fixes the instant parked pairs count their start from; call before accepting.
pub fn start_clock() {
    epoch();
}

impl ParkedFacts {
    fn new(facts: &Facts, after_userspace: bool) -> Self {
        let peer = facts.peer.to_string();
        let started = facts.started.saturating_duration_since(epoch());
        Self {
            started_ns: u64::try_from(started.as_nanos()).unwrap_or(u64::MAX),
            text: [peer.as_str(), "\n", &facts.host, "\n", &facts.request, "\n", &facts.user_agent]
                .concat()
                .into_boxed_str(),
            before_splice: [facts.bytes_in, facts.bytes_out],
            #[allow(clippy::cast_possible_truncation, reason = "seconds; an f32 keeps microseconds over minutes")]
            upstream_response_time: facts.upstream_response_time.unwrap_or_default() as f32,
            after_userspace,
        }
    }

    /// The facts a binary upgrade passes of this pair (spliced, in the kernel).
    fn passed(
        &self,
        upstream: Option<SocketAddr>,
        kernel: crate::splice::PassedKernel,
    ) -> crate::upgrade::wire::PairFacts {
        let mut parts = self.text.splitn(4, '\n').map(str::to_owned);
        let mut part = || parts.next().unwrap_or_default();
        let (peer, host, request, user_agent) = (part(), part(), part(), part());
        let peer = peer.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let [host, request, user_agent] = [host, request, user_agent].map(|t| crate::upgrade::clip(&t));
        crate::upgrade::wire::PairFacts {
            age_us: u64::try_from(self.lifetime().as_micros()).unwrap_or(u64::MAX),
            peer,
            origin: peer,
            host,
            request,
            user_agent,
            status: 101,
            bytes_in: self.before_splice[0],
            bytes_out: self.before_splice[1],
            upstream_addr: upstream,
            upstream_response_time: Some(f64::from(self.upstream_response_time)),
            mode: if self.after_userspace { Mode::UserspaceThenSplice } else { Mode::Splice },
            https: false,
            frames: [crate::drain::FrameState::default(); 2],
            idle_us: 0,
            spliced: Some(crate::upgrade::wire::SplicedFacts { kernel, after_userspace: self.after_userspace }),
        }
    }

    /// Accept to now.
    fn lifetime(&self) -> Duration {
        epoch().elapsed().saturating_sub(Duration::from_nanos(self.started_ns))
    }

    /// Writes the pair's access-log line.
    fn log(self, worker: &Worker, upstream: Option<SocketAddr>, outcome: SpliceOutcome, lifetime: Duration) {
        let mut parts = self.text.splitn(4, '\n').map(str::to_owned);
        let mut part = || parts.next().unwrap_or_default();
        let (peer, host, request, user_agent) = (part(), part(), part(), part());
        let record = AccessRecord {
            remote_addr: peer.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            host,
            time: now_unix(),
            request,
            status: 101,
            bytes_sent: self.before_splice[1] + outcome.to_client,
            request_time: lifetime.as_secs_f64(),
            upstream_response_time: Some(f64::from(self.upstream_response_time)),
            user_agent,
            upstream_addr: upstream,
            bytes_in: self.before_splice[0] + outcome.to_upstream,
            bytes_out: self.before_splice[1] + outcome.to_client,
            close: outcome.reason,
            mode: if self.after_userspace { Mode::UserspaceThenSplice } else { Mode::Splice },
        };
        worker.metrics.parked_closed(self.started_ns, &record);
        if record.close == Close::Handed {
            // A binary upgrade passed it on: the new process writes its line.
            return;
        }
        // A parked pair keeps no generation (to stay small): its line goes to the
        // access log in force when it ends.
        worker.generations.current().access_log.log(record);
    }
}

/// Counts a connection as active while alive.
#[derive(Debug)]
pub struct ActiveConn(Option<Arc<Stats>>);

impl ActiveConn {
    pub fn new(stats: &Arc<Stats>) -> Self {
        Stats::bump(&stats.accepted);
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self(Some(stats.clone()))
    }

    /// Keeps the connection counted without this guard: whoever holds the connection
    /// from now on must decrement `Stats::active` itself (a parked pair, to stay small).
    fn detach(mut self) {
        self.0 = None;
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        if let Some(stats) = &self.0 {
            stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
