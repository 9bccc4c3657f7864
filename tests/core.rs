//! The core proxy end to end: a real DNS server (hickory-server), real backends on 127.0.0.x,
//! the real carousel binary, and real clients (curl in every proxy mode, tokio-socks, raw sockets).

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use support::proxy::Carousel;
use support::{blob_checksum, checksum, curl, Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const NAME: &str = "chat.cluster.test";
const TTL: u32 = 2;

struct Fixture {
    dns: DnsServer,
    port: u16,
    backends: Vec<Backend>,
    proxy: Carousel,
}

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// DNS with `chat.cluster.test` → 127.0.0.11/.12/.13 (and `.14` started but not published),
/// `v6.cluster.test` → ::1; backends named b11..b14 on one port; carousel in front.
async fn fixture() -> Fixture {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], TTL);
    dns.set_aaaa("v6.cluster.test", &[Ipv6Addr::LOCALHOST], TTL);
    let ips: Vec<IpAddr> = [11, 12, 13, 14]
        .iter()
        .map(|&i| IpAddr::V4(ip4(i)))
        .collect();
    let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13", "b14"]).await;
    let proxy = Carousel::start(dns.addr(), "").await;
    Fixture {
        dns,
        port,
        backends,
        proxy,
    }
}

/// The ways a client can reach `host:port/path` through carousel with curl.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Http,
    Connect,
    Socks4,
    Socks4a,
    Socks5,
    Socks5Hostname,
}

const NAME_MODES: [Mode; 4] = [
    Mode::Http,
    Mode::Connect,
    Mode::Socks4a,
    Mode::Socks5Hostname,
];

fn curl_args(mode: Mode, proxy: &Carousel, url: &str) -> Vec<String> {
    let http = format!("http://{}", proxy.http);
    let socks = proxy.socks.to_string();
    let v: Vec<&str> = match mode {
        Mode::Http => vec!["-x", &http, url],
        Mode::Connect => vec!["-p", "-x", &http, url],
        Mode::Socks4 => vec!["--socks4", &socks, url],
        Mode::Socks4a => vec!["--socks4a", &socks, url],
        Mode::Socks5 => vec!["--socks5", &socks, url],
        Mode::Socks5Hostname => vec!["--socks5-hostname", &socks, url],
    };
    v.into_iter().map(String::from).collect()
}

async fn curl_via(mode: Mode, proxy: &Carousel, url: &str, extra: &[&str]) -> support::CurlOutput {
    let mut args = curl_args(mode, proxy, url);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs).await
}

/// `n` requests for `/` through `mode`; returns how many each backend answered and failures.
async fn spread(mode: Mode, f: &Fixture, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let url = format!("http://{NAME}:{}/", f.port);
    let mut seen = HashMap::new();
    let mut failures = Vec::new();
    for _ in 0..n {
        let out = curl_via(mode, &f.proxy, &url, &[]).await;
        if out.status == 0 {
            *seen.entry(out.stdout_str().trim().to_string()).or_insert(0) += 1;
        } else {
            failures.push(format!("curl exit {}: {}", out.status, out.stderr.trim()));
        }
    }
    (seen, failures)
}

async fn socks5_who(proxy: SocketAddr, host: &str, port: u16) -> std::io::Result<String> {
    let mut s = tokio_socks::tcp::Socks5Stream::connect(proxy, (host, port))
        .await
        .map_err(std::io::Error::other)?;
    s.write_all(b"WHO\n").await?;
    let mut out = String::new();
    timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(std::io::Error::other)??;
    Ok(out.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_is_byte_exact() {
    let f = fixture().await;
    let size = 4 * 1024 * 1024;
    let want = blob_checksum(size);
    let by_name = format!("http://{NAME}:{}/blob/{size}", f.port);
    let by_ip = format!("http://127.0.0.11:{}/blob/{size}", f.port);
    for mode in [
        Mode::Http,
        Mode::Connect,
        Mode::Socks4,
        Mode::Socks4a,
        Mode::Socks5,
        Mode::Socks5Hostname,
    ] {
        // curl's plain --socks4/--socks5 resolve locally, so they get a literal address.
        let url = if matches!(mode, Mode::Socks4 | Mode::Socks5) {
            &by_ip
        } else {
            &by_name
        };
        let out = curl_via(mode, &f.proxy, url, &[]).await;
        assert_eq!(out.status, 0, "{mode:?}: {}", out.stderr);
        assert_eq!(out.stdout.len(), size, "{mode:?}");
        assert_eq!(checksum(&out.stdout), want, "{mode:?}: payload differs");
    }

    // Uploads: 3 MiB through CONNECT and SOCKS5 come back unchanged from /echo.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let file = f.proxy.dir.join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let data_arg = format!("@{}", file.display());
    let echo = format!("http://{NAME}:{}/echo", f.port);
    for mode in [Mode::Http, Mode::Connect, Mode::Socks5Hostname] {
        let out = curl_via(
            mode,
            &f.proxy,
            &echo,
            &[
                "--data-binary",
                &data_arg,
                "-H",
                "Content-Type: application/octet-stream",
            ],
        )
        .await;
        assert_eq!(out.status, 0, "{mode:?}: {}", out.stderr);
        assert_eq!(
            checksum(&out.stdout),
            checksum(&body),
            "{mode:?}: echo differs"
        );
    }

    // The mixed port tells SOCKS and HTTP apart by the first byte.
    let mixed_http = format!("http://{}", f.proxy.mixed);
    let out = curl(&["-x", &mixed_http, &by_name]).await;
    assert_eq!(
        checksum(&out.stdout),
        want,
        "mixed port, HTTP: {}",
        out.stderr
    );
    let out = curl(&["--socks5-hostname", &f.proxy.mixed.to_string(), &by_name]).await;
    assert_eq!(
        checksum(&out.stdout),
        want,
        "mixed port, SOCKS5: {}",
        out.stderr
    );

    // A raw byte stream through tokio-socks: 3 MiB echoed byte-exact.
    let mut s = tokio_socks::tcp::Socks5Stream::connect(f.proxy.socks, (NAME, f.port))
        .await
        .unwrap();
    s.write_all(b"ECHO\n").await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let payload = body.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), body.len());
    assert_eq!(checksum(&back), checksum(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_targets_and_early_data() {
    let f = fixture().await;
    let v6 = Backend::start(IpAddr::V6(Ipv6Addr::LOCALHOST), 0, "v6")
        .await
        .unwrap();
    let port = v6.addr().port();
    // SOCKS5 ATYP 4 (IPv6 literal) and ATYP 3 with a name that only has an AAAA record.
    let mut s = tokio_socks::tcp::Socks5Stream::connect(f.proxy.socks, (Ipv6Addr::LOCALHOST, port))
        .await
        .unwrap();
    s.write_all(b"WHO\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(out.trim(), "v6");
    assert_eq!(
        socks5_who(f.proxy.socks, "v6.cluster.test", port)
            .await
            .unwrap(),
        "v6"
    );
    // CONNECT [::1]:port with curl.
    let url = format!("http://[::1]:{port}/");
    let out = curl_via(Mode::Connect, &f.proxy, &url, &[]).await;
    assert_eq!(out.stdout_str().trim(), "v6", "{}", out.stderr);

    // Bytes sent in the same packet as the CONNECT head reach the backend.
    let mut c = TcpStream::connect(f.proxy.http).await.unwrap();
    let req = format!(
        "CONNECT {NAME}:{} HTTP/1.1\r\nHost: {NAME}:{}\r\n\r\nWHO\n",
        f.port, f.port
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut all = String::new();
    timeout(Duration::from_secs(5), c.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    let name = all.split("\r\n\r\n").nth(1).unwrap().trim();
    assert!(["b11", "b12", "b13"].contains(&name), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_rewrites_and_strips_headers() {
    let f = fixture().await;
    let url = format!("http://{NAME}:{}/", f.port);
    let http = format!("http://{}", f.proxy.http);
    let out = curl(&[
        "-x",
        &http,
        "-H",
        "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==",
        "-H",
        "Proxy-Connection: keep-alive",
        "-w",
        "%{num_connects}\n",
        &url,
        &url,
    ])
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    // Two transfers over one client connection: the second made no new connect (keep-alive).
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[1], "1");
    assert_eq!(lines[3], "0", "client connection not kept alive: {text}");
    let head = f
        .backends
        .iter()
        .map(|b| b.last_request_head())
        .find(|h| !h.is_empty())
        .expect("a backend saw the request");
    let first = head.lines().next().unwrap();
    assert_eq!(first, "GET / HTTP/1.1", "not origin-form: {head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("proxy-authorization"), "{head}");
    assert!(!lower.contains("proxy-connection"), "{head}");
    assert!(lower.contains("via: 1.1 carousel"), "{head}");

    // A GET and then a CONNECT on the same client connection are both served.
    let mut c = TcpStream::connect(f.proxy.http).await.unwrap();
    let get = format!(
        "GET http://127.0.0.11:{p}/ HTTP/1.1\r\nHost: 127.0.0.11:{p}\r\n\r\n",
        p = f.port
    );
    c.write_all(get.as_bytes()).await.unwrap();
    let resp = read_response(&mut c).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("b11\n"),
        "{resp}"
    );
    let connect = format!(
        "CONNECT 127.0.0.12:{p} HTTP/1.1\r\nHost: 127.0.0.12:{p}\r\n\r\nWHO\n",
        p = f.port
    );
    c.write_all(connect.as_bytes()).await.unwrap();
    let mut rest = String::new();
    timeout(Duration::from_secs(5), c.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.trim_end().ends_with("b12"),
        "{rest}"
    );
}

/// Reads one HTTP/1.1 response (head and Content-Length body) from `c`, bounded by a timeout.
async fn read_response(c: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let work = async {
        while !buf.ends_with(b"\r\n\r\n") {
            if c.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).await.unwrap();
        buf.extend_from_slice(&body);
    };
    timeout(Duration::from_secs(5), work)
        .await
        .expect("response in time");
    String::from_utf8_lossy(&buf).to_string()
}

fn assert_even(
    mode: &str,
    seen: &HashMap<String, usize>,
    names: &[&str],
    each: usize,
    slack: usize,
) {
    for n in names {
        let got = seen.get(*n).copied().unwrap_or(0);
        assert!(
            got.abs_diff(each) <= slack,
            "{mode}: {n} got {got}, want {each}±{slack}; all: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rotate_evenly_in_every_mode() {
    let f = fixture().await;
    for mode in NAME_MODES {
        let (seen, failures) = spread(mode, &f, 90).await;
        assert!(failures.is_empty(), "{mode:?}: {failures:?}");
        assert_even(&format!("{mode:?}"), &seen, &["b11", "b12", "b13"], 30, 3);
    }
    // tokio-socks, SOCKS5 with a remote name.
    let mut seen = HashMap::new();
    for _ in 0..90 {
        let who = socks5_who(f.proxy.socks, NAME, f.port).await.unwrap();
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_even("tokio-socks", &seen, &["b11", "b12", "b13"], 30, 3);
    // One DNS lookup served all of that (plus background refreshes): no lookup per request.
    assert!(
        f.dns.queries_for(NAME) < 90,
        "queries: {}",
        f.dns.queries_for(NAME)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_backend_costs_no_request() {
    let f = fixture().await;
    f.backends[1].stop();
    for mode in NAME_MODES {
        let (seen, failures) = spread(mode, &f, 90).await;
        assert!(failures.is_empty(), "{mode:?}: {failures:?}");
        assert_eq!(seen.get("b12"), None, "{mode:?}");
        assert_eq!(seen.values().sum::<usize>(), 90);
        // ±10% of 45, the spec: the survivors share the dead address's load evenly.
        assert_even(&format!("{mode:?}"), &seen, &["b11", "b13"], 45, 5);
    }
    let mut failures = 0;
    for _ in 0..90 {
        if socks5_who(f.proxy.socks, NAME, f.port).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_of_a_plain_name_gets_its_share_back() {
    let f = fixture().await;
    f.backends[1].stop();
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let who = socks5_who(f.proxy.socks, NAME, f.port).await.unwrap();
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(seen.get("b12"), None);
    f.backends[1].restart().unwrap();
    // Its half-open trial (2 s after the failure, one request) brings it back: polled by count.
    let mut back = false;
    for _ in 0..400 {
        if socks5_who(f.proxy.socks, NAME, f.port).await.unwrap() == "b12" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "b12 never served again after its restart");
    let mut seen = HashMap::new();
    for _ in 0..90 {
        let who = socks5_who(f.proxy.socks, NAME, f.port).await.unwrap();
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_even("after restart", &seen, &["b11", "b12", "b13"], 30, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_name_with_a_dead_ipv6_address_is_always_served() {
    let f = fixture().await;
    // ::1 has nothing on the backends' port; 127.0.0.11 does.
    f.dns.set_a("dual.cluster.test", &[ip4(11)], TTL);
    f.dns
        .set_aaaa("dual.cluster.test", &[Ipv6Addr::LOCALHOST], TTL);
    for i in 0..20 {
        let who = socks5_who(f.proxy.socks, "dual.cluster.test", f.port)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(who, "b11");
    }
}

/// `n` SOCKS5 requests for `host`; how many each backend in `names` served.
async fn served_by(f: &Fixture, host: &str, n: usize, names: &[&str]) -> Vec<usize> {
    let mut served = Vec::new();
    for i in 0..n {
        let who = socks5_who(f.proxy.socks, host, f.port)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        served.push(who);
    }
    names
        .iter()
        .map(|b| served.iter().filter(|s| s == b).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_name_prefers_ipv6_and_each_family_rotates_evenly() {
    let f = fixture().await;
    let _b6 = Backend::start(IpAddr::V6(Ipv6Addr::LOCALHOST), f.port, "b6")
        .await
        .expect("::1 on the backends' port");
    let host = "both.cluster.test";
    f.dns.set_a(host, &[ip4(11), ip4(12)], TTL);
    f.dns.set_aaaa(host, &[Ipv6Addr::LOCALHOST], TTL);
    let names = ["b11", "b12", "b6"];
    // The default, as RFC 8305 says: IPv6 while it works.
    assert_eq!(served_by(&f, host, 30, &names).await, vec![0, 0, 30]);
    let mut reloads = 0.0;
    for (prefer, want) in [("ipv4", vec![15, 15, 0]), ("any", vec![10, 10, 10])] {
        let text = f
            .proxy
            .config_text(support::proxy::DEFAULT_ACCESS, "")
            .replace(
                "failure_memory_seconds = 30",
                &format!("failure_memory_seconds = 30\nprefer_family = \"{prefer}\""),
            );
        assert!(text.contains("prefer_family"), "the harness config changed");
        f.proxy.rewrite(&text);
        f.proxy.signal("HUP");
        reloads += 1.0;
        let series = r#"carousel_config_reloads_total{result="ok"}"#;
        for _ in 0..100 {
            if f.proxy.metric(series).await == reloads {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(f.proxy.metric(series).await, reloads, "reloaded");
        assert_eq!(
            served_by(&f, host, 30, &names).await,
            want,
            "prefer_family = {prefer}"
        );
    }
}

/// Sends a SOCKS5 CONNECT for `host:port` and returns the reply code.
async fn socks5_reply_code(proxy: SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0]);
    let req = support::socks5_connect(host, port);
    s.write_all(&req).await.unwrap();
    let mut r = [0u8; 10];
    timeout(Duration::from_secs(10), s.read_exact(&mut r))
        .await
        .unwrap()
        .unwrap();
    r[1]
}

async fn socks4a_reply_code(proxy: SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&support::socks4a_connect(host, port))
        .await
        .unwrap();
    let mut r = [0u8; 8];
    timeout(Duration::from_secs(10), s.read_exact(&mut r))
        .await
        .unwrap()
        .unwrap();
    r[1]
}

async fn connect_status(proxy: SocketAddr, target: &str) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = String::new();
    timeout(Duration::from_secs(10), c.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_closed_gets_the_right_error() {
    let f = fixture().await;
    for b in &f.backends {
        b.stop();
    }
    assert_eq!(
        socks5_reply_code(f.proxy.socks, NAME, f.port).await,
        0x05,
        "SOCKS5: connection refused"
    );
    assert_eq!(
        socks4a_reply_code(f.proxy.socks, NAME, f.port).await,
        0x5B,
        "SOCKS4a: rejected"
    );
    let resp = connect_status(f.proxy.http, &format!("{NAME}:{}", f.port)).await;
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    assert!(
        resp.contains("connect failed") && resp.contains("3 attempt(s)"),
        "{resp}"
    );
    let url = format!("http://{NAME}:{}/", f.port);
    let out = curl_via(Mode::Http, &f.proxy, &url, &["-w", "%{http_code}"]).await;
    assert!(out.stdout_str().ends_with("502"), "{}", out.stdout_str());
    assert!(
        out.stdout_str().contains("connect failed"),
        "{}",
        out.stdout_str()
    );

    // An unresolvable name: SOCKS5 host unreachable, HTTP 502 "DNS: ...".
    assert_eq!(
        socks5_reply_code(f.proxy.socks, "nope.cluster.test", f.port).await,
        0x04
    );
    assert_eq!(
        socks4a_reply_code(f.proxy.socks, "nope.cluster.test", f.port).await,
        0x5B
    );
    let resp = connect_status(f.proxy.http, &format!("nope.cluster.test:{}", f.port)).await;
    assert!(
        resp.starts_with("HTTP/1.1 502 ") && resp.contains("DNS: "),
        "{resp}"
    );
    let out = curl_via(
        Mode::Http,
        &f.proxy,
        &format!("http://nope.cluster.test:{}/", f.port),
        &["-w", "%{http_code}"],
    )
    .await;
    assert!(
        out.stdout_str().starts_with("DNS: ") && out.stdout_str().ends_with("502"),
        "{}",
        out.stdout_str()
    );

    // And once a backend is back, requests work again.
    f.backends[2].restart().unwrap();
    let (seen, failures) = spread(Mode::Socks5Hostname, &f, 6).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen.get("b13"), Some(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_changes_are_followed_within_the_ttl() {
    let f = fixture().await;
    assert!(["b11", "b12", "b13"].contains(
        &socks5_who(f.proxy.socks, NAME, f.port)
            .await
            .unwrap()
            .as_str()
    ));
    f.dns.set_a(NAME, &[ip4(12), ip4(13), ip4(14)], TTL);
    let changed = Instant::now();
    let ttl = Duration::from_secs(TTL as u64);
    let slack = Duration::from_millis(500);
    let mut first_new: Option<Duration> = None;
    // Who answered once the TTL (plus slack) is over: never the removed member.
    let mut after = Vec::new();
    // Poll for twice the TTL plus a margin, bounded in count.
    for _ in 0..200 {
        let t = changed.elapsed();
        if t > Duration::from_secs(2 * TTL as u64 + 2) {
            break;
        }
        let who = socks5_who(f.proxy.socks, NAME, f.port).await.unwrap();
        if who == "b14" {
            first_new.get_or_insert(t);
        }
        if t > ttl + slack {
            after.push(who);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let first_new = first_new.expect("the added address was never used");
    assert!(
        first_new <= ttl + slack,
        "new address first used after {first_new:?}"
    );
    assert!(
        after.len() >= 10,
        "only {} requests after the TTL",
        after.len()
    );
    assert!(
        after
            .iter()
            .all(|w| ["b12", "b13", "b14"].contains(&w.as_str())),
        "the removed member was used after the TTL: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_answer_and_changes_nothing() {
    let f = fixture().await;
    let socks = f.proxy.socks;
    async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("connection closed by carousel");
        out
    }
    // SOCKS5: zero methods → "no acceptable methods", then closed.
    assert_eq!(exchange(socks, &[5, 0]).await, vec![5, 0xFF]);
    // SOCKS5: only username/password offered → "no acceptable methods".
    assert_eq!(exchange(socks, &[5, 1, 2]).await, vec![5, 0xFF]);
    // SOCKS5: bad address type → 0x08; BIND and UDP ASSOCIATE → 0x07.
    let r = exchange(socks, &[5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80]).await;
    assert_eq!(&r[..4], &[5, 0, 5, 8]);
    let r = exchange(socks, &[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 11, 0, 80]).await;
    assert_eq!(&r[..4], &[5, 0, 5, 7]);
    let r = exchange(socks, &[5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 11, 0, 80]).await;
    assert_eq!(&r[..4], &[5, 0, 5, 7]);
    // SOCKS5: a zero-length domain → host unreachable.
    let r = exchange(socks, &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]).await;
    assert_eq!(&r[..4], &[5, 0, 5, 4]);
    // SOCKS4: BIND → rejected; an over-long user id → rejected.
    let r = exchange(socks, &[4, 2, 0, 80, 127, 0, 0, 11, 0]).await;
    assert_eq!(r, vec![0, 0x5B, 0, 0, 0, 0, 0, 0]);
    let mut long = vec![4, 1, 0, 80, 127, 0, 0, 11];
    long.extend(std::iter::repeat_n(b'a', 600));
    assert_eq!(
        exchange(socks, &long).await,
        vec![0, 0x5B, 0, 0, 0, 0, 0, 0]
    );
    // A version byte that is neither 4 nor 5 on the SOCKS port → an HTTP 400 (this port speaks SOCKS).
    let r = exchange(socks, b"\x07garbage").await;
    assert!(String::from_utf8_lossy(&r).starts_with("HTTP/1.1 400"));
    // HTTP: garbage, a bad CONNECT target, an over-long head.
    let r = String::from_utf8(exchange(f.proxy.http, b"CONNECT \x01\x02 garbage\r\n\r\n").await)
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = String::from_utf8(exchange(f.proxy.http, b"CONNECT nohostport HTTP/1.1\r\n\r\n").await)
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let mut big = b"CONNECT chat.cluster.test:80 HTTP/1.1\r\n".to_vec();
    for i in 0..400 {
        big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    let r = String::from_utf8(exchange(f.proxy.http, &big).await).unwrap();
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = String::from_utf8(
        exchange(f.proxy.http, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n").await,
    )
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = String::from_utf8(
        exchange(
            f.proxy.http,
            b"\x16\x03\x01garbage that is not http\r\n\r\n",
        )
        .await,
    )
    .unwrap();
    // A TLS ClientHello on the plain port: a 400 that says so (the client will not read it, an
    // operator's curl will).
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // Truncated heads and a client slower than the handshake timeout (1 s here): closed, no reply.
    let slow = Instant::now();
    let r = exchange(socks, &[5, 1]).await;
    assert!(r.is_empty());
    assert!(slow.elapsed() < Duration::from_secs(4));
    let r = exchange(f.proxy.http, b"CONNECT chat.clu").await;
    assert!(r.is_empty());

    // The next client is served normally, on every protocol.
    assert_eq!(socks5_reply_code(socks, NAME, f.port).await, 0);
    assert_eq!(socks4a_reply_code(socks, NAME, f.port).await, 0x5A);
    let mut c = TcpStream::connect(f.proxy.http).await.unwrap();
    let target = format!("127.0.0.11:{}", f.port);
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 39];
    timeout(Duration::from_secs(5), c.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head[..], b"HTTP/1.1 200 Connection established\r\n\r\n");
    let out = curl_via(
        Mode::Http,
        &f.proxy,
        &format!("http://{NAME}:{}/", f.port),
        &[],
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_names_share_one_lookup_and_known_names_need_no_dns() {
    let f = fixture().await;
    let name = "burst.cluster.test";
    f.dns.set_a(name, &[ip4(12)], 30);
    f.dns.set_delay(Duration::from_millis(300));
    // 20 clients ask for a name carousel has not seen, all at once.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (socks, port) = (f.proxy.socks, f.port);
        tasks.push(tokio::spawn(
            async move { socks5_who(socks, name, port).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "b12");
    }
    // One lookup served them all: one query per address family (A and AAAA).
    let queries = f.dns.queries_for(name);
    assert!(
        queries <= 2,
        "{queries} DNS queries for 20 concurrent first requests"
    );
    // Once known, a name needs no DNS on the request path: the server stops answering and
    // requests are still served from memory, without waiting for a DNS timeout.
    f.dns.set_mode(support::DnsMode::Drop);
    for _ in 0..10 {
        assert_eq!(
            socks5_who(f.proxy.socks, name, f.port).await.unwrap(),
            "b12"
        );
    }
    assert_eq!(
        f.dns.queries_for(name),
        queries,
        "the request path asked DNS"
    );
}
