//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gatehouse_config::DEFAULT_CONFIG_PATH;

/// One binary in front of your web app: reverse proxy, HTTPS, static hosting,
/// auth and notifications, configured by one TOML file.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server.
    Serve(ConfigArg),
    /// Make the running server reload its config file (it keeps the old one if the new one is invalid).
    Reload(ReloadArgs),
    /// Validate a config file and print a summary of its sites, routes and upstreams.
    Check(ConfigArg),
    /// Show where the internal CA's root certificate is and how to trust it
    /// (creates the CA if needed).
    Trust(ConfigArg),
    /// Write a commented starter config.
    Init(InitArgs),
    /// Deploy a built static site (e.g. a Vite `dist/`) as a new release of a slot.
    Deploy(DeployArgs),
    /// List the releases of a slot (`*` marks the active one).
    Releases(SlotArgs),
    /// Switch a slot back to the previous release, or to a given one.
    Rollback(RollbackArgs),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Take a backup now (database snapshot plus data directory).
    Backup(ConfigArg),
    /// Verify a backup and restore it into the data directory.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    /// Admin API URL (e.g. `http://127.0.0.1:2019`); the token is read from
    /// `GATEHOUSE_ADMIN_TOKEN`. Default: `server.admin` of the config, or
    /// SIGHUP to the server holding `data_dir` when there is no admin address.
    #[arg(long)]
    pub(crate) admin: Option<String>,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The directory to publish.
    pub(crate) dir: PathBuf,
    /// The release slot, as named by a route's `static = { release = "…" }`.
    #[arg(long = "release", short = 'r')]
    pub(crate) slot: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

#[derive(Debug, Args)]
pub(crate) struct SlotArgs {
    /// The release slot.
    pub(crate) slot: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// The release slot.
    pub(crate) slot: String,
    /// Release id (or a unique prefix); default: the previous release.
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup archive.
    pub(crate) archive: PathBuf,
    /// Restore even if a server seems to be running on this data directory.
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArg {
    /// Config file.
    #[arg(short, long, env = "GATEHOUSE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Where to write the config.
    #[arg(default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) path: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub(crate) force: bool,
}
