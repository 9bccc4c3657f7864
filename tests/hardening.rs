//! Regression tests for the adversarial pass (issue "Hardening"): IPv6 spellings of loopback,
//! the bounds of the forward path, client-chosen names, the drain, credential guessing and the
//! smaller SOCKS5 and limit answers. Each test fails on the code before the fix.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use support::proxy::Carousel;
use support::{Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Writes `bytes` to `addr` and reads until carousel closes (bounded: 10 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("carousel kept the connection open");
    out
}

fn status_of(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The SOCKS5 reply code for CONNECT to `atyp`+`addr`+`port` (no authentication).
async fn socks5_code(proxy: SocketAddr, addr: &[u8], port: u16) -> u8 {
    let mut req = vec![5, 1, 0, 5, 1, 0];
    req.extend_from_slice(addr);
    req.extend_from_slice(&port.to_be_bytes());
    let r = exchange(proxy, &req).await;
    r.get(3).copied().unwrap_or(0xEE)
}

/// Only `*` plus an explicit rule for `::1` itself: the one spelling a rule names is served, no
/// other spelling of loopback, and never `::`.
const STAR_AND_V6_LOOPBACK: &str = r#"
[access]
allow_clients = ["127.0.0.0/8", "::1/128"]

[[access.rule]]
name = "v6 loopback, named"
action = "allow"
destinations = ["::1/128"]

[[access.rule]]
name = "anything"
action = "allow"
destinations = ["*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_this_host_or_loopback_reaches_a_v6_loopback_server() {
    let dns = DnsServer::start().await;
    let (port, backends) = Backend::start_set(&[IpAddr::V6(Ipv6Addr::LOCALHOST)], &["v6"]).await;
    dns.set_aaaa("zero.test", &[Ipv6Addr::UNSPECIFIED], 30);
    dns.set_aaaa("mapped.test", &["::ffff:127.0.0.1".parse().unwrap()], 30);
    let proxy = Carousel::start_with_access(dns.addr(), STAR_AND_V6_LOOPBACK, "").await;
    // The control: the address the rule names is reachable.
    let ok = exchange(
        proxy.http,
        format!("GET http://[::1]:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_of(&ok).starts_with("HTTP/1.1 200"), "{ok:?}");
    let served = backends[0].hits();
    let spellings = [
        "[::]",
        "[::127.0.0.1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:0:7f00:1]",
        "[64:ff9b::7f00:1]",
        "zero.test",
        "mapped.test",
    ];
    for host in spellings {
        let forward = exchange(
            proxy.http,
            format!("GET http://{host}:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status_of(&forward).starts_with("HTTP/1.1 403"),
            "forward {host}: {}",
            status_of(&forward)
        );
        let connect = exchange(
            proxy.http,
            format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status_of(&connect).starts_with("HTTP/1.1 403"),
            "CONNECT {host}: {}",
            status_of(&connect)
        );
        if !host.starts_with('[') {
            // SOCKS4a carries names (address literals go as SOCKS5 ATYP 4 below).
            let r = exchange(proxy.socks, &support::socks4a_connect(host, port)).await;
            assert_eq!(r.get(1), Some(&0x5B), "SOCKS4a {host}: {r:?}");
        }
    }
    for v6 in ["::", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "::127.0.0.1"] {
        let ip: Ipv6Addr = v6.parse().unwrap();
        let mut addr = vec![4];
        addr.extend_from_slice(&ip.octets());
        assert_eq!(
            socks5_code(proxy.socks, &addr, port).await,
            0x02,
            "SOCKS5 [{v6}]"
        );
    }
    assert_eq!(
        socks5_code(proxy.socks, &[1, 0, 0, 0, 0], port).await,
        0x02,
        "SOCKS5 0.0.0.0"
    );
    assert_eq!(
        backends[0].hits(),
        served,
        "a refused spelling reached [::1]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_forward_head_is_cut_at_the_handshake_deadline() {
    let dns = DnsServer::start().await;
    // The harness sets server.handshake_timeout_ms = 1000.
    let proxy = Carousel::start(dns.addr(), "").await;
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    let head = b"GET http://127.0.0.11:9/ HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut closed = false;
    // One byte every 100 ms: Pingora's per-read timer would never fire.
    for &b in head.iter() {
        if s.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut one = [0u8; 1];
        match timeout(Duration::from_millis(100), s.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(
        closed,
        "a head trickled for {:?} was not cut",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut only after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_heads_have_the_connect_limits_and_hygiene() {
    let dns = DnsServer::start().await;
    let (port, backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let proxy = Carousel::start(dns.addr(), "").await;
    let url = format!("http://127.0.0.11:{port}/");
    let big = format!(
        "GET {url} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert!(status_of(&exchange(proxy.http, big.as_bytes()).await).starts_with("HTTP/1.1 431"));
    let mut many = format!("GET {url} HTTP/1.1\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-F{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert!(status_of(&exchange(proxy.http, many.as_bytes()).await).starts_with("HTTP/1.1 431"));
    // Smuggling shapes behind 100+ filler headers never reach the backend.
    let mut smuggle = format!("POST {url} HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n");
    for i in 0..120 {
        smuggle.push_str(&format!("X-F{i}: 1\r\n"));
    }
    smuggle.push_str("\r\nabc");
    let r = exchange(proxy.http, smuggle.as_bytes()).await;
    assert!(status_of(&r).starts_with("HTTP/1.1 4"), "{}", status_of(&r));
    let clte = format!(
        "POST {url} HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert!(status_of(&exchange(proxy.http, clte.as_bytes()).await).starts_with("HTTP/1.1 400"));
    assert_eq!(backends[0].hits(), 0, "a refused head reached the backend");
    // The same hygiene on CONNECT heads.
    let connect = format!(
        "CONNECT 127.0.0.11:{port} HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    );
    assert!(status_of(&exchange(proxy.http, connect.as_bytes()).await).starts_with("HTTP/1.1 400"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_forward_head_is_logged_and_counted_and_host_case_is_not_a_mismatch() {
    let dns = DnsServer::start().await;
    dns.set_a("b1.test", &[ip4(11)], 30);
    let (port, backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let proxy = Carousel::start(dns.addr(), "").await;
    let bad = [
        format!("GET http://b1.test:{port}/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        format!("GET http://u:p@b1.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://b1.test:{port}/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n"),
        format!("GET http://b1.test:{port}/ HTTP/1.1\r\nHost: u@b1.test\r\n\r\n"),
        format!(
            "GET http://b1.test:{port}/ HTTP/1.1\r\nConnection: keep-alive\r\n\r\nGET http://b1.test:{port}/ HTTP/1.1\r\n\r\n"
        ),
    ];
    let before = proxy
        .metric(r#"carousel_requests_total{outcome="bad_request",protocol="http"}"#)
        .await;
    for req in &bad {
        let r = exchange(proxy.http, req.as_bytes()).await;
        assert!(
            status_of(&r).starts_with("HTTP/1.1 400"),
            "{req:?}: {}",
            status_of(&r)
        );
    }
    let after = proxy
        .metric(r#"carousel_requests_total{outcome="bad_request",protocol="http"}"#)
        .await;
    assert_eq!(after - before, bad.len() as f64, "refusals not counted");
    let lines = proxy
        .wait_log_lines("outcome=bad_request", bad.len())
        .await
        .lines()
        .filter(|l| l.contains(" http ") && l.contains("outcome=bad_request"))
        .count();
    assert_eq!(lines, bad.len(), "{}", proxy.log_text());
    assert_eq!(backends[0].hits(), 0);
    // Host differing from the authority only in case (or at all) is replaced by the authority.
    let r = exchange(
        proxy.http,
        format!(
            "GET http://b1.test:{port}/ HTTP/1.1\r\nHost: B1.TEST:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        status_of(&r).starts_with("HTTP/1.1 200"),
        "{}",
        status_of(&r)
    );
    assert!(
        backends[0]
            .last_request_head()
            .to_ascii_lowercase()
            .contains(&format!("host: b1.test:{port}\r\n")),
        "{}",
        backends[0].last_request_head()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_504_and_is_logged_as_a_timeout() {
    let dns = DnsServer::start().await;
    let silent = TcpListener::bind("127.0.0.12:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let proxy = Carousel::start(dns.addr(), "[forward]\nresponse_timeout_ms = 500\n").await;
    let started = Instant::now();
    let r = exchange(
        proxy.http,
        format!("GET http://127.0.0.12:{port}/ HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        status_of(&r).starts_with("HTTP/1.1 504"),
        "{}",
        status_of(&r)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        proxy
            .metric(r#"carousel_requests_total{outcome="timeout",protocol="http"}"#)
            .await,
        1.0
    );
    assert!(proxy.wait_log("outcome=timeout status=504").await);
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_nobody_asks_for_again_cost_no_background_work_and_are_bounded() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    const NAMES: usize = 300;
    for i in 0..NAMES {
        dns.set_a(&format!("n{i}.wild.test"), &[ip4(11)], 2);
    }
    let proxy = Carousel::start(dns.addr(), "").await;
    // dns.max_names is part of [dns], which the harness writes: rewrite and restart is heavier
    // than needed, so the bound is checked against the harness default below and by the unit test.
    for i in 0..NAMES {
        let name = format!("n{i}.wild.test");
        let mut s = TcpStream::connect(proxy.socks).await.unwrap();
        let mut bytes = vec![5, 1, 0];
        bytes.extend(support::socks5_connect(&name, port));
        s.write_all(&bytes).await.unwrap();
        let mut reply = [0u8; 12];
        timeout(Duration::from_secs(10), s.read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply[3], 0, "{name}: {reply:?}");
    }
    let queries = dns.queries();
    // Three TTLs later (min_ttl 1 s, TTL 2 s): no refresh of names nobody asked for again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        proxy.metric("carousel_dns_refreshes_total").await,
        0.0,
        "names were refreshed"
    );
    assert_eq!(dns.queries(), queries, "DNS was asked in the background");
    assert_eq!(proxy.metric("carousel_dns_names").await, NAMES as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_accepting_through_the_grace_period_and_tunnels_get_the_timeout() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let target = (Ipv4Addr::new(127, 0, 0, 11), port);
    let mut proxy = Carousel::start(dns.addr(), "").await;
    let mut tunnel = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, target)
        .await
        .unwrap();
    tunnel.write_all(b"ECHO\n").await.unwrap();
    // Harness: grace_period_seconds = 1, graceful_shutdown_timeout_seconds = 1.
    proxy.signal("TERM");
    let sent = Instant::now();
    let mut ready = 0;
    for _ in 0..50 {
        ready = proxy.admin_get("/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503, "/readyz did not turn 503 on SIGTERM");
    // During the grace period a new client is still served.
    let mut late = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, target)
        .await
        .expect("a new client during the grace period was refused");
    late.write_all(b"WHO\n").await.unwrap();
    let mut who = String::new();
    late.read_to_string(&mut who).await.unwrap();
    assert_eq!(who.trim(), "b11");
    assert!(sent.elapsed() < Duration::from_secs(1));
    // Past the grace period the open tunnel still carries bytes (the shutdown timeout).
    let wait = Duration::from_millis(1300).saturating_sub(sent.elapsed());
    tokio::time::sleep(wait).await;
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(Duration::from_secs(2), tunnel.read_exact(&mut buf))
        .await
        .expect("tunnel stalled after the grace period")
        .expect("tunnel closed before grace + timeout");
    assert_eq!(&buf, b"ping");
    // New connections are refused once the grace period is over.
    assert!(
        TcpStream::connect(proxy.socks).await.is_err()
            || proxy.wait_exit(Duration::from_millis(1)).await.is_some()
            || sent.elapsed() < Duration::from_secs(1),
        "listener still accepting after the grace period"
    );
    let code = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(code.is_some(), "carousel did not exit");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "exited before grace + timeout"
    );
    // The tunnel the shutdown closed has its line, with its bytes (issue 26, item 4: tunnels
    // the drain closed were never logged).
    let log = proxy.log_text();
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("outcome=shutdown"))
        .collect();
    // Both tunnels were still open: the first ("ECHO\n" and "ping" up, "ping" down) and the
    // late one, half-closed ("WHO\n" up, "b11\n" down).
    assert_eq!(closed.len(), 2, "{log}");
    assert!(
        closed.iter().any(|l| l.contains(" up=9 down=4 ")),
        "{closed:#?}"
    );
    assert!(
        closed.iter().any(|l| l.contains(" up=4 down=4 ")),
        "{closed:#?}"
    );
}

/// Basic credentials for `alice` with `password`.
fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// A connection from `src` that carousel has admitted (its SOCKS5 greeting was answered).
async fn admitted_from(src: Ipv4Addr, socks: SocketAddr) -> TcpStream {
    let mut s = connect_from(src, socks).await;
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0]);
    s
}

async fn connect_with(src: Ipv4Addr, proxy: SocketAddr, target: &str, password: &str) -> String {
    connect_with_user(src, proxy, target, "alice", password).await
}

/// A CONNECT from `src` as `user`: the status line.
async fn connect_with_user(
    src: Ipv4Addr,
    proxy: SocketAddr,
    target: &str,
    user: &str,
    password: &str,
) -> String {
    let mut s = connect_from(src, proxy).await;
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
        basic(user, password)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guessing_spends_one_budget_and_spares_other_clients() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let dir = std::env::temp_dir().join(format!("carousel-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("htpasswd");
    std::fs::write(
        &users,
        format!(
            "alice:{}\nbob:{}\n",
            bcrypt::hash("right", 4).unwrap(),
            bcrypt::hash("bobs", 4).unwrap()
        ),
    )
    .unwrap();
    let access = format!(
        r#"
[access]
allow_clients = ["127.0.0.0/8"]
users_file = "{}"
max_auth_failures_per_minute = 10

[[access.rule]]
action = "allow"
users = ["alice", "bob"]
destinations = ["127.0.0.0/8"]
"#,
        users.display()
    );
    let proxy = Carousel::start_with_access(dns.addr(), &access, "").await;
    let target = format!("127.0.0.11:{port}");
    // 60 guesses, 30 at a time, from one address.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let (p, t) = (proxy.http, target.clone());
            tasks.push(tokio::spawn(async move {
                connect_with(ip4(2), p, &t, "guess").await
            }));
        }
        for t in tasks {
            answers.push(t.await.unwrap());
        }
    }
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 407")),
        "{answers:?}"
    );
    let checked = proxy.metric("carousel_auth_failures_total").await;
    let throttled = proxy.metric("carousel_auth_throttled_total").await;
    // The budget refills at 10/min: at most one more check per 6 s of test time.
    assert!(
        (10.0..=12.0).contains(&checked),
        "{checked} bcrypt-checked guesses"
    );
    assert_eq!(checked + throttled, 60.0);
    // Another client logs in at once, and the guesser's right password waits for the budget.
    let started = Instant::now();
    assert!(connect_with(ip4(3), proxy.http, &target, "right")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(connect_with(ip4(2), proxy.http, &target, "right")
        .await
        .starts_with("HTTP/1.1 407"));
    // A colleague behind the guesser's address (an office NAT) is not locked out (issue 26,
    // item 5: the right password got 407 there).
    assert!(
        connect_with_user(ip4(2), proxy.http, &target, "bob", "bobs")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_answers_every_malformed_step_and_limits_answer_in_the_right_protocol() {
    let dns = DnsServer::start().await;
    let proxy = Carousel::start(dns.addr(), "[limits]\nmax_connections_per_client = 1\n").await;
    // Version byte 4 in the request after a SOCKS5 greeting: general failure.
    let r = exchange(proxy.socks, &[5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 11, 0, 80]).await;
    assert_eq!(&r[..4], &[5, 0, 5, 1], "{r:?}");
    // Over the per-client limit (one connection held open): an optimistic SOCKS5 client, greeting
    // and request in one write, is answered at once.
    let _held = admitted_from(ip4(5), proxy.socks).await;
    let mut s = connect_from(ip4(5), proxy.socks).await;
    let started = Instant::now();
    s.write_all(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 11, 0, 80])
        .await
        .unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&out[..4], &[5, 0, 5, 1], "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal took {:?}",
        started.elapsed()
    );
    // An over-limit CONNECT is counted as a CONNECT.
    let _held_http = admitted_from(ip4(6), proxy.socks).await;
    let mut c = connect_from(ip4(6), proxy.http).await;
    c.write_all(b"CONNECT 127.0.0.11:80 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        status_of(&out).starts_with("HTTP/1.1 503"),
        "{}",
        status_of(&out)
    );
    assert_eq!(
        proxy
            .metric(r#"carousel_requests_total{outcome="overload",protocol="connect"}"#)
            .await,
        1.0
    );
}

/// An upstream on 127.0.0.17 that reads each request head and then answers with `answer`
/// (bounded: it stops at the first write error or after 10,000 writes).
async fn raw_upstream(
    answer: fn(u32) -> Option<Vec<u8>>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.17:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                for i in 0..10_000 {
                    let Some(bytes) = answer(i) else { return };
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Hardening (issue 26, item 10): an upstream could stream 1xx responses for ever, a 200 KB
/// response head was forwarded (the request side stops at 16 KiB), and a response whose body
/// broke off was logged `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_path_bounds_1xx_and_response_heads_and_a_cut_body_is_an_error() {
    let dns = DnsServer::start().await;
    let proxy = Carousel::start(dns.addr(), "").await;
    let get = |addr: SocketAddr| {
        format!("GET http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    };
    // 1xx for ever (10,000 of them at most, from the upstream's side).
    let (a, t1) = raw_upstream(|_| Some(b"HTTP/1.1 102 Processing\r\n\r\n".to_vec())).await;
    let started = Instant::now();
    let r = exchange(proxy.http, get(a).as_bytes()).await;
    let text = String::from_utf8_lossy(&r).to_string();
    assert!(
        text.contains("HTTP/1.1 502"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(
        text.matches("HTTP/1.1 102").count() <= 16,
        "more than 16 1xx relayed"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A 200 KB head.
    let (b, t2) = raw_upstream(|i| {
        (i == 0).then(|| {
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "a".repeat(200_000)
            )
            .into_bytes()
        })
    })
    .await;
    let r = exchange(proxy.http, get(b).as_bytes()).await;
    assert!(
        status_of(&r).starts_with("HTTP/1.1 502"),
        "{}",
        status_of(&r)
    );
    assert!(r.len() < 10_000, "{} bytes relayed", r.len());
    // A body cut short: 500 of 1,000 bytes, then the upstream closes.
    let (c, t3) = raw_upstream(|i| {
        (i == 0).then(|| {
            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
            v.extend_from_slice(&[b'x'; 500]);
            v
        })
    })
    .await;
    let r = exchange(proxy.http, get(c).as_bytes()).await;
    assert!(
        status_of(&r).starts_with("HTTP/1.1 200"),
        "{}",
        status_of(&r)
    );
    assert!(r.len() < 1000 + 200, "the client got a whole body?");
    assert!(proxy.wait_log(&format!("{c} cluster=- member={c}")).await);
    let log = proxy.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("http {c}")))
        .unwrap_or("");
    assert!(
        line.contains("outcome=error") && line.contains("status=200"),
        "{line}"
    );
    assert_eq!(
        proxy
            .metric(r#"carousel_requests_total{outcome="ok",protocol="http"}"#)
            .await,
        0.0,
        "a failed forward was counted ok"
    );
    for t in [t1, t2, t3] {
        t.abort();
    }
}
