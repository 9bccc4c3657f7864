//! carousel-loadgen: the load generator, test DNS server and loopback backends behind
//! `bench/run.sh`. Every subcommand is bounded by a count and a time limit and prints its results
//! as JSON lines on stdout. Only loopback addresses are ever listened on or dialled.

mod attack;
mod client;
mod dnsload;
mod flood;
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
        /// `name=ip[,ip...][@ttl]`, repeatable. A name `*.suffix` answers every name under
        /// `suffix` (a wildcard); `@ttl` gives the record its own TTL. AAAA queries for these
        /// names get NODATA, other names NXDOMAIN.
        #[arg(long = "record", required = true)]
        records: Vec<String>,
        /// TTL of every answer without its own, seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u32,
        /// Keep `{"queries":N,"wildcard_queries":M}` in this file (rewritten every 100 ms).
        #[arg(long)]
        stats_file: Option<std::path::PathBuf>,
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
    /// one-shot backend (it closes first). With `--concurrency` C > 1, C such loops at once
    /// share the `--count` cycles.
    Rate {
        #[command(flatten)]
        c: ClientArgs,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Cycles in progress at once (1: sequential).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Proxy process whose CPU time (with its descendants) is measured.
        #[arg(long)]
        pid: Option<i32>,
        /// A second process measured the same way (e.g. a balancer in front of the proxy):
        /// `front_cpu_s`, `front_cpu_us_per_conn`.
        #[arg(long)]
        front_pid: Option<i32>,
    },
    /// Paired connection rate: the cycles of `rate`, alternating between `--proxy` (even
    /// cycles) and `--proxy-b` (odd cycles), `--concurrency` at a time, so both paths see the
    /// same machine at every moment. One `rate_paired` JSON line with each path's rate and
    /// `ratio_b_over_a`. `--mode` connect or socks5.
    RatePaired {
        #[command(flatten)]
        c: ClientArgs,
        /// The second proxy (same mode and targets).
        #[arg(long)]
        proxy_b: SocketAddr,
        /// Name of the second path in the results (`--label` names the first).
        #[arg(long)]
        label_b: String,
        /// Cycles in all (half on each path).
        #[arg(long, default_value_t = 4000)]
        count: usize,
        /// Cycles in progress at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// UDP DNS load: `--concurrency` A queries for `--name` kept in flight against `--server`
    /// by `--workers` threads (one socket each); responses/s by response code, timeouts, and
    /// the server's CPU seconds per 100k answers (`--pid`). One JSON line.
    /// A UDP flood at a DNS responder from many sources with a probe beside it (issue 26).
    FloodUdp {
        /// The responder (loopback).
        #[arg(long)]
        server: SocketAddr,
        /// The name asked for (type A).
        #[arg(long)]
        name: String,
        /// Source addresses in all.
        #[arg(long, default_value_t = 100)]
        sources: usize,
        /// Of which inside 127.0.0.0/24 (the rest on 127.0.1.x).
        #[arg(long, default_value_t = 50)]
        allowed: usize,
        /// Datagrams per second in all.
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
        /// Seconds of flood.
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        /// The probe's queries per second.
        #[arg(long, default_value_t = 20)]
        probe_rate: u64,
        /// The responder's process (RSS).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// TCP connections piled on a DNS responder, with a SOCKS5 probe through the proxy.
    FloodTcp {
        /// The responder's TCP address (loopback).
        #[arg(long)]
        responder: SocketAddr,
        /// Connections in all.
        #[arg(long, default_value_t = 30_000)]
        count: usize,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// The latest this many are held open (the rest closed once connected).
        #[arg(long, default_value_t = 15_000)]
        hold: usize,
        /// The proxy's SOCKS listener (the probe).
        #[arg(long)]
        socks: SocketAddr,
        /// What the probe asks for, `host:port` (a one-shot backend; carousel resolves it).
        #[arg(long)]
        probe_target: String,
        /// The proxy's process (descriptors).
        #[arg(long)]
        pid: Option<i32>,
    },
    DnsLoad {
        /// The DNS server (loopback), UDP.
        #[arg(long)]
        server: SocketAddr,
        /// The name asked for (type A).
        #[arg(long)]
        name: String,
        /// Name of this run in the results.
        #[arg(long, default_value = "dns")]
        label: String,
        /// Queries in flight at once, over all workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Worker threads, each with its own socket.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Seconds measured (after the warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Seconds of load before the measurement starts.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// A query unanswered this long counts as a timeout and is replaced, milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// The server's process: CPU seconds over the measured window.
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
    /// A load scenario against a proxy (HTTP listener) while a normal client keeps tunnelling
    /// through it: slowloris GET heads, oversized heads, or a flood of distinct names followed
    /// by an idle window. One JSON line of results.
    Attack {
        #[arg(long, value_enum)]
        kind: attack::Kind,
        /// Proxy's HTTP listener.
        #[arg(long)]
        proxy: SocketAddr,
        /// Name of this run in the results.
        #[arg(long, default_value = "carousel")]
        label: String,
        /// Proxy process: RSS, descriptors and CPU are read from /proc.
        #[arg(long)]
        pid: Option<i32>,
        /// Proxy's admin listener (`/metrics` is scraped before and after).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Loopback addresses the attack connections come from (rotated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "127.0.0.31,127.0.0.32,127.0.0.33,127.0.0.34"
        )]
        sources: Vec<Ipv4Addr>,
        /// Attack connections (slowloris-get, big-head) or distinct names (name-flood).
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// `host:port` in the attack heads' absolute-form URL.
        #[arg(long, default_value = "backend.bench.test:18003")]
        target: String,
        /// name-flood: names are `nK.<suffix>` (the DNS server needs a `*.<suffix>` record).
        #[arg(long, default_value = "wild.bench.test")]
        wild_suffix: String,
        /// name-flood: the port CONNECTed to (a one-shot backend).
        #[arg(long, default_value_t = 18004)]
        wild_port: u16,
        /// Connects in progress at once (slowloris-get, big-head); CONNECT workers (name-flood).
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// slowloris-get: seconds between bytes.
        #[arg(long, default_value_t = 1.0)]
        trickle: f64,
        /// slowloris-get, big-head: longest an attack connection is kept open, seconds.
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
        /// big-head: bytes of the unfinished head per connection.
        #[arg(long, default_value_t = 1 << 20)]
        head_bytes: usize,
        /// slowloris-get, big-head: repeat waves of `--count` connections until this many
        /// seconds have passed (0: one wave).
        #[arg(long, default_value_t = 0.0)]
        repeat_for: f64,
        /// name-flood: seconds without attack traffic after the flood.
        #[arg(long, default_value_t = 30.0)]
        idle: f64,
        /// name-flood: the DNS server's `--stats-file`.
        #[arg(long)]
        dns_stats: Option<std::path::PathBuf>,
        /// Normal client: `host:port` of the echo backend, through CONNECT.
        #[arg(long, default_value = "backend.bench.test:18003")]
        normal_target: String,
        /// Normal client: milliseconds between the starts of its cycles.
        #[arg(long, default_value_t = 50)]
        normal_interval_ms: u64,
        /// Normal client: limit of one cycle (tunnel + echo), seconds.
        #[arg(long, default_value_t = 5.0)]
        normal_timeout: f64,
        /// Seconds the normal client runs alone before and after the attack.
        #[arg(long, default_value_t = 2.0)]
        lead: f64,
        /// Limit for one connect or exchange of the attack, seconds.
        #[arg(long, default_value_t = 10.0)]
        op_timeout: f64,
        /// Hard limit for the whole scenario, seconds.
        #[arg(long, default_value_t = 240.0)]
        time_limit: f64,
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

fn parse_records(specs: &[String]) -> io::Result<HashMap<String, servers::RecordSet>> {
    let mut out = HashMap::new();
    for spec in specs {
        let (name, ips) = spec.split_once('=').ok_or_else(|| {
            io::Error::other(format!("--record {spec:?}: expected name=ip,...[@ttl]"))
        })?;
        let (ips, ttl) =
            match ips.split_once('@') {
                Some((ips, ttl)) => (
                    ips,
                    Some(ttl.parse::<u32>().map_err(|e| {
                        io::Error::other(format!("--record {spec:?}: bad TTL: {e}"))
                    })?),
                ),
                None => (ips, None),
            };
        if name.contains('*') && !(name.starts_with("*.") && name[2..].find('*').is_none()) {
            return Err(io::Error::other(format!(
                "--record {spec:?}: a wildcard must be *.suffix"
            )));
        }
        let ips = ips
            .split(',')
            .map(|ip| ip.parse::<Ipv4Addr>().map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        if let Some(bad) = ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(io::Error::other(format!("{bad} is not a loopback address")));
        }
        out.insert(name.to_string(), servers::RecordSet { ips, ttl });
    }
    Ok(out)
}

async fn run(cmd: Cmd) -> io::Result<()> {
    match cmd {
        Cmd::Dns {
            listen,
            records,
            ttl,
            stats_file,
            time_limit,
        } => {
            if !listen.ip().is_loopback() {
                return Err(io::Error::other("--listen must be a loopback address"));
            }
            let records = parse_records(&records)?;
            servers::dns(
                listen,
                records,
                ttl,
                stats_file,
                Duration::from_secs_f64(time_limit),
            )
            .await
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
        Cmd::Rate {
            c,
            count,
            concurrency,
            pid,
            front_pid,
        } => {
            let pids = client::CpuPids {
                proxy: pid,
                front: front_pid,
            };
            client::rate(
                &c.client(&c.target)?,
                &c.label,
                count,
                concurrency,
                pids,
                c.limit(),
            )
            .await
        }
        Cmd::RatePaired {
            c,
            proxy_b,
            label_b,
            count,
            concurrency,
        } => {
            let a = c.client(&c.target)?;
            if a.mode == Mode::Direct {
                return Err(io::Error::other(
                    "rate-paired compares two proxies: --mode connect or socks5",
                ));
            }
            let mut b = a.clone();
            client::check_loopback(&proxy_b)?;
            b.proxy = Some(proxy_b);
            client::rate_paired(&a, &b, (&c.label, &label_b), count, concurrency, c.limit()).await
        }
        Cmd::DnsLoad {
            server,
            name,
            label,
            concurrency,
            workers,
            seconds,
            warmup,
            timeout_ms,
            pid,
        } => dnsload::run(dnsload::Opts {
            server,
            name,
            label,
            concurrency,
            workers,
            seconds,
            warmup,
            timeout: Duration::from_millis(timeout_ms.max(1)),
            pid,
        }),
        Cmd::FloodUdp {
            server,
            name,
            sources,
            allowed,
            rate,
            seconds,
            probe_rate,
            pid,
        } => flood::udp(flood::UdpOpts {
            server,
            name,
            sources,
            allowed,
            rate,
            seconds: seconds.clamp(0.5, 600.0),
            probe_rate,
            pid,
        }),
        Cmd::FloodTcp {
            responder,
            count,
            parallel,
            hold,
            socks,
            probe_target,
            pid,
        } => {
            flood::tcp(flood::TcpOpts {
                responder,
                count: count.min(1_000_000),
                parallel: parallel.clamp(1, 4096),
                hold,
                socks,
                probe_target,
                pid,
            })
            .await
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
        Cmd::Attack {
            kind,
            proxy,
            label,
            pid,
            admin,
            sources,
            count,
            target,
            wild_suffix,
            wild_port,
            parallel,
            trickle,
            hold,
            head_bytes,
            repeat_for,
            idle,
            dns_stats,
            normal_target,
            normal_interval_ms,
            normal_timeout,
            lead,
            op_timeout,
            time_limit,
        } => {
            let secs = Duration::from_secs_f64;
            attack::run(attack::Opts {
                kind,
                label,
                proxy,
                pid,
                admin,
                sources,
                count,
                target,
                wild_suffix,
                wild_port,
                parallel,
                trickle: secs(trickle),
                hold: secs(hold),
                head_bytes,
                repeat_for: secs(repeat_for),
                idle: secs(idle),
                dns_stats,
                normal_target,
                normal_interval: Duration::from_millis(normal_interval_ms.max(1)),
                normal_timeout: secs(normal_timeout),
                lead: secs(lead),
                op_timeout: secs(op_timeout),
                time_limit: secs(time_limit),
            })
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
