//! Balancing policies over real sockets: 10,000 connections per policy through the real
//! `wsgate` binary to test origins that name themselves in the 101.

mod upstream_common;
mod utils;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use upstream_common::{Origin, client_addr, config, gateway, handshake, many, tally};

const N: usize = 10_000;
const PARALLEL: usize = 32;
/// Distinct client addresses of the `ip_hash` test.
const ADDRS: usize = 5000;

fn share(counts: &BTreeMap<String, usize>, name: &str, n: usize) -> f64 {
    *counts.get(name).unwrap_or(&0) as f64 / n as f64
}

fn servers(origins: &[&Origin], extra: &[&str]) -> String {
    let list: Vec<String> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{{ address = \"{}\"{} }}", o.addr, extra.get(i).copied().unwrap_or("")))
        .collect();
    format!("servers = [{}]", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_3_to_2_give_60_40() {
    let (oa, ob) = (Origin::start("a"), Origin::start("b"));
    let gw = gateway(&config(&servers(&[&oa, &ob], &[", weight = 3", ", weight = 2"]), ""));
    let started = Instant::now();
    let results = many(gw.addr, N, PARALLEL, |_| (None, "/".into(), String::new())).await;
    let counts = tally(&results);
    eprintln!("round_robin 3:2 over {N}: {counts:?} in {:?}", started.elapsed());
    assert!(!counts.contains_key("ERR"), "{counts:?}");
    assert!((share(&counts, "a", N) - 0.6).abs() <= 0.03, "{counts:?}");
    assert!((share(&counts, "b", N) - 0.4).abs() <= 0.03, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_spreads_short_connections_and_fills_the_emptiest_server() {
    let (oa, ob, oc) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let gw = gateway(&config(&format!("balance = \"least_conn\"\n{}", servers(&[&oa, &ob, &oc], &[])), ""));
    let results = many(gw.addr, N, PARALLEL, |_| (None, "/".into(), String::new())).await;
    let counts = tally(&results);
    eprintln!("least_conn over {N}: {counts:?}");
    assert!(!counts.contains_key("ERR"), "{counts:?}");
    for s in ["a", "b", "c"] {
        assert!((share(&counts, s, N) - 1.0 / 3.0).abs() <= 0.03, "{counts:?}");
    }

    // Long-lived: 90 held connections split 30/30/30; when oa's 30 close, the next 30
    // all go to oa (the live counts are shared by both workers).
    let mut held = Vec::new();
    for _ in 0..90 {
        held.push(handshake(gw.addr, None, "/", "").await.unwrap());
    }
    let per = |held: &[upstream_common::Answer], s: &str| held.iter().filter(|h| h.server() == s).count();
    assert_eq!((per(&held, "a"), per(&held, "b"), per(&held, "c")), (30, 30, 30));
    held.retain(|h| h.server() != "a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while oa.live() > 0 {
        assert!(Instant::now() < deadline, "a still holds {} connections", oa.live());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // the gateway's side closes too
    let mut next = Vec::new();
    for _ in 0..30 {
        next.push(handshake(gw.addr, None, "/", "").await.unwrap());
    }
    assert_eq!(per(&next, "a"), 30, "{:?}", next.iter().map(upstream_common::Answer::server).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_is_stable_per_address_and_spreads_addresses() {
    let (oa, ob, oc) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let gw = gateway(&config(&format!("balance = \"ip_hash\"\n{}", servers(&[&oa, &ob, &oc], &[])), ""));
    // 5,000 addresses × 2 connections each.
    let results = many(gw.addr, N, PARALLEL, |i| (Some(client_addr(i % ADDRS)), "/".into(), String::new())).await;
    let counts = tally(&results);
    eprintln!("ip_hash over {N} from {ADDRS} addresses: {counts:?}");
    assert!(!counts.contains_key("ERR"), "{counts:?}");
    for s in ["a", "b", "c"] {
        assert!((share(&counts, s, N) - 1.0 / 3.0).abs() <= 0.03, "{counts:?}");
    }
    let mut owner: BTreeMap<usize, &str> = BTreeMap::new();
    for (i, res) in results.iter().enumerate() {
        let s = res.as_deref().unwrap();
        let o = owner.entry(i % ADDRS).or_insert(s);
        assert_eq!(*o, s, "address {} moved between servers", client_addr(i % ADDRS));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_query_key_is_stable_and_adding_a_server_moves_few_keys() {
    let (oa, ob, oc, od) = (Origin::start("a"), Origin::start("b"), Origin::start("c"), Origin::start("d"));
    let group = |o: &[&Origin]| format!("balance = \"hash\"\nhash_key = \"query:room\"\n{}", servers(o, &[]));
    let keys = 5000;
    let gw = gateway(&config(&group(&[&oa, &ob, &oc]), ""));
    let results = many(gw.addr, N, PARALLEL, move |i| (None, format!("/ws?room=r{}", i % keys), String::new())).await;
    let counts = tally(&results);
    eprintln!("hash over {N} with {keys} keys: {counts:?}");
    assert!(!counts.contains_key("ERR"), "{counts:?}");
    for s in ["a", "b", "c"] {
        assert!((share(&counts, s, N) - 1.0 / 3.0).abs() <= 0.03, "{counts:?}");
    }
    let before: Vec<String> = results[..keys].iter().map(|x| x.clone().unwrap()).collect();
    for (i, x) in results.iter().enumerate() {
        assert_eq!(x.as_ref().unwrap(), &before[i % keys], "key r{} moved", i % keys);
    }
    drop(gw);

    let gw = gateway(&config(&group(&[&oa, &ob, &oc, &od]), ""));
    let after = many(gw.addr, keys, PARALLEL, |i| (None, format!("/ws?room=r{i}"), String::new())).await;
    let mut moved = 0;
    for (i, x) in after.iter().enumerate() {
        let x = x.as_ref().unwrap();
        if *x != before[i] {
            moved += 1;
            assert_eq!(x, "d", "key r{i} moved between old servers");
        }
    }
    let moved_share = f64::from(moved) / keys as f64;
    eprintln!("adding a 4th server moved {moved} of {keys} keys ({:.1} %)", moved_share * 100.0);
    assert!(moved_share <= 0.25 + 0.03, "{moved} of {keys} keys moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_are_used_in_turn() {
    let oa = Origin::start("a");
    let gw =
        gateway(&config(&format!("source_addresses = [\"127.0.0.7\", \"127.0.0.8\"]\n{}", servers(&[&oa], &[])), ""));
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let ans = handshake(gw.addr, None, "/", "").await.unwrap();
        *seen.entry(ans.header("x-seen-peer")).or_insert(0) += 1;
    }
    assert_eq!(seen, BTreeMap::from([("127.0.0.7".to_owned(), 10), ("127.0.0.8".to_owned(), 10)]));
}
