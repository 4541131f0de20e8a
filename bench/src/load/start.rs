//! A shared start for shards on several machines: wait for a wall-clock time
//! (`--start-at`, Unix seconds) or for a file to appear (`--barrier`).
//!
//! Both waits are bounded: a start time more than an hour ahead or already more than
//! 10 s past is refused (clocks out of step, or a typo), and a barrier is waited for at
//! most 10 minutes.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

/// Longest wait for a start time.
const MAX_AHEAD: f64 = 3600.0;
/// A start time this far in the past is refused rather than run late.
const MAX_LATE: f64 = 10.0;
/// Longest wait for a barrier file.
const BARRIER_WAIT: Duration = Duration::from_mins(10);

/// The wall clock in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Waits for the start time and then for the barrier file, when given.
pub fn wait(start_at: Option<f64>, barrier: Option<&Path>) -> Result<()> {
    if let Some(at) = start_at {
        let ahead = at - unix_now();
        if ahead > MAX_AHEAD {
            bail!("--start-at is {ahead:.0} s ahead (at most {MAX_AHEAD:.0} s): is it in Unix seconds?");
        }
        if ahead < -MAX_LATE {
            bail!("--start-at passed {:.0} s ago: are the machines' clocks in step?", -ahead);
        }
        if ahead > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(ahead));
        }
    }
    if let Some(path) = barrier {
        let since = Instant::now();
        while !path.exists() {
            if since.elapsed() > BARRIER_WAIT {
                bail!("the barrier {} did not appear within {} s", path.display(), BARRIER_WAIT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
