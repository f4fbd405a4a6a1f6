//! Fixtures: stores on SQLite files and on fresh PostgreSQL schemas or databases.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_store::{Store, StoreOptions};
use sqlx::Connection;

/// How long a test waits for a store to become ready.
pub(crate) const READY: Duration = Duration::from_secs(20);

/// The PostgreSQL admin URL, or `None` (after printing the skip line) when unset. With
/// `CI=true` a missing variable fails the test instead.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("GATEHOUSE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but GATEHOUSE_TEST_POSTGRES_URL is not set");
            }
            println!("skipped: set GATEHOUSE_TEST_POSTGRES_URL");
            None
        }
    }
}

/// A unique, lower-case identifier for a schema or database.
pub(crate) fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with one more query parameter.
pub(crate) fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// `url` pointing at database `db` instead.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_path(&format!("/{db}"));
    parsed.to_string()
}

/// Runs one admin statement on `url` from a throwaway runtime (usable from `Drop`).
fn admin_blocking(url: String, sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                let _ = conn.close().await;
            }
        });
    })
    .join();
}

pub(crate) async fn admin(url: &str, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// A PostgreSQL schema or database that is dropped when the value is.
pub(crate) struct PgScratch {
    admin_url: String,
    drop_sql: String,
    /// A URL that selects the scratch schema or database.
    pub(crate) url: String,
}

impl PgScratch {
    /// A fresh schema, selected through `search_path`.
    pub(crate) async fn schema(admin_url: &str) -> Self {
        let schema = unique_name("gh_test");
        admin(admin_url, &format!("CREATE SCHEMA {schema}")).await;
        Self {
            admin_url: admin_url.to_owned(),
            drop_sql: format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            url: with_param(admin_url, &format!("options[search_path]={schema}")),
        }
    }

    /// A fresh database (for pg_dump, which dumps a whole database).
    pub(crate) async fn database(admin_url: &str) -> Self {
        let db = unique_name("gh_test_db");
        admin(admin_url, &format!("CREATE DATABASE {db}")).await;
        Self {
            admin_url: admin_url.to_owned(),
            drop_sql: format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            url: with_database(admin_url, &db),
        }
    }
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        admin_blocking(self.admin_url.clone(), self.drop_sql.clone());
    }
}

/// A ready store and what keeps its database alive.
pub(crate) struct TestStore {
    pub(crate) store: Store,
    pub(crate) data_dir: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) _pg: Option<PgScratch>,
}

/// Options for a store on `url` in `data_dir`, with a short connect timeout for tests.
pub(crate) fn options(url: &str, data_dir: &Path) -> StoreOptions {
    let mut options = StoreOptions::new(url, data_dir);
    options.connect_timeout = Duration::from_secs(3);
    options
}

/// A ready store on an SQLite file in a fresh data directory.
pub(crate) async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let options = options("sqlite://gatehouse.db", &data_dir);
    let store = Store::open(options.clone()).unwrap();
    store.wait_ready(READY).await.unwrap();
    TestStore {
        store,
        data_dir,
        _dir: dir,
        _pg: None,
    }
}

/// A ready store on a fresh PostgreSQL schema, or `None` when PostgreSQL is not configured.
pub(crate) async fn postgres() -> Option<TestStore> {
    let admin_url = postgres_url()?;
    let scratch = PgScratch::schema(&admin_url).await;
    Some(postgres_on(scratch).await)
}

/// A ready store on a scratch schema or database.
pub(crate) async fn postgres_on(scratch: PgScratch) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let options = options(&scratch.url, &data_dir);
    let store = Store::open(options.clone()).unwrap();
    store.wait_ready(READY).await.unwrap();
    TestStore {
        store,
        data_dir,
        _dir: dir,
        _pg: Some(scratch),
    }
}

/// Declares, for each named `async fn(&Store)`, a test on SQLite and one on PostgreSQL.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let t = crate::common::sqlite().await;
                    super::$name(&t.store).await;
                    t.store.close().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(t) = crate::common::postgres().await else { return };
                    super::$name(&t.store).await;
                    t.store.close().await;
                }
            }
        )*
    };
}
pub(crate) use both_backends;
