//! Repository traits, one per subsystem, and their SQL implementations.
//!
//! The traits are object safe (`Arc<dyn ReleaseRepo>` works) and speak only in plain Rust
//! types, so subsystems and their tests never see `sqlx`. Each trait has one implementation
//! whose queries run unchanged on SQLite and PostgreSQL (`$n` placeholders, `ON CONFLICT`
//! upserts, millisecond timestamps); the few engine-specific fragments are marked where they
//! occur.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::StoreError;

mod certs;
mod meta;
mod releases;

pub use certs::SqlCerts;
pub use meta::SqlMeta;
pub use releases::SqlReleases;

/// The future returned by repository methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Runs `$body` with `$pool` bound to the SQLite or the PostgreSQL pool; `$body` is compiled
/// once per engine. Fails fast with `Unavailable` while the store is not ready.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store.pools()? {
            $crate::store::Pools::Sqlite($pool) => $body,
            $crate::store::Pools::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Starts a transaction that will write.
pub(crate) trait BeginWrite {
    /// The engine.
    type Db: sqlx::Database;

    /// Begins the transaction; on SQLite with `BEGIN IMMEDIATE`, which takes the write lock
    /// up front (waiting up to the busy timeout) so a read-then-write transaction cannot fail
    /// halfway with `SQLITE_BUSY` when another connection wrote in between.
    fn begin_write(&self) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;

    fn begin_write(&self) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;

    fn begin_write(&self) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send {
        self.begin()
    }
}

/// Longest accepted name (slot, release id, certificate name, key): generous for host names
/// and content hashes, small enough to keep indexes compact.
const MAX_NAME_LEN: usize = 512;

/// Rejects empty, overlong and control-character names before they reach the database.
fn check_name(what: &'static str, value: &str) -> Result<(), StoreError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_NAME_LEN {
        "is longer than 512 bytes"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid {
        what,
        reason: reason.to_owned(),
    })
}

/// Converts a count or size for a signed `BIGINT` column.
fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid {
        what,
        reason: format!("{value} does not fit a 64-bit signed column"),
    })
}

/// Reads a `BIGINT` count back; negative values cannot be stored (CHECK constraints).
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Static-site releases: which builds of a slot exist and which one is served.
pub trait ReleaseRepo: Send + Sync {
    /// Records a new, inactive release with `created_at = now`.
    ///
    /// Fails with [`StoreError::Conflict`] when the slot already has that release id.
    fn create(&self, release: NewRelease) -> StoreFuture<'_, Release>;

    /// One release, or `None`.
    fn get<'a>(&'a self, slot: &'a str, release_id: &'a str) -> StoreFuture<'a, Option<Release>>;

    /// Every release of `slot`, newest first.
    fn list<'a>(&'a self, slot: &'a str) -> StoreFuture<'a, Vec<Release>>;

    /// The release `slot` serves, or `None` before the first activation.
    fn active<'a>(&'a self, slot: &'a str) -> StoreFuture<'a, Option<Release>>;

    /// Makes `release_id` the one release `slot` serves, atomically: readers see either the
    /// previous or the new active release, never none or two. Activating an older release is
    /// a rollback. Fails with [`StoreError::NotFound`] for an unknown release.
    fn activate<'a>(&'a self, slot: &'a str, release_id: &'a str) -> StoreFuture<'a, Release>;

    /// Deletes all but the newest `keep` releases of `slot`, never the active one, and
    /// returns the deleted rows (oldest last) so the caller can remove their files.
    fn prune<'a>(&'a self, slot: &'a str, keep: usize) -> StoreFuture<'a, Vec<Release>>;
}

/// A release to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    /// The site slot, e.g. `frontend`.
    pub slot: String,
    /// The release id, unique within the slot (e.g. a timestamp or a content hash).
    pub release_id: String,
    /// Total size of the release's files.
    pub size_bytes: u64,
    /// Number of files in the release.
    pub file_count: u64,
}

/// A recorded release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The site slot.
    pub slot: String,
    /// The release id.
    pub release_id: String,
    /// When it was recorded (millisecond precision).
    pub created_at: SystemTime,
    /// Total size of its files.
    pub size_bytes: u64,
    /// Number of its files.
    pub file_count: u64,
    /// Whether the slot serves it.
    pub active: bool,
}

/// TLS certificates and ACME state shared by every instance.
pub trait CertRepo: Send + Sync {
    /// Stores (or replaces) the certificate called `name`.
    fn put_certificate(&self, cert: NewCertificate) -> StoreFuture<'_, ()>;

    /// The certificate called `name`, with its private key, or `None`.
    fn certificate<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<CertificateRecord>>;

    /// Every certificate without key material, ordered by name; for renewal and the dashboard.
    fn list_certificates(&self) -> StoreFuture<'_, Vec<CertificateSummary>>;

    /// Deletes the certificate called `name`; `false` when there was none.
    fn delete_certificate<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;

    /// Stores (or replaces) the ACME account for its directory URL.
    fn put_account(&self, account: AcmeAccount) -> StoreFuture<'_, ()>;

    /// The ACME account registered with `directory_url`, or `None`.
    fn account<'a>(&'a self, directory_url: &'a str) -> StoreFuture<'a, Option<AcmeAccount>>;

    /// Tries to take the lease that lets one instance order the certificate `name`.
    ///
    /// Returns `true` when `holder` now holds it for `ttl`: the lease was free, had expired,
    /// or `holder` already held it (a renewal). Returns `false` while another holder's lease
    /// is live. Expiry is judged by the database clock, so instances' clocks may drift.
    fn try_lock<'a>(&'a self, name: &'a str, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Releases the lease on `name` if `holder` holds it; `false` otherwise.
    fn unlock<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, bool>;
}

/// A certificate to store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewCertificate {
    /// Its name, usually the primary host name.
    pub name: String,
    /// The PEM chain, leaf first.
    pub chain_pem: String,
    /// The PEM private key. Secret: never logged.
    pub key_pem: String,
    /// Expiry of the leaf certificate.
    pub not_after: SystemTime,
}

/// A stored certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Its name.
    pub name: String,
    /// The PEM chain, leaf first.
    pub chain_pem: String,
    /// The PEM private key. Secret: never logged.
    pub key_pem: String,
    /// Expiry of the leaf certificate.
    pub not_after: SystemTime,
    /// When it was last stored.
    pub updated_at: SystemTime,
}

/// A stored certificate without its key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Its name.
    pub name: String,
    /// Expiry of the leaf certificate.
    pub not_after: SystemTime,
    /// When it was last stored.
    pub updated_at: SystemTime,
}

/// An ACME account registered with one directory.
#[derive(Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// The ACME directory URL, e.g. Let's Encrypt's production directory.
    pub directory_url: String,
    /// The account URL (`kid`) the directory assigned.
    pub account_url: String,
    /// Opaque credentials (e.g. the serialized account key). Secret: never logged.
    pub credentials: String,
}

impl fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCertificate")
            .field("name", &self.name)
            .field("chain_pem", &format_args!("<{} bytes>", self.chain_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl fmt::Debug for CertificateRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRecord")
            .field("name", &self.name)
            .field("chain_pem", &format_args!("<{} bytes>", self.chain_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .field("not_after", &self.not_after)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl fmt::Debug for AcmeAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeAccount")
            .field("directory_url", &self.directory_url)
            .field("account_url", &self.account_url)
            .field("credentials", &format_args!("<redacted>"))
            .finish()
    }
}

/// Small key/value settings and facts about the installation (e.g. an instance id).
pub trait MetaRepo: Send + Sync {
    /// The value stored under `key`, or `None`.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;

    /// Stores `value` under `key`, replacing any previous value.
    fn set<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()>;

    /// Deletes `key`; `false` when it did not exist.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
}
