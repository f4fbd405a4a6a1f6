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
    /// Validate a config file and print a summary of its sites, routes and upstreams.
    Check(ConfigArg),
    /// Write a commented starter config.
    Init(InitArgs),
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
