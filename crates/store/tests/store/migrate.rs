//! Migrations: applied exactly once, even when instances start together.

use std::path::Path;
use std::sync::Arc;

use gatehouse_store::{Backend, MetaRepo, MigrationReport, ReleaseRepo, Store, StoreError, StoreOptions, migrate};
use sqlx::Connection;
use tokio::sync::Barrier;

use crate::common::{self, PgScratch, READY};

/// Instances started at the same moment.
const INSTANCES: usize = 4;

/// Runs `migrate` from several tasks at once (each with its own pool, as separate
/// processes would) and checks that exactly one of them applied anything.
async fn concurrent_migrate(options: StoreOptions) -> Vec<MigrationReport> {
    let barrier = Arc::new(Barrier::new(INSTANCES));
    let mut tasks = Vec::new();
    for _ in 0..INSTANCES {
        let options = options.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            migrate(&options).await
        }));
    }
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.unwrap().unwrap());
    }
    let appliers = reports.iter().filter(|r| !r.applied.is_empty()).count();
    assert_eq!(appliers, 1, "exactly one instance migrates: {reports:?}");
    let version = reports[0].schema_version;
    assert!(version >= 1);
    assert!(reports.iter().all(|r| r.schema_version == version));
    reports
}

/// Opens several stores at once on the same database; all become ready.
async fn concurrent_open(options: &StoreOptions) {
    let stores: Vec<Store> = (0..INSTANCES).map(|_| Store::open(options.clone()).unwrap()).collect();
    for store in &stores {
        store.wait_ready(READY).await.unwrap();
        store.meta().set("started", "yes").await.unwrap();
    }
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_instances_starting_together_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::options("sqlite://gatehouse.db", dir.path());
    let reports = concurrent_migrate(options.clone()).await;
    assert_eq!(reports[0].backend, Backend::Sqlite);
    assert_eq!(count_sqlite_migrations(&dir.path().join("gatehouse.db")).await, 1);

    // A second round, and stores opening together, find nothing to do.
    for report in concurrent_migrate_again(&options).await {
        assert!(report.applied.is_empty());
    }
    concurrent_open(&options).await;

    // Creating the file is the racy part (switching to WAL cannot wait for a lock), so
    // repeat the race on fresh files.
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        concurrent_migrate(common::options("sqlite://gatehouse.db", dir.path())).await;
    }

    let dir2 = tempfile::tempdir().unwrap();
    let fresh = common::options("sqlite://nested/dir/gatehouse.db", dir2.path());
    concurrent_open(&fresh).await;
    assert_eq!(
        count_sqlite_migrations(&dir2.path().join("nested/dir/gatehouse.db")).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_starting_together_migrate_once() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    let scratch = PgScratch::schema(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let options = common::options(&scratch.url, dir.path());
    let reports = concurrent_migrate(options.clone()).await;
    assert_eq!(reports[0].backend, Backend::Postgres);
    let mut conn = sqlx::PgConnection::connect(&scratch.url).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gatehouse_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    conn.close().await.unwrap();

    for report in concurrent_migrate_again(&options).await {
        assert!(report.applied.is_empty());
    }

    // Stores on a fresh schema, opening together.
    let scratch2 = PgScratch::schema(&admin).await;
    concurrent_open(&common::options(&scratch2.url, dir.path())).await;
}

async fn concurrent_migrate_again(options: &StoreOptions) -> Vec<MigrationReport> {
    let mut tasks = Vec::new();
    for _ in 0..INSTANCES {
        let options = options.clone();
        tasks.push(tokio::spawn(async move { migrate(&options).await }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap().unwrap());
    }
    out
}

async fn count_sqlite_migrations(db: &Path) -> i64 {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gatehouse_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

#[tokio::test]
async fn sqlite_file_is_created_with_wal_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("not/yet/there");
    let store = Store::open(common::options("sqlite://gatehouse.db", &data_dir)).unwrap();
    store.wait_ready(READY).await.unwrap();
    store.meta().set("k", "v").await.unwrap();
    let db = data_dir.join("gatehouse.db");
    assert!(db.is_file());

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    // The schema's foreign key is enforced through the store: activating an unknown
    // release is NotFound, not a dangling row.
    let err = store.releases().activate("s", "none").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_changed_migration_keeps_the_store_failed() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::options("sqlite://gatehouse.db", dir.path());
    let store = Store::open(options.clone()).unwrap();
    store.wait_ready(READY).await.unwrap();
    store.close().await;

    let db = dir.path().join("gatehouse.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE gatehouse_migrations SET checksum = 'edited'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let store = Store::open(options.clone()).unwrap();
    let err = store.wait_ready(READY).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration(m) if m.contains("must never change")),
        "{err}"
    );
    assert!(!store.is_ready());
    let err = store.meta().get("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = migrate(&options).await.unwrap_err();
    assert!(matches!(err, StoreError::Migration(_)), "{err}");
}
