//! Durable storage for gatehouse.
//!
//! One [`Store`] talks to either an embedded SQLite file in `data_dir` (the default, nothing
//! to install) or a shared PostgreSQL database (several instances), chosen by the URL in
//! [`StoreOptions`]. Subsystems see the database only through repository traits
//! ([`ReleaseRepo`], [`CertRepo`], [`MetaRepo`]); **architecture invariant:** this is the only
//! crate that imports `sqlx`, and no `sqlx` type appears in its public API.
//!
//! Lifecycle:
//! - [`Store::open`] returns at once. A background task connects with exponential backoff,
//!   applies the embedded migrations under a lock (one instance migrates, the others wait and
//!   find nothing to do) and then marks the store ready.
//! - Until it is ready, and whenever the database stops answering, every repository call
//!   fails fast with [`StoreError::Unavailable`] instead of waiting; the edge turns that into
//!   a 503 and [`Store::is_ready`] into a health check. The background task keeps probing and
//!   flips the store back to ready on its own.
//! - [`migrate`] applies the same migrations once, for `gatehouse migrate`.
//!
//! The [`backup`] module takes consistent online snapshots (SQLite `VACUUM INTO`, or
//! `pg_dump`) together with the rest of `data_dir`, and restores them after verifying every
//! checksum.

#![warn(missing_docs)]

pub mod backup;
mod digest;
mod error;
mod migrate;
mod options;
mod repo;
mod store;
mod time;

pub use error::StoreError;
pub use migrate::{AppliedMigration, MigrationReport, migrate};
pub use options::{
    Backend, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_URL, SQLITE_BUSY_TIMEOUT, StoreOptions,
};
pub use repo::{
    AcmeAccount, CertRepo, CertificateRecord, CertificateSummary, MetaRepo, NewCertificate, NewRelease, Release,
    ReleaseRepo, SqlCerts, SqlMeta, SqlReleases, StoreFuture,
};
pub use store::{Store, StoreState};
