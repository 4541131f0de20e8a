//! `hash_key` of a group balanced with `hash`: which part of a request its key is,
//! checked when the file is read.
//!
//! Data only: reading the key out of a request is `upstream::balance`'s (an `impl
//! HashKey` there); this module never looks at a request.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where `balance = "hash"` finds its key in a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HashKey {
    /// `header:NAME`: the first value of a header.
    Header(String),
    /// `cookie:NAME`: a cookie of the `Cookie` header(s).
    Cookie(String),
    /// `query:NAME`: a query parameter of the request target (raw, not percent-decoded).
    Query(String),
}

impl HashKey {
    /// Parses `header:NAME`, `cookie:NAME` or `query:NAME`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("`{spec}` must be header:NAME, cookie:NAME or query:NAME");
        let (kind, name) = spec.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ';' || c == '=' || c == '&') {
            return Err(bad());
        }
        match kind.trim() {
            "header" => Ok(Self::Header(name.to_owned())),
            "cookie" => Ok(Self::Cookie(name.to_owned())),
            "query" => Ok(Self::Query(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(spec: String) -> Result<Self, String> {
        Self::parse(&spec)
    }
}

impl From<HashKey> for String {
    fn from(key: HashKey) -> Self {
        key.to_string()
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Query(name) => write!(f, "query:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print_back() {
        for spec in ["header:x-user", "cookie:sid", "query:room"] {
            assert_eq!(HashKey::parse(spec).unwrap().to_string(), spec);
        }
        assert_eq!(HashKey::parse(" cookie: sid").unwrap(), HashKey::Cookie("sid".into()));
        for bad in ["body:x", "header:", "header", "query:a=b", "cookie:a b"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }
}
