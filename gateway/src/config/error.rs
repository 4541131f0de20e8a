//! What can be wrong with a configuration, always naming the field (or file) at fault.
//!
//! This module never reads a file; it only turns parser and check failures into
//! errors an operator can act on.

use std::fmt;
use std::path::PathBuf;

/// A configuration problem, naming the field (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes are part of the message, not `source()`s: a reader of `{:#}` sees
    // each once.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: ParseError },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no configuration: give -c FILE, or --listen IP:PORT --upstream IP:PORT")]
    Missing,
}

/// TOML text that does not make a configuration: the field, what is wrong with its
/// value, and where it is in the text.
#[derive(Debug, thiserror::Error)]
pub struct ParseError {
    /// `admission.trusted_proxies[0]`; `None` when the fault is not inside a field
    /// (a syntax error, or an unknown key at the top level).
    pub field: Option<String>,
    /// What the parser or the field's type said.
    pub message: String,
    /// 1-based line and column of the fault, when the parser knows them.
    pub at: Option<(usize, usize)>,
}

impl ParseError {
    /// Names the field of `error` (as serde saw it) and finds its line in `text`.
    pub(super) fn new(text: &str, error: serde_path_to_error::Error<toml::de::Error>) -> Self {
        let path = error.path();
        let field = (path.iter().next().is_some()).then(|| path.to_string());
        let inner = error.into_inner();
        let at = inner.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
        });
        let message = inner.message().trim_end().replace('\n', ", ");
        Self { field, message, at }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.at {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// A value that parsed but is not allowed.
pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), reason: reason.into() }
}
