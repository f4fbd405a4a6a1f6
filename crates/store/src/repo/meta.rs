//! [`MetaRepo`] on SQL.

use crate::repo::{check_name, on_pool};
use crate::time::now_ms;
use crate::{MetaRepo, Store, StoreFuture};

/// The SQL implementation of [`MetaRepo`]; get one from [`Store::meta`].
#[derive(Debug, Clone)]
pub struct SqlMeta {
    store: Store,
}

impl SqlMeta {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

impl MetaRepo for SqlMeta {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let row: Option<(String,)> = on_pool!(self.store, pool => {
                sqlx::query_as("SELECT value FROM gatehouse_meta WHERE key = $1")
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(row.map(|(value,)| value))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name("key", key)?;
            on_pool!(self.store, pool => {
                sqlx::query(
                    "INSERT INTO gatehouse_meta (key, value, updated_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET
                         value = excluded.value,
                         updated_at_ms = excluded.updated_at_ms",
                )
                .bind(key)
                .bind(value)
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let done = on_pool!(self.store, pool => {
                sqlx::query("DELETE FROM gatehouse_meta WHERE key = $1")
                    .bind(key)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(done > 0)
        })
    }
}
