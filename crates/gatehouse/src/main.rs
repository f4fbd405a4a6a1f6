//! The `gatehouse` binary: parses the command line, sets up logging and wires the
//! library crates together. Behaviour lives in the crates; see ARCHITECTURE.md.

mod check;
mod cli;
mod init;
mod releases;
mod reload;
mod serve;
mod storage;
mod tls;

use std::process::ExitCode;

use clap::Parser;

// mimalloc's thread-local free lists suit the request path's many short-lived
// allocations better than glibc malloc (measured: see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(&args.config),
        cli::Command::Reload(args) => reload::run(&args.config.config, args.admin.as_deref()),
        cli::Command::Check(args) => check::run(&args.config),
        cli::Command::Trust(args) => tls::trust(&args.config),
        cli::Command::Init(args) => init::run(&args.path, args.force),
        cli::Command::Deploy(args) => releases::deploy(&args.config.config, &args.dir, &args.slot),
        cli::Command::Releases(args) => releases::list(&args.config.config, &args.slot),
        cli::Command::Rollback(args) => releases::rollback(&args.config.config, &args.slot, args.id.as_deref()),
        cli::Command::Migrate(args) => storage::migrate(&args.config),
        cli::Command::Backup(args) => storage::backup(&args.config),
        cli::Command::Restore(args) => storage::restore(&args.config.config, &args.archive, args.force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
