//! Load scenarios for carousel's hardening: an attack on the proxy while a *normal client* keeps
//! using it, and what the proxy did about it.
//!
//! - `slowloris-get`: many connections that send an absolute-form GET request line, then the
//!   rest of the head one byte per `--trickle` and never finish it. The proxy should cut each
//!   head at its handshake timeout (as a whole, however steadily bytes arrive).
//! - `big-head`: many connections that each send an unfinished head of `--head-bytes` (1 MiB):
//!   the proxy should answer 431 at its head cap and close, without buffering the heads.
//! - `name-flood`: `--count` distinct names (`nK.<wild-suffix>`) through CONNECT, then `--idle`
//!   with no attack traffic: the DNS server's query count, the proxy's descriptors and CPU over
//!   that idle window show whether names nobody asks for again are still refreshed.
//!
//! The normal client runs on its own OS thread and runtime (so the attack's work in this process
//! cannot delay it): one CONNECT tunnel to the echo backend and one 32-byte echo every
//! `--normal-interval-ms`, each cycle bounded by `--normal-timeout`, for the whole scenario.
//! Everything is bounded by counts and `--time-limit`; only loopback addresses are dialled.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::client::{self, check_loopback, other, Client, Mode, MSG};
use crate::procfs;

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    SlowlorisGet,
    BigHead,
    NameFlood,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SlowlorisGet => "slowloris-get",
            Kind::BigHead => "big-head",
            Kind::NameFlood => "name-flood",
        }
    }
}

/// Everything a scenario needs (see `carousel-loadgen attack --help`).
pub struct Opts {
    pub kind: Kind,
    pub label: String,
    pub proxy: SocketAddr,
    pub pid: Option<i32>,
    pub admin: Option<SocketAddr>,
    pub sources: Vec<Ipv4Addr>,
    pub count: usize,
    pub target: String,
    pub wild_suffix: String,
    pub wild_port: u16,
    pub parallel: usize,
    pub trickle: Duration,
    pub hold: Duration,
    pub head_bytes: usize,
    pub repeat_for: Duration,
    pub idle: Duration,
    pub dns_stats: Option<PathBuf>,
    pub normal_target: String,
    pub normal_interval: Duration,
    pub normal_timeout: Duration,
    pub lead: Duration,
    pub op_timeout: Duration,
    pub time_limit: Duration,
}

// ---------------------------------------------------------------------------------------------
// The normal client.

/// Phases of a scenario, as the normal client counts them.
const PHASES: [&str; 4] = ["before", "attack", "idle", "after"];
const BEFORE: u8 = 0;
const ATTACK: u8 = 1;
const IDLE: u8 = 2;
const AFTER: u8 = 3;

#[derive(Default)]
struct NormalStats {
    ok: [u64; 4],
    failed: [u64; 4],
    lat_us: Vec<u64>,
    /// The first few failures: (phase, seconds since the client started, error).
    first_errors: Vec<(u8, f64, String)>,
    last_error: String,
}

struct Normal {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    handle: std::thread::JoinHandle<NormalStats>,
}

impl Normal {
    fn start(o: &Opts) -> io::Result<Normal> {
        let client = Client::new(
            Mode::Connect,
            Some(o.proxy),
            &o.normal_target,
            o.normal_timeout,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(BEFORE));
        let (interval, timeout) = (o.normal_interval, o.normal_timeout);
        // Never outlives the scenario's own limit by more than one cycle.
        let hard = o.time_limit + Duration::from_secs(5);
        let (s2, p2) = (stop.clone(), phase.clone());
        let handle = std::thread::Builder::new()
            .name("normal-client".into())
            .spawn(move || {
                let mut st = NormalStats::default();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        st.last_error = e.to_string();
                        return st;
                    }
                };
                rt.block_on(async {
                    let t0 = Instant::now();
                    let deadline = t0 + hard;
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for i in 0..10_000_000usize {
                        if s2.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                        tick.tick().await;
                        let ph = p2.load(Ordering::Relaxed).min(AFTER);
                        let t = Instant::now();
                        let r = tokio::time::timeout(timeout, async {
                            let mut s = client.open(i).await?;
                            client::exchange(&mut s, MSG, timeout).await
                        })
                        .await
                        .unwrap_or_else(|_| Err(other("cycle timed out")));
                        match r {
                            Ok(()) => {
                                st.ok[ph as usize] += 1;
                                st.lat_us.push(t.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                st.failed[ph as usize] += 1;
                                st.last_error = e.to_string();
                                if st.first_errors.len() < 5 {
                                    st.first_errors.push((
                                        ph,
                                        t.duration_since(t0).as_secs_f64(),
                                        e.to_string(),
                                    ));
                                }
                            }
                        }
                    }
                });
                st
            })?;
        Ok(Normal {
            stop,
            phase,
            handle,
        })
    }

    fn phase(&self, p: u8) {
        self.phase.store(p, Ordering::Relaxed);
    }

    fn finish(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let mut st = self.handle.join().unwrap_or_default();
        st.lat_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let by_phase: serde_json::Map<String, Value> = PHASES
            .iter()
            .enumerate()
            .filter(|(i, _)| st.ok[*i] + st.failed[*i] > 0)
            .map(|(i, p)| {
                (
                    p.to_string(),
                    json!({"ok": st.ok[i], "failed": st.failed[i]}),
                )
            })
            .collect();
        json!({
            "ok": st.ok.iter().sum::<u64>(),
            "failed": st.failed.iter().sum::<u64>(),
            "by_phase": by_phase,
            "p50_ms": ms(client::pct(&st.lat_us, 0.50)),
            "p99_ms": ms(client::pct(&st.lat_us, 0.99)),
            "max_ms": ms(st.lat_us.last().copied().unwrap_or(0)),
            "first_errors": st.first_errors.iter()
                .map(|(p, t, e)| json!({"phase": PHASES[*p as usize], "at_s": t, "error": e}))
                .collect::<Vec<_>>(),
            "last_error": st.last_error,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the proxy.

/// Samples the proxy's RSS every 10 ms and its descriptor count every 100 ms; keeps the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(pid: Option<i32>, limit: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = tokio::spawn(async move {
            let Some(pid) = pid else { return (0, 0) };
            let deadline = Instant::now() + limit;
            let (mut rss, mut fds) = (0u64, 0usize);
            let mut i = 0u64;
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                rss = rss.max(procfs::rss_kib(pid).unwrap_or(0));
                if i.is_multiple_of(10) {
                    fds = fds.max(procfs::fd_count(pid).unwrap_or(0));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (rss, fds)
        });
        Sampler { stop, handle }
    }

    async fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or((0, 0))
    }
}

/// One reading of the proxy process.
#[derive(Clone, Copy, Default)]
struct Snap {
    rss_kib: Option<u64>,
    fds: Option<usize>,
    cpu_s: Option<f64>,
}

fn snap(pid: Option<i32>) -> Snap {
    match pid {
        Some(p) => Snap {
            rss_kib: procfs::rss_kib(p),
            fds: procfs::fd_count(p),
            cpu_s: Some(procfs::cpu_seconds(p)),
        },
        None => Snap::default(),
    }
}

fn cpu_between(a: Snap, b: Snap) -> Option<f64> {
    Some(b.cpu_s? - a.cpu_s?)
}

/// Prometheus text from the admin listener: every series (`name{labels}`) and its value.
async fn scrape(admin: SocketAddr, t: Duration) -> io::Result<BTreeMap<String, f64>> {
    check_loopback(&admin)?;
    let body = tokio::time::timeout(t, async {
        let mut s = TcpStream::connect(admin).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: carousel-admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        // Bounded: a few MB at most.
        (&mut s).take(16 << 20).read_to_end(&mut buf).await?;
        Ok::<_, io::Error>(buf)
    })
    .await
    .map_err(|_| other("metrics scrape timed out"))??;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| other("metrics: no response head"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(other(format!(
            "metrics: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.trim().parse::<f64>() {
                out.insert(series.to_string(), v);
            }
        }
    }
    Ok(out)
}

/// Sum of every series of metric `name`.
fn metric(m: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for (series, v) in m {
        let base = series.split('{').next().unwrap_or_default();
        if base == name {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

async fn scrape_opt(o: &Opts) -> Option<BTreeMap<String, f64>> {
    match o.admin {
        Some(a) => match scrape(a, o.op_timeout).await {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("carousel-loadgen attack: {e}");
                None
            }
        },
        None => None,
    }
}

/// The series of `carousel_requests_total` and `carousel_overload_rejections_total` that grew
/// between two scrapes (what the proxy counted the attack as).
fn outcome_delta(a: &Option<BTreeMap<String, f64>>, b: &Option<BTreeMap<String, f64>>) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (series, v) in b {
        if !(series.starts_with("carousel_requests_total")
            || series.starts_with("carousel_overload_rejections_total"))
        {
            continue;
        }
        let d = v - a.get(series).copied().unwrap_or(0.0);
        if d > 0.0 {
            out.insert(series.clone(), json!(d));
        }
    }
    Value::Object(out)
}

fn dns_metrics(m: &Option<BTreeMap<String, f64>>) -> Value {
    let Some(m) = m else { return Value::Null };
    json!({
        "names": metric(m, "carousel_dns_names"),
        "refreshes_total": metric(m, "carousel_dns_refreshes_total"),
        "lookups_in_flight": metric(m, "carousel_dns_lookups_in_flight"),
        "names_evicted_total": metric(m, "carousel_dns_names_evicted_total"),
        "lookups_total": metric(m, "carousel_dns_lookups_total"),
    })
}

/// The test DNS server's counters (`dns --stats-file`).
fn dns_stats(path: &Option<PathBuf>) -> Option<Value> {
    let text = std::fs::read_to_string(path.as_ref()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Queries between two `dns_stats` readings: in all, for wildcard names, and by other name.
fn dns_delta(a: &Option<Value>, b: &Option<Value>) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut by_name = serde_json::Map::new();
    if let Some(m) = b.get("by_name").and_then(Value::as_object) {
        for (k, v) in m {
            let before = a
                .pointer(&format!(
                    "/by_name/{}",
                    k.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let d = v.as_u64().unwrap_or(0).saturating_sub(before);
            if d > 0 {
                by_name.insert(k.clone(), json!(d));
            }
        }
    }
    json!({
        "queries": n(b, "queries").saturating_sub(n(a, "queries")),
        "wildcard_queries": n(b, "wildcard_queries").saturating_sub(n(a, "wildcard_queries")),
        "other_by_name": by_name,
    })
}

// ---------------------------------------------------------------------------------------------
// Attack connections.

async fn connect_from(src: Ipv4Addr, proxy: SocketAddr, t: Duration) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    let s = tokio::time::timeout(t, sock.connect(proxy))
        .await
        .map_err(|_| other("connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How one attack connection ended.
#[derive(Default)]
struct End {
    connected: bool,
    /// Seconds from connect until the proxy closed (EOF, reset, or a failed write).
    closed_after: Option<f64>,
    reset: bool,
    status: Option<u16>,
    sent: usize,
    error: Option<String>,
}

fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    if !line.starts_with("HTTP/") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Result of one read from the proxy: `Some(reset)` once it closed.
fn on_read(r: io::Result<usize>, buf: &[u8], resp: &mut Vec<u8>) -> Option<bool> {
    match r {
        Ok(0) => Some(false),
        Ok(n) => {
            if resp.len() < 4096 {
                resp.extend_from_slice(&buf[..n]);
            }
            None
        }
        Err(_) => Some(true),
    }
}

/// One attack connection from `src`, opened while holding a `gate` permit (so the connects are
/// paced); the stream, when it opened, the end of its `hold`, and its `End` so far. `Err` is the
/// `End` of a connection that never opened.
async fn open(
    src: Ipv4Addr,
    proxy: SocketAddr,
    hold: Duration,
    op_timeout: Duration,
    gate: Arc<Semaphore>,
) -> Result<(TcpStream, Instant, tokio::time::Instant, End), End> {
    let permit = gate.acquire_owned().await;
    let s = connect_from(src, proxy, op_timeout).await;
    drop(permit);
    let s = s.map_err(|e| End {
        error: Some(e.to_string()),
        ..End::default()
    })?;
    let t0 = Instant::now();
    let end = End {
        connected: true,
        ..End::default()
    };
    Ok((s, t0, tokio::time::Instant::from_std(t0 + hold), end))
}

/// Slowloris: the request line at once, then one byte of never-ending header lines per
/// `trickle`, until the proxy closes or `hold` passes.
#[allow(clippy::too_many_arguments)]
async fn slowloris_conn(
    src: Ipv4Addr,
    proxy: SocketAddr,
    first: Arc<Vec<u8>>,
    pad: Arc<Vec<u8>>,
    trickle: Duration,
    hold: Duration,
    op_timeout: Duration,
    gate: Arc<Semaphore>,
) -> End {
    let (mut s, t0, deadline, mut end) = match open(src, proxy, hold, op_timeout, gate).await {
        Ok(opened) => opened,
        Err(end) => return end,
    };
    let mut resp = Vec::new();
    if s.write_all(&first).await.is_err() {
        end.closed_after = Some(t0.elapsed().as_secs_f64());
        return end;
    }
    end.sent = first.len();
    let mut buf = [0u8; 1024];
    let mut next = tokio::time::Instant::from_std(t0 + trickle);
    let mut k = 0usize;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => {
                if let Some(reset) = on_read(r, &buf, &mut resp) {
                    end.closed_after = Some(t0.elapsed().as_secs_f64());
                    end.reset = reset;
                    break;
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let b = pad[k % pad.len()];
                k += 1;
                next += trickle;
                if s.write_all(&[b]).await.is_err() {
                    // Closed under us; the read branch may still hold the answer.
                    end.closed_after = Some(t0.elapsed().as_secs_f64());
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 { break; }
                            if resp.len() < 4096 { resp.extend_from_slice(&buf[..n]); }
                        }
                    }).await;
                    break;
                }
                end.sent += 1;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    end.status = status_of(&resp);
    end
}

/// Big head: `total` bytes of a head that never ends, written as fast as the proxy takes them,
/// while reading whatever it answers; until it closes or `hold` passes.
async fn big_head_conn(
    src: Ipv4Addr,
    proxy: SocketAddr,
    prefix: Arc<Vec<u8>>,
    total: usize,
    hold: Duration,
    op_timeout: Duration,
    gate: Arc<Semaphore>,
) -> End {
    let (mut s, t0, deadline, mut end) = match open(src, proxy, hold, op_timeout, gate).await {
        Ok(opened) => opened,
        Err(end) => return end,
    };
    let filler = vec![b'a'; 16 * 1024];
    let mut resp = Vec::new();
    let mut buf = [0u8; 1024];
    let mut writing = true;
    let (mut rd, mut wr) = s.split();
    loop {
        let piece: &[u8] = if end.sent < prefix.len() {
            &prefix[end.sent..]
        } else {
            let n = total.saturating_sub(end.sent).min(filler.len());
            &filler[..n]
        };
        if piece.is_empty() {
            writing = false;
        }
        tokio::select! {
            r = rd.read(&mut buf) => {
                if let Some(reset) = on_read(r, &buf, &mut resp) {
                    end.closed_after = Some(t0.elapsed().as_secs_f64());
                    end.reset = reset;
                    break;
                }
            }
            w = wr.write(piece), if writing => match w {
                Ok(0) | Err(_) => {
                    // The proxy closed (EPIPE / reset); keep reading for its answer.
                    writing = false;
                }
                Ok(n) => end.sent += n,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    end.status = status_of(&resp);
    end
}

/// Summary of the attack connections' ends.
fn summarize(ends: &[End]) -> Value {
    let mut closed: Vec<f64> = ends.iter().filter_map(|e| e.closed_after).collect();
    closed.sort_by(|a, b| a.total_cmp(b));
    let connected = ends.iter().filter(|e| e.connected).count();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for e in ends {
        if let Some(s) = e.status {
            *statuses.entry(s.to_string()).or_default() += 1;
        }
    }
    let mut sent: Vec<u64> = ends
        .iter()
        .filter(|e| e.connected)
        .map(|e| e.sent as u64)
        .collect();
    sent.sort_unstable();
    let q = |v: &[f64], f: f64| -> Option<f64> {
        if v.is_empty() {
            None
        } else {
            Some(v[((f * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
        }
    };
    let errors: Vec<&String> = ends
        .iter()
        .filter_map(|e| e.error.as_ref())
        .take(3)
        .collect();
    json!({
        "connected": connected,
        "connect_errors": ends.len() - connected,
        "connect_error_examples": errors,
        "closed": closed.len(),
        "still_open": connected - closed.len(),
        "resets": ends.iter().filter(|e| e.reset).count(),
        "statuses": statuses,
        "closed_min_s": closed.first(),
        "closed_median_s": q(&closed, 0.5),
        "closed_max_s": closed.last(),
        "sent_median_bytes": client::pct(&sent, 0.5),
        "sent_max_bytes": sent.last(),
    })
}

// ---------------------------------------------------------------------------------------------
// Name flood.

/// One CONNECT tunnel to `host:port` from `src`, one 32-byte exchange with the one-shot backend,
/// then wait for its close.
async fn tunnel_once(
    src: Ipv4Addr,
    proxy: SocketAddr,
    host: &str,
    port: u16,
    t: Duration,
) -> io::Result<()> {
    tokio::time::timeout(t * 3, async {
        let mut s = connect_from(src, proxy, t).await?;
        let req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(other("CONNECT response head too large"));
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(other("proxy closed during CONNECT"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        match status_of(&head) {
            Some(200) => {}
            Some(code) => return Err(other(format!("CONNECT refused: {code}"))),
            None => return Err(other("CONNECT: no status line")),
        }
        client::exchange(&mut s, MSG, t).await?;
        client::drain_eof(&mut s, t).await;
        Ok(())
    })
    .await
    .map_err(|_| other("tunnel timed out"))?
}

async fn name_flood(o: &Opts, deadline: Instant, out: &mut serde_json::Map<String, Value>) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for w in 0..o.parallel.max(1) {
        let (next, errors, ok) = (next.clone(), errors.clone(), ok.clone());
        let src = o.sources[w % o.sources.len()];
        let (proxy, suffix, port, t, count) = (
            o.proxy,
            o.wild_suffix.clone(),
            o.wild_port,
            o.op_timeout,
            o.count,
        );
        tasks.push(tokio::spawn(async move {
            while let Some(i) = client::claim(&next, count, deadline) {
                let host = format!("n{i}.{suffix}");
                match tunnel_once(src, proxy, &host, port, t).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut m) = errors.lock() {
                            let k = e.to_string();
                            let k = if m.len() >= 16 && !m.contains_key(&k) {
                                "other".to_string()
                            } else {
                                k
                            };
                            *m.entry(k).or_default() += 1;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let flood_s = t0.elapsed().as_secs_f64();
    let attempted = next.load(Ordering::Relaxed).min(o.count);
    let errors = errors.lock().map(|m| m.clone()).unwrap_or_default();
    out.insert("names_attempted".into(), json!(attempted));
    out.insert("names_ok".into(), json!(ok.load(Ordering::Relaxed)));
    out.insert("names_failed".into(), json!(errors.values().sum::<u64>()));
    out.insert("name_errors".into(), json!(errors));
    out.insert("flood_s".into(), json!(flood_s));
}

// ---------------------------------------------------------------------------------------------

fn sleep_bounded(d: Duration, deadline: Instant) -> tokio::time::Sleep {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(d.min(left))
}

/// Runs one scenario and prints its result as one JSON line.
pub async fn run(o: Opts) -> io::Result<()> {
    check_loopback(&o.proxy)?;
    if let Some(a) = &o.admin {
        check_loopback(a)?;
    }
    if o.sources.is_empty() {
        return Err(other("--sources is empty"));
    }
    if let Some(bad) = o.sources.iter().find(|ip| !ip.is_loopback()) {
        return Err(other(format!("source {bad} is not a loopback address")));
    }
    let start = Instant::now();
    let deadline = start + o.time_limit;

    let normal = Normal::start(&o)?;
    sleep_bounded(o.lead, deadline).await;

    let m0 = scrape_opt(&o).await;
    let s0 = snap(o.pid);
    let dns0 = dns_stats(&o.dns_stats);
    let sampler = Sampler::start(o.pid, o.time_limit);
    normal.phase(ATTACK);
    let t_attack = Instant::now();

    let mut out = serde_json::Map::new();
    out.insert("test".into(), json!("attack"));
    out.insert("kind".into(), json!(o.kind.name()));
    out.insert("label".into(), json!(o.label));
    out.insert("count".into(), json!(o.count));
    out.insert("sources".into(), json!(o.sources));

    let mut idle_window = Value::Null;
    match o.kind {
        Kind::SlowlorisGet | Kind::BigHead => {
            let gate = Arc::new(Semaphore::new(o.parallel.max(1)));
            let hold = o
                .hold
                .min(deadline.saturating_duration_since(Instant::now()));
            let first = format!("GET http://{t}/ HTTP/1.1\r\nHost: {t}\r\n", t = o.target);
            let first = Arc::new(first.into_bytes());
            let mut pad = Vec::new();
            for k in 0..64 {
                pad.extend_from_slice(format!("X-Pad-{k}: x\r\n").as_bytes());
            }
            let pad = Arc::new(pad);
            let prefix = Arc::new([&first[..], b"X-Big: "].concat());
            let mut ends = Vec::with_capacity(o.count);
            let mut waves = 0usize;
            // Waves of `count` connections at once, until `repeat_for` has passed (one at least).
            while waves == 0
                || (t_attack.elapsed() < o.repeat_for && waves < 1000 && Instant::now() < deadline)
            {
                waves += 1;
                let mut tasks = Vec::with_capacity(o.count);
                for i in 0..o.count {
                    if o.kind != Kind::SlowlorisGet {
                        tasks.push(tokio::spawn(big_head_conn(
                            o.sources[i % o.sources.len()],
                            o.proxy,
                            prefix.clone(),
                            o.head_bytes,
                            hold,
                            o.op_timeout,
                            gate.clone(),
                        )));
                        continue;
                    }
                    tasks.push(tokio::spawn(slowloris_conn(
                        o.sources[i % o.sources.len()],
                        o.proxy,
                        first.clone(),
                        pad.clone(),
                        o.trickle,
                        hold,
                        o.op_timeout,
                        gate.clone(),
                    )));
                }
                for t in tasks {
                    ends.push(t.await.unwrap_or_else(|e| End {
                        error: Some(e.to_string()),
                        ..End::default()
                    }));
                }
            }
            match o.kind {
                Kind::SlowlorisGet => {
                    out.insert("trickle_s".into(), json!(o.trickle.as_secs_f64()))
                }
                _ => out.insert("head_bytes".into(), json!(o.head_bytes)),
            };
            out.insert("waves".into(), json!(waves));
            out.insert("hold_s".into(), json!(hold.as_secs_f64()));
            out.insert("conns".into(), summarize(&ends));
        }
        Kind::NameFlood => {
            name_flood(&o, deadline, &mut out).await;
            // Let the last answers land and the DNS server's counters catch up.
            sleep_bounded(Duration::from_secs(1), deadline).await;
            let i0 = snap(o.pid);
            let mi0 = scrape_opt(&o).await;
            let q0 = dns_stats(&o.dns_stats);
            let dns_f = q0.clone();
            normal.phase(IDLE);
            let t_idle = Instant::now();
            sleep_bounded(o.idle, deadline).await;
            let idle_s = t_idle.elapsed().as_secs_f64();
            let i1 = snap(o.pid);
            let mi1 = scrape_opt(&o).await;
            // The stats file is rewritten every 100 ms: read it once it covers the window.
            tokio::time::sleep(Duration::from_millis(250)).await;
            let q1 = dns_stats(&o.dns_stats);
            out.insert("dns_flood".into(), dns_delta(&dns0, &dns_f));
            let refreshes = match (&mi0, &mi1) {
                (Some(a), Some(b)) => metric(b, "carousel_dns_refreshes_total")
                    .zip(metric(a, "carousel_dns_refreshes_total"))
                    .map(|(b, a)| b - a),
                _ => None,
            };
            idle_window = json!({
                "idle_s": idle_s,
                "dns": dns_delta(&q0, &q1),
                "refreshes": refreshes,
                "metrics_start": dns_metrics(&mi0),
                "metrics_end": dns_metrics(&mi1),
                "proxy_cpu_s": cpu_between(i0, i1),
                "proxy_fds_start": i0.fds,
                "proxy_fds_end": i1.fds,
                "proxy_rss_start_kib": i0.rss_kib,
                "proxy_rss_end_kib": i1.rss_kib,
            });
        }
    }
    let attack_s = t_attack.elapsed().as_secs_f64();
    let s1 = snap(o.pid);
    normal.phase(AFTER);
    // Let the proxy release what the attack made it hold, then read it again.
    sleep_bounded(o.lead, deadline).await;
    let (rss_peak, fds_peak) = sampler.finish().await;
    let s2 = snap(o.pid);
    let m2 = scrape_opt(&o).await;
    let normal = normal.finish();

    out.insert("attack_s".into(), json!(attack_s));
    out.insert("idle_window".into(), idle_window);
    out.insert(
        "proxy".into(),
        json!({
            "rss_before_kib": s0.rss_kib, "rss_peak_kib": o.pid.map(|_| rss_peak),
            "rss_end_of_attack_kib": s1.rss_kib, "rss_after_kib": s2.rss_kib,
            "fds_before": s0.fds, "fds_peak": o.pid.map(|_| fds_peak),
            "fds_end_of_attack": s1.fds, "fds_after": s2.fds,
            "cpu_s_attack": cpu_between(s0, s1),
        }),
    );
    out.insert("dns_metrics_after".into(), dns_metrics(&m2));
    out.insert("outcomes".into(), outcome_delta(&m0, &m2));
    out.insert("normal".into(), normal);
    out.insert("elapsed_s".into(), json!(start.elapsed().as_secs_f64()));
    println!("{}", Value::Object(out));
    Ok(())
}
