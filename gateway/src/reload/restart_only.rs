//! What a reload cannot change in a running process, and what it says about it.
//!
//! (Listeners may change: see [`super::listeners`].) Sections sized or started once (workers, relay buffers, the splice and its map
//! capacity, the idle limit of spliced pairs, keepalive, the drain, the admin plane,
//! log format, admission tables, the pid file) keep their start values: a change there
//! is applied at the next restart and said in one warning each, by name. Compares
//! only; never changes anything.

use super::generation::same;
use crate::config::Config;

/// The sections that changed but keep their start values until a restart.
pub fn kept_until_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    // Every field, by name: a new one must be sorted into reloadable or not here.
    let Config {
        workers,
        splice,
        strict_tuning,
        listeners: _,
        timeouts,
        drain,
        limits,
        relay,
        access_log: _,
        routes: _,
        upstreams: _,
        admission,
        admin,
        log,
        keepalive,
        pid_file,
        http2: _,
        reload: _,
    } = new;
    let mut kept = Vec::new();
    let mut check = |name, changed: bool| {
        if changed {
            kept.push(name);
        }
    };
    check("workers", *workers != old.workers);
    check("splice", !same(splice, &old.splice));
    check("strict_tuning", *strict_tuning != old.strict_tuning);
    check("drain", !same(drain, &old.drain));
    // `relay.splice_after` is read by each new connection; the rest sizes the workers.
    let relay_sized = |r: &crate::config::RelayConfig| (r.buffer_size, r.pool_buffers, r.splice_budget);
    check("relay (buffer_size, pool_buffers, splice_budget)", relay_sized(relay) != relay_sized(&old.relay));
    check(
        "timeouts.idle (of spliced pairs; userspace relays of new connections use the new one)",
        timeouts.idle != old.timeouts.idle,
    );
    check(
        "limits.max_connections (above the start value: the splice map keeps its start capacity)",
        limits.max_connections > old.limits.max_connections,
    );
    check("admission", !same(admission, &old.admission));
    check("admin", !same(admin, &old.admin));
    check("log", !same(log, &old.log));
    check("keepalive", !same(keepalive, &old.keepalive));
    check("pid_file", *pid_file != old.pid_file);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "{extra}\n[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [\"127.0.0.1:9000\"]\n"
        );
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn start_only_settings_are_named_and_reloadable_ones_are_not() {
        let old = config("");
        let new =
            config("workers = 3\n[relay]\nsplice_after = \"5s\"\nbuffer_size = 4096\n[limits]\nmax_connections = 10\n");
        assert_eq!(kept_until_restart(&old, &new), ["workers", "relay (buffer_size, pool_buffers, splice_budget)"]);
        assert!(kept_until_restart(&old, &config("[timeouts]\nheader = \"3s\"\n")).is_empty());
    }
}
