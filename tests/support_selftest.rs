//! Exercises tests/support for real: DNS server via hickory-resolver,
//! backends via raw TCP and curl.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use support::{blob_checksum, checksum, curl, Backend, DnsMode, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(15);

fn resolver(addr: SocketAddr, tcp: bool) -> TokioResolver {
    let mut conn = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    conn.port = addr.port();
    let ns = NameServerConfig::new(addr.ip(), true, vec![conn]);
    let config = ResolverConfig::from_name_servers(vec![ns]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().timeout = Duration::from_millis(500);
    builder.options_mut().attempts = 1;
    builder.build().expect("build resolver")
}

async fn a_records(r: &TokioResolver, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let lookup = timeout(T, r.ipv4_lookup(name))
        .await
        .expect("lookup bounded")
        .map_err(|e| format!("{e:?}"))?;
    let mut ips: Vec<Ipv4Addr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    ips.sort();
    Ok(ips)
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[test]
fn checksums_are_fnv1a_64() {
    assert_eq!(checksum(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(checksum(b"foobar"), 0x8594_4171_f739_67e8);
    let blob = support::blob_bytes(1000);
    assert_eq!(blob[0], 7);
    assert_eq!(blob[1], 38);
    assert_eq!(blob[9], ((9 * 31 + 7) % 251) as u8);
    assert_eq!(checksum(&blob), blob_checksum(1000));
}

#[tokio::test]
async fn dns_server_serves_changing_records() {
    let dns = DnsServer::start().await;
    assert!(dns.addr().ip().is_loopback());
    dns.set_a("chat.cluster.test", &[v4(11), v4(12), v4(13)], 2);
    dns.set_aaaa("v6.cluster.test.", &[Ipv6Addr::LOCALHOST], 2);
    dns.set_srv(
        "_http._tcp.cluster.test",
        &[
            (10, 5, 8080, "chat.cluster.test"),
            (20, 1, 8081, "v6.cluster.test."),
        ],
        2,
    );

    let r = resolver(dns.addr(), false);
    assert_eq!(
        a_records(&r, "chat.cluster.test.").await.unwrap(),
        vec![v4(11), v4(12), v4(13)]
    );

    // Cached by the resolver: a second lookup sends no query.
    let q = dns.queries();
    assert!(q >= 1);
    assert_eq!(a_records(&r, "chat.cluster.test.").await.unwrap().len(), 3);
    assert_eq!(
        dns.queries(),
        q,
        "second lookup should be served from cache"
    );
    assert!(dns.queries_for("CHAT.cluster.test.") >= 1);

    // AAAA
    let six = timeout(T, r.ipv6_lookup("v6.cluster.test."))
        .await
        .unwrap()
        .unwrap();
    let ips: Vec<Ipv6Addr> = six
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec![Ipv6Addr::LOCALHOST]);

    // SRV
    let srv = timeout(T, r.srv_lookup("_http._tcp.cluster.test."))
        .await
        .unwrap()
        .unwrap();
    let mut srvs: Vec<(u16, u16, u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    srvs.sort();
    assert_eq!(
        srvs,
        vec![
            (10, 5, 8080, "chat.cluster.test.".to_string()),
            (20, 1, 8081, "v6.cluster.test.".to_string())
        ]
    );

    // NODATA: name exists, no A records.
    let err = timeout(T, r.ipv4_lookup("v6.cluster.test."))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    // NXDOMAIN
    let err = timeout(T, r.lookup("nope.cluster.test.", RecordType::A))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");

    // Change the records; a fresh lookup (cache cleared) sees the change.
    dns.set_a("chat.cluster.test.", &[v4(21)], 2);
    r.clear_cache();
    let before = dns.queries();
    assert_eq!(
        a_records(&r, "chat.cluster.test").await.unwrap(),
        vec![v4(21)]
    );
    assert!(dns.queries() > before);

    // Same answers over TCP.
    let rt = resolver(dns.addr(), true);
    assert_eq!(
        a_records(&rt, "chat.cluster.test.").await.unwrap(),
        vec![v4(21)]
    );

    // remove() -> NXDOMAIN
    dns.remove("chat.cluster.test");
    r.clear_cache();
    let err = a_records(&r, "chat.cluster.test.").await.unwrap_err();
    assert!(err.contains("NXDomain"), "{err}");

    // SERVFAIL
    dns.set_a("chat.cluster.test", &[v4(11)], 2);
    dns.set_mode(DnsMode::ServFail);
    r.clear_cache();
    let before = dns.queries();
    let err = a_records(&r, "chat.cluster.test.").await.unwrap_err();
    assert!(err.contains("ServFail"), "{err}");
    assert!(dns.queries() > before);

    // Drop: never answered -> resolver times out (500 ms, 1 attempt).
    dns.set_mode(DnsMode::Drop);
    let before = dns.queries();
    let r2 = resolver(dns.addr(), false);
    assert!(a_records(&r2, "chat.cluster.test.").await.is_err());
    assert!(dns.queries() > before);

    // Back to normal.
    dns.set_mode(DnsMode::Normal);
    let r3 = resolver(dns.addr(), false);
    assert_eq!(
        a_records(&r3, "chat.cluster.test.").await.unwrap(),
        vec![v4(11)]
    );

    // stop(): nothing answers any more.
    dns.stop();
    let before = dns.queries();
    let r4 = resolver(dns.addr(), false);
    assert!(a_records(&r4, "chat.cluster.test.").await.is_err());
    let rt4 = resolver(dns.addr(), true);
    assert!(a_records(&rt4, "chat.cluster.test.").await.is_err());
    assert_eq!(dns.queries(), before);
    let err = TcpStream::connect(dns.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

async fn who(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = timeout(T, TcpStream::connect(addr)).await??;
    s.write_all(b"WHO\n").await?;
    let mut out = String::new();
    timeout(T, s.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test]
async fn backend_set_identifies_and_restarts() {
    let ips: Vec<IpAddr> = [11, 12, 13].map(|l| IpAddr::V4(v4(l))).to_vec();
    let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
    assert_eq!(backends.len(), 3);
    for b in &backends {
        assert_eq!(b.addr().port(), port);
        let expect = format!("{}\n", b.name());
        assert_eq!(who(b.addr()).await.unwrap(), expect);

        let url = format!("http://{}:{port}/", b.addr().ip());
        let out = curl(&["-i", &url]).await;
        assert_eq!(out.status, 0, "{}", out.stderr);
        let text = out.stdout_str();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(&format!("X-Backend: {}", b.name())), "{text}");
        assert!(text.ends_with(&expect), "{text}");
        assert_eq!(b.hits(), 2);
        assert!(
            b.last_request_head().starts_with("GET / HTTP/1.1\r\n"),
            "{}",
            b.last_request_head()
        );
    }

    // 1 MiB blob via curl.
    let b = &backends[1];
    let url = format!("http://{}/blob/1048576", b.addr());
    let out = curl(&[&url]).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), 1_048_576);
    assert_eq!(checksum(&out.stdout), blob_checksum(1_048_576));

    // stop(): refused immediately; restart(): back.
    b.stop();
    let err = TcpStream::connect(b.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The other members of the set are unaffected.
    assert_eq!(who(backends[0].addr()).await.unwrap(), "b11\n");
    b.restart().unwrap();
    assert_eq!(who(b.addr()).await.unwrap(), "b12\n");
    b.restart().unwrap(); // no-op while running
    assert_eq!(who(b.addr()).await.unwrap(), "b12\n");

    // Dropping closes the listener.
    let addr = backends[2].addr();
    drop(backends);
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn backend_http_and_raw_modes() {
    let b = Backend::start(IpAddr::V4(v4(1)), 0, "solo").await.unwrap();
    let base = format!("http://{}", b.addr());

    // keep-alive: two requests on one connection.
    let out = curl(&["-v", &format!("{base}/"), &format!("{base}/blob/10")]).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let mut expect = b"solo\n".to_vec();
    expect.extend(support::blob_bytes(10));
    assert_eq!(out.stdout, expect);
    assert!(
        out.stderr.contains("Re-using existing connection")
            || out.stderr.contains("Reusing existing connection"),
        "{}",
        out.stderr
    );
    assert_eq!(b.hits(), 2);

    // POST /echo with Content-Length and with chunked.
    let out = curl(&["--data-binary", "hello world", &format!("{base}/echo")]).await;
    assert_eq!(out.stdout, b"hello world", "{}", out.stderr);
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "--data-binary",
        "chunky body",
        &format!("{base}/echo"),
    ])
    .await;
    assert_eq!(out.stdout, b"chunky body", "{}", out.stderr);
    let head = b.last_request_head();
    assert!(head.starts_with("POST /echo HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Proxy-Authorization: Basic"), "{head}");
    assert!(!head.ends_with("\r\n"), "{head}");

    // Large POST (curl sends Expect: 100-continue).
    let big = support::blob_bytes(3 * 1024 * 1024 + 5);
    let dir = std::env::temp_dir().join(format!("carousel-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let at = format!("@{}", file.display());
    let out = curl(&["--data-binary", &at, &format!("{base}/echo")]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(checksum(&out.stdout), checksum(&big));

    // Status route and 404.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/status/503"),
    ])
    .await;
    assert_eq!(out.stdout, b"503");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/nope"),
    ])
    .await;
    assert_eq!(out.stdout, b"404");

    // Raw HTTP/1.1 pipelined by hand, last one with Connection: close.
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"GET /blob/3 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    timeout(T, s.read_to_end(&mut resp)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(text.matches("X-Backend: solo").count(), 2, "{text}");
    assert!(text.ends_with("Connection: close\r\n\r\nsolo\n"), "{text}");

    // ECHO raw session.
    let hits = b.hits();
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"ECHO\nabc\0def").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(T, s.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, b"abc\0def");
    assert_eq!(b.hits(), hits + 1);

    // IPv6 loopback works too.
    let b6 = Backend::start(IpAddr::V6(Ipv6Addr::LOCALHOST), 0, "six")
        .await
        .unwrap();
    assert_eq!(who(b6.addr()).await.unwrap(), "six\n");
    let out = curl(&[&format!("http://{}/", b6.addr())]).await;
    assert_eq!(out.stdout, b"six\n", "{}", out.stderr);

    // drop_connections closes an idle keep-alive connection.
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("solo\n"));
    b.drop_connections();
    let n = timeout(T, s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
}
