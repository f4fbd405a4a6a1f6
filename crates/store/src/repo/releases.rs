//! [`ReleaseRepo`] on SQL.

use crate::error::{is_foreign_key_violation, is_unique_violation};
use crate::repo::{BeginWrite, check_name, on_pool, to_i64, to_u64};
use crate::time::{from_ms, now_ms};
use crate::{NewRelease, Release, ReleaseRepo, Store, StoreError, StoreFuture};

/// The SQL implementation of [`ReleaseRepo`]; get one from [`Store::releases`].
#[derive(Debug, Clone)]
pub struct SqlReleases {
    store: Store,
}

impl SqlReleases {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

/// slot, release_id, created_at_ms, size_bytes, file_count, the slot's active release id.
type ReleaseRow = (String, String, i64, i64, i64, Option<String>);

/// The row id followed by a [`ReleaseRow`].
type ReleaseRowWithId = (i64, String, String, i64, i64, i64, Option<String>);

const SELECT: &str = "SELECT r.slot, r.release_id, r.created_at_ms, r.size_bytes, r.file_count,
        s.active_release_id
    FROM releases r LEFT JOIN release_slots s ON s.slot = r.slot";

fn decode((slot, release_id, created_at_ms, size, files, active_id): ReleaseRow) -> Release {
    let active = active_id.as_deref() == Some(release_id.as_str());
    Release {
        slot,
        release_id,
        created_at: from_ms(created_at_ms),
        size_bytes: to_u64(size),
        file_count: to_u64(files),
        active,
    }
}

impl SqlReleases {
    async fn fetch_one(&self, slot: &str, release_id: &str) -> Result<Option<Release>, StoreError> {
        let sql = format!("{SELECT} WHERE r.slot = $1 AND r.release_id = $2");
        let row: Option<ReleaseRow> = on_pool!(self.store, pool => {
            sqlx::query_as(&sql).bind(slot).bind(release_id).fetch_optional(pool).await
        })
        .map_err(|e| self.store.fail(e))?;
        Ok(row.map(decode))
    }
}

impl ReleaseRepo for SqlReleases {
    fn create(&self, release: NewRelease) -> StoreFuture<'_, Release> {
        Box::pin(async move {
            check_name("slot", &release.slot)?;
            check_name("release id", &release.release_id)?;
            let size = to_i64("size_bytes", release.size_bytes)?;
            let files = to_i64("file_count", release.file_count)?;
            let created_at_ms = now_ms();
            on_pool!(self.store, pool => {
                sqlx::query(
                    "INSERT INTO releases (slot, release_id, created_at_ms, size_bytes, file_count)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&release.slot)
                .bind(&release.release_id)
                .bind(created_at_ms)
                .bind(size)
                .bind(files)
                .execute(pool)
                .await
                .map(|_| ())
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict {
                        entity: "release",
                        key: format!("{}/{}", release.slot, release.release_id),
                    }
                } else {
                    self.store.fail(e)
                }
            })?;
            Ok(Release {
                slot: release.slot,
                release_id: release.release_id,
                created_at: from_ms(created_at_ms),
                size_bytes: release.size_bytes,
                file_count: release.file_count,
                active: false,
            })
        })
    }

    fn get<'a>(&'a self, slot: &'a str, release_id: &'a str) -> StoreFuture<'a, Option<Release>> {
        Box::pin(self.fetch_one(slot, release_id))
    }

    fn list<'a>(&'a self, slot: &'a str) -> StoreFuture<'a, Vec<Release>> {
        Box::pin(async move {
            let sql = format!("{SELECT} WHERE r.slot = $1 ORDER BY r.created_at_ms DESC, r.id DESC");
            let rows: Vec<ReleaseRow> = on_pool!(self.store, pool => {
                sqlx::query_as(&sql).bind(slot).fetch_all(pool).await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(rows.into_iter().map(decode).collect())
        })
    }

    fn active<'a>(&'a self, slot: &'a str) -> StoreFuture<'a, Option<Release>> {
        Box::pin(async move {
            let sql = "SELECT r.slot, r.release_id, r.created_at_ms, r.size_bytes, r.file_count,
                    s.active_release_id
                FROM release_slots s
                JOIN releases r ON r.slot = s.slot AND r.release_id = s.active_release_id
                WHERE s.slot = $1";
            let row: Option<ReleaseRow> = on_pool!(self.store, pool => {
                sqlx::query_as(sql).bind(slot).fetch_optional(pool).await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(row.map(decode))
        })
    }

    fn activate<'a>(&'a self, slot: &'a str, release_id: &'a str) -> StoreFuture<'a, Release> {
        Box::pin(async move {
            let not_found = || StoreError::NotFound {
                entity: "release",
                key: format!("{slot}/{release_id}"),
            };
            // One upsert: the slot row switches from the old to the new release in a single
            // statement, and the foreign key rejects a release that does not exist.
            on_pool!(self.store, pool => {
                sqlx::query(
                    "INSERT INTO release_slots (slot, active_release_id, activated_at_ms)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (slot) DO UPDATE SET
                         active_release_id = excluded.active_release_id,
                         activated_at_ms = excluded.activated_at_ms",
                )
                .bind(slot)
                .bind(release_id)
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
            })
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    not_found()
                } else {
                    self.store.fail(e)
                }
            })?;
            self.fetch_one(slot, release_id).await?.ok_or_else(not_found)
        })
    }

    fn prune<'a>(&'a self, slot: &'a str, keep: usize) -> StoreFuture<'a, Vec<Release>> {
        Box::pin(async move {
            let sql = "SELECT r.id, r.slot, r.release_id, r.created_at_ms, r.size_bytes,
                    r.file_count, s.active_release_id
                FROM releases r LEFT JOIN release_slots s ON s.slot = r.slot
                WHERE r.slot = $1 ORDER BY r.created_at_ms DESC, r.id DESC";
            let removed: Vec<Release> = on_pool!(self.store, pool => {
                async {
                    // A write transaction from the start (SQLite: BEGIN IMMEDIATE) so the
                    // rows read are the rows deleted.
                    let mut tx = pool.begin_write().await?;
                    let rows: Vec<ReleaseRowWithId> =
                        sqlx::query_as(sql).bind(slot).fetch_all(&mut *tx).await?;
                    let mut removed = Vec::new();
                    for (id, slot, release_id, created, size, files, active) in
                        rows.into_iter().skip(keep)
                    {
                        let release = decode((slot, release_id, created, size, files, active));
                        if release.active {
                            continue;
                        }
                        sqlx::query("DELETE FROM releases WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        removed.push(release);
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(removed)
                }
                .await
            })
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    // A concurrent activation chose a release we were deleting.
                    StoreError::Conflict {
                        entity: "active release of slot",
                        key: slot.to_owned(),
                    }
                } else {
                    self.store.fail(e)
                }
            })?;
            Ok(removed)
        })
    }
}
