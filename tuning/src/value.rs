//! Knob values as lists of unsigned integer fields (`65535`, `1024 65535`, `786432 1048576
//! 1572864`), and how a wanted value is compared with an actual one. Pure: never touches the
//! system.

use std::fmt;

/// One field of a wanted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// This number (compared as the knob's [`Compare`] says).
    Int(u64),
    /// `*`: any value; `apply` keeps whatever is there.
    Any,
}

/// A value a profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted(pub Vec<Field>);

/// A value read from the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual(pub Vec<u64>);

/// How the actual value must relate to the wanted one, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Every field equal.
    Exact,
    /// Every field at least the wanted one.
    AtLeast,
    /// Every field at most the wanted one.
    AtMost,
    /// A `low high` range like `ip_local_port_range`: the actual range contains the wanted one.
    Range,
}

impl Compare {
    /// The spelling used in profiles.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "exact" => Some(Self::Exact),
            "at-least" => Some(Self::AtLeast),
            "at-most" => Some(Self::AtMost),
            "range" => Some(Self::Range),
            _ => None,
        }
    }

    /// The spelling used in profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::AtLeast => "at-least",
            Self::AtMost => "at-most",
            Self::Range => "range",
        }
    }

    /// Whether `actual` field number `index` satisfies `wanted`.
    fn field_ok(self, index: usize, wanted: u64, actual: u64) -> bool {
        match self {
            Self::Exact => actual == wanted,
            Self::AtMost => actual <= wanted,
            // A range's low end may go lower, its high end higher.
            Self::Range if index == 0 => actual <= wanted,
            Self::AtLeast | Self::Range => actual >= wanted,
        }
    }

    /// Whether `actual` satisfies `wanted` (a different number of fields never does).
    pub fn satisfied(self, wanted: &Wanted, actual: &Actual) -> bool {
        wanted.0.len() == actual.0.len()
            && wanted.0.iter().zip(&actual.0).enumerate().all(|(i, (w, &a))| match *w {
                Field::Any => true,
                Field::Int(w) => self.field_ok(i, w, a),
            })
    }

    /// The value `apply` converges to from `actual`: each field that already satisfies the
    /// wanted one (or is `*`) is kept, every other field takes the wanted number.
    pub fn desired(self, wanted: &Wanted, actual: &Actual) -> Actual {
        let fields = wanted.0.iter().enumerate().map(|(i, w)| {
            let a = actual.0.get(i).copied();
            match (*w, a) {
                (Field::Int(w), Some(a)) if !self.field_ok(i, w, a) => w,
                (Field::Int(w), None) => w,
                (_, Some(a)) => a,
                (Field::Any, None) => 0,
            }
        });
        Actual(fields.collect())
    }

    /// `wanted` with its comparison, as a person reads it (`>= 65535`).
    pub fn describe(self, wanted: &Wanted) -> String {
        let sign = match self {
            Self::Exact => "=",
            Self::AtLeast => ">=",
            Self::AtMost => "<=",
            Self::Range => "covers",
        };
        format!("{sign} {wanted}")
    }
}

impl Wanted {
    /// Parses whitespace-separated fields, each an unsigned integer or `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text
            .split_whitespace()
            .map(|t| match t {
                "*" => Ok(Field::Any),
                _ => t.parse().map(Field::Int).map_err(|_| format!("`{t}` is not an unsigned integer or `*`")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if fields.is_empty() {
            return Err("the value is empty".to_owned());
        }
        Ok(Self(fields))
    }
}

impl Actual {
    /// Parses the contents of a sysctl file: whitespace-separated unsigned integers.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text
            .split_whitespace()
            .map(|t| t.parse().map_err(|_| format!("`{t}` is not an unsigned integer")))
            .collect::<Result<Vec<_>, _>>()?;
        if fields.is_empty() {
            return Err("the value is empty".to_owned());
        }
        Ok(Self(fields))
    }
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match field {
                Field::Int(n) => write!(f, "{n}")?,
                Field::Any => f.write_str("*")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Actual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Wanted {
        Wanted::parse(s).unwrap()
    }
    fn a(s: &str) -> Actual {
        Actual::parse(s).unwrap()
    }

    #[test]
    fn comparisons_per_field() {
        assert!(Compare::AtLeast.satisfied(&w("65535"), &a("65535")));
        assert!(!Compare::AtLeast.satisfied(&w("65535"), &a("4096")));
        assert!(Compare::AtMost.satisfied(&w("15"), &a("10")));
        assert!(!Compare::Exact.satisfied(&w("1"), &a("2")));
        assert!(Compare::Range.satisfied(&w("1024 65535"), &a("1000 65535")));
        assert!(!Compare::Range.satisfied(&w("1024 65535"), &a("32768 60999")));
        assert!(Compare::AtMost.satisfied(&w("4096 16384 *"), &a("4096 16384 4194304")));
        assert!(!Compare::AtLeast.satisfied(&w("1 2"), &a("1 2 3")));
    }

    #[test]
    fn desired_keeps_fields_that_already_satisfy() {
        assert_eq!(Compare::Range.desired(&w("1024 65535"), &a("32768 60999")), a("1024 65535"));
        assert_eq!(Compare::Range.desired(&w("1024 60000"), &a("500 60999")), a("500 60999"));
        assert_eq!(Compare::AtMost.desired(&w("4096 16384 *"), &a("4096 131072 6291456")), a("4096 16384 6291456"));
        assert_eq!(Compare::Exact.desired(&w("1"), &a("2")), a("1"));
    }

    #[test]
    fn malformed_values_are_refused() {
        assert!(Wanted::parse("12x").is_err());
        assert!(Wanted::parse("-1").is_err());
        assert!(Wanted::parse("  ").is_err());
        assert_eq!(a("32768\t60999\n"), Actual(vec![32768, 60999]));
    }
}
