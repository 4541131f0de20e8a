//! Path normalisation: never a panic; the result starts with `/`, is no longer than
//! the input, has no `.`/`..`/empty segment, and is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::path::normalise;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let target = format!("/{s}");
    let Ok(out) = normalise(&target) else { return };
    assert!(out.starts_with('/') && out.len() <= target.len(), "{target:?} -> {out:?}");
    let path = out.split('?').next().unwrap_or("");
    for seg in path.split('/').skip(1).collect::<Vec<_>>().iter().rev().skip(1) {
        assert!(!matches!(*seg, "" | "." | ".."), "{target:?} -> {out:?}");
    }
    assert_eq!(normalise(&out).ok().as_deref(), Some(out.as_str()), "not a fixed point: {target:?}");
});
