//! `gatehouse init`: write a commented starter config.

use std::path::Path;

use anyhow::{Context, bail};

/// The starter config. `check` must accept it (a test makes sure).
pub(crate) const TEMPLATE: &str = include_str!("../starter.toml");

pub(crate) fn run(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    std::fs::write(path, TEMPLATE).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!(
        "next: edit it, then run `gatehouse check -c {0}` and `gatehouse serve -c {0}`",
        path.display()
    );
    Ok(())
}
