//! Telemetry for gatehouse: diagnostic logging setup and the access log.
//!
//! The access log never blocks the request path on I/O: the thread that served a
//! request formats its [`AccessRecord`] into a buffer of its own, and one
//! background thread takes those buffers every 5 ms (every 100 ms when idle) and
//! writes them.
//! When the writer cannot keep up (a stalled disk) lines are dropped and counted
//! (see [`AccessLog::dropped`]) rather than slowing requests down.

mod access;

pub use access::{AccessLog, AccessLogSender, AccessRecord};

use gatehouse_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Errors from setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// The log level or filter did not parse.
    #[error("invalid log level {level:?}: {reason}")]
    BadFilter {
        /// The configured filter.
        level: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The access-log file could not be opened.
    #[error("cannot open access log {path}: {source}")]
    AccessLogFile {
        /// The configured path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The access-log writer thread could not be started.
    #[error("cannot start the access-log writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// Installs the global `tracing` subscriber: diagnostics go to standard error in
/// the given format. `RUST_LOG`, when set, overrides `level`.
///
/// Returns an error if the filter is invalid; calling it twice is harmless (the
/// second call leaves the first subscriber in place).
pub fn init_tracing(level: &str, format: LogFormat) -> Result<(), ObserveError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| ObserveError::BadFilter {
        level: level.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
