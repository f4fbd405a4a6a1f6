//! Periodic backups and their status for metrics.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tracing::{error, info};

use super::{BackupError, BackupOptions, BackupReport, list_archives, take_backup};
use crate::Store;

/// Default `[backup] every`: one backup a day.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The first scheduled backup after startup waits at least this long, so a restart loop does
/// not turn into a backup loop and startup stays quick.
const STARTUP_DELAY: Duration = Duration::from_secs(60);

/// After a failure the next attempt comes this soon (or after `every`, if shorter): a
/// database that was briefly down should not cost a whole day of backups.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15 * 60);

/// The outcome of one backup attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOutcome {
    /// When it started.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: SystemTime,
    /// The archive, on success.
    pub path: Option<PathBuf>,
    /// The archive's size, on success.
    pub size_bytes: Option<u64>,
    /// The error, on failure.
    pub error: Option<String>,
}

impl BackupOutcome {
    /// True when the backup succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Counters and the latest outcome, as read by metrics and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupStatusSnapshot {
    /// The latest attempt.
    pub last: Option<BackupOutcome>,
    /// When the latest successful backup finished.
    pub last_success_at: Option<SystemTime>,
    /// Successful backups since startup.
    pub successes: u64,
    /// Failed backups since startup.
    pub failures: u64,
}

/// Shared record of backup outcomes; clone it into whatever reports them.
#[derive(Debug, Clone, Default)]
pub struct BackupStatus {
    inner: Arc<Mutex<BackupStatusSnapshot>>,
}

impl BackupStatus {
    /// An empty status.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> BackupStatusSnapshot {
        self.lock().clone()
    }

    /// Records one attempt.
    pub fn record(&self, started_at: SystemTime, result: &Result<BackupReport, BackupError>) {
        let finished_at = SystemTime::now();
        let outcome = match result {
            Ok(report) => BackupOutcome {
                started_at,
                finished_at,
                path: Some(report.path.clone()),
                size_bytes: Some(report.size_bytes),
                error: None,
            },
            Err(e) => BackupOutcome {
                started_at,
                finished_at,
                path: None,
                size_bytes: None,
                error: Some(e.to_string()),
            },
        };
        let mut status = self.lock();
        if outcome.succeeded() {
            status.successes += 1;
            status.last_success_at = Some(finished_at);
        } else {
            status.failures += 1;
        }
        status.last = Some(outcome);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BackupStatusSnapshot> {
        // The data is plain counters; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes one backup now, logs the outcome and records it in `status`.
pub async fn backup_now(
    store: &Store,
    options: &BackupOptions,
    status: &BackupStatus,
) -> Result<BackupReport, BackupError> {
    let started_at = SystemTime::now();
    let result = take_backup(store, options).await;
    status.record(started_at, &result);
    match &result {
        Ok(report) => info!(
            path = %report.path.display(),
            size_bytes = report.size_bytes,
            files = report.files,
            duration = ?report.duration,
            removed = report.removed.len(),
            "Backup taken."
        ),
        Err(e) => error!(error = %e, "Backup failed."),
    }
    result
}

/// Spawns a task that takes a backup every `every`, keeping `options.keep` archives.
///
/// The schedule survives restarts: the next backup is due `every` after the newest archive
/// in `options.dir` (but not before one minute after startup). After a failure it
/// retries within 15 minutes. Abort the handle to stop it.
pub fn run_schedule(store: Store, options: BackupOptions, every: Duration, status: BackupStatus) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = every.max(Duration::from_secs(1));
        let mut wait = first_wait(&options, every);
        loop {
            info!(wait = ?wait, "Next backup scheduled.");
            tokio::time::sleep(wait).await;
            wait = match backup_now(&store, &options, &status).await {
                Ok(_) => every,
                Err(_) => every.min(RETRY_AFTER_FAILURE),
            };
        }
    })
}

fn first_wait(options: &BackupOptions, every: Duration) -> Duration {
    let newest = list_archives(&options.dir)
        .ok()
        .and_then(|archives| archives.last().cloned())
        .and_then(|path| std::fs::metadata(path).ok())
        .and_then(|meta| meta.modified().ok());
    let due_in = match newest {
        Some(taken) => {
            let age = SystemTime::now().duration_since(taken).unwrap_or(Duration::ZERO);
            every.saturating_sub(age)
        }
        None => Duration::ZERO,
    };
    due_in.max(STARTUP_DELAY.min(every))
}
