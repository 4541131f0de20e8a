//! Spreading a run over worker processes: the parent re-executes this binary once per worker
//! with `--worker INDEX`, reads each worker's JSON lines (progress samples, then the final
//! counters and serialized histograms) and merges them.
//!
//! The parent also keeps the workers' ramps in step through their stdin: when one stops
//! for a limit the others stop too, and the hold starts in all of them once every
//! worker's ramp is over, so that every connection is held at once.
//!
//! Workers share nothing with the parent but their stdin and stdout; a worker that dies is reported,
//! never waited for forever (each worker is bounded by `--max-time` like any run), and a
//! worker dies with its parent.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Options;
use super::plan::Plan;
use super::progress::{self, Progress, Show, Snap, Timeline};
use super::ramp::{Ramp, Stop, Summary};
use super::runner;
use super::stats::{Recorder, WireRecorder};

/// A worker's last line.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Counters and histograms.
    pub rec: WireRecorder,
    /// Whether the worker hit its time limit.
    pub timed_out: bool,
    /// Threads it ran.
    pub threads: u64,
    /// What its ramp did.
    pub ramp: Summary,
}

/// A line a worker writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// A progress sample.
    Progress(Box<Snap>),
    /// Its ramp is over (every connection started, or stopped for this limit).
    RampDone(Option<Stop>),
    /// The final result.
    Result(Box<WorkerResult>),
}

/// A line the parent writes on a worker's stdin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Another worker's ramp stopped for this: stop too.
    Stop(Stop),
    /// Every worker's ramp is over: start the hold.
    Hold,
}

/// Merged outcome of all workers.
#[derive(Debug)]
pub struct Merged {
    /// Merged counters and histograms.
    pub rec: Recorder,
    /// Timeline of the sums of the workers' progress.
    pub timeline: Timeline,
    /// Some worker hit its time limit.
    pub timed_out: bool,
    /// Threads per worker.
    pub threads: u64,
    /// The workers' ramps together.
    pub ramp: Summary,
}

/// The body of a worker process.
pub fn worker_main(opts: &Options, index: u64) -> Result<()> {
    die_with_parent();
    if index == 0 {
        // Test only (`--slow-worker-ms`): this worker's ramp ends that much after the others'.
        std::thread::sleep(Duration::from_millis(opts.slow_worker_ms));
    }
    let mut plan = Plan::new(opts, index, opts.procs.max(1))?;
    plan.ramp.coordinated = true;
    let plan = Arc::new(plan);
    let progress = Arc::new(Progress::default());
    let threads = plan.threads as u64;
    let ramp = Arc::new(Ramp::new(plan.ramp));
    listen_to_parent(Arc::clone(&ramp));
    let max = plan.max_time;
    let (rec, timed_out) = std::thread::scope(|s| -> Result<_> {
        let (p, r) = (Arc::clone(&progress), Arc::clone(&ramp));
        let load = s.spawn(move || runner::run(&plan, &p, &r));
        let r = Arc::clone(&ramp);
        s.spawn(move || tell_ramp_done(&r, max));
        progress::sample(|| progress.snap(), || progress.done.load(Relaxed), u64::MAX, Show::Json);
        load.join().map_err(|_| anyhow::anyhow!("the load panicked"))?
    })?;
    let line = Line::Result(Box::new(WorkerResult { rec: rec.to_wire()?, timed_out, threads, ramp: ramp.summary() }));
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// Reads the parent's [`Control`] lines on stdin (until it closes) on a thread of its own.
fn listen_to_parent(ramp: Arc<Ramp>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Control>(&line) {
                Ok(Control::Stop(why)) => ramp.stop_with(&why),
                Ok(Control::Hold) => ramp.release(),
                Err(e) => eprintln!("wsbench load: unreadable line from the parent ({e}): {line}"),
            }
        }
    });
}

/// Tells the parent when this worker's ramp is over (checked every 50 ms, for at most
/// `max`, the run's bound).
fn tell_ramp_done(ramp: &Ramp, max: Duration) {
    let since = std::time::Instant::now();
    while !ramp.done() {
        if since.elapsed() > max {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = Line::RampDone(ramp.summary().stopped);
    if let Ok(text) = serde_json::to_string(&line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Sends `c` to every worker still listening.
fn tell_workers(stdins: &Mutex<Vec<Option<ChildStdin>>>, c: &Control) {
    let Ok(text) = serde_json::to_string(c) else { return };
    for stdin in stdins.lock().expect("no panics while locked").iter_mut() {
        if let Some(w) = stdin
            && (writeln!(w, "{text}").is_err() || w.flush().is_err())
        {
            *stdin = None;
        }
    }
}

/// A worker must not outlive the run that started it: if the parent dies, so does it.
fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The parent may have died before the call; then we were re-parented to init.
    if rc != 0 || nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        std::process::exit(1);
    }
}

/// Arguments that make a worker of the same run.
fn worker_args(o: &Options, index: u64) -> Vec<String> {
    let mut a: Vec<String> = vec!["load".into(), o.scenario.name().into()];
    let mut kv = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    kv("target", super::plan::describe(&o.target).join(","));
    if !o.source.is_empty() {
        kv("source", o.source.join(","));
    }
    kv("conns", o.conns.to_string());
    kv("rate", o.rate.to_string());
    kv("ramp-p90-ms", o.ramp_p90_ms.to_string());
    if let Some(f) = o.max_failures {
        kv("max-failures", f.to_string());
    }
    kv("min-available-mib", o.min_available_mib.to_string());
    if let Some(r) = o.ramp_max_secs {
        kv("ramp-max-secs", r.to_string());
    }
    kv("duration", o.duration.to_string());
    kv("interval-ms", o.interval_ms.to_string());
    if let Some(s) = o.size {
        kv("size", s.to_string());
    }
    kv("heartbeat", o.heartbeat.to_string());
    kv("drain-ms", o.drain_ms.to_string());
    kv("connect-timeout", o.connect_timeout.to_string());
    if let Some(t) = o.threads {
        kv("threads", t.to_string());
    }
    kv("procs", o.procs.to_string());
    kv("path", o.path.clone());
    if let Some(h) = &o.host {
        kv("host", h.clone());
    }
    if let Some(m) = o.max_time {
        kv("max-time", m.to_string());
    }
    if let Some(s) = o.shard {
        kv("shard", s.to_string());
    }
    kv("worker", index.to_string());
    if o.slow_worker_ms > 0 {
        kv("slow-worker-ms", o.slow_worker_ms.to_string());
    }
    if o.fixed_rate {
        a.push("--fixed-rate".into());
    }
    o.tls.to_args(&mut a);
    a
}

/// Runs `procs` workers and merges what they report.
pub fn run_workers(opts: &Options, procs: u64, show: Show) -> Result<Merged> {
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let snaps = Arc::new(Mutex::new(vec![Snap::default(); procs as usize]));
    let results: Arc<Mutex<Vec<Option<WorkerResult>>>> = Arc::new(Mutex::new((0..procs).map(|_| None).collect()));
    let finished = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let stdins: Arc<Mutex<Vec<Option<ChildStdin>>>> = Arc::new(Mutex::new(Vec::new()));
    // Workers whose ramp is over, and whether one's stop was passed on to the others.
    let ramps_done = Arc::new(AtomicUsize::new(0));
    let stop_sent = Arc::new(AtomicBool::new(false));
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for i in 0..procs {
        let mut child = Command::new(&exe)
            .args(worker_args(opts, i))
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start worker {i}"))?;
        let out = child.stdout.take().expect("piped stdout");
        stdins.lock().expect("no panics while locked").push(child.stdin.take());
        let (snaps, results, finished, failed) =
            (Arc::clone(&snaps), Arc::clone(&results), Arc::clone(&finished), Arc::clone(&failed));
        let (stdins, ramps_done, stop_sent) = (Arc::clone(&stdins), Arc::clone(&ramps_done), Arc::clone(&stop_sent));
        readers.push(std::thread::spawn(move || {
            let mut said_done = false;
            let ramp_over = || {
                if ramps_done.fetch_add(1, Relaxed) + 1 == procs as usize {
                    tell_workers(&stdins, &Control::Hold);
                }
            };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Progress(s)) => {
                        snaps.lock().expect("no panics while locked")[i as usize] = *s;
                    }
                    Ok(Line::RampDone(stopped)) => {
                        if let Some(why) = stopped
                            && !stop_sent.swap(true, Relaxed)
                        {
                            tell_workers(&stdins, &Control::Stop(why));
                        }
                        if !said_done {
                            said_done = true;
                            ramp_over();
                        }
                    }
                    Ok(Line::Result(r)) => {
                        results.lock().expect("no panics while locked")[i as usize] = Some(*r);
                    }
                    Err(e) => {
                        eprintln!("wsbench load: worker {i} wrote an unreadable line ({e}): {line}");
                        failed.store(true, Relaxed);
                    }
                }
            }
            // A worker that ended without saying its ramp was over must not hold the
            // others' hold back.
            if !said_done {
                ramp_over();
            }
            finished.fetch_add(1, Relaxed);
        }));
        children.push(child);
    }
    let read = || snaps.lock().expect("no panics while locked").iter().fold(Snap::default(), |a, s| a.plus(*s));
    let timeline = progress::sample(read, || finished.load(Relaxed) == procs as usize, opts.conns, show);
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            eprintln!("wsbench load: worker {i} exited with {status}");
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let mut rec = Recorder::default();
    let mut timed_out = false;
    let mut threads = 0;
    let mut ramp = Summary::default();
    let results = std::mem::take(&mut *results.lock().expect("no panics while locked"));
    for (i, r) in results.into_iter().enumerate() {
        let Some(r) = r else { bail!("worker {i} ended without a result") };
        rec.merge(&Recorder::from_wire(&r.rec).with_context(|| format!("result of worker {i}"))?);
        timed_out |= r.timed_out;
        threads = threads.max(r.threads);
        ramp.add(&r.ramp);
    }
    if failed.load(Relaxed) {
        bail!("a worker's output could not be read");
    }
    Ok(Merged { rec, timeline, timed_out, threads, ramp })
}
