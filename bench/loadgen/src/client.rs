//! The measuring side: opens tunnels directly, through an HTTP CONNECT proxy or through a SOCKS5
//! proxy (remote name resolution), and runs the throughput, rate, latency and idle tests. Every
//! loop is bounded by a count and a deadline; every network operation has a timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;

use crate::procfs;

/// The next job index for a worker, or `None` once `count` are handed out or `deadline` has
/// passed: how every load loop shares out its bounded work.
pub fn claim(next: &AtomicUsize, count: usize, deadline: Instant) -> Option<usize> {
    if Instant::now() >= deadline {
        return None;
    }
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < count).then_some(i)
}

/// How the client reaches the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Straight to the backend's IP address (the baseline).
    Direct,
    /// HTTP CONNECT through an HTTP proxy.
    Connect,
    /// SOCKS5 CONNECT with a domain-name address (the proxy resolves).
    Socks5,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Connect => "connect",
            Mode::Socks5 => "socks5",
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Client {
    pub mode: Mode,
    pub proxy: Option<SocketAddr>,
    /// Rotated per connection. Direct: socket addresses; proxies: `host:port`.
    pub targets: Vec<(String, u16)>,
    pub op_timeout: Duration,
}

pub(crate) fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Only loopback destinations are ever dialled.
pub(crate) fn check_loopback(addr: &SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(other(format!("refusing non-loopback address {addr}")))
    }
}

impl Client {
    pub fn new(
        mode: Mode,
        proxy: Option<SocketAddr>,
        target: &str,
        op_timeout: Duration,
    ) -> io::Result<Client> {
        let mut targets = Vec::new();
        for t in target.split(',').filter(|t| !t.is_empty()) {
            let (host, port) = t
                .rsplit_once(':')
                .ok_or_else(|| other(format!("target {t:?} is not host:port")))?;
            let port: u16 = port.parse().map_err(other)?;
            if mode == Mode::Direct {
                let addr: SocketAddr = t.parse().map_err(other)?;
                check_loopback(&addr)?;
            }
            targets.push((host.to_string(), port));
        }
        if targets.is_empty() {
            return Err(other("no target"));
        }
        match (mode, proxy) {
            (Mode::Direct, _) => {}
            (_, Some(p)) => check_loopback(&p)?,
            (_, None) => return Err(other("--proxy is required for connect and socks5")),
        }
        Ok(Client {
            mode,
            proxy,
            targets,
            op_timeout,
        })
    }

    /// Opens tunnel number `i` (targets are rotated by `i`), ready for payload bytes.
    pub async fn open(&self, i: usize) -> io::Result<TcpStream> {
        tokio::time::timeout(self.op_timeout, self.open_inner(i))
            .await
            .map_err(|_| other("open timed out"))?
    }

    async fn open_inner(&self, i: usize) -> io::Result<TcpStream> {
        let (host, port) = &self.targets[i % self.targets.len()];
        match self.mode {
            Mode::Direct => {
                let addr: SocketAddr = format!("{host}:{port}").parse().map_err(other)?;
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(s)
            }
            Mode::Connect => {
                let mut s =
                    TcpStream::connect(self.proxy.ok_or_else(|| other("no proxy"))?).await?;
                s.set_nodelay(true)?;
                let req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
                s.write_all(req.as_bytes()).await?;
                // The backends never speak first, so nothing follows the response head.
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
                let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                let line = String::from_utf8_lossy(line);
                let ok = line.split_whitespace().nth(1) == Some("200");
                if !ok {
                    return Err(other(format!("CONNECT refused: {line}")));
                }
                Ok(s)
            }
            Mode::Socks5 => {
                let s = TcpStream::connect(self.proxy.ok_or_else(|| other("no proxy"))?).await?;
                s.set_nodelay(true)?;
                let s = Socks5Stream::connect_with_socket(s, (host.as_str(), *port))
                    .await
                    .map_err(other)?;
                Ok(s.into_inner())
            }
        }
    }
}

/// Writes `msg` and reads the same number of bytes back (echo backend).
pub(crate) async fn exchange(s: &mut TcpStream, msg: &[u8], t: Duration) -> io::Result<()> {
    tokio::time::timeout(t, async {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await?;
        if back != msg {
            return Err(other("echo mismatch"));
        }
        Ok(())
    })
    .await
    .map_err(|_| other("exchange timed out"))?
}

/// Waits (bounded) until the far side closes, so the backend, not this client, closes first and
/// keeps the TIME_WAIT socket. Any data is discarded.
pub(crate) async fn drain_eof(s: &mut TcpStream, t: Duration) {
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(t, async {
        while s.read(&mut scratch).await.unwrap_or(0) > 0 {}
    })
    .await;
}

/// The ping of the rate and latency tests: exactly the one-shot backend's message size.
pub(crate) const MSG: &[u8; 32] = b"carousel-bench ping 0123456789\r\n";

/// Percentile (nearest rank) of sorted microsecond samples.
pub(crate) fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

/// One tunnel plus one echo exchange, retried until it works or `limit` passes.
pub async fn probe(c: &Client, label: &str, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    for attempt in 0..10_000usize {
        match async {
            let mut s = c.open(attempt).await?;
            exchange(&mut s, MSG, c.op_timeout).await
        }
        .await
        {
            Ok(()) => {
                emit(json!({"test":"probe","label":label,"ok":true,"attempts":attempt + 1}));
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    emit(json!({"test":"probe","label":label,"ok":false,"error":last}));
    Err(other(format!("{label}: probe failed: {last}")))
}

/// Direction of a bulk transfer.
#[derive(Clone, Copy)]
enum Dir {
    /// Backend to client (source backend).
    Down,
    /// Client to backend (sink backend), length-prefixed.
    Up,
}

async fn transfer(s: &mut TcpStream, dir: Dir, bytes: u64) -> io::Result<Duration> {
    let mut buf = vec![0xa5u8; 256 * 1024];
    let start = Instant::now();
    match dir {
        Dir::Down => {
            s.write_all(&bytes.to_be_bytes()).await?;
            let mut got = 0u64;
            while got < bytes {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Err(other(format!("EOF after {got} of {bytes} bytes")));
                }
                got += n as u64;
            }
        }
        Dir::Up => {
            s.write_all(&bytes.to_be_bytes()).await?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await?;
            let got = u64::from_be_bytes(count);
            if got != bytes {
                return Err(other(format!("sink got {got} of {bytes} bytes")));
            }
        }
    }
    Ok(start.elapsed())
}

/// Throughput: `repeat` transfers of `bytes` each way over fresh tunnels; the proxy's CPU seconds
/// (process tree of `pid`) over the whole test.
pub async fn throughput(
    down: &Client,
    up: &Client,
    label: &str,
    bytes: u64,
    repeat: usize,
    pid: Option<i32>,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let cpu0 = pid.map(procfs::cpu_seconds);
    let machine0 = procfs::machine_ticks();
    let wall0 = Instant::now();
    let mut moved = 0u64;
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 0..repeat {
        for (k, dir, c) in [(0, Dir::Down, down), (1, Dir::Up, up)] {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let res = tokio::time::timeout(left, async {
                let mut s = c.open(r).await?;
                let t = transfer(&mut s, dir, bytes).await?;
                drain_eof(&mut s, c.op_timeout).await;
                Ok::<_, io::Error>(t)
            })
            .await
            .map_err(|_| other("throughput: time limit"))
            .and_then(|x| x);
            match res {
                Ok(t) => {
                    moved += bytes;
                    runs[k].push(bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64());
                }
                Err(e) => {
                    emit(json!({"test":"throughput_error","label":label,"error":e.to_string()}));
                }
            }
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let busy = procfs::busy_percent(machine0, procfs::machine_ticks());
    let cpu = match (pid, cpu0) {
        (Some(p), Some(c0)) => Some(procfs::cpu_seconds(p) - c0),
        _ => None,
    };
    let gib = moved as f64 / (1u64 << 30) as f64;
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    };
    emit(json!({
        "test": "throughput", "label": label, "mode": down.mode.name(),
        "bytes_each": bytes, "repeat": repeat, "bytes_total": moved, "wall_s": wall,
        "down_mib_s": runs[0], "up_mib_s": runs[1],
        "down_median_mib_s": median(&runs[0]), "up_median_mib_s": median(&runs[1]),
        "proxy_cpu_s": cpu,
        "proxy_cpu_s_per_gib": cpu.filter(|_| gib > 0.0).map(|c| c / gib),
        "machine_busy_pct": busy,
    }));
    Ok(())
}

/// Processes whose CPU time the rate test reads (each with its descendants).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPids {
    /// The proxy.
    pub proxy: Option<i32>,
    /// A second process, e.g. a balancer in front of the proxy.
    pub front: Option<i32>,
}

/// One rate cycle: open tunnel `i`, 32-byte echo, wait for the backend's close. The time until
/// the echo has arrived.
async fn rate_cycle(c: &Client, i: usize) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = c.open(i).await?;
    exchange(&mut s, MSG, c.op_timeout).await?;
    let answered = t.elapsed();
    drain_eof(&mut s, c.op_timeout).await;
    Ok(answered)
}

/// Connection rate: `count` (open tunnel, 32-byte echo, backend closes) cycles, sequential or
/// `concurrency` at a time; the per-cycle latency sample ends when the echo has arrived.
pub async fn rate(
    c: &Client,
    label: &str,
    count: usize,
    concurrency: usize,
    pids: CpuPids,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let concurrency = concurrency.clamp(1, 4096);
    let cpu0 = pids.proxy.map(procfs::cpu_seconds);
    let front0 = pids.front.map(procfs::cpu_seconds);
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let c = c.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut last_err = String::new();
            while let Some(i) = claim(&next, count, deadline) {
                match rate_cycle(&c, i).await {
                    Ok(answered) => lat.push(answered.as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        last_err = e.to_string();
                    }
                }
            }
            (lat, errors, last_err)
        }));
    }
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0usize;
    let mut last_err = String::new();
    for h in handles {
        let (l, e, le) = h.await.map_err(other)?;
        lat.extend(l);
        errors += e;
        if !le.is_empty() {
            last_err = le;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let used = |pid: Option<i32>, before: Option<f64>| match (pid, before) {
        (Some(p), Some(c0)) => Some(procfs::cpu_seconds(p) - c0),
        _ => None,
    };
    let cpu = used(pids.proxy, cpu0);
    let front = used(pids.front, front0);
    let done = lat.len();
    let per_conn = |x: Option<f64>| x.filter(|_| done > 0).map(|c| c * 1e6 / done as f64);
    lat.sort_unstable();
    emit(json!({
        "proxy_cpu_s": cpu,
        "proxy_cpu_us_per_conn": per_conn(cpu),
        "front_cpu_s": front,
        "front_cpu_us_per_conn": per_conn(front),
        "test": "rate", "label": label, "mode": c.mode.name(), "requested": count,
        "concurrency": concurrency,
        "done": lat.len(), "errors": errors, "last_error": last_err, "elapsed_s": elapsed,
        "per_s": lat.len() as f64 / elapsed,
        "p50_us": pct(&lat, 0.50), "p99_us": pct(&lat, 0.99),
    }));
    Ok(())
}

/// One path's share of a paired rate run.
#[derive(Default)]
struct PathStats {
    /// Whole cycles (open → echo → backend's close seen), microseconds.
    cycle_us: Vec<u64>,
    /// Open → echo, microseconds.
    answered_us: Vec<u64>,
    errors: usize,
    last_err: String,
}

impl PathStats {
    fn json(&mut self, label: &str, concurrency: usize) -> serde_json::Value {
        self.cycle_us.sort_unstable();
        self.answered_us.sort_unstable();
        let n = self.cycle_us.len();
        let total_s = self.cycle_us.iter().sum::<u64>() as f64 / 1e6;
        // Little's law: the rate these cycle times give with `concurrency` of them at once.
        let per_s = if total_s > 0.0 {
            concurrency as f64 * n as f64 / total_s
        } else {
            0.0
        };
        json!({
            "label": label, "done": n, "errors": self.errors, "last_error": self.last_err,
            "mean_cycle_us": if n > 0 { total_s * 1e6 / n as f64 } else { 0.0 },
            "per_s": per_s,
            "p50_us": pct(&self.answered_us, 0.50), "p99_us": pct(&self.answered_us, 0.99),
        })
    }
}

/// Paired connection rate: the cycles of `rate`, alternating between two paths (`a` for even
/// cycle numbers, `b` for odd), `concurrency` at a time, so both paths share the machine's state
/// at every moment. Each path's rate is its cycles over the time its cycles took (× concurrency);
/// `ratio_b_over_a` is b's rate ÷ a's.
pub async fn rate_paired(
    a: &Client,
    b: &Client,
    labels: (&str, &str),
    count: usize,
    concurrency: usize,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let concurrency = concurrency.clamp(1, 4096);
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (a, b) = (a.clone(), b.clone());
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut st = [PathStats::default(), PathStats::default()];
            while let Some(i) = claim(&next, count, deadline) {
                let (k, c) = if i.is_multiple_of(2) {
                    (0, &a)
                } else {
                    (1, &b)
                };
                let t = Instant::now();
                match rate_cycle(c, i / 2).await {
                    Ok(answered) => {
                        st[k].cycle_us.push(t.elapsed().as_micros() as u64);
                        st[k].answered_us.push(answered.as_micros() as u64);
                    }
                    Err(e) => {
                        st[k].errors += 1;
                        st[k].last_err = e.to_string();
                    }
                }
            }
            st
        }));
    }
    let mut st = [PathStats::default(), PathStats::default()];
    for h in handles {
        let got = h.await.map_err(other)?;
        for (k, g) in got.into_iter().enumerate() {
            st[k].cycle_us.extend(g.cycle_us);
            st[k].answered_us.extend(g.answered_us);
            st[k].errors += g.errors;
            if !g.last_err.is_empty() {
                st[k].last_err = g.last_err;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ja = st[0].json(labels.0, concurrency);
    let jb = st[1].json(labels.1, concurrency);
    let ratio = match (ja["per_s"].as_f64(), jb["per_s"].as_f64()) {
        (Some(x), Some(y)) if x > 0.0 => Some(y / x),
        _ => None,
    };
    emit(json!({
        "test": "rate_paired", "label": format!("{}+{}", labels.0, labels.1),
        "mode": a.mode.name(), "requested": count, "concurrency": concurrency,
        "elapsed_s": elapsed, "a": ja, "b": jb, "ratio_b_over_a": ratio,
    }));
    Ok(())
}

/// Latency under load: `concurrency` clients, each `count` cycles of (fresh tunnel, 32-byte echo,
/// close); the time of each whole cycle is one sample.
pub async fn latency(
    c: &Client,
    label: &str,
    concurrency: usize,
    count: usize,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let c = c.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut total = Vec::with_capacity(count);
            let mut xchg = Vec::with_capacity(count);
            let mut errors = 0usize;
            let mut last_err = String::new();
            for _ in 0..count {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let r = async {
                    let mut s = c.open(i).await?;
                    let t1 = Instant::now();
                    exchange(&mut s, MSG, c.op_timeout).await?;
                    let done = (t0.elapsed(), t1.elapsed());
                    drain_eof(&mut s, c.op_timeout).await;
                    Ok::<_, io::Error>(done)
                }
                .await;
                match r {
                    Ok((cycle, x)) => {
                        total.push(cycle.as_micros() as u64);
                        xchg.push(x.as_micros() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        last_err = e.to_string();
                    }
                }
            }
            (total, xchg, errors, last_err)
        }));
    }
    let mut total = Vec::new();
    let mut xchg = Vec::new();
    let mut errors = 0;
    let mut last_err = String::new();
    for h in handles {
        let (t, x, e, le) = h.await.map_err(other)?;
        total.extend(t);
        xchg.extend(x);
        errors += e;
        if !le.is_empty() {
            last_err = le;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.sort_unstable();
    xchg.sort_unstable();
    let mean = if total.is_empty() {
        0.0
    } else {
        total.iter().sum::<u64>() as f64 / total.len() as f64
    };
    emit(json!({
        "test": "latency", "label": label, "mode": c.mode.name(),
        "concurrency": concurrency, "per_client": count, "done": total.len(),
        "errors": errors, "last_error": last_err, "elapsed_s": elapsed,
        "per_s": total.len() as f64 / elapsed,
        "p50_us": pct(&total, 0.50), "p90_us": pct(&total, 0.90), "p99_us": pct(&total, 0.99),
        "max_us": total.last().copied().unwrap_or(0), "mean_us": mean,
        "exchange_p50_us": pct(&xchg, 0.50), "exchange_p99_us": pct(&xchg, 0.99),
    }));
    Ok(())
}

/// Failed opens after which the idle test stops opening more tunnels.
const MAX_IDLE_ERRORS: u64 = 64;

/// Memory per idle tunnel: warm up, measure the proxy tree, open `count` tunnels (each checked
/// with one echo), let the proxy settle, measure again, close everything, measure once more.
pub async fn idle(
    c: &Client,
    label: &str,
    pid: i32,
    count: usize,
    parallel: usize,
    settle: Duration,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    // Warm-up: lazily created state (DNS cache, worker pools, buffers) is not per-tunnel cost.
    for i in 0..64 {
        if let Ok(mut s) = c.open(i).await {
            let _ = exchange(&mut s, b"w", c.op_timeout).await;
            if s.write_all(b"Q").await.is_ok() {
                drain_eof(&mut s, c.op_timeout).await;
            }
        }
    }
    tokio::time::sleep(settle).await;
    let before = procfs::memory(pid);

    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let last_err = Arc::new(std::sync::Mutex::new(String::new()));
    let mut handles = Vec::new();
    let t_open = Instant::now();
    for _ in 0..parallel.max(1) {
        let c = c.clone();
        let next = next.clone();
        let errors = errors.clone();
        let last_err = last_err.clone();
        handles.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                // A proxy that stops accepting (e.g. out of descriptors) would otherwise cost an
                // op timeout per remaining tunnel: give up after MAX_IDLE_ERRORS failures.
                if errors.load(Ordering::Relaxed) >= MAX_IDLE_ERRORS {
                    break;
                }
                let Some(i) = claim(&next, count, deadline) else {
                    break;
                };
                let r = async {
                    let mut s = c.open(i).await?;
                    exchange(&mut s, b"x", c.op_timeout).await?;
                    Ok::<_, io::Error>(s)
                }
                .await;
                match r {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = last_err.lock() {
                            *l = e.to_string();
                        }
                    }
                }
            }
            held
        }));
    }
    let mut held = Vec::with_capacity(count);
    for h in handles {
        held.extend(h.await.map_err(other)?);
    }
    let open_s = t_open.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after = procfs::memory(pid);
    // Every tunnel must still work after the measurement (none was silently dropped).
    let mut alive = 0usize;
    for s in held.iter_mut().take(200) {
        if exchange(s, b"y", c.op_timeout).await.is_ok() {
            alive += 1;
        }
    }
    let opened = held.len();
    // Close: ask every backend to close first (`Q`), then wait (bounded) for the EOFs.
    let close_deadline = Instant::now() + Duration::from_secs(60);
    for s in held.iter_mut() {
        let _ = tokio::time::timeout(c.op_timeout, s.write_all(b"Q")).await;
    }
    for s in held.iter_mut() {
        let left = close_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        drain_eof(s, left.min(c.op_timeout)).await;
    }
    drop(held);
    tokio::time::sleep(settle).await;
    let closed = procfs::memory(pid);
    let per = |a: u64, b: u64| {
        if opened == 0 {
            0.0
        } else {
            (a as f64 - b as f64) * 1024.0 / opened as f64
        }
    };
    let last_err = last_err.lock().map(|l| l.clone()).unwrap_or_default();
    emit(json!({
        "test": "idle", "label": label, "mode": c.mode.name(), "requested": count,
        "opened": opened, "errors": errors.load(Ordering::Relaxed), "last_error": last_err,
        "gave_up": errors.load(Ordering::Relaxed) >= MAX_IDLE_ERRORS,
        "open_s": open_s, "checked_alive": alive,
        "rss_before_kib": before.rss_kib, "rss_after_kib": after.rss_kib,
        "rss_closed_kib": closed.rss_kib,
        "pss_before_kib": before.pss_kib, "pss_after_kib": after.pss_kib,
        "procs_before": before.procs, "procs_after": after.procs,
        "rss_per_tunnel_b": per(after.rss_kib, before.rss_kib),
        "pss_per_tunnel_b": per(after.pss_kib, before.pss_kib),
    }));
    Ok(())
}
