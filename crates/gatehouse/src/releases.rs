//! `gatehouse deploy`, `releases` and `rollback`: static-site releases.
//!
//! These run as their own processes next to a running server: a switch is a
//! rename of the slot's pointer file, which the server notices within 100 ms.

use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::Context;
use gatehouse_config::Config;
use gatehouse_files::{DeployOptions, ReleaseInfo, ReleaseStore};

/// Deploy limits of a slot from `[release.NAME]` (or the defaults).
pub(crate) fn deploy_options(config: &Config, slot: &str) -> DeployOptions {
    let mut opts = DeployOptions::default();
    if let Some(rel) = config.releases.iter().find(|r| r.name == slot) {
        opts.require_index = rel.spa;
        opts.keep = rel.keep;
        if let Some(v) = rel.max_size {
            opts.max_total_bytes = v;
        }
        if let Some(v) = rel.max_upload {
            opts.max_archive_bytes = v;
        }
        if let Some(v) = rel.max_files {
            opts.max_files = v;
        }
    }
    opts
}

fn open(config: &Config) -> anyhow::Result<ReleaseStore> {
    ReleaseStore::open(&config.server.data_dir)
        .with_context(|| format!("cannot open releases under {}", config.server.data_dir.display()))
}

pub(crate) fn deploy(config_path: &Path, dir: &Path, slot: &str) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    if !config.releases.iter().any(|r| r.name == slot) {
        eprintln!(
            "note: no route serves release slot {slot:?} in {}",
            config_path.display()
        );
    }
    let store = open(&config)?;
    let info = store.deploy_dir(slot, dir, &deploy_options(&config, slot))?;
    println!(
        "deployed {} to {slot}: {} files, {} (active now)",
        info.id,
        info.files,
        human_size(info.size_bytes)
    );
    Ok(())
}

pub(crate) fn list(config_path: &Path, slot: &str) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    let releases = open(&config)?.list(slot)?;
    if releases.is_empty() {
        println!("no releases in {slot}");
    }
    for r in &releases {
        println!("{}", line(r));
    }
    Ok(())
}

pub(crate) fn rollback(config_path: &Path, slot: &str, id: Option<&str>) -> anyhow::Result<()> {
    let config = gatehouse_config::load(config_path)?;
    let info = open(&config)?.rollback(slot, id)?;
    println!("{slot} now serves {}", info.id);
    Ok(())
}

fn line(r: &ReleaseInfo) -> String {
    let created = r.created.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(created));
    format!(
        "{} {:<32} {when}  {:>6} files  {:>10}",
        if r.active { "*" } else { " " },
        r.id,
        r.files,
        human_size(r.size_bytes)
    )
}

pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
