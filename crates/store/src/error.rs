//! The store's error type and the mapping from driver errors.

/// Why a store operation failed.
///
/// Callers decide on the variant, never on the message: [`StoreError::Unavailable`] means
/// "answer 503 and try again later", [`StoreError::Conflict`] and [`StoreError::NotFound`]
/// are answers about the data, everything else is a bug or an operator problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `[store]` settings cannot work (bad URL, zero pool size…).
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The database cannot be reached right now (still connecting, down, pool exhausted, or
    /// busy). Safe to retry later; the store recovers by itself.
    #[error("database unavailable: {reason}")]
    Unavailable {
        /// What was observed, for the log.
        reason: String,
    },
    /// A row with the same key already exists.
    #[error("{entity} {key:?} already exists")]
    Conflict {
        /// The kind of thing, e.g. `release`.
        entity: &'static str,
        /// Its key as given by the caller.
        key: String,
    },
    /// The row the operation needs does not exist.
    #[error("{entity} {key:?} not found")]
    NotFound {
        /// The kind of thing, e.g. `release`.
        entity: &'static str,
        /// Its key as given by the caller.
        key: String,
    },
    /// The caller passed a value the store cannot hold (empty name, size overflow…).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The schema could not be brought up to date; the store stays unavailable.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Any other database error (a bug in a query, a full disk, a permission problem…).
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    /// True for errors that say nothing about the data and may go away on their own: the
    /// caller should answer 503 (or retry later), not 4xx/500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// How a driver error affects the store as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The connection or the server is gone: stop sending calls and probe in the background.
    Down,
    /// Contention (SQLite busy, serialization failure…): answer 503 but keep going.
    Busy,
    /// An answer about this one call.
    Call,
}

/// Maps a driver error to a [`StoreError`] and tells whether the database looks down.
pub(crate) fn classify(err: sqlx::Error) -> (StoreError, Severity) {
    use sqlx::Error as E;
    let down = |reason: String| (StoreError::Unavailable { reason }, Severity::Down);
    match err {
        E::Io(e) => down(format!("i/o error: {e}")),
        E::Tls(e) => down(format!("tls error: {e}")),
        E::PoolTimedOut => down("timed out waiting for a database connection".to_owned()),
        E::PoolClosed => (
            StoreError::Unavailable {
                reason: "the store is shut down".to_owned(),
            },
            Severity::Busy,
        ),
        E::WorkerCrashed => down("the database worker stopped".to_owned()),
        E::Protocol(e) => down(format!("protocol error: {e}")),
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = db.message().to_owned();
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            if sqlite {
                // Primary result code is the low byte of the extended code.
                let primary = code.parse::<i32>().map(|c| c & 0xff).unwrap_or(-1);
                match primary {
                    // SQLITE_BUSY, SQLITE_LOCKED: another writer held the lock for longer
                    // than the busy timeout.
                    5 | 6 => {
                        return (
                            StoreError::Unavailable {
                                reason: format!("sqlite busy: {message}"),
                            },
                            Severity::Busy,
                        );
                    }
                    // SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL, SQLITE_READONLY: the file
                    // or the disk is the problem, not this call.
                    10 | 14 | 13 | 8 => return down(format!("sqlite: {message} (code {code})")),
                    _ => {}
                }
            } else {
                match code.get(..2) {
                    // Class 08: connection exception; 57P0x: server shutting down or starting.
                    Some("08") => return down(format!("postgres: {message} ({code})")),
                    Some("57") if code.starts_with("57P") => {
                        return down(format!("postgres: {message} ({code})"));
                    }
                    // 40001 serialization failure, 40P01 deadlock, 55P03 lock not available.
                    Some("40") | Some("55") => {
                        return (
                            StoreError::Unavailable {
                                reason: format!("postgres: {message} ({code})"),
                            },
                            Severity::Busy,
                        );
                    }
                    // 53xxx: insufficient resources (too many connections, disk full).
                    Some("53") => return down(format!("postgres: {message} ({code})")),
                    _ => {}
                }
            }
            (StoreError::Database(format!("{message} (code {code})")), Severity::Call)
        }
        other => (StoreError::Database(other.to_string()), Severity::Call),
    }
}

/// True when the driver error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| db.is_unique_violation())
}

/// True when the driver error is a foreign-key violation.
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| db.is_foreign_key_violation())
}

/// True when the driver error is SQLite's `SQLITE_BUSY` (any extended code).
pub(crate) fn is_sqlite_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .filter(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some())
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5)
}
