//! Loading profiles: the shipped ones, inheritance, and bad input that must be refused with
//! the profile file and line. Reads files only.

mod common;

use common::Scratch;
use tuning::{Compare, Error, Scope, profile};

const HEADER: &str = "description = \"test\"\n";

fn knob(name: &str, want: &str, compare: &str, scope: &str) -> String {
    format!(
        "\n[[knob]]\nname = \"{name}\"\nwant = {want}\ncompare = \"{compare}\"\nscope = \"{scope}\"\n\
         why = \"test\"\n"
    )
}

/// Loads `text` as profile `name` and returns the error, which must be a profile error.
fn refused(name: &str, text: &str) -> (usize, String) {
    let dir = Scratch::new("profiles");
    let file = dir.write(&format!("{name}.toml"), text);
    match profile::load(&dir.0, name) {
        Err(e @ Error::Profile { .. }) => {
            let Error::Profile { ref at, .. } = e else { unreachable!() };
            assert_eq!(at.file, file);
            let line = at.line;
            (line, e.to_string())
        }
        other => panic!("expected a profile error, got {other:?}"),
    }
}

#[test]
fn shipped_profiles_load_and_edge_1m_extends_baseline() {
    let names = profile::list(&tuning::shipped_profiles_dir()).unwrap();
    assert!(names.contains(&"baseline".to_owned()) && names.contains(&"edge-1m".to_owned()));
    let baseline = common::shipped("baseline");
    let names: Vec<&str> = baseline.knobs.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["net.core.somaxconn", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_fin_timeout", "rlimit.nofile"]);
    let edge = common::shipped("edge-1m");
    assert_eq!(edge.extends.as_deref(), Some("baseline"));
    // Inherited knobs first, the overridden one replaced in place.
    assert_eq!(edge.knobs[0].name, "net.core.somaxconn");
    assert_eq!(edge.knobs[0].at.file, baseline.file);
    let nofile = &edge.knobs[3];
    assert_eq!(nofile.name, "rlimit.nofile");
    assert_eq!(nofile.want.to_string(), "2100000");
    assert_eq!(nofile.at.file, edge.file);
    assert_eq!(edge.knobs.iter().filter(|k| k.name == "rlimit.nofile").count(), 1);
    let ports = edge.knobs.iter().find(|k| k.name == "net.ipv4.ip_local_port_range").unwrap();
    assert_eq!((ports.compare, ports.scope), (Compare::Range, Scope::Netns));
    let conntrack = edge.knobs.iter().find(|k| k.name.contains("conntrack")).unwrap();
    assert!(conntrack.optional);
}

#[test]
fn an_unknown_knob_names_file_and_line() {
    let text = format!(
        "{HEADER}{}{}",
        knob("net.core.somaxconn", "1", "at-least", "netns"),
        knob("net.core.somaxcon", "1", "at-least", "netns")
    );
    let (line, message) = refused("typo", &text);
    assert_eq!(line, 11, "{message}");
    assert!(message.contains("typo.toml:11: unknown knob `net.core.somaxcon`"), "{message}");
}

#[test]
fn malformed_values_name_the_want_line() {
    for (want, why) in [
        ("\"65535x\"", "not an unsigned integer"),
        ("-5", "negative"),
        ("\"1 2\"", "has 2 field(s), the knob takes 1"),
        ("3", "above its maximum 2"),
        ("true", "a boolean where an integer"),
    ] {
        let text = format!("{HEADER}{}", knob("net.ipv4.tcp_tw_reuse", want, "exact", "netns"));
        let (line, message) = refused("bad", &text);
        assert_eq!(line, 5, "{message}");
        assert!(message.contains(why), "{want}: {message}");
    }
    let text = format!("{HEADER}{}", knob("net.ipv4.ip_local_port_range", "\"60000 1024\"", "range", "netns"));
    assert!(refused("bad", &text).1.contains("backwards"));
}

#[test]
fn a_wrong_scope_or_comparison_is_refused() {
    let text = format!("{HEADER}{}", knob("fs.file-max", "1", "at-least", "netns"));
    let (line, message) = refused("scope", &text);
    assert_eq!(line, 7);
    assert!(message.contains("`fs.file-max` has scope `global`"), "{message}");

    let text = format!("{HEADER}{}", knob("net.core.somaxconn", "1", "range", "netns"));
    assert!(refused("cmp", &text).1.contains("`range` needs a two-field knob"));
    let text = format!("{HEADER}{}", knob("net.core.somaxconn", "1", "more", "netns"));
    assert_eq!(refused("cmp", &text).0, 6);
}

#[test]
fn syntax_errors_duplicates_missing_fields_and_cycles_are_refused() {
    let (line, message) = refused("syntax", &format!("{HEADER}\n[[knob]]\nname = \"x\n"));
    assert_eq!(line, 4, "{message}");

    let text = format!(
        "{HEADER}{}{}",
        knob("net.core.somaxconn", "1", "at-least", "netns"),
        knob("net.core.somaxconn", "2", "at-least", "netns")
    );
    let (line, message) = refused("dup", &text);
    assert_eq!(line, 11);
    assert!(message.contains("listed twice"));

    let (_, message) = refused("nowhy", &format!("{HEADER}\n[[knob]]\nname = \"fs.nr_open\"\n"));
    assert!(message.contains("missing field"), "{message}");

    let (_, message) = refused("extra", &format!("{HEADER}colour = 1\n"));
    assert!(message.contains("unknown field"), "{message}");

    let dir = Scratch::new("cycle");
    dir.write("a.toml", "description = \"a\"\nextends = \"b\"\n");
    dir.write("b.toml", "description = \"b\"\nextends = \"a\"\n");
    let err = profile::load(&dir.0, "a").unwrap_err().to_string();
    assert!(err.contains("b.toml:2: `extends = \"a\"` makes a cycle"), "{err}");
    assert!(matches!(profile::load(&dir.0, "missing"), Err(Error::ProfileFile { .. })));
}
