//! Scale-out behind a load balancer: real HAProxy (Debian) in front of two carousel replicas
//! with the PROXY protocol (v2 and v1), the client's identity through it, refusals of bad or
//! untrusted headers, many users behind one address, and a replica that cannot bind.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::proxy::{free_port, Carousel};
use support::{Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    s.connect(to).await
}

/// CONNECT to `target` from `src` through `proxy`; the status line, or the error.
async fn connect_status(src: Ipv4Addr, proxy: SocketAddr, target: &str) -> String {
    let work = async {
        let mut s: TcpStream = connect_from(src, proxy).await.map_err(|e| e.to_string())?;
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if line.starts_with("HTTP/1.1 200") {
            s.write_all(b"WHO\n").await.map_err(|e| e.to_string())?;
            let mut who = String::new();
            s.read_to_string(&mut who)
                .await
                .map_err(|e| e.to_string())?;
            return Ok::<String, String>(format!("200 {}", who.trim()));
        }
        Ok(line)
    };
    timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()))
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Access: only the client 127.0.0.2 may go to the backends.
const ONLY_127_0_0_2: &str = r#"
[access]
allow_clients = ["127.0.0.0/8"]

[[access.rule]]
name = "office"
action = "allow"
clients = ["127.0.0.2/32"]
destinations = ["127.0.0.0/8"]
"#;

/// HAProxy in TCP mode in front of `replicas`, sending `send_proxy` (`send-proxy-v2` or
/// `send-proxy`), checking them every 200 ms; killed on drop.
struct Haproxy {
    child: tokio::process::Child,
    front: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Haproxy {
    async fn start(replicas: &[SocketAddr], send_proxy: &str) -> Haproxy {
        let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = std::env::temp_dir().join(format!(
            "carousel-haproxy-{}-{}",
            std::process::id(),
            front.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!("    server r{i} {r} {send_proxy} check inter 200 fall 2 rise 2\n")
            })
            .collect();
        // The deploy example (deploy/haproxy/haproxy.cfg) with test timings.
        let cfg = format!(
            "global\n    maxconn 5000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch\n\
             frontend proxy\n    bind {front}\n    default_backend carousel\n\
             backend carousel\n    balance roundrobin\n    option tcp-check\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy runs (Debian haproxy)");
        for _ in 0..200 {
            if TcpStream::connect(front).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Haproxy {
            child,
            front,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

const PROXY_V2: &str = "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1/32\"]";
const PROXY_V1: &str = "proxy_protocol = \"v1\"\ntrusted_proxies = [\"127.0.0.1/32\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_of_two_replicas_passes_the_client_and_fails_over() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let target = format!("127.0.0.11:{port}");
    for (keys, send) in [(PROXY_V2, "send-proxy-v2"), (PROXY_V1, "send-proxy")] {
        let r1 = Carousel::start_custom(dns.addr(), ONLY_127_0_0_2, keys, "").await;
        let mut r2 = Carousel::start_custom(dns.addr(), ONLY_127_0_0_2, keys, "").await;
        let ha = Haproxy::start(&[r1.http, r2.http], send).await;
        // The rule allows 127.0.0.2 only: the client behind HAProxy is that address, not
        // HAProxy's own 127.0.0.1.
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(connect_status(ip4(2), ha.front, &target).await);
        }
        assert!(
            answers.iter().all(|a| a == "200 b11"),
            "{send}: {answers:?}"
        );
        let refused = connect_status(ip4(3), ha.front, &target).await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{send}: {refused}");
        // Both replicas served (round robin), and their access logs name the real client.
        for r in [&r1, &r2] {
            assert!(
                r.wait_log("127.0.0.2 - connect").await,
                "{send}:\n{}",
                r.log_text()
            );
        }
        assert!(
            r1.wait_log("127.0.0.3 - connect").await || r2.wait_log("127.0.0.3 - connect").await
        );
        // Kill one replica during a bounded client loop: failures only while HAProxy detects it.
        r2.signal("KILL");
        let _ = r2.wait_exit(Duration::from_secs(5)).await;
        let killed = Instant::now();
        let (mut failed_early, mut failed_late, mut ok) = (0, 0, 0);
        for _ in 0..40 {
            let a = connect_status(ip4(2), ha.front, &target).await;
            let late = killed.elapsed() > Duration::from_millis(1500);
            match (a == "200 b11", late) {
                (true, _) => ok += 1,
                (false, false) => failed_early += 1,
                (false, true) => failed_late += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("{send}: {ok} ok, {failed_early} failed while HAProxy detected the kill, {failed_late} after");
        assert_eq!(
            failed_late, 0,
            "{send}: requests failed after HAProxy marked the replica down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_untrusted_and_slow_headers_are_closed_and_counted() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    // Trusted balancer: 127.0.0.1 only; the header is v1.
    let proxy =
        Carousel::start_custom(dns.addr(), support::proxy::DEFAULT_ACCESS, PROXY_V1, "").await;
    let rejected =
        |reason: &str| format!("carousel_proxy_protocol_rejected_total{{reason=\"{reason}\"}}");
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for r in ["untrusted", "malformed", "version", "timeout"] {
            v.push(proxy.metric(&rejected(r)).await);
        }
        v
    };
    /// Closed by carousel without a byte of reply (an EOF, or a reset for unread input).
    async fn closed_silently(mut s: TcpStream, bytes: &[u8]) -> bool {
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        match timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
            Ok(Ok(_)) => out.is_empty(),
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset && out.is_empty(),
            Err(_) => false,
        }
    }
    let v2 =
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x02\x7f\x00\x00\x01\x9c\x40\x0c\x38";
    // From an untrusted address (127.0.0.5), even a well-formed header.
    let s = connect_from(ip4(5), proxy.http).await.unwrap();
    assert!(closed_silently(s, b"PROXY TCP4 127.0.0.2 127.0.0.1 1 2\r\n").await);
    // Garbage, a v2 header on a v1 listener, a truncated header (then EOF).
    for bytes in [&b"GET / HTTP/1.1\r\n\r\n"[..], v2, b"PROXY TCP4 127.0.0.2"] {
        let s = connect_from(ip4(1), proxy.http).await.unwrap();
        let mut s2 = s;
        let _ = s2.write_all(bytes).await;
        if bytes.starts_with(b"PROXY TCP4 127.0.0.2") {
            let _ = s2.shutdown().await;
        }
        assert!(closed_silently(s2, b"").await, "{bytes:?}");
    }
    // A slow header: a byte a second, past the 1 s handshake timeout.
    let mut slow = connect_from(ip4(1), proxy.http).await.unwrap();
    let started = Instant::now();
    for b in b"PROXY TCP4 127.0.0.2 ".iter() {
        if slow.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(closed_silently(slow, b"").await);
    let mut after = Vec::new();
    for r in ["untrusted", "malformed", "version", "timeout"] {
        after.push(proxy.metric(&rejected(r)).await);
    }
    assert!(
        after[0] - before[0] >= 1.0,
        "untrusted {before:?} -> {after:?}"
    );
    assert!(
        after[1] - before[1] >= 1.0,
        "malformed {before:?} -> {after:?}"
    );
    assert!(
        after[2] - before[2] >= 1.0,
        "version {before:?} -> {after:?}"
    );
    assert!(
        after[3] - before[3] >= 2.0,
        "timeout {before:?} -> {after:?}"
    );
    // The next client with a good header is served, as the address it names.
    let mut s = connect_from(ip4(1), proxy.http).await.unwrap();
    s.write_all(format!("PROXY TCP4 127.0.0.7 127.0.0.1 40000 3128\r\nCONNECT 127.0.0.11:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(s);
    assert!(
        proxy.wait_log("127.0.0.7 - connect").await,
        "{}",
        proxy.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_from_one_address_is_served_and_slow_handshakes_are_capped() {
    raise_open_file_limit();
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let proxy = Carousel::start(dns.addr(), "").await;
    // 2,000 tunnels opened at once from one address, with the default limits: all served.
    let mut tasks = Vec::new();
    for _ in 0..2000 {
        let socks = proxy.socks;
        tasks.push(tokio::spawn(async move {
            let t = tokio_socks::tcp::Socks5Stream::connect(
                socks,
                (Ipv4Addr::new(127, 0, 0, 11), port),
            );
            let mut s = timeout(Duration::from_secs(30), t).await.ok()?.ok()?;
            s.write_all(b"ECHO\nx").await.ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            Some(s)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            open.push(s);
        }
    }
    assert_eq!(
        open.len(),
        2000,
        "tunnels served; refusals: {}",
        proxy
            .metric("carousel_overload_rejections_total{limit=\"handshakes_per_client\"}")
            .await
    );
    drop(open);
    // 500 connections from one address that never finish their handshake, opened one after the
    // other (so they are accepted in order): the first 256 are held, each of the 244 past the cap
    // is refused (closed at once, counted), while another client is served.
    let proxy = Carousel::start(dns.addr(), "[limits]\nmax_handshakes_per_client = 256\n").await;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(connect_from(ip4(20), proxy.socks).await.expect("connect"));
    }
    let series = "carousel_overload_rejections_total{limit=\"handshakes_per_client\"}";
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = proxy.metric(series).await;
        if counted >= 244.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 244.0, "over-cap handshakes counted");
    // Each over-cap connection is closed by carousel (EOF or reset) without a byte. The held ones
    // are closed later by the harness's 1 s handshake timeout, counted elsewhere.
    let mut closed = 0;
    for s in idle.iter_mut().skip(256) {
        let mut b = [0u8; 1];
        if let Ok(r) = timeout(Duration::from_secs(5), s.read(&mut b)).await {
            assert!(
                !matches!(r, Ok(n) if n > 0),
                "a refused connection got bytes"
            );
            closed += 1;
        }
    }
    assert_eq!(closed, 244, "over-cap connections closed");
    let mut other =
        tokio_socks::tcp::Socks5Stream::connect(proxy.socks, (Ipv4Addr::new(127, 0, 0, 11), port))
            .await
            .expect("another client is served");
    other.write_all(b"WHO\n").await.unwrap();
}

fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_busy_ports_exits_at_once_naming_the_address() {
    let dns = DnsServer::start().await;
    let first = Carousel::start(dns.addr(), "").await;
    let started = Instant::now();
    let out = timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
            .args(["run", "-c"])
            .arg(&first.config)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the second replica kept running")
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&first.http.to_string()) && err.contains("address already in use"),
        "{err}"
    );
}
