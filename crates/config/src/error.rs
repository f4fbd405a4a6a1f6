//! Config errors that point at the offending spot in the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a config file, with enough context to fix it without guessing.
///
/// Displayed as `FILE:LINE:COL: KEY: MESSAGE`, for example
/// `gatehouse.toml:12:12: site[0].route[1].upstream: upstream "apii" is not defined; defined upstreams: "api"`.
#[derive(Debug)]
pub struct ConfigError {
    path: PathBuf,
    position: Option<(usize, usize)>,
    key: String,
    kind: ErrorKind,
}

/// What went wrong, without the location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read config file: {0}")]
    Io(#[source] std::io::Error),
    /// TOML syntax error, unknown key or wrong type, as reported by the parser.
    #[error("{0}")]
    Syntax(String),
    /// `${VAR}` names a variable that is not set.
    #[error("environment variable {0} is not set (use ${{{0}:-default}} to give a default)")]
    MissingVariable(String),
    /// `${` without a closing `}` or with an invalid variable name.
    #[error("malformed variable reference: {0}")]
    BadVariable(String),
    /// A value has the right type but is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    pub(crate) fn new(path: PathBuf, position: Option<(usize, usize)>, key: String, kind: ErrorKind) -> Self {
        Self {
            path,
            position,
            key,
            kind,
        }
    }

    pub(crate) fn io(path: &Path, err: std::io::Error) -> Self {
        Self::new(path.to_path_buf(), None, String::new(), ErrorKind::Io(err))
    }

    /// The config file the error is in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 1-based line and column of the offending value, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.position
    }

    /// Dotted key path of the offending value, e.g. `site[0].route[1].upstream`.
    /// Empty when the error is not about one key (a syntax error between keys).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// An error found while converting the file model, before positions are resolved.
#[derive(Debug)]
pub(crate) struct RawError {
    pub(crate) offset: Option<usize>,
    pub(crate) path: String,
    pub(crate) kind: ErrorKind,
}

impl RawError {
    pub(crate) fn invalid(offset: Option<usize>, path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            offset,
            path: path.into(),
            kind: ErrorKind::Invalid(msg.into()),
        }
    }
}
