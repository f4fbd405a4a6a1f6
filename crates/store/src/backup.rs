//! Backups of a gatehouse installation: the database plus everything else in `data_dir`.
//!
//! A backup is one gzip-compressed tar archive, `gatehouse-backup-<UTC stamp>.tar.gz`, with:
//! - `data/…`: every file of `data_dir` (keys, certificates, releases…) except the live
//!   SQLite files (`*.db`, `-wal`, `-shm`, `-journal`), the backup directory itself, the
//!   data-dir lock file and leftovers of earlier restores;
//! - the database: for SQLite a consistent snapshot made with `VACUUM INTO` while writes go
//!   on, stored at its place under `data/`; for PostgreSQL a `pg_dump --format=custom` file
//!   at `postgres/gatehouse.pgdump`;
//! - `manifest.json` (last entry): format version, creation time, backend, and the size and
//!   SHA-256 of every file.
//!
//! Beside it, `<archive>.sha256` holds the SHA-256 of the whole archive in `sha256sum`
//! format, so `sha256sum -c` works too. [`take_backup`] writes both atomically (temporary
//! name, fsync, rename) and rotates old archives; [`restore`] checks every checksum before
//! touching `data_dir`; [`run_schedule`] takes backups periodically and records the outcome
//! in a [`BackupStatus`] for metrics.
//!
//! **Architecture invariant:** a restore never leaves `data_dir` half-written: the archive
//! is fully extracted and verified into a staging directory inside `data_dir` first, and the
//! previous contents are moved aside (not deleted) by renames.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{Backend, StoreError};

mod archive;
mod lock;
mod restore;
mod schedule;
mod take;

pub use lock::{DataDirLock, LOCK_FILE_NAME, LockError};
pub use restore::{RestoreOptions, RestoreReport, VerifyReport, restore, verify};
pub use schedule::{BackupOutcome, BackupStatus, BackupStatusSnapshot, DEFAULT_EVERY, backup_now, run_schedule};
pub use take::{BackupReport, take_backup};

/// Default `[backup] keep`: a week of daily backups.
pub const DEFAULT_KEEP: usize = 7;

/// Default `[backup] dir`, relative to `data_dir` (excluded from the backups themselves).
pub const DEFAULT_DIR_NAME: &str = "backups";

/// The program run for PostgreSQL backups unless [`BackupOptions::pg_dump`] says otherwise;
/// looked up on `PATH`.
pub const DEFAULT_PG_DUMP: &str = "pg_dump";

/// File names of archives start with this…
pub const ARCHIVE_PREFIX: &str = "gatehouse-backup-";
/// …and end with this.
pub const ARCHIVE_SUFFIX: &str = ".tar.gz";
/// The checksum file of `X.tar.gz` is `X.tar.gz.sha256`.
pub const CHECKSUM_SUFFIX: &str = ".sha256";

/// Where and how many backups to keep; built by the binary from `[backup]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOptions {
    /// Directory of the archives (`[backup] dir`); created when missing.
    pub dir: PathBuf,
    /// How many archives to keep after a successful backup, newest first; `0` keeps all.
    pub keep: usize,
    /// The `pg_dump` program for PostgreSQL stores.
    pub pg_dump: PathBuf,
}

impl BackupOptions {
    /// Defaults for `data_dir`: archives in `data_dir/backups`, keep [`DEFAULT_KEEP`].
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DEFAULT_DIR_NAME),
            keep: DEFAULT_KEEP,
            pg_dump: PathBuf::from(DEFAULT_PG_DUMP),
        }
    }
}

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. `create`.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The database could not be snapshotted.
    #[error("database snapshot failed: {0}")]
    Store(#[from] StoreError),
    /// The store is on PostgreSQL and `pg_dump` is not installed.
    #[error(
        "PostgreSQL backups need pg_dump, which was not found ({}): install the PostgreSQL \
         client tools matching the server version (e.g. `apt-get install postgresql-client`)",
        .program.display()
    )]
    PgDumpMissing {
        /// The program that was looked for.
        program: PathBuf,
    },
    /// `pg_dump` ran and failed.
    #[error("pg_dump failed ({status}): {stderr}")]
    PgDumpFailed {
        /// Its exit status.
        status: String,
        /// The end of its error output.
        stderr: String,
    },
    /// The archive's contents do not match its checksums or are malformed.
    #[error("backup {} is corrupted: {reason}; nothing was restored", .path.display())]
    Corrupt {
        /// The archive.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The archive ends early (an interrupted copy or a full disk).
    #[error("backup {} is truncated: {reason}; nothing was restored", .path.display())]
    Truncated {
        /// The archive.
        path: PathBuf,
        /// Where it ended.
        reason: String,
    },
    /// The data directory is locked by a running server.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The restore cannot proceed for a reason found before anything changed.
    #[error("cannot restore into {}: {reason}; nothing was restored", .data_dir.display())]
    Refused {
        /// The target data directory.
        data_dir: PathBuf,
        /// Why.
        reason: String,
    },
}

impl BackupError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| BackupError::Io { action, path, source }
    }
}

/// The `manifest.json` inside every archive.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub(crate) format: u32,
    /// RFC 3339 UTC time when the snapshot began.
    pub(crate) created_at: String,
    /// The version of gatehouse that wrote it.
    pub(crate) gatehouse_version: String,
    /// The store backend.
    pub(crate) backend: Backend,
    /// Archive path of the database snapshot, if any.
    pub(crate) database: Option<String>,
    /// Where the SQLite file lived when it was outside `data_dir` (restored into `data_dir`).
    pub(crate) database_original_path: Option<String>,
    /// Every regular file, with its size and SHA-256.
    pub(crate) files: Vec<ManifestFile>,
    /// Every directory (so empty ones come back too).
    pub(crate) dirs: Vec<String>,
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestFile {
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// Version of the manifest layout; a restore refuses formats it does not know.
pub(crate) const MANIFEST_FORMAT: u32 = 1;

/// Name of the manifest entry.
pub(crate) const MANIFEST_NAME: &str = "manifest.json";

/// Archive directory holding `data_dir`'s files.
pub(crate) const DATA_PREFIX: &str = "data";

/// Archive path of a PostgreSQL dump.
pub(crate) const PG_DUMP_ENTRY: &str = "postgres/gatehouse.pgdump";

/// Top-level names in `data_dir` that belong to a restore in progress or done.
pub(crate) const RESTORE_STAGING_PREFIX: &str = ".restore-";
pub(crate) const RESTORE_PREVIOUS_PREFIX: &str = ".pre-restore-";

/// `20260321T101500.123Z`: sortable, file-name safe UTC stamp.
pub(crate) fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string().replace(['-', ':'], "")
}

/// Archives in `dir`, oldest first (the stamp in the name sorts chronologically).
pub(crate) fn list_archives(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(ARCHIVE_PREFIX) && name.ends_with(ARCHIVE_SUFFIX) && entry.file_type()?.is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The checksum file of an archive.
pub(crate) fn checksum_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(CHECKSUM_SUFFIX);
    PathBuf::from(name)
}
