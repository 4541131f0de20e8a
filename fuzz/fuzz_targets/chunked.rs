//! Chunked (and length) body framing fed in arbitrary splits: never a panic, never
//! more bytes claimed than given, and the split does not change where the body ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::body::{BodyTracker, Framing};

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else { return };
    let framing = if split & 1 == 0 { Framing::Chunked } else { Framing::Length(u64::from(split)) };
    let whole = {
        let mut t = BodyTracker::new(framing);
        t.advance(body).map(|n| (n, t.is_done()))
    };
    let step = usize::from(split / 2).max(1);
    let mut t = BodyTracker::new(framing);
    let mut used = 0;
    let mut failed = false;
    for piece in body.chunks(step) {
        match t.advance(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if n < piece.len() {
                    break;
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole {
        Ok((n, done)) => {
            assert!(!failed, "split changed the verdict");
            assert_eq!((used, t.is_done()), (n, done), "split changed where the body ends");
        }
        Err(_) => assert!(failed, "split changed the verdict"),
    }
});
