//! carousel-loadgen: the load generator, test DNS server and loopback backends behind
//! `bench/run.sh`. Every subcommand is bounded by a count and a time limit and prints its results
//! as JSON lines on stdout. Only loopback addresses are ever listened on or dialled.

mod client;
mod procfs;
mod report;
mod servers;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use client::{Client, Mode};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Tokio worker threads (1 = a single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Authoritative DNS server (UDP+TCP) answering A records for the bench zone.
    Dns {
        /// Address to listen on (UDP and TCP).
        #[arg(long, default_value = "127.0.0.153:53")]
        listen: SocketAddr,
        /// `name=ip[,ip...]`, repeatable. AAAA queries for these names get NODATA, other names
        /// NXDOMAIN.
        #[arg(long = "record", required = true)]
        records: Vec<String>,
        /// TTL of every answer, seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u32,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10800.0)]
        time_limit: f64,
    },
    /// Loopback backends: sink, source, echo, one-shot and hold listeners on every `--addr`.
    Backend {
        /// Loopback IPv4 addresses to listen on (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<Ipv4Addr>,
        /// Port of the sink (reads a u64 length and that many bytes, answers the byte count).
        #[arg(long)]
        sink: u16,
        /// Port of the source (reads a u64 length, sends that many bytes).
        #[arg(long)]
        source: u16,
        /// Port of the echo server (echoes until the client closes).
        #[arg(long)]
        echo: u16,
        /// Port of the one-shot server (32-byte echo, then the backend closes first).
        #[arg(long)]
        oneshot: u16,
        /// Port of the hold server (1-byte echoes until `Q`, then the backend closes first).
        #[arg(long)]
        hold: u16,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10800.0)]
        time_limit: f64,
    },
    /// One tunnel and one echo exchange, retried until it works (readiness check).
    Probe {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Bulk transfer each way through fresh tunnels; MiB/s and the proxy's CPU seconds per GiB.
    Throughput {
        #[command(flatten)]
        c: ClientArgs,
        /// `host:port` of the sink backend (upload); `--target` is the source (download).
        #[arg(long)]
        target_up: String,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 256 << 20)]
        bytes: u64,
        /// Transfers per direction (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Proxy process whose CPU time (with its descendants) is measured.
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Sequential (open tunnel, 32-byte echo, close) cycles per second; `--target` should be a
    /// one-shot backend (it closes first).
    Rate {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Proxy process whose CPU time (with its descendants) is measured.
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Latency of (fresh tunnel, 32-byte echo) cycles under `--concurrency` clients; `--target`
    /// should be a one-shot backend.
    Latency {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Cycles per client.
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Proxy memory per idle tunnel: RSS/PSS of the proxy's process tree before and after
    /// opening `--count` tunnels; `--target` must be a hold backend.
    Idle {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(long)]
        pid: i32,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Tunnels being opened at once.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        /// Seconds to wait before each memory reading.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// Markdown tables (raw, ×direct, carousel vs peers, targets) from a results file.
    Report {
        /// JSON-lines results of one run.
        file: std::path::PathBuf,
        /// Idle-tunnel count of the run (for the target's wording).
        #[arg(long, default_value_t = 10_000)]
        idle_count: u64,
    },
}

#[derive(Args, Clone)]
struct ClientArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Proxy address (connect, socks5).
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// Comma-separated `host:port` list, rotated per tunnel. Direct mode: IP addresses.
    #[arg(long)]
    target: String,
    /// Name of this run in the results (e.g. `carousel-connect`).
    #[arg(long)]
    label: String,
    /// Hard limit for the whole subcommand, seconds.
    #[arg(long, default_value_t = 120.0)]
    time_limit: f64,
    /// Limit for one tunnel open or one exchange, seconds.
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
}

impl ClientArgs {
    fn client(&self, target: &str) -> io::Result<Client> {
        Client::new(
            self.mode,
            self.proxy,
            target,
            Duration::from_secs_f64(self.op_timeout),
        )
    }
    fn limit(&self) -> Duration {
        Duration::from_secs_f64(self.time_limit)
    }
}

fn parse_records(specs: &[String]) -> io::Result<HashMap<String, Vec<Ipv4Addr>>> {
    let mut out = HashMap::new();
    for spec in specs {
        let (name, ips) = spec
            .split_once('=')
            .ok_or_else(|| io::Error::other(format!("--record {spec:?}: expected name=ip,...")))?;
        let ips = ips
            .split(',')
            .map(|ip| ip.parse::<Ipv4Addr>().map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        if let Some(bad) = ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(io::Error::other(format!("{bad} is not a loopback address")));
        }
        out.insert(name.to_string(), ips);
    }
    Ok(out)
}

async fn run(cmd: Cmd) -> io::Result<()> {
    match cmd {
        Cmd::Dns {
            listen,
            records,
            ttl,
            time_limit,
        } => {
            if !listen.ip().is_loopback() {
                return Err(io::Error::other("--listen must be a loopback address"));
            }
            let records = parse_records(&records)?;
            servers::dns(listen, records, ttl, Duration::from_secs_f64(time_limit)).await
        }
        Cmd::Backend {
            addrs,
            sink,
            source,
            echo,
            oneshot,
            hold,
            time_limit,
        } => {
            let mut binds = Vec::new();
            for ip in addrs {
                if !ip.is_loopback() {
                    return Err(io::Error::other(format!("{ip} is not a loopback address")));
                }
                binds.push((SocketAddr::from((ip, sink)), servers::Role::Sink));
                binds.push((SocketAddr::from((ip, source)), servers::Role::Source));
                binds.push((SocketAddr::from((ip, echo)), servers::Role::Echo));
                binds.push((SocketAddr::from((ip, oneshot)), servers::Role::OneShot));
                binds.push((SocketAddr::from((ip, hold)), servers::Role::Hold));
            }
            servers::backend(binds, Duration::from_secs_f64(time_limit)).await
        }
        Cmd::Probe { c } => client::probe(&c.client(&c.target)?, &c.label, c.limit()).await,
        Cmd::Throughput {
            c,
            target_up,
            bytes,
            repeat,
            pid,
        } => {
            let down = c.client(&c.target)?;
            let up = c.client(&target_up)?;
            client::throughput(&down, &up, &c.label, bytes, repeat, pid, c.limit()).await
        }
        Cmd::Rate { c, count, pid } => {
            client::rate(&c.client(&c.target)?, &c.label, count, pid, c.limit()).await
        }
        Cmd::Latency {
            c,
            concurrency,
            count,
        } => {
            client::latency(
                &c.client(&c.target)?,
                &c.label,
                concurrency,
                count,
                c.limit(),
            )
            .await
        }
        Cmd::Idle {
            c,
            pid,
            count,
            parallel,
            settle,
        } => {
            client::idle(
                &c.client(&c.target)?,
                &c.label,
                pid,
                count,
                parallel,
                Duration::from_secs_f64(settle),
                c.limit(),
            )
            .await
        }
        Cmd::Report { file, idle_count } => {
            let text = std::fs::read_to_string(&file)?;
            print!("{}", report::report(&text, idle_count)?);
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let result = rt.and_then(|rt| rt.block_on(run(cli.cmd)));
    if let Err(e) = result {
        eprintln!("carousel-loadgen: {e}");
        std::process::exit(1);
    }
}
