//! The open-files limit of this test process, both outcomes: the soft limit can always be
//! raised to the hard one; the hard limit above its current value only with
//! `CAP_SYS_RESOURCE`, and otherwise the error says exactly that. Its own test binary, so no
//! other test shares the limit being changed. Never lowers the hard limit.

use nix::sys::resource::{Resource, setrlimit};
use tuning::Error;
use tuning::rlimit::{self, UNLIMITED};

fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

#[test]
fn soft_rises_to_hard_and_hard_rises_only_where_allowed() {
    let start = rlimit::nofile().unwrap();
    // Lowering the soft limit is always allowed, and undone just below.
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(start.hard), start.hard).unwrap();
    assert_eq!(rlimit::nofile().unwrap().soft, 256.min(start.hard));
    let raised = rlimit::raise_soft_to_hard().unwrap();
    assert_eq!(raised.soft, start.hard);
    assert_eq!(raised.hard, start.hard);

    // Asking for less than the hard limit only raises the soft one.
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(start.hard), start.hard).unwrap();
    assert_eq!(rlimit::raise_to(start.hard / 2).unwrap(), raised);

    if start.hard == UNLIMITED {
        eprintln!("the hard limit is unlimited; nothing above it to ask for");
        return;
    }
    let wanted = start.hard + 1;
    let nr_open = rlimit::nr_open().unwrap();
    let outcome = rlimit::raise_to(wanted);
    if wanted > nr_open {
        assert!(matches!(outcome, Err(Error::AboveNrOpen { .. })), "{outcome:?}");
    } else if has_cap_sys_resource() {
        eprintln!("CAP_SYS_RESOURCE present: the hard limit can be raised here");
        assert_eq!(outcome.unwrap().hard, wanted);
    } else {
        let err = outcome.unwrap_err();
        let message = err.to_string();
        eprintln!("{message}");
        assert!(matches!(err, Error::HardLimitLocked { hard, wanted: w } if hard == start.hard && w == wanted));
        assert!(
            message.starts_with(&format!(
                "cannot raise the open-files hard limit above {}: needs CAP_SYS_RESOURCE",
                start.hard
            )),
            "{message}"
        );
        assert!(message.contains(&format!("LimitNOFILE={wanted}")), "{message}");
        assert!(!message.contains("EPERM"), "{message}");
        assert_eq!(rlimit::nofile().unwrap(), raised, "a refused raise changes nothing");
    }
}

#[test]
fn the_limits_file_of_a_process_is_read() {
    let mine = rlimit::nofile_of(std::path::Path::new("/proc/self/limits")).unwrap();
    let direct = rlimit::nofile().unwrap();
    assert_eq!(mine.hard, direct.hard);
    let pid1 = rlimit::nofile_of(std::path::Path::new("/proc/1/limits")).unwrap();
    assert!(pid1.soft <= pid1.hard);
}
