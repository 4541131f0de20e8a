//! Deliberate faults of the echo server, so tests can prove the load client's verification
//! catches them (`--fault corrupt-every=N`, `drop-every=N`, `late-pong-every=N` or
//! `dup-pong-every=N`, hidden from `--help`).
//!
//! Faults count data frames (pings for the pong faults) per connection, so a test knows
//! exactly which echoes go wrong.
//! They must never be on unless asked for.

use std::str::FromStr;

/// A fault applied to every Nth data frame of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Echo faithfully.
    #[default]
    None,
    /// Flip the first payload byte of every Nth data frame.
    CorruptEvery(u32),
    /// Do not echo every Nth data frame at all.
    DropEvery(u32),
    /// Hold back the pong of every Nth ping until the next ping (a late heartbeat).
    LatePongEvery(u32),
    /// Send the pong of every Nth ping twice.
    DupPongEvery(u32),
}

impl Fault {
    /// What to do with the data frame numbered `n` (1-based) of a connection.
    pub fn applies(self, n: u32) -> Option<Self> {
        match self {
            Fault::CorruptEvery(k) | Fault::DropEvery(k) | Fault::LatePongEvery(k) | Fault::DupPongEvery(k)
                if k > 0 && n.is_multiple_of(k) =>
            {
                Some(self)
            }
            _ => None,
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, n) =
            s.split_once('=').ok_or("expected corrupt-every=N, drop-every=N, late-pong-every=N or dup-pong-every=N")?;
        let n: u32 = n.parse().map_err(|e| format!("bad count {n:?}: {e}"))?;
        if n == 0 {
            return Err("the count must be at least 1".into());
        }
        match kind {
            "corrupt-every" => Ok(Fault::CorruptEvery(n)),
            "drop-every" => Ok(Fault::DropEvery(n)),
            "late-pong-every" => Ok(Fault::LatePongEvery(n)),
            "dup-pong-every" => Ok(Fault::DupPongEvery(n)),
            _ => Err(format!("unknown fault {kind:?}")),
        }
    }
}
