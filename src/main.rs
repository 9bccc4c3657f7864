//! The `carousel` command: run the proxy, check a configuration, or show the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use carousel::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "carousel",
    version,
    about = "Egress proxy that rotates every name per request and fails over to the next address"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (no -c: the embedded default configuration).
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take the listening sockets over from a running carousel (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a configuration file: exit 0 with a summary, or 2 with file, key and line.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, upgrade } => match run(config, upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("carousel: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(path: Option<PathBuf>, upgrade: bool) -> anyhow::Result<()> {
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    init_tracing(&config.log.level);
    tracing::info!("{}", config.summary());
    let server =
        carousel::server::build(Arc::new(config), path, upgrade).context("starting carousel")?;
    server.run_forever()
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
