//! The whole machine's CPU time, for figures "per message above direct" that count
//! every process (client, proxy, upstream) and the kernel's softirq work.

/// Busy CPU seconds of the whole machine (all cores: user, nice, system, irq and
/// softirq) since boot, from the first line of `/proc/stat`; 0 when it cannot be read.
/// Steal (time the hypervisor gave this machine's vCPUs to someone else) is not work
/// done here and is left out: on a shared host it would add the neighbours' load.
pub fn busy_secs() -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum();
    busy as f64 / tick
}

/// Memory in use on the machine, KiB: `MemTotal` − `MemAvailable` from `/proc/meminfo`
/// (0 when it cannot be read).
pub fn mem_used_kib() -> u64 {
    meminfo_kib("MemTotal:").saturating_sub(meminfo_kib("MemAvailable:"))
}

/// One field of `/proc/meminfo` (`name` with its colon), KiB; 0 when it cannot be read.
pub fn meminfo_kib(name: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix(name)).and_then(|r| r.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_time_is_read_and_grows_with_work() {
        let before = super::busy_secs();
        assert!(before > 0.0, "/proc/stat unreadable");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(120) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(super::busy_secs() > before, "120 ms of spinning did not show in /proc/stat");
    }

    #[test]
    fn memory_in_use_is_read_and_is_part_of_the_total() {
        let used = super::mem_used_kib();
        let info = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        assert!(used > 0 && used < total, "{used} KiB in use of {total} KiB");
    }
}
