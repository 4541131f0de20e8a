//! Kernel and process-limit tuning profiles for edge nodes: parse a profile
//! (`profiles/*.toml`, with inheritance), verify a machine against it, apply it with a state
//! file that lets `revert` restore exactly what was there, and raise the open-files limit.
//!
//! This crate knows nothing of the gateway: the gateway and `cargo xtask tune` both use it.
//! It never writes anywhere it was not pointed at: every sysctl root, state file and persisted
//! file is a parameter, so tests can aim it at a scratch directory or a fresh network
//! namespace.

pub mod apply;
pub mod catalogue;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod netns;
pub mod persist;
pub mod profile;
pub mod revert;
pub mod rlimit;
pub mod state;
pub mod sysctl;
pub mod target;
pub mod value;
pub mod verify;

pub use apply::{Plan, Step, Write, plan};
pub use catalogue::Scope;
pub use error::{Error, Source};
pub use profile::{Knob, Profile};
pub use state::State;
pub use target::{LimitsCheck, Target};
pub use value::{Actual, Compare, Field, Wanted};
pub use verify::{Report, Row, Status, verify};

/// The profiles shipped with this crate (`tuning/profiles`), for tools run from the source tree.
pub fn shipped_profiles_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}
