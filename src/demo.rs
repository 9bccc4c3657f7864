//! `carousel demo`: the point of the project in one command. It starts a DNS server publishing a
//! three-member cluster, the three backends, and carousel itself; drives clients through every
//! protocol; kills one backend, blackholes another, brings them back; and shows, live, what each
//! member served and how carousel sees its health. It ends with a summary.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::testbed::backend::Backend;
use crate::testbed::blackhole::Blackhole;
use crate::testbed::client::{who, Mode};
use crate::testbed::dns::DnsServer;

const CLUSTER: &str = "chat.demo.test";

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Totals printed at the end.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Client requests made.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Times carousel moved a request on to the next member.
    pub failovers: u64,
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn member_health(admin: SocketAddr) -> BTreeMap<String, String> {
    let body = admin_get(admin, "/status").await;
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
        for m in v["clusters"][0]["members"].as_array().into_iter().flatten() {
            let addr = format!("{}:{}", m["address"].as_str().unwrap_or(""), m["port"]);
            out.insert(addr, m["health"].as_str().unwrap_or("?").to_string());
        }
    }
    out
}

async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    admin_get(admin, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client with no proxy that resolves the cluster name itself, through carousel's DNS
/// responder, and keeps the answer for its TTL, as an operating system's cache does.
struct Direct {
    dns: hickory_resolver::TokioResolver,
    cached: Vec<IpAddr>,
    until: Instant,
}

impl Direct {
    fn new(responder: SocketAddr) -> std::io::Result<Self> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
        let mut ns = NameServerConfig::udp_and_tcp(responder.ip());
        for c in &mut ns.connections {
            c.port = responder.port();
        }
        let mut b = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        *b.options_mut() = opts;
        Ok(Self {
            dns: b.build().map_err(std::io::Error::other)?,
            cached: Vec::new(),
            until: Instant::now(),
        })
    }

    /// One request straight to the first address the (cached) answer gives.
    async fn who(&mut self, port: u16) -> Result<String, String> {
        if Instant::now() >= self.until || self.cached.is_empty() {
            let answer = self
                .dns
                .ipv4_lookup(format!("{CLUSTER}."))
                .await
                .map_err(|e| e.to_string())?;
            let ttl = answer.answers().iter().map(|r| r.ttl).min().unwrap_or(1);
            self.cached = answer
                .answers()
                .iter()
                .filter_map(|r| r.data.to_string().parse().ok())
                .collect();
            self.until = Instant::now() + Duration::from_secs(u64::from(ttl));
        }
        let ip = *self.cached.first().ok_or("empty answer")?;
        let work = async {
            let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
            s.write_all(b"WHO\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<String, std::io::Error>(out.trim().to_string())
        };
        match tokio::time::timeout(Duration::from_millis(300), work).await {
            Ok(Ok(name)) => Ok(name),
            Ok(Err(e)) => Err(format!("{ip}: {e}")),
            Err(_) => Err(format!("{ip}: timed out")),
        }
    }
}

/// Runs the demo: `exe` is the carousel binary to start, `phase` how long each act lasts.
pub async fn run(exe: &Path, phase: Duration) -> std::io::Result<Summary> {
    let dns = DnsServer::start().await;
    let ips: Vec<IpAddr> = [21, 22, 23]
        .iter()
        .map(|&i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let names = ["chat-1", "chat-2", "chat-3"];
    let (port, backends) = Backend::start_set(&ips, &names).await;
    let v4: Vec<Ipv4Addr> = [21, 22, 23]
        .iter()
        .map(|&i| Ipv4Addr::new(127, 0, 0, i))
        .collect();
    dns.set_a(CLUSTER, &v4, 30);
    let (http, socks, admin, responder) = (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let dir = std::env::temp_dir().join(format!("carousel-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("carousel.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "{dir}/carousel.pid"
upgrade_sock = "{dir}/upgrade.sock"
[[listener]]
address = "{http}"
protocols = ["http"]
[[listener]]
address = "{socks}"
protocols = ["socks"]
[dns]
nameservers = ["{dns}"]
[dial]
connect_timeout_ms = 300
[log]
level = "error"
access = "off"
[admin]
address = "{admin}"
[responder]
listen = ["{responder}"]
ttl_seconds = 1
[access]
[[access.rule]]
name = "demo: loopback only"
action = "allow"
destinations = ["{CLUSTER}", "127.0.0.0/8"]
[[cluster]]
name = "{CLUSTER}"
ports = [{port}]
[cluster.health]
interval_ms = 500
timeout_ms = 300
rise = 2
fall = 2
[cluster.outlier]
consecutive_failures = 1
base_ejection_ms = 2000
"#,
            dir = dir.display(),
            dns = dns.addr(),
        ),
    )?;
    let mut child = tokio::process::Command::new(exe)
        .args(["run", "-c"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..200 {
        if admin_get(admin, "/readyz").await.starts_with("ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "carousel demo: cluster {CLUSTER} = 127.0.0.21, .22, .23 port {port} (DNS on {})",
        dns.addr()
    );
    println!("carousel listens on {http} (HTTP/CONNECT) and {socks} (SOCKS4a/5); admin {admin}");
    println!(
        "its DNS responder on {responder} serves {CLUSTER} to direct clients (no proxy, TTL 1 s)\n"
    );
    let mut direct = Direct::new(responder)?;
    let (mut direct_ok, mut direct_failed) = (0u64, 0u64);

    let mut summary = Summary::default();
    let mut hole: Option<Blackhole> = None;
    let acts: [&str; 4] = [
        "all three members up",
        "chat-2 killed (its listener is closed)",
        "chat-3 blackholed too (SYNs dropped, connects hang)",
        "chat-2 and chat-3 back",
    ];
    for (act, title) in acts.iter().enumerate() {
        match act {
            1 => backends[1].stop(),
            2 => {
                backends[2].stop();
                hole = Some(Blackhole::new(backends[2].addr())?);
            }
            3 => {
                hole = None;
                backends[1].restart()?;
                backends[2].restart()?;
            }
            _ => {}
        }
        println!("== act {}: {title}", act + 1);
        let (mut ok, mut failed) = (0u64, 0u64);
        let started = Instant::now();
        let mut next_report = Duration::from_secs(1);
        let mut i = 0usize;
        while started.elapsed() < phase && i < 10_000 {
            let mode = Mode::ALL[i % Mode::ALL.len()];
            match who(mode, http, socks, CLUSTER, port).await {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed += 1;
                    println!("   request via {mode:?} failed: {e}");
                }
            }
            match direct.who(port).await {
                Ok(_) => direct_ok += 1,
                Err(_) => direct_failed += 1,
            }
            i += 1;
            if started.elapsed() >= next_report {
                next_report += Duration::from_secs(1);
                let health = member_health(admin).await;
                let served: Vec<String> = backends
                    .iter()
                    .map(|b| {
                        let h = health
                            .get(&b.addr().to_string())
                            .map(String::as_str)
                            .unwrap_or("?");
                        format!("{} {:>4} served, {:<8}", b.name(), b.hits(), h)
                    })
                    .collect();
                println!(
                    "   t={:>2}s ok={ok:<4} failed={failed:<2} direct ok={direct_ok:<4} failed={direct_failed:<2} | {}",
                    started.elapsed().as_secs(),
                    served.join(" | ")
                );
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        summary.requests += ok + failed;
        summary.failures += failed;
    }
    drop(hole);
    summary.failovers = metric(admin, "carousel_failovers_total").await as u64;
    let panic = metric(admin, "carousel_panic_requests_total").await as u64;
    println!(
        "\nsummary: {} requests, {} failed, {} failovers (a dead or blackholed member cost a retry, never a failure), {} panic-mode requests",
        summary.requests, summary.failures, summary.failovers, panic
    );
    println!(
        "direct clients (DNS through the responder, no proxy): {direct_ok} ok, {direct_failed} failed (only while a fresh failure was still inside one TTL and one health check)"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summary)
}
