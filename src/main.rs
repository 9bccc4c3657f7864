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
    #[cfg(feature = "testbed")]
    /// Show the point of carousel: a three-member cluster, clients on every protocol, one member
    /// killed, one blackholed, both back; live per-member counts and health, then a summary.
    Demo {
        /// Seconds per act (four acts).
        #[arg(long, default_value_t = 6)]
        seconds: u64,
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
        Command::Check { config } => match Config::load(&config).and_then(|c| {
            carousel::resources::Resources::load(&c)?;
            Ok(c)
        }) {
            Ok(c) => {
                println!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "testbed")]
        Command::Demo { seconds } => match demo(seconds) {
            Ok(s) if s.failures == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("carousel demo: {e:#}");
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
    raise_fd_limit(config.limits.max_connections);
    let carousel =
        carousel::server::build(Arc::new(config), path, upgrade).context("starting carousel")?;
    carousel.run();
    Ok(())
}

#[cfg(feature = "testbed")]
fn demo(seconds: u64) -> anyhow::Result<carousel::demo::Summary> {
    let exe = std::env::current_exe().context("locating the carousel binary")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(rt.block_on(carousel::demo::run(
        &exe,
        std::time::Duration::from_secs(seconds.clamp(2, 120)),
    ))?)
}

/// Raises the open-file limit to its hard maximum (each tunnel holds two descriptors) and warns
/// when `limits.max_connections` could still run the process out of descriptors, where new
/// clients would wait in the accept queue instead of getting a clear 503.
fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_file_limit = lim.rlim_cur,
            max_connections,
            "open-file limit below 2 × limits.max_connections + 256: lower max_connections or raise LimitNOFILE"
        );
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
