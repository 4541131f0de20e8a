//! Randomized stall/resume torture of the splice (see `splice_util::torture`): many
//! pairs, both directions at full speed, frames of random sizes, readers that stall
//! and resume at random; every byte checked, and no direction may stop moving while
//! its reader reads.
//!
//! One bounded round in the suite (40 s of pushing, 10 pairs). The same test is the
//! soak: `cargo xtask stress splice --minutes N` runs rounds until the time is up
//! (`WSGATE_TORTURE_MINUTES`), and prints each round's figures. Other knobs:
//! `WSGATE_TORTURE_PAIRS`, `WSGATE_TORTURE_SECS` (pushing per round),
//! `WSGATE_TORTURE_SEED` (replay a round).
//!
//! Its own binary: the load is machine-wide and should not share the machine's two
//! cores with other splice tests.

mod splice_util;

use std::time::{Duration, Instant};

use splice_util::torture::{Plan, Report, round};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn stalling_readers_get_every_byte_in_order_and_no_direction_sticks() {
    let pairs = knob("WSGATE_TORTURE_PAIRS", 10) as usize;
    // A small budget (the smallest is 64 KiB) for many pressure episodes per pair.
    let Some(splicer) = splice_util::splicer_or_skip("splice torture", 2 * pairs as u32 + 8, 64 * 1024) else {
        return;
    };
    let minutes = knob("WSGATE_TORTURE_MINUTES", 0);
    let push = Duration::from_secs(knob("WSGATE_TORTURE_SECS", 40));
    let soak_until = Instant::now() + Duration::from_secs(minutes * 60);
    let first_seed = knob("WSGATE_TORTURE_SEED", rand::random::<u32>().into());
    let started = Instant::now();
    let mut total = Report { min_pressure: u64::MAX, ..Report::default() };
    let mut rounds = 0u64;
    loop {
        let seed = first_seed + rounds;
        let plan = Plan { pairs, push, seed };
        let t = Instant::now();
        let r = round(&splicer, plan);
        rounds += 1;
        eprintln!(
            "torture round {rounds} (seed {seed}): {} pairs, {:.2} GB in {} frames in {:.1} s, {} pressure episodes \
             (fewest on one pair: {}), {} retransmitted bytes trimmed, {} failures",
            r.pairs,
            r.bytes as f64 / 1e9,
            r.frames,
            t.elapsed().as_secs_f64(),
            r.pressure,
            r.min_pressure,
            r.trimmed,
            r.failures.len()
        );
        for f in r.failures.iter().filter(|f| !f.contains("aborted after")) {
            eprintln!("  FAILURE (seed {seed}): {f}");
        }
        total.pairs += r.pairs;
        total.bytes += r.bytes;
        total.frames += r.frames;
        total.pressure += r.pressure;
        total.min_pressure = total.min_pressure.min(r.min_pressure);
        total.trimmed += r.trimmed;
        // The cause first: other directions of the round only report that they were aborted.
        let (aborted, causes): (Vec<_>, Vec<_>) = r.failures.into_iter().partition(|f| f.contains("aborted after"));
        total.failures.extend(causes.into_iter().chain(aborted).map(|f| format!("seed {seed}: {f}")));
        if Instant::now() >= soak_until || !total.failures.is_empty() {
            break;
        }
    }
    eprintln!(
        "torture total: {rounds} rounds in {:.1} min, {} pairs, {:.2} GB checked in {} frames, {} pressure episodes \
         (fewest on one pair: {}), {} retransmitted bytes trimmed, {} corruptions or stuck directions",
        started.elapsed().as_secs_f64() / 60.0,
        total.pairs,
        total.bytes as f64 / 1e9,
        total.frames,
        total.pressure,
        total.min_pressure,
        total.trimmed,
        total.failures.len()
    );
    assert!(total.failures.is_empty(), "torture failed: {:#?}", total.failures);
    // A pair that never crossed its budget did not test the pressure path. (At full speed
    // a direction stays in userspace while its sender outruns the reader, so most pairs
    // see few episodes; 2 was the fewest in 240 pairs of a 30-minute soak.)
    assert!(total.min_pressure >= 1, "a pair never went over budget");
}
