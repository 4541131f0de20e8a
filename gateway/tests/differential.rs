//! Differential check of the request head parser against a reference parser (Python
//! `h11`): a corpus of tricky heads (smuggling shapes, folding, odd whitespace,
//! duplicate headers, odd versions) goes through wsgate's parser and checks (the ones
//! `head` and `route_admit` run before anything reaches an upstream) and through h11.
//! Every head must get the same verdict from both (accepted, refused, or incomplete)
//! unless a listed difference explains it (`differential/known.tsv`, each with its
//! reason): a new difference fails, and so does a listed one that no case shows any more.
//!
//! The corpus is the cross product of request lines × Host shapes × framing shapes, plus
//! single oddities, all generated here (deterministic, no randomness).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use wsgate::http::request;

/// What wsgate's limit on headers is by default (`limits.max_headers`).
const MAX_HEADERS: usize = 256;

const REQUEST_LINES: &[(&str, &str)] = &[
    ("get11", "GET /chat HTTP/1.1"),
    ("get10", "GET /chat HTTP/1.0"),
    ("post-query", "POST /chat?x=1&y=%20 HTTP/1.1"),
    ("two-spaces-before-target", "GET  /chat HTTP/1.1"),
    ("two-spaces-before-version", "GET /chat  HTTP/1.1"),
    ("tab-separator", "GET\t/chat HTTP/1.1"),
    ("absolute-form", "GET http://a.example/chat HTTP/1.1"),
    ("asterisk-form", "OPTIONS * HTTP/1.1"),
    ("version-2", "GET /chat HTTP/2.0"),
    ("version-1-2", "GET /chat HTTP/1.2"),
    ("trailing-space", "GET /chat HTTP/1.1 "),
    ("lowercase-method", "get /chat HTTP/1.1"),
    ("bad-method-char", "G@T /chat HTTP/1.1"),
    ("del-in-target", "GET /ch\x7fat HTTP/1.1"),
    ("no-version", "GET /chat"),
    ("lowercase-version", "GET /chat http/1.1"),
];

const HOSTS: &[(&str, &str)] = &[
    ("none", ""),
    ("one", "Host: a.example\r\n"),
    ("port", "Host: a.example:8080\r\n"),
    ("two-same", "Host: a.example\r\nHost: a.example\r\n"),
    ("two-different", "Host: a.example\r\nHost: b.example\r\n"),
    ("empty", "Host:\r\n"),
    ("comma-list", "Host: a.example, b.example\r\n"),
    ("space-before-colon", "Host : a.example\r\n"),
    ("uppercase", "HOST: A.EXAMPLE\r\n"),
    ("ipv6", "Host: [::1]:80\r\n"),
    ("tabs-around", "Host:\ta.example\t\r\n"),
    ("space-inside", "Host: a example\r\n"),
    ("folded", "Host: a.example\r\n b.example\r\n"),
    ("userinfo", "Host: user@a.example\r\n"),
];

const FRAMINGS: &[(&str, &str)] = &[
    ("none", ""),
    ("cl", "Content-Length: 5\r\n"),
    ("cl-zero", "Content-Length: 0\r\n"),
    ("cl-leading-zero", "Content-Length: 05\r\n"),
    ("cl-twice-same", "Content-Length: 5\r\nContent-Length: 5\r\n"),
    ("cl-twice-different", "Content-Length: 5\r\nContent-Length: 6\r\n"),
    ("cl-list", "Content-Length: 5, 5\r\n"),
    ("cl-negative", "Content-Length: -1\r\n"),
    ("cl-plus", "Content-Length: +5\r\n"),
    ("cl-spaces", "Content-Length:  5 \r\n"),
    ("cl-huge", "Content-Length: 99999999999999999999\r\n"),
    ("cl-hex", "Content-Length: 0x5\r\n"),
    ("te-chunked", "Transfer-Encoding: chunked\r\n"),
    ("te-capital", "Transfer-Encoding: Chunked\r\n"),
    ("te-gzip-chunked", "Transfer-Encoding: gzip, chunked\r\n"),
    ("te-chunked-gzip", "Transfer-Encoding: chunked, gzip\r\n"),
    ("te-identity", "Transfer-Encoding: identity\r\n"),
    ("te-and-cl", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
    ("te-space-before-colon", "Transfer-Encoding : chunked\r\n"),
    ("te-twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
    ("te-vertical-tab", "Transfer-Encoding:\x0bchunked\r\n"),
];

/// Single oddities, each on an otherwise plain `GET /chat HTTP/1.1` with one Host.
const ODDITIES: &[(&str, &str)] = &[
    ("lf-only", "GET /chat HTTP/1.1\nHost: a.example\n\n"),
    ("lf-then-crlf", "GET /chat HTTP/1.1\nHost: a.example\r\n\r\n"),
    ("cr-only", "GET /chat HTTP/1.1\rHost: a.example\r\r"),
    ("nul-in-value", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A: a\0b\r\n\r\n"),
    ("cr-in-value", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A: a\rb\r\n\r\n"),
    ("no-colon", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A\r\n\r\n"),
    ("empty-name", "GET /chat HTTP/1.1\r\nHost: a.example\r\n: a\r\n\r\n"),
    ("space-in-name", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX A: a\r\n\r\n"),
    ("underscore-name", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX_A: a\r\n\r\n"),
    ("obs-text-value", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A: caf\u{e9}\r\n\r\n"),
    ("folded-other", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A: a\r\n\tb\r\n\r\n"),
    ("leading-space-line", "GET /chat HTTP/1.1\r\n X-A: a\r\nHost: a.example\r\n\r\n"),
    ("empty-line-first", "\r\nGET /chat HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("two-empty-lines-first", "\r\n\r\nGET /chat HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("head-cut", "GET /chat HTTP/1.1\r\nHost: a.exa"),
    ("head-cut-after-line", "GET /chat HTTP/1.1\r\nHost: a.example\r\n"),
    ("only-method", "GET"),
    ("whitespace-value", "GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A:    \r\n\r\n"),
    (
        "connection-upgrade",
        "GET /chat HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ),
    ("expect-continue", "GET /chat HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\n\r\n"),
    ("percent-target", "GET /a%2Fb%00 HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("dotdot-target", "GET /ws/../admin HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("dotdot-escape-root", "GET /../../etc HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("hash-in-target", "GET /chat#frag HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("utf8-target", "GET /ch\u{e4}t HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("long-value", ""),
    ("many-headers", ""),
];

struct Case {
    name: String,
    /// `axis=variant` tags a listed difference can name.
    tags: BTreeSet<String>,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    for (rl, line) in REQUEST_LINES {
        for (h, host) in HOSTS {
            for (f, framing) in FRAMINGS {
                let tags: BTreeSet<String> = [format!("line={rl}"), format!("host={h}"), format!("framing={f}")].into();
                let bytes = format!("{line}\r\n{host}{framing}User-Agent: diff\r\n\r\n").into_bytes();
                cases.push(Case { name: format!("{rl}.{h}.{f}"), tags, bytes });
            }
        }
    }
    for (name, text) in ODDITIES {
        let bytes = match *name {
            "long-value" => format!("GET /chat HTTP/1.1\r\nHost: a.example\r\nX-A: {}\r\n\r\n", "v".repeat(8000)),
            "many-headers" => {
                let extra = (0..MAX_HEADERS).fold(String::new(), |mut s, i| {
                    let _ = write!(s, "X-{i}: v\r\n");
                    s
                });
                format!("GET /chat HTTP/1.1\r\nHost: a.example\r\n{extra}\r\n")
            }
            _ => (*text).to_owned(),
        }
        .into_bytes();
        cases.push(Case { name: format!("odd.{name}"), tags: [format!("odd={name}")].into(), bytes });
    }
    cases
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Accept,
    Refuse,
    Incomplete,
}

impl Verdict {
    fn parse(s: &str) -> Self {
        match s {
            "accept" => Self::Accept,
            "refuse" => Self::Refuse,
            "incomplete" => Self::Incomplete,
            other => panic!("unknown verdict {other:?}"),
        }
    }
}

/// wsgate's verdict: the parser, then the Host and framing checks (nothing reaches an
/// upstream that fails one of them).
fn wsgate_verdict(bytes: &[u8]) -> (Verdict, String) {
    match request::parse(bytes, MAX_HEADERS) {
        Ok(None) => (Verdict::Incomplete, String::new()),
        Err(e) => (Verdict::Refuse, e.to_string()),
        Ok(Some(head)) => match request::check_host(&head).and_then(|()| request::check_framing(&head)) {
            Ok(()) => (Verdict::Accept, String::new()),
            Err(e) => (Verdict::Refuse, e.to_string()),
        },
    }
}

/// h11's verdicts by case name, from `/usr/bin/python3` (where Debian's `python3-h11` is).
fn h11_verdicts(cases: &[Case]) -> BTreeMap<String, (Verdict, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/differential/h11_verdict.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (cargo xtask test installs python3-h11)");
    let mut input = String::new();
    for c in cases {
        let hex = c.bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        input.push_str(&serde_json::json!({"name": c.name, "hex": hex}).to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "h11_verdict.py failed (is python3-h11 installed?)");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let name = v["name"].as_str().unwrap().to_owned();
            (name, (Verdict::parse(v["verdict"].as_str().unwrap()), v["detail"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// A listed difference: every case carrying all of `tags` gets `wsgate` from wsgate and
/// `h11` from h11, for `reason`.
struct Known {
    line: usize,
    tags: BTreeSet<String>,
    wsgate: Verdict,
    h11: Verdict,
}

fn known() -> Vec<Known> {
    let text = include_str!("differential/known.tsv");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "known.tsv line {}: tags, wsgate, h11, reason (tab-separated)", i + 1);
            assert!(!f[3].trim().is_empty(), "known.tsv line {}: a difference needs its reason", i + 1);
            Known {
                line: i + 1,
                tags: f[0].split(',').map(|t| t.trim().to_owned()).collect(),
                wsgate: Verdict::parse(f[1]),
                h11: Verdict::parse(f[2]),
            }
        })
        .collect()
}

#[test]
fn wsgate_and_h11_agree_on_every_head_but_the_listed_differences() {
    let cases = corpus();
    assert!(cases.len() >= 1000, "the corpus has {} heads", cases.len());
    let reference = h11_verdicts(&cases);
    assert_eq!(reference.len(), cases.len(), "h11 answered every head");
    let known = known();
    let mut used = vec![false; known.len()];
    let mut unexplained = Vec::new();
    let mut agreed = BTreeMap::<Verdict, usize>::new();
    for c in &cases {
        let (ours, why) = wsgate_verdict(&c.bytes);
        let (theirs, their_why) = &reference[&c.name];
        if ours == *theirs {
            *agreed.entry(ours).or_default() += 1;
            continue;
        }
        let explained: Vec<usize> = (0..known.len())
            .filter(|&k| known[k].wsgate == ours && known[k].h11 == *theirs && known[k].tags.is_subset(&c.tags))
            .collect();
        if explained.is_empty() {
            unexplained.push(format!(
                "{}: wsgate {ours:?} ({why}), h11 {theirs:?} ({their_why})\n    {:?}",
                c.name,
                String::from_utf8_lossy(&c.bytes)
            ));
        }
        for k in explained {
            used[k] = true;
        }
    }
    eprintln!("{} heads; agreed: {agreed:?}", cases.len());
    let stale: Vec<usize> = known.iter().zip(&used).filter(|(_, u)| !**u).map(|(k, _)| k.line).collect();
    assert!(
        unexplained.is_empty(),
        "{} new differences (explain each in tests/differential/known.tsv or fix the parser):\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    assert!(stale.is_empty(), "known.tsv lines that no head shows any more: {stale:?}");
    // Both parsers did accept and refuse a fair share: the corpus tests something.
    assert!(agreed.get(&Verdict::Accept).copied().unwrap_or(0) >= 100, "{agreed:?}");
    assert!(agreed.get(&Verdict::Refuse).copied().unwrap_or(0) >= 100, "{agreed:?}");
}
