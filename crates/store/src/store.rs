//! The store handle: pools, readiness and the background connect/probe task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::pool::PoolOptions;
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::error::{Severity, classify};
use crate::migrate::run_migrations;
use crate::options::{POOL_IDLE_TIMEOUT, POOL_MAX_LIFETIME, Target};
use crate::{Backend, SqlCerts, SqlMeta, SqlReleases, StoreError, StoreOptions};

/// First wait after a failed connection attempt; doubled after each failure.
const RETRY_INITIAL: Duration = Duration::from_millis(250);

/// Longest wait between two connection attempts: an outage is noticed to be over within
/// half a minute, while a database that is down for hours gets two attempts a minute.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the store is doing, for health checks and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// Opened; the first connection attempt has not finished yet.
    Connecting,
    /// Connected and migrated; calls go to the database.
    Ready,
    /// The database could not be reached; calls fail fast while the background task retries.
    Unavailable {
        /// When the outage was first observed.
        since: SystemTime,
        /// The latest error, safe to log (no credentials).
        error: String,
        /// Connection attempts since the outage began.
        attempts: u32,
    },
    /// The schema could not be migrated; the store will not become ready without operator
    /// action (a restart with a fixed database or a newer binary).
    Failed {
        /// Why.
        error: String,
    },
}

/// Connection pools, one variant per backend.
#[derive(Debug, Clone)]
pub(crate) enum Pools {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pools {
    /// Lazily connecting pools for `target`: nothing is dialled until the first acquire.
    pub(crate) fn lazy(target: &Target, options: &StoreOptions) -> Self {
        fn bounds<DB: sqlx::Database>(max: u32, timeout: Duration) -> PoolOptions<DB> {
            PoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(timeout)
                .idle_timeout(POOL_IDLE_TIMEOUT)
                .max_lifetime(POOL_MAX_LIFETIME)
                // A ping before handing out an idle connection turns a connection killed by a
                // database restart into a fresh one instead of a failed call.
                .test_before_acquire(true)
        }
        let sqlite = target.sqlite_options().unwrap_or_default();
        match target {
            Target::Postgres(pg) => Pools::Postgres(
                bounds(options.max_connections, options.connect_timeout).connect_lazy_with((**pg).clone()),
            ),
            Target::SqliteMemory => Pools::Sqlite(
                // An in-memory database lives as long as one connection to it: keep exactly
                // one, forever.
                PoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(options.connect_timeout)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with(sqlite),
            ),
            Target::SqliteFile(_) => {
                Pools::Sqlite(bounds(options.max_connections, options.connect_timeout).connect_lazy_with(sqlite))
            }
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// Borrows a connection and pings it, within `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<(), StoreError> {
        use sqlx::Connection;
        let ping = async {
            match self {
                Pools::Sqlite(p) => p.acquire().await?.ping().await,
                Pools::Postgres(p) => p.acquire().await?.ping().await,
            }
        };
        match tokio::time::timeout(timeout, ping).await {
            Err(_) => Err(StoreError::Unavailable {
                reason: format!("no connection within {timeout:?}"),
            }),
            Ok(Err(e)) => Err(classify(e).0),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Closes every connection. `Pool::close` can return while a connection that was just
    /// released is still on its way back to the pool (it would then be closed later, in the
    /// background, and with SQLite checkpoint the WAL at an unexpected moment), so close
    /// again until the pool is empty, for at most about a second.
    pub(crate) async fn close(&self) {
        for _ in 0..100 {
            let open = match self {
                Pools::Sqlite(p) => {
                    p.close().await;
                    p.size()
                }
                Pools::Postgres(p) => {
                    p.close().await;
                    p.size()
                }
            };
            if open == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// State shared by the handles and the background task.
#[derive(Debug)]
struct Core {
    options: StoreOptions,
    target: Target,
    pools: Pools,
    state: watch::Sender<StoreState>,
    /// Wakes the background task when a call saw the database go away.
    wake: Notify,
}

impl Core {
    fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), StoreState::Ready)
    }
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    supervisor: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The background task holds only `Core`; without this it would probe forever.
        self.supervisor.abort();
    }
}

/// A handle to the database; cheap to clone, shared by every subsystem.
///
/// Dropping the last handle stops the background task; [`Store::close`] also closes the
/// pool's connections gracefully.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens a store and returns at once; must be called inside a Tokio runtime.
    ///
    /// A background task creates the SQLite file (and `data_dir`) on first start or dials
    /// PostgreSQL, retrying with exponential backoff (logged at `warn` with the error and the
    /// next delay), then applies the embedded migrations and marks the store ready. Only an
    /// invalid configuration fails here.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
        let target = options.target()?;
        let pools = Pools::lazy(&target, &options);
        let (state, _) = watch::channel(StoreState::Connecting);
        let core = Arc::new(Core {
            options,
            target,
            pools,
            state,
            wake: Notify::new(),
        });
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("Store::open must be called inside a Tokio runtime".to_owned()))?;
        let supervisor = runtime.spawn(supervise(core.clone())).abort_handle();
        Ok(Store {
            inner: Arc::new(Inner { core, supervisor }),
        })
    }

    /// Which database engine this store uses.
    pub fn backend(&self) -> Backend {
        self.inner.core.pools.backend()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.core.options
    }

    /// True when calls go to the database; a cheap check for health endpoints.
    pub fn is_ready(&self) -> bool {
        self.inner.core.is_ready()
    }

    /// The current state, with the latest error while unavailable.
    pub fn state(&self) -> StoreState {
        self.inner.core.state.borrow().clone()
    }

    /// Waits until the store is ready, for at most `timeout`.
    ///
    /// Fails with [`StoreError::Migration`] as soon as migrations fail, and with
    /// [`StoreError::Unavailable`] (carrying the latest connection error) on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut rx = self.inner.core.state.subscribe();
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                match &*rx.borrow_and_update() {
                    StoreState::Ready => return Ok(()),
                    StoreState::Failed { error } => {
                        return Err(StoreError::Migration(error.clone()));
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(StoreError::Unavailable {
                        reason: "the store is shut down".to_owned(),
                    });
                }
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(self.not_ready()),
        }
    }

    /// Stops the background task and closes every pooled connection.
    pub async fn close(&self) {
        self.inner.supervisor.abort();
        self.inner.core.pools.close().await;
        self.inner.core.state.send_replace(StoreState::Unavailable {
            since: SystemTime::now(),
            error: "the store is shut down".to_owned(),
            attempts: 0,
        });
    }

    /// Release metadata of static sites.
    pub fn releases(&self) -> SqlReleases {
        SqlReleases::new(self.clone())
    }

    /// TLS certificates, ACME accounts and order locks.
    pub fn certs(&self) -> SqlCerts {
        SqlCerts::new(self.clone())
    }

    /// Small key/value settings.
    pub fn meta(&self) -> SqlMeta {
        SqlMeta::new(self.clone())
    }

    /// The pools, or [`StoreError::Unavailable`] at once when the store is not ready.
    pub(crate) fn pools(&self) -> Result<&Pools, StoreError> {
        if self.is_ready() {
            Ok(&self.inner.core.pools)
        } else {
            Err(self.not_ready())
        }
    }

    /// Maps a driver error; a "database down" error flips the store to unavailable and wakes
    /// the background task, so the following calls fail fast instead of each waiting for
    /// the connect timeout.
    pub(crate) fn fail(&self, err: sqlx::Error) -> StoreError {
        let (err, severity) = classify(err);
        if severity == Severity::Down {
            let core = &self.inner.core;
            let tripped = core.state.send_if_modified(|state| {
                if matches!(state, StoreState::Ready) {
                    *state = StoreState::Unavailable {
                        since: SystemTime::now(),
                        error: err.to_string(),
                        attempts: 0,
                    };
                    true
                } else {
                    false
                }
            });
            if tripped {
                warn!(backend = %self.backend(), error = %err, "Database connection lost; failing calls fast until it is back.");
                core.wake.notify_one();
            }
        }
        err
    }

    fn not_ready(&self) -> StoreError {
        match &*self.inner.core.state.borrow() {
            StoreState::Ready => StoreError::Unavailable {
                reason: "not ready".to_owned(),
            },
            StoreState::Connecting => StoreError::Unavailable {
                reason: "still connecting to the database".to_owned(),
            },
            StoreState::Unavailable { error, .. } => StoreError::Unavailable { reason: error.clone() },
            StoreState::Failed { error } => StoreError::Unavailable {
                reason: format!("migrations failed: {error}"),
            },
        }
    }
}

/// Connects, migrates once, then waits for calls to report an outage and probes until the
/// database answers again.
async fn supervise(core: Arc<Core>) {
    let backend = core.pools.backend();
    let url = core.options.redacted_url();
    let mut migrated = false;
    let mut delay = RETRY_INITIAL;
    let mut attempts: u32 = 0;
    loop {
        if core.is_ready() {
            core.wake.notified().await;
            continue;
        }
        attempts = attempts.saturating_add(1);
        match connect_once(&core, &mut migrated).await {
            Ok(()) => {
                info!(%backend, url = %url, attempts, "Store ready.");
                core.state.send_replace(StoreState::Ready);
                delay = RETRY_INITIAL;
                attempts = 0;
            }
            Err(StoreError::Migration(message)) => {
                error!(%backend, url = %url, error = %message, "Store migrations failed; the store stays unavailable.");
                core.state.send_replace(StoreState::Failed { error: message });
                return;
            }
            Err(err) => {
                let error = err.to_string();
                warn!(%backend, url = %url, attempt = attempts, retry_in = ?delay, error = %error, "Database unreachable; retrying.");
                core.state.send_modify(|state| {
                    let since = match state {
                        StoreState::Unavailable { since, .. } => *since,
                        _ => SystemTime::now(),
                    };
                    *state = StoreState::Unavailable { since, error, attempts };
                });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn connect_once(core: &Core, migrated: &mut bool) -> Result<(), StoreError> {
    core.target.prepare().await?;
    core.pools.probe(core.options.connect_timeout).await?;
    if !*migrated {
        // No timeout: another instance may hold the migration lock while it migrates.
        let report = run_migrations(&core.pools).await?;
        if !report.applied.is_empty() {
            info!(backend = %report.backend, applied = report.applied.len(), schema_version = report.schema_version, "Applied store migrations.");
        }
        *migrated = true;
    }
    Ok(())
}

/// Hooks for the backup module.
impl Store {
    /// The SQLite file, for file-backed SQLite stores.
    pub(crate) fn sqlite_file(&self) -> Option<PathBuf> {
        match &self.inner.core.target {
            Target::SqliteFile(path) => Some(path.clone()),
            _ => None,
        }
    }

    /// Writes a consistent copy of the SQLite database to `dest` (which must not exist) with
    /// `VACUUM INTO`: one read transaction, so concurrent writes continue and the copy holds
    /// every transaction committed before it began.
    pub(crate) async fn sqlite_snapshot(&self, dest: &Path) -> Result<(), StoreError> {
        let Pools::Sqlite(pool) = self.pools()? else {
            return Err(StoreError::Invalid {
                what: "backend",
                reason: "VACUUM INTO needs SQLite".to_owned(),
            });
        };
        let dest = dest.to_str().ok_or_else(|| StoreError::Invalid {
            what: "snapshot path",
            reason: format!("{} is not UTF-8", dest.display()),
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(dest)
            .execute(pool)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}
