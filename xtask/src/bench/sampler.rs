//! Samples the proxy's memory every 250 ms during a load: the peak, the settled
//! plateau, and the anonymous RSS added per connection over the ramp.
//!
//! It only reads `/proc`, from its own thread, and stops when asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::procfs::{Mem, family, fd_count, mem_now};

/// Least-squares slope of `y` over `x`; `None` unless `x` spans a range.
pub(super) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (points.len() >= 4 && sxx > 0.0).then(|| sxy / sxx)
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sampled {
    /// The sample with the largest slab (the moment most connections were held),
    /// with the largest RSS seen.
    pub(super) peak: Mem,
    /// The last sample of the plateau (connections within 1% of the most seen): the
    /// held connections after they settled (spliced and parked, transients freed).
    pub(super) settled: Mem,
    /// Anonymous RSS growth per proxied connection over the ramp, bytes: the slope of
    /// anonymous RSS over connections (descriptors ÷ 2), so fixed costs do not count,
    /// but connections still in their handshake or first second do.
    pub(super) marginal_anon: Option<f64>,
}

/// Samples memory every 250 ms on a thread until stopped.
pub(super) struct Sampler {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) handle: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    pub(super) fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = Mem::default();
            // (proxied connections ≈ descriptors ÷ 2, memory) per sample.
            let mut samples: Vec<(f64, Mem)> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let pids: Vec<u32> = pids.iter().flat_map(|p| family(*p)).collect();
                let m = mem_now(&pids);
                if !pids.is_empty() {
                    samples.push((fd_count(&pids) as f64 / 2.0, m));
                }
                if m.slab >= peak.slab {
                    peak = Mem { rss: m.rss.max(peak.rss), anon: m.anon.max(peak.anon), ..m };
                } else {
                    peak.rss = peak.rss.max(m.rss);
                    peak.anon = peak.anon.max(m.anon);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            // Only the ramp up to the peak: closing connections frees in another order.
            let top = samples.iter().enumerate().max_by(|a, b| a.1.0.total_cmp(&b.1.0)).map_or(0, |(i, _)| i);
            let most = samples.get(top).map_or(0.0, |p| p.0);
            let settled = samples.iter().rev().find(|p| p.0 >= most * 0.99).map(|p| p.1);
            let ramp: Vec<(f64, f64)> =
                samples.iter().take(top + 1).map(|(conns, m)| (*conns, m.anon as f64 * 1024.0)).collect();
            Sampled { peak, settled: settled.unwrap_or(peak), marginal_anon: slope(&ramp) }
        });
        Self { stop, handle }
    }

    pub(super) fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
