//! Configuration for gatehouse.
//!
//! Configuration has two layers (see `ARCHITECTURE.md`):
//!
//! 1. [`file`](crate::file) — the serde model of `gatehouse.toml`. It mirrors the file exactly,
//!    rejects unknown keys, and keeps the source span of every value that later
//!    validation may need to point at.
//! 2. [`model`](crate::model) — the typed runtime configuration the rest of the program uses:
//!    socket addresses, durations, CIDR networks, resolved upstream indices. Invalid
//!    states cannot be represented there, so consumers never re-validate.
//!
//! [`load`] and [`parse`] run both layers and turn every problem into a
//! [`ConfigError`] that names the file, line, column and key path.

mod convert;
mod error;
pub mod file;
mod interpolate;
pub mod model;
mod policy;
mod tls;
mod units;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ErrorKind};
pub use model::*;

/// File name used when neither `-c` nor `GATEHOUSE_CONFIG` names a config file.
pub const DEFAULT_CONFIG_PATH: &str = "gatehouse.toml";

/// Reads and validates the config file at `path`.
///
/// Environment variables referenced as `${VAR}` are substituted from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    parse_with_env(&text, path, &|name| std::env::var(name).ok())
}

/// Validates config `text` as if it had been read from `path`, using the process
/// environment for `${VAR}` substitution.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, path, &|name| std::env::var(name).ok())
}

/// Validates config `text`, resolving `${VAR}` through `env`.
///
/// `path` is only used in error messages and to resolve relative paths (such as
/// `data_dir`) against the config file's directory.
pub fn parse_with_env(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let source = Source {
        path: path.to_path_buf(),
        original: text,
    };
    let expanded = interpolate::expand(text, env).map_err(|e| source.error_at(e.offset, "", e.kind))?;
    let file = file::FileConfig::from_toml(&expanded.text).map_err(|e| {
        let offset = e.offset.map(|o| expanded.original_offset(o));
        source.error_opt(offset, &e.path, e.kind)
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    convert::convert(file, &base_dir).map_err(|e| {
        let offset = e.offset.map(|o| expanded.original_offset(o));
        source.error_opt(offset, &e.path, e.kind)
    })
}

/// The original text of a config file, used to turn byte offsets into positions.
struct Source<'a> {
    path: PathBuf,
    original: &'a str,
}

impl Source<'_> {
    fn error_at(&self, offset: usize, key: &str, kind: ErrorKind) -> ConfigError {
        self.error_opt(Some(offset), key, kind)
    }

    fn error_opt(&self, offset: Option<usize>, key: &str, kind: ErrorKind) -> ConfigError {
        let position = offset.map(|o| error::line_col(self.original, o));
        ConfigError::new(self.path.clone(), position, key.to_owned(), kind)
    }
}

#[cfg(test)]
mod tests;
