//! The `carousel` command: run the proxy, check a configuration, or show the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

/// mimalloc instead of glibc's malloc for the binary (a library user picks their own): each
/// tunnel and request allocates and frees small buffers on whichever worker runs it, and glibc's
/// arenas spent 8% of a CONNECT cycle in malloc/free/consolidate (perf, bench/relay.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Validate a configuration file: exit 0 with a summary (and warnings), or 2 with file,
    /// key and line.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show a running carousel's clusters, members and listeners as a table (from `/status`).
    Status {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// Redraw every second.
        #[arg(long)]
        watch: bool,
        /// Print the raw `/status` JSON instead.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { admin, watch, json } => match status(admin, watch, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("carousel status: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Check { config } => match Config::load(&config).and_then(|c| {
            let r = carousel::resources::Resources::load(&c)?;
            Ok((c, r))
        }) {
            Ok((c, resources)) => {
                let limit = carousel::descriptors::raise_open_file_limit();
                let budget = carousel::descriptors::Sizes::plan(limit, &c);
                let costs = resources.users.mixed_costs().map(|(lo, hi)| {
                    format!("access.users_file mixes bcrypt costs {lo} to {hi}: every check of a user with a cheaper hash also pays one comparison at cost {hi} (so timing tells no user names); re-hash them at one cost")
                });
                for w in c
                    .warnings()
                    .into_iter()
                    .chain(budget.warnings(&c))
                    .chain(costs)
                {
                    eprintln!("warning: {w}");
                }
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

/// Fetches `/status` from the admin listener.
fn fetch_status(admin: std::net::SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(3))
        .with_context(|| format!("connecting to the admin listener {admin}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: carousel\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("no HTTP response from the admin listener")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

fn status(admin: std::net::SocketAddr, watch: bool, json: bool) -> anyhow::Result<()> {
    // SAFETY: isatty only inspects a descriptor number.
    let tty = unsafe { libc::isatty(1) } == 1;
    loop {
        let body = fetch_status(admin)?;
        if json {
            println!("{body}");
        } else {
            let v: carousel::admin::status::Status =
                serde_json::from_str(&body).context("/status is not carousel's status document")?;
            if watch && tty {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", carousel::admin::table::render(&v, tty));
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn run(path: Option<PathBuf>, upgrade: bool) -> anyhow::Result<()> {
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    init_tracing(&config.log.level);
    tracing::info!("{}", config.summary());
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

fn init_tracing(level: &str) {
    // hickory-server logs every query at INFO: the responder's own metrics count them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},hickory_server=warn,hickory_proto=warn,hickory_net=warn"
        ))
    });
    // Colours only on a terminal: a log file gets plain text.
    // SAFETY: isatty only inspects a descriptor number.
    let tty = unsafe { libc::isatty(2) } == 1;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .init();
}
