//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while storing, loading, issuing or serving certificates.
///
/// Messages name the certificate or file involved; secrets (keys, EAB HMACs) never appear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file in the certificate store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A certificate or account name cannot be used (empty, too long, or odd characters).
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// PEM text did not hold what was expected.
    #[error("{what}: {reason}")]
    Pem {
        /// Which document (e.g. "certificate chain for a.example").
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused a certificate/key pair or a configuration.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: String,
        /// The underlying error.
        source: rustls::Error,
    },
    /// Generating a key or certificate with rcgen failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being generated.
        what: &'static str,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// The ACME server refused a request or could not be reached.
    #[error("ACME {step}: {source}")]
    Acme {
        /// The protocol step (e.g. "new order for a.example").
        step: String,
        /// The underlying error.
        source: instant_acme::Error,
    },
    /// The ACME order ended in a state other than a valid certificate.
    #[error("ACME order for {name}: {reason}")]
    Order {
        /// The certificate name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// Stored data (e.g. account credentials) could not be decoded.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pem(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Pem {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn acme(step: impl Into<String>, source: instant_acme::Error) -> Self {
        Self::Acme {
            step: step.into(),
            source,
        }
    }
}
