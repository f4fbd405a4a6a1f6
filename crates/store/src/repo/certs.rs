//! [`CertRepo`] on SQL.

use std::time::Duration;

use crate::repo::{check_name, on_pool};
use crate::store::Pools;
use crate::time::{duration_ms, from_ms, now_ms, to_ms};
use crate::{AcmeAccount, CertRepo, CertificateRecord, CertificateSummary, NewCertificate, Store, StoreFuture};

/// The SQL implementation of [`CertRepo`]; get one from [`Store::certs`].
#[derive(Debug, Clone)]
pub struct SqlCerts {
    store: Store,
}

impl SqlCerts {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

/// Lease names are namespaced so other subsystems can share the `leases` table.
fn lease_name(name: &str) -> String {
    format!("cert:{name}")
}

/// Takes or renews a lease, judged by the database clock (engine-specific expression):
/// the upsert only overwrites a row whose lease expired or that `holder` already owns.
const SQLITE_TRY_LOCK: &str = "INSERT INTO leases (name, holder, expires_at_ms)
    VALUES ($1, $2, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + $3)
    ON CONFLICT (name) DO UPDATE SET
        holder = excluded.holder,
        expires_at_ms = excluded.expires_at_ms
    WHERE leases.holder = excluded.holder
       OR leases.expires_at_ms <= CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The PostgreSQL twin of [`SQLITE_TRY_LOCK`].
const PG_TRY_LOCK: &str = "INSERT INTO leases (name, holder, expires_at_ms)
    VALUES ($1, $2, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $3)
    ON CONFLICT (name) DO UPDATE SET
        holder = excluded.holder,
        expires_at_ms = excluded.expires_at_ms
    WHERE leases.holder = excluded.holder
       OR leases.expires_at_ms <= CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

impl CertRepo for SqlCerts {
    fn put_certificate(&self, cert: NewCertificate) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            check_name("certificate name", &cert.name)?;
            on_pool!(self.store, pool => {
                sqlx::query(
                    "INSERT INTO tls_certificates (name, chain_pem, key_pem, not_after_ms, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (name) DO UPDATE SET
                         chain_pem = excluded.chain_pem,
                         key_pem = excluded.key_pem,
                         not_after_ms = excluded.not_after_ms,
                         updated_at_ms = excluded.updated_at_ms",
                )
                .bind(&cert.name)
                .bind(&cert.chain_pem)
                .bind(&cert.key_pem)
                .bind(to_ms(cert.not_after))
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(())
        })
    }

    fn certificate<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<CertificateRecord>> {
        Box::pin(async move {
            let row: Option<(String, String, String, i64, i64)> = on_pool!(self.store, pool => {
                sqlx::query_as(
                    "SELECT name, chain_pem, key_pem, not_after_ms, updated_at_ms
                     FROM tls_certificates WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(pool)
                .await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(
                row.map(|(name, chain_pem, key_pem, not_after, updated_at)| CertificateRecord {
                    name,
                    chain_pem,
                    key_pem,
                    not_after: from_ms(not_after),
                    updated_at: from_ms(updated_at),
                }),
            )
        })
    }

    fn list_certificates(&self) -> StoreFuture<'_, Vec<CertificateSummary>> {
        Box::pin(async move {
            let rows: Vec<(String, i64, i64)> = on_pool!(self.store, pool => {
                sqlx::query_as(
                    "SELECT name, not_after_ms, updated_at_ms FROM tls_certificates ORDER BY name",
                )
                .fetch_all(pool)
                .await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(rows
                .into_iter()
                .map(|(name, not_after, updated_at)| CertificateSummary {
                    name,
                    not_after: from_ms(not_after),
                    updated_at: from_ms(updated_at),
                })
                .collect())
        })
    }

    fn delete_certificate<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let done = on_pool!(self.store, pool => {
                sqlx::query("DELETE FROM tls_certificates WHERE name = $1")
                    .bind(name)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(done > 0)
        })
    }

    fn put_account(&self, account: AcmeAccount) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            check_name("directory url", &account.directory_url)?;
            on_pool!(self.store, pool => {
                sqlx::query(
                    "INSERT INTO acme_accounts (directory_url, account_url, credentials, updated_at_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (directory_url) DO UPDATE SET
                         account_url = excluded.account_url,
                         credentials = excluded.credentials,
                         updated_at_ms = excluded.updated_at_ms",
                )
                .bind(&account.directory_url)
                .bind(&account.account_url)
                .bind(&account.credentials)
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(())
        })
    }

    fn account<'a>(&'a self, directory_url: &'a str) -> StoreFuture<'a, Option<AcmeAccount>> {
        Box::pin(async move {
            let row: Option<(String, String, String)> = on_pool!(self.store, pool => {
                sqlx::query_as(
                    "SELECT directory_url, account_url, credentials
                     FROM acme_accounts WHERE directory_url = $1",
                )
                .bind(directory_url)
                .fetch_optional(pool)
                .await
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(row.map(|(directory_url, account_url, credentials)| AcmeAccount {
                directory_url,
                account_url,
                credentials,
            }))
        })
    }

    fn try_lock<'a>(&'a self, name: &'a str, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_name("lock name", name)?;
            check_name("lock holder", holder)?;
            let lease = lease_name(name);
            let ttl = duration_ms(ttl);
            let pools = self.store.pools()?;
            let sql = match pools {
                Pools::Sqlite(_) => SQLITE_TRY_LOCK,
                Pools::Postgres(_) => PG_TRY_LOCK,
            };
            let taken = on_pool!(self.store, pool => {
                sqlx::query(sql)
                    .bind(&lease)
                    .bind(holder)
                    .bind(ttl)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(taken > 0)
        })
    }

    fn unlock<'a>(&'a self, name: &'a str, holder: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let lease = lease_name(name);
            let done = on_pool!(self.store, pool => {
                sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(&lease)
                    .bind(holder)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.store.fail(e))?;
            Ok(done > 0)
        })
    }
}
