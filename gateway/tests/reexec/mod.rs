//! `main` of a test binary that re-runs itself as a child process (`harness = false`
//! in Cargo.toml): with its role variable set, the binary does the child's part and
//! exits; otherwise it runs its tests with libtest's options (filters, `--exact`,
//! `--test-threads`, `--nocapture`) through libtest-mimic.
//!
//! So the child's part is never listed or counted as a test. This module never starts
//! the child itself: each test does, with the environment and credentials it needs.

use libtest_mimic::{Arguments, Trial};

/// The child's part when `role_var` is set, else the tests.
pub fn main(role_var: &str, child: impl FnOnce(&str), tests: Vec<Trial>) {
    if let Ok(role) = std::env::var(role_var) {
        child(&role);
        return;
    }
    libtest_mimic::run(&Arguments::from_args(), tests).exit();
}

/// A test that fails by panicking, like a `#[test]`.
pub fn trial(name: &str, test: fn()) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

/// One [`trial`] per function, named after it.
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$($crate::reexec::trial(stringify!($test), $test)),*]
    };
}
pub(crate) use trials;
