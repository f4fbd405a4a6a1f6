//! Connection settings and URL parsing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use sqlx::{Connection, SqliteConnection};
use tokio::time::Instant;
use tracing::warn;

use crate::StoreError;
use crate::error::{classify, is_sqlite_busy};

/// Default `[store] url`: an SQLite file named `gatehouse.db` inside `data_dir`.
///
/// Relative SQLite paths are resolved against `data_dir`, so the database moves with the
/// data directory and `gatehouse backup` finds it there.
pub const DEFAULT_URL: &str = "sqlite://gatehouse.db";

/// Default `[store] max_connections`: the upper bound of the connection pool.
///
/// Ten connections keep several slow queries from starving the rest, while three instances
/// together stay well below PostgreSQL's default `max_connections = 100`. SQLite has one
/// writer at a time anyway; extra connections only serve concurrent readers (WAL).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Default `[store] connect_timeout`: how long one connection attempt, or one wait for a free
/// pooled connection, may take before the call fails with [`StoreError::Unavailable`].
///
/// A database on the same network answers in milliseconds; after five seconds a caller is
/// better served by a quick 503 than by a request that hangs until its own timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an SQLite statement waits for the write lock held by another connection or
/// process before failing.
///
/// Writes in gatehouse are small and short; five seconds absorbs a backup snapshot or a
/// migration in another instance without turning contention into errors.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle pooled connection is kept: long enough to reuse it across bursts, short
/// enough to give connections back to PostgreSQL when an instance is quiet.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Connections are recycled after this long, so a failover or a changed server setting is
/// picked up without a restart.
pub(crate) const POOL_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Settings of a [`Store`](crate::Store); the binary builds them from `[server] data_dir` and
/// the `[store]` table.
#[derive(Clone)]
pub struct StoreOptions {
    /// Which database to use: `sqlite://PATH` (relative paths are resolved against
    /// `data_dir`), `sqlite:///ABSOLUTE/PATH`, `sqlite::memory:` (tests), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (`postgresql://` is accepted too).
    pub url: String,
    /// The data directory: home of the SQLite file and of everything a backup contains.
    pub data_dir: PathBuf,
    /// Upper bound of the connection pool (at least 1).
    pub max_connections: u32,
    /// Bound on one connection attempt and on waiting for a pooled connection.
    pub connect_timeout: Duration,
}

impl StoreOptions {
    /// Options for `url` in `data_dir` with the default pool bounds.
    pub fn new(url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            data_dir: data_dir.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Which backend the URL selects, or a configuration error naming the accepted schemes.
    pub fn backend(&self) -> Result<Backend, StoreError> {
        Ok(self.target()?.backend())
    }

    pub(crate) fn target(&self) -> Result<Target, StoreError> {
        if self.max_connections == 0 {
            return Err(StoreError::Config("max_connections must be at least 1".to_owned()));
        }
        if self.connect_timeout.is_zero() {
            return Err(StoreError::Config(
                "connect_timeout must be greater than zero".to_owned(),
            ));
        }
        let url = self.url.trim();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            return parse_sqlite(rest, &self.data_dir);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|e| {
                // The message of a parse error never echoes the URL, so no password leaks.
                StoreError::Config(format!("invalid postgres url {}: {e}", redact_url(url)))
            })?;
            return Ok(Target::Postgres(Box::new(options.application_name("gatehouse"))));
        }
        Err(StoreError::Config(format!(
            "unsupported store url {:?}: expected sqlite://PATH, sqlite::memory: or postgres://…",
            redact_url(url)
        )))
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("StoreOptions")
            .field("url", &self.redacted_url())
            .field("data_dir", &self.data_dir)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The database engine behind a [`Store`](crate::Store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded SQLite, one file in `data_dir`.
    Sqlite,
    /// A shared PostgreSQL database.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// A parsed store URL.
#[derive(Clone)]
pub(crate) enum Target {
    /// An SQLite file at an absolute or data_dir-resolved path.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (tests).
    SqliteMemory,
    /// A PostgreSQL server.
    Postgres(Box<PgConnectOptions>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            Target::SqliteMemory => f.write_str("SqliteMemory"),
            // PgConnectOptions' own Debug prints the password.
            Target::Postgres(pg) => write!(
                f,
                "Postgres({}:{}/{})",
                pg.get_host(),
                pg.get_port(),
                pg.get_database().unwrap_or_default()
            ),
        }
    }
}

impl Target {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Target::SqliteFile(_) | Target::SqliteMemory => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
        }
    }

    /// Creates an SQLite file and its directory on first start and puts it in WAL mode.
    ///
    /// Switching a database into WAL needs an exclusive lock that SQLite does not wait for
    /// (`busy_timeout` does not apply), so when several instances create the file at once
    /// all but one would fail with "database is locked". This step retries that switch for
    /// up to [`SQLITE_BUSY_TIMEOUT`]; afterwards WAL is a property of the file and the
    /// pool's own `journal_mode=WAL` is a no-op.
    pub(crate) async fn prepare(&self) -> Result<(), StoreError> {
        let Target::SqliteFile(path) = self else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| StoreError::Unavailable {
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            let attempt = async {
                let mut conn = SqliteConnection::connect_with(&options).await?;
                let mode: Result<(String,), _> = sqlx::query_as("PRAGMA journal_mode = WAL").fetch_one(&mut conn).await;
                let _ = conn.close().await;
                mode
            }
            .await;
            match attempt {
                Ok((mode,)) => {
                    if !mode.eq_ignore_ascii_case("wal") {
                        warn!(path = %path.display(), %mode, "SQLite did not switch to WAL mode; readers may block writers.");
                    }
                    return Ok(());
                }
                Err(e) if is_sqlite_busy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(classify(e).0),
            }
        }
    }

    /// SQLite connection options with gatehouse's pragmas.
    pub(crate) fn sqlite_options(&self) -> Option<SqliteConnectOptions> {
        let base = match self {
            Target::SqliteFile(path) => SqliteConnectOptions::new().filename(path).create_if_missing(true),
            // A uniquely named shared-cache database: every connection of one pool sees the
            // same data, and two stores never share one.
            Target::SqliteMemory => {
                static SEQ: AtomicU64 = AtomicU64::new(0);
                let n = SEQ.fetch_add(1, Ordering::Relaxed);
                SqliteConnectOptions::new()
                    .filename(format!("file:gatehouse-memory-{}-{n}", std::process::id()))
                    .in_memory(true)
                    .shared_cache(true)
            }
            Target::Postgres(_) => return None,
        };
        Some(
            base
                // Readers never block the writer and a backup snapshot never blocks writes.
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL is crash-safe (a power loss may undo only the last
                // commits) and avoids an fsync per transaction.
                .synchronous(SqliteSynchronous::Normal)
                // SQLite leaves foreign keys off by default; the schema relies on them.
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT),
        )
    }
}

fn parse_sqlite(rest: &str, data_dir: &Path) -> Result<Target, StoreError> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path == ":memory:" {
        return Ok(Target::SqliteMemory);
    }
    if path.contains('?') {
        return Err(StoreError::Config(format!(
            "sqlite url {rest:?}: query parameters are not supported; gatehouse sets the pragmas itself"
        )));
    }
    if path.is_empty() {
        return Err(StoreError::Config(
            "sqlite url has no file path: use e.g. sqlite://gatehouse.db".to_owned(),
        ));
    }
    let path = Path::new(path);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        data_dir.join(path)
    };
    Ok(Target::SqliteFile(path))
}

/// Replaces the password of a URL with `***`; leaves anything unparsable alone except for a
/// conservative cut at the `@`.
pub(crate) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            // set_password only fails for URLs that cannot have credentials, and this one has.
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => raw.to_owned(),
        Err(_) => match raw.rfind('@') {
            Some(at) => format!("***{}", &raw[at..]),
            None => raw.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> StoreOptions {
        StoreOptions::new(url, "/srv/data")
    }

    #[test]
    fn relative_sqlite_paths_resolve_against_data_dir() {
        let target = opts("sqlite://gatehouse.db").target().unwrap();
        assert!(matches!(target, Target::SqliteFile(p) if p == Path::new("/srv/data/gatehouse.db")));
        let target = opts("sqlite:db/x.db").target().unwrap();
        assert!(matches!(target, Target::SqliteFile(p) if p == Path::new("/srv/data/db/x.db")));
        let target = opts("sqlite:///var/lib/g.db").target().unwrap();
        assert!(matches!(target, Target::SqliteFile(p) if p == Path::new("/var/lib/g.db")));
        assert!(matches!(
            opts("sqlite::memory:").target().unwrap(),
            Target::SqliteMemory
        ));
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in ["mysql://x", "sqlite://", "sqlite://a.db?mode=ro", "postgres://[::1"] {
            let err = opts(url).target().unwrap_err();
            assert!(matches!(err, StoreError::Config(_)), "{url}: {err}");
        }
        let mut o = opts("sqlite::memory:");
        o.max_connections = 0;
        assert!(matches!(o.target(), Err(StoreError::Config(_))));
    }

    #[test]
    fn passwords_are_redacted() {
        let o = opts("postgres://app:s3cret@db:5432/gh");
        assert_eq!(o.redacted_url(), "postgres://app:***@db:5432/gh");
        assert!(!format!("{o:?}").contains("s3cret"));
        assert_eq!(o.backend().unwrap(), Backend::Postgres);
        assert!(!format!("{:?}", o.target().unwrap()).contains("s3cret"));
        let err = opts("mysql://u:s3cret@h/x").target().unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
