//! Embedded schema migrations, applied exactly once under a lock.
//!
//! Each backend has its own ordered list of SQL files compiled into the binary. A run takes
//! a lock that every other instance's run waits for — PostgreSQL: a session advisory lock
//! keyed on the current schema; SQLite: a `BEGIN IMMEDIATE` transaction, which holds the
//! database's single write lock — then reads `gatehouse_migrations`, applies the missing
//! files in one transaction (DDL is transactional on both engines), records them with their
//! checksums, and commits. An instance that waited finds nothing left to do.

// `Executor::execute` returns a boxed future; `RawSql::execute` is an `async fn` whose
// generic executor type trips the compiler's `Send` check when spawned.
use sqlx::{Connection, Executor};

use crate::digest::sha256_hex;
use crate::error::{Severity, classify};
use crate::store::Pools;
use crate::time::now_ms;
use crate::{Backend, StoreError, StoreOptions};

/// One embedded migration.
#[derive(Debug)]
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> String {
        sha256_hex(self.sql.as_bytes())
    }
}

const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../migrations/sqlite/0001_initial.sql"),
}];

const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "initial",
    sql: include_str!("../migrations/postgres/0001_initial.sql"),
}];

/// The bookkeeping table, same text on both engines.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS gatehouse_migrations (
    version        BIGINT NOT NULL PRIMARY KEY,
    name           TEXT   NOT NULL,
    checksum       TEXT   NOT NULL,
    applied_at_ms  BIGINT NOT NULL
)";

/// First key of the PostgreSQL advisory lock (`pg_advisory_lock(int4, int4)`); the second
/// is a hash of the schema name, so databases shared by several schemas migrate in parallel.
/// The value is arbitrary: "gh" in ASCII, unlikely to collide with another application.
const PG_LOCK_CLASS: i32 = 0x6768;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The engine that was migrated.
    pub backend: Backend,
    /// The migrations this run applied, oldest first; empty when the schema was current
    /// (for example because another instance migrated first).
    pub applied: Vec<AppliedMigration>,
    /// The schema version after the run.
    pub schema_version: i64,
}

/// One migration applied by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version number.
    pub version: i64,
    /// Its short name, e.g. `initial`.
    pub name: String,
}

/// Connects once (bounded by `connect_timeout`, no retries), applies the pending embedded
/// migrations under the lock and disconnects; the `gatehouse migrate` command.
pub async fn migrate(options: &StoreOptions) -> Result<MigrationReport, StoreError> {
    let target = options.target()?;
    target.prepare().await?;
    let pools = Pools::lazy(&target, options);
    let result = async {
        pools.probe(options.connect_timeout).await?;
        run_migrations(&pools).await
    }
    .await;
    pools.close().await;
    result
}

/// Creates the bookkeeping table, checks the recorded history against the embedded list
/// and applies what is missing, on one connection inside the caller's transaction.
/// Expands to the body of an `async fn(conn) -> Result<(Vec<AppliedMigration>, i64), _>`;
/// one copy per engine.
macro_rules! apply_pending {
    ($conn:ident, $embedded:expr) => {{
        (&mut *$conn)
            .execute(sqlx::raw_sql(CREATE_TABLE))
            .await
            .map_err(|e| step_error("creating gatehouse_migrations", e))?;
        let recorded: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT version, name, checksum FROM gatehouse_migrations ORDER BY version")
                .fetch_all(&mut *$conn)
                .await
                .map_err(|e| step_error("reading gatehouse_migrations", e))?;
        let pending = plan(&recorded, $embedded)?;
        let mut applied = Vec::with_capacity(pending.len());
        for m in pending {
            (&mut *$conn)
                .execute(sqlx::raw_sql(m.sql))
                .await
                .map_err(|e| step_error(&format!("applying {:04} {}", m.version, m.name), e))?;
            sqlx::query(
                "INSERT INTO gatehouse_migrations (version, name, checksum, applied_at_ms)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .bind(now_ms())
            .execute(&mut *$conn)
            .await
            .map_err(|e| step_error("recording a migration", e))?;
            applied.push(AppliedMigration {
                version: m.version,
                name: m.name.to_owned(),
            });
        }
        let version = $embedded.iter().map(|m| m.version).max().unwrap_or(0);
        Ok((applied, version))
    }};
}

async fn apply_sqlite(conn: &mut sqlx::SqliteConnection) -> Result<(Vec<AppliedMigration>, i64), StoreError> {
    apply_pending!(conn, SQLITE)
}

async fn apply_postgres(conn: &mut sqlx::PgConnection) -> Result<(Vec<AppliedMigration>, i64), StoreError> {
    apply_pending!(conn, POSTGRES)
}

/// Applies the pending migrations on `pools`; used at startup and by [`migrate`].
pub(crate) async fn run_migrations(pools: &Pools) -> Result<MigrationReport, StoreError> {
    let (applied, schema_version) = match pools {
        Pools::Sqlite(pool) => {
            let mut conn = pool.acquire().await.map_err(|e| classify(e).0)?;
            // IMMEDIATE takes the write lock now; a concurrent run waits (busy_timeout) and
            // then sees our rows, instead of both reading "nothing applied".
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| step_error("locking the database", e))?;
            let outcome = apply_sqlite(&mut tx).await?;
            tx.commit().await.map_err(|e| step_error("committing migrations", e))?;
            outcome
        }
        Pools::Postgres(pool) => {
            let mut conn = pool.acquire().await.map_err(|e| classify(e).0)?;
            sqlx::query("SELECT pg_advisory_lock($1, hashtext(coalesce(current_schema(), '')))")
                .bind(PG_LOCK_CLASS)
                .execute(&mut *conn)
                .await
                .map_err(|e| step_error("taking the migration lock", e))?;
            let outcome = async {
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| step_error("starting the migration transaction", e))?;
                let outcome = apply_postgres(&mut tx).await?;
                tx.commit().await.map_err(|e| step_error("committing migrations", e))?;
                Ok::<_, StoreError>(outcome)
            }
            .await;
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext(coalesce(current_schema(), '')))")
                .bind(PG_LOCK_CLASS)
                .execute(&mut *conn)
                .await;
            if outcome.is_err() || unlocked.is_err() {
                // Closing the session is the sure way to release a session lock.
                conn.close_on_drop();
            }
            outcome?
        }
    };
    Ok(MigrationReport {
        backend: pools.backend(),
        applied,
        schema_version,
    })
}

/// Compares the recorded history with the embedded migrations and returns the ones to
/// apply, in order.
fn plan<'m>(recorded: &[(i64, String, String)], embedded: &'m [Migration]) -> Result<Vec<&'m Migration>, StoreError> {
    let mut newest = 0;
    for (version, name, checksum) in recorded {
        newest = newest.max(*version);
        let Some(known) = embedded.iter().find(|m| m.version == *version) else {
            return Err(StoreError::Migration(format!(
                "the database has migration {version:04} ({name}), which this gatehouse build \
                 does not know: it was migrated by a newer gatehouse; run that version or newer"
            )));
        };
        if known.checksum() != *checksum {
            return Err(StoreError::Migration(format!(
                "migration {version:04} ({name}) recorded in the database differs from the one \
                 built into this gatehouse (checksum {checksum} vs {}); released migrations \
                 must never change",
                known.checksum()
            )));
        }
    }
    let pending: Vec<&Migration> = embedded
        .iter()
        .filter(|m| !recorded.iter().any(|(v, _, _)| *v == m.version))
        .collect();
    if let Some(m) = pending.iter().find(|m| m.version < newest) {
        return Err(StoreError::Migration(format!(
            "migration {:04} ({}) is missing from the database although {newest:04} is applied",
            m.version, m.name
        )));
    }
    Ok(pending)
}

/// A driver error during a migration step: connection trouble stays retryable
/// ([`StoreError::Unavailable`]), anything else is a [`StoreError::Migration`].
fn step_error(step: &str, err: sqlx::Error) -> StoreError {
    match classify(err) {
        (StoreError::Unavailable { reason }, Severity::Down | Severity::Busy) => StoreError::Unavailable {
            reason: format!("{step}: {reason}"),
        },
        (err, Severity::Down | Severity::Busy) => err,
        (err, Severity::Call) => StoreError::Migration(format!("{step}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: &Migration) -> (i64, String, String) {
        (m.version, m.name.to_owned(), m.checksum())
    }

    #[test]
    fn versions_are_increasing_and_both_backends_match() {
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }

    #[test]
    fn plan_detects_changed_unknown_and_missing_migrations() {
        assert_eq!(plan(&[], SQLITE).unwrap().len(), SQLITE.len());
        let all: Vec<_> = SQLITE.iter().map(row).collect();
        assert!(plan(&all, SQLITE).unwrap().is_empty());

        let mut changed = all.clone();
        changed[0].2 = "0".repeat(64);
        let err = plan(&changed, SQLITE).unwrap_err().to_string();
        assert!(err.contains("must never change"), "{err}");

        let mut newer = all.clone();
        newer.push((999, "future".to_owned(), "x".to_owned()));
        let err = plan(&newer, SQLITE).unwrap_err().to_string();
        assert!(err.contains("newer gatehouse"), "{err}");

        let two = [
            Migration {
                version: 1,
                name: "a",
                sql: "",
            },
            Migration {
                version: 2,
                name: "b",
                sql: "x",
            },
        ];
        let err = plan(&[row(&two[1])], &two).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
