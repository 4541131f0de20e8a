//! The configuration as an operator meets it: the example file, and errors that name
//! their field.

use std::time::Duration;

use super::*;

#[test]
fn example_config_is_valid() {
    let c = Config::from_toml(EXAMPLE).expect("example parses");
    c.validate().expect("example validates");
    assert_eq!(c.routes[0].path, "/ws/");
    assert_eq!(c.timeouts.idle, Duration::from_hours(1));
}

#[test]
fn errors_name_the_field() {
    let mut c = Config::from_toml(EXAMPLE).unwrap();
    c.routes[0].upstream = "nope".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.starts_with("route[0].upstream:"), "{e}");
    let e = Config::from_toml("[timeouts]\nheader = \"ten\"\n").unwrap_err().to_string();
    assert!(e.contains("header"), "{e}");
    let e = Config::from_toml("bogus = 1\n").unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn upstream_and_admission_fields_are_validated_by_name() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
    let check = |extra: &str| {
        // Bare keys land in [upstream.g], the last table of `base`.
        let text = format!("{base}{extra}");
        Config::from_toml(&text).map_err(|e| e.to_string()).and_then(|c| c.validate().map_err(|e| e.to_string()))
    };
    assert!(check("").is_ok());
    let full = "balance = \"hash\"\nhash_key = \"cookie:sid\"\nmax_fails = 2\nfail_timeout = \"3s\"\ntries = 2\nsource_addresses = [\"127.0.0.2\"]\n[upstream.g.health_check]\ninterval = \"1s\"\nstatuses = [\"200\", \"3xx\", \"401-403\"]\n[admission]\nlimit_conn = 10\nrate = 5.0\nstatus = 429\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n";
    assert!(check(full).is_ok(), "{:?}", check(full));
    for (extra, field) in [
        ("balance = \"hash\"\n", "upstream.g.hash_key:"),
        ("balance = \"hash\"\nhash_key = \"body:x\"\n", "upstream.g.hash_key:"),
        ("hash_key = \"header:x\"\n", "upstream.g.hash_key:"),
        ("source_addresses = [\"::1\"]\n", "upstream.g.source_addresses[0]:"),
        ("[upstream.g.health_check]\nrise = 0\n", "upstream.g.health_check.rise:"),
        ("[upstream.g.health_check]\npath = \"health\"\n", "upstream.g.health_check.path:"),
        ("[upstream.g.health_check]\nstatuses = [\"6xx\"]\n", "upstream.g.health_check.statuses:"),
        ("[admission]\nstatus = 500\n", "admission.status:"),
        ("[admission]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", "admission.trusted_proxies[0]:"),
        ("[admission]\nrate = -1.0\n", "admission.rate:"),
        ("[admission]\ntable_slots = 1000\n", "admission.table_slots:"),
    ] {
        let e = check(extra).unwrap_err();
        assert!(e.starts_with(field), "{extra:?}: {e}");
    }
    let route = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\nallowed_origins = [\"\"]\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
    let e = Config::from_toml(route).unwrap().validate().unwrap_err().to_string();
    assert!(e.starts_with("route[0].allowed_origins:"), "{e}");
    assert_eq!(parse_statuses(&["2xx".into(), "404".into()]).unwrap(), vec![(200, 299), (404, 404)]);
}

#[test]
fn servers_accept_both_forms() {
    let c = Config::from_toml(
        "[upstream.a]\nservers = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", weight = 3, backup = true }]\n",
    )
    .unwrap();
    let s = &c.upstreams["a"].servers;
    assert_eq!((s[0].weight, s[0].backup), (1, false));
    assert_eq!((s[1].weight, s[1].backup), (3, true));
}

#[test]
fn values_with_a_syntax_are_parsed_when_read_naming_field_and_line() {
    let text = "splice = \"sockmap\"\n[admission]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\nbalance = \"hash\"\nhash_key = \"cookie:sid\"\n";
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.splice, SpliceMode::Sockmap);
    assert_eq!(c.admission.trusted_proxies, [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()]);
    assert_eq!(c.upstreams["g"].hash_key, Some(HashKey::Cookie("sid".into())));
    for (bad, want) in [
        (
            "[admission]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n",
            "admission.trusted_proxies[1]: `10.0.0.0/40`: prefix must be 0..=32 (line 2, column 19)",
        ),
        (
            "\n[upstream.g]\nhash_key = \"body:x\"\n",
            "upstream.g.hash_key: `body:x` must be header:NAME, cookie:NAME or query:NAME (line 3, column 12)",
        ),
        (
            "splice = \"fast\"\n",
            "splice: unknown variant `fast`, expected one of `auto`, `sockmap`, `userspace` (line 1, column 10)",
        ),
    ] {
        assert_eq!(Config::from_toml(bad).unwrap_err().to_string(), want);
    }
    let syntax = Config::from_toml("[timeouts\n").unwrap_err();
    assert_eq!((syntax.field, syntax.at), (None, Some((1, 10))));
}

#[test]
fn command_line_flags_override_their_fields() {
    let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let flags = CliOptions {
        listen: vec![addr("127.0.0.1:7000")],
        upstream: vec![addr("127.0.0.1:7001"), addr("127.0.0.1:7002")],
        workers: Some(3),
        splice: Some(SpliceMode::Userspace),
        access_log: Some("off".into()),
        access_log_format: Some(AccessLogFormat::Json),
        log_format: Some(LogFormat::Json),
        max_connections: Some(77),
        strict_tuning: true,
        idle_timeout: Some(Duration::from_secs(90)),
        splice_after: Some(Duration::ZERO),
        ..CliOptions::default()
    };
    let c = flags.load().unwrap();
    assert_eq!(c.listeners.iter().map(|l| l.address).collect::<Vec<_>>(), [addr("127.0.0.1:7000")]);
    let servers: Vec<_> = c.upstreams["default"].servers.iter().filter_map(|s| s.address.ip()).collect();
    assert_eq!(servers, [addr("127.0.0.1:7001"), addr("127.0.0.1:7002")]);
    assert_eq!((c.workers, c.splice, c.strict_tuning), (3, SpliceMode::Userspace, true));
    assert_eq!((c.access_log.path.as_str(), c.access_log.format), ("off", AccessLogFormat::Json));
    assert_eq!((c.limits.max_connections, c.log.format), (77, LogFormat::Json));
    assert_eq!((c.timeouts.idle, c.relay.splice_after), (Duration::from_secs(90), Duration::ZERO));

    assert!(matches!(CliOptions::default().load(), Err(ConfigError::Missing)));
    let no_listener = CliOptions { upstream: vec![addr("127.0.0.1:7001")], ..CliOptions::default() };
    assert!(no_listener.load().unwrap_err().to_string().starts_with("listener:"));
    let missing = CliOptions { config: Some("/nonexistent/wsgate.toml".into()), ..CliOptions::default() };
    assert!(missing.load().unwrap_err().to_string().starts_with("cannot read /nonexistent/wsgate.toml: "));
}

#[test]
fn the_tls_watch_is_on_by_default_and_its_interval_is_checked() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
    let read = |extra: &str| {
        let c = Config::from_toml(&format!("{extra}{base}")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string()).map(|()| c.reload.watch_tls)
    };
    assert_eq!(read(""), Ok(Duration::from_secs(5)));
    assert_eq!(
        Config::from_toml(EXAMPLE).unwrap().reload.watch_tls,
        Duration::from_secs(5),
        "the example says the default"
    );
    assert_eq!(read("[reload]\nwatch_tls = \"0s\"\n"), Ok(Duration::ZERO));
    assert_eq!(read("[reload]\nwatch_tls = \"250ms\"\n"), Ok(Duration::from_millis(250)));
    for bad in ["\"10ms\"", "\"2h\""] {
        let e = read(&format!("[reload]\nwatch_tls = {bad}\n")).unwrap_err();
        assert!(e.starts_with("reload.watch_tls: must be 0s (off) or from 100ms to 1h"), "{bad}: {e}");
    }
    for bad in ["\"soon\"", "5", "\"-1s\""] {
        let e = read(&format!("[reload]\nwatch_tls = {bad}\n")).unwrap_err();
        assert!(e.contains("watch_tls"), "{bad}: {e}");
    }
    let e = read("[reload]\nwatch = \"1s\"\n").unwrap_err();
    assert!(e.contains("watch"), "{e}");
}

#[test]
fn drain_removed_is_off_by_default_and_a_boolean() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"g\"\n[upstream.g]\nservers = [\"127.0.0.1:1\"]\n";
    let read = |extra: &str| Config::from_toml(&format!("{base}{extra}")).map(|c| c.upstreams["g"].drain_removed);
    assert!(!read("").unwrap());
    assert!(read("drain_removed = true\n").unwrap());
    let e = read("drain_removed = \"yes\"\n").unwrap_err().to_string();
    assert!(e.contains("drain_removed"), "{e}");
    assert!(
        !Config::from_toml(EXAMPLE).unwrap().upstreams.values().any(|u| u.drain_removed),
        "the example says the default"
    );
}
