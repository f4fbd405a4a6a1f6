//! `gatehouse migrate`, `backup` and `restore`, and the store set-up of `serve`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use gatehouse_config::Config;
use gatehouse_store::backup::{self, BackupError, BackupOptions, RestoreOptions};
use gatehouse_store::{Store, StoreOptions};

/// How long `gatehouse backup` waits for the database before giving up.
const CLI_CONNECT_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn store_options(config: &Config) -> StoreOptions {
    let mut opts = StoreOptions::new(config.store.url.clone(), config.server.data_dir.clone());
    opts.max_connections = config.store.max_connections;
    opts.connect_timeout = config.store.connect_timeout;
    opts
}

pub(crate) fn backup_options(config: &Config) -> BackupOptions {
    let mut opts = BackupOptions::new(&config.server.data_dir);
    opts.dir = config.backup.dir.clone();
    opts.keep = config.backup.keep as usize;
    opts
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

pub(crate) fn migrate(config_path: &Path) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("cannot create {}", config.server.data_dir.display()))?;
    let report = runtime()?.block_on(gatehouse_store::migrate(&store_options(&config)))?;
    if report.applied.is_empty() {
        println!("schema is up to date (version {})", report.schema_version);
    }
    for m in &report.applied {
        println!("applied migration {} {}", m.version, m.name);
    }
    Ok(())
}

pub(crate) fn backup(config_path: &Path) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("cannot create {}", config.server.data_dir.display()))?;
    let report = runtime()?.block_on(async {
        let store = Store::open(store_options(&config))?;
        store.wait_ready(CLI_CONNECT_WAIT).await?;
        let report = backup::take_backup(&store, &backup_options(&config)).await;
        store.close().await;
        anyhow::Ok(report?)
    })?;
    println!(
        "backup written: {} ({} files, {}, sha256 {})",
        report.path.display(),
        report.files,
        crate::releases::human_size(report.size_bytes),
        report.sha256
    );
    for old in &report.removed {
        println!("removed old backup {}", old.display());
    }
    Ok(())
}

pub(crate) fn restore(config_path: &Path, archive: &Path, force: bool) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    let report = backup::restore(
        archive,
        &config.server.data_dir,
        RestoreOptions {
            force,
            backup_dir: Some(config.backup.dir.clone()),
        },
    )
    .map_err(|e| match e {
        BackupError::Lock(lock) => anyhow::anyhow!("{lock}, or pass --force to restore anyway"),
        other => other.into(),
    })?;
    println!(
        "restored {} into {} ({} files verified)",
        archive.display(),
        report.data_dir.display(),
        report.verified.files
    );
    if let Some(prev) = &report.previous {
        println!("the previous contents were moved to {}", prev.display());
    }
    if let Some(dump) = &report.postgres_dump {
        println!(
            "PostgreSQL dump left at {}; load it with pg_restore (see docs/storage.md)",
            dump.display()
        );
    }
    Ok(())
}
