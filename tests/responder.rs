//! The health-aware DNS responder, asked by real resolvers: `dig` (bind9-dnsutils),
//! hickory-resolver, and dnsmasq as the "company DNS" in front of it with a direct client (curl,
//! no proxy) behind that. Real backends on 127.0.0.x; the real binary.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::proxy::{free_port, Carousel};
use support::{Backend, DnsServer};

const NAME: &str = "chat.cluster.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Runs `dig` (bounded: one try, 2 s) and returns its stdout.
async fn dig(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("dig")
            .args(["+tries=1", "+time=2"])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("dig timed out")
    .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Fixture {
    _dns: DnsServer,
    port: u16,
    backends: Vec<Backend>,
    proxy: Carousel,
    /// The responder's address.
    responder: SocketAddr,
}

impl Fixture {
    async fn new(health: &str, outlier: &str, responder_extra: &str) -> Fixture {
        let dns = DnsServer::start().await;
        dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], 30);
        let ips: Vec<IpAddr> = [11, 12, 13].iter().map(|&i| IpAddr::V4(ip4(i))).collect();
        let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
        let responder: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let extra = format!(
            "[responder]\nlisten = [\"{responder}\"]\nttl_seconds = 2\n{responder_extra}\n\
             [[cluster]]\nname = \"{NAME}\"\nports = [{port}]\n\
             [cluster.health]\n{health}\n[cluster.outlier]\n{outlier}\n"
        );
        let proxy = Carousel::start(dns.addr(), &extra).await;
        let f = Fixture {
            _dns: dns,
            port,
            backends,
            proxy,
            responder,
        };
        for _ in 0..100 {
            if f.proxy.admin_get("/readyz").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        f
    }

    fn at(&self) -> [String; 2] {
        [
            format!("@{}", self.responder.ip()),
            format!("-p{}", self.responder.port()),
        ]
    }

    /// `dig` against the responder.
    async fn dig(&self, args: &[&str]) -> String {
        let at = self.at();
        let mut all: Vec<&str> = vec![&at[0], &at[1]];
        all.extend_from_slice(args);
        dig(&all).await
    }

    /// The A answer for `name`: (sorted addresses, TTLs).
    async fn a(&self, name: &str) -> (Vec<String>, Vec<u32>) {
        let out = self.dig(&["+noall", "+answer", name, "A"]).await;
        let mut addrs = Vec::new();
        let mut ttls = Vec::new();
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 5 && f[3] == "A" {
                ttls.push(f[1].parse().unwrap());
                addrs.push(f[4].to_string());
            }
        }
        addrs.sort();
        (addrs, ttls)
    }

    /// Polls (every 50 ms, at most `limit`) until the A answer is `want`; returns the time taken.
    async fn until_answer(&self, want: &[&str], limit: Duration) -> Duration {
        let start = Instant::now();
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let mut last = Vec::new();
        while start.elapsed() < limit {
            last = self.a(NAME).await.0;
            if last == want {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("answer {last:?}, not {want:?}, after {limit:?}");
    }
}

/// Polls `/readyz` (every 50 ms, at most 5 s) until carousel says its clusters have members.
async fn until_ready(proxy: &Carousel) {
    for _ in 0..100 {
        if proxy.admin_get("/readyz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not ready after 5 s:\n{}", proxy.log_text());
}

const FAST_HEALTH: &str = "interval_ms = 200\ntimeout_ms = 200\nrise = 2\nfall = 2\n";
const SLOW_HEALTH: &str = "interval_ms = 60000\ntimeout_ms = 500\nrise = 1\nfall = 1\n";
const ALL: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_member_health_and_never_go_empty() {
    let f = Fixture::new(FAST_HEALTH, "consecutive_failures = 1000\n", "").await;
    let (addrs, ttls) = f.a(NAME).await;
    assert_eq!(addrs, ALL);
    assert!(ttls.iter().all(|&t| t == 2), "{ttls:?}");
    // Authoritative, no recursion.
    let full = f.dig(&[NAME, "A"]).await;
    assert!(full.contains("flags: qr aa"), "{full}");
    assert!(!full.contains(" ra"), "{full}");
    // The answers rotate.
    let first = f.dig(&["+short", NAME, "A"]).await;
    let second = f.dig(&["+short", NAME, "A"]).await;
    assert_ne!(first, second, "the order did not rotate");
    // Kill one: gone within fall × interval (+ slack), TTL halved while it is down.
    f.backends[1].stop();
    f.until_answer(&["127.0.0.11", "127.0.0.13"], Duration::from_secs(5))
        .await;
    assert!(f.a(NAME).await.1.iter().all(|&t| t == 1));
    // All down: every member, TTL 1, counted.
    f.backends[0].stop();
    f.backends[2].stop();
    f.until_answer(&ALL, Duration::from_secs(5)).await;
    assert!(f.a(NAME).await.1.iter().all(|&t| t == 1));
    let all_down = format!("carousel_dns_all_down_answers_total{{cluster=\"{NAME}\"}}");
    assert!(f.proxy.metric(&all_down).await >= 1.0);
    // One back: it reappears after `rise` passes, alone.
    f.backends[0].restart().unwrap();
    f.until_answer(&["127.0.0.11"], Duration::from_secs(5))
        .await;
    // TCP is served too.
    let tcp = f.dig(&["+tcp", "+short", NAME, "A"]).await;
    assert_eq!(tcp.trim(), "127.0.0.11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_ejected_by_proxied_requests_leaves_dns_before_any_check() {
    let f = Fixture::new(SLOW_HEALTH, "consecutive_failures = 1\n", "").await;
    f.backends[1].stop();
    // Proxied requests meet the dead member and eject it; the checks (every 60 s) never run.
    for _ in 0..6 {
        let mut s = tokio_socks::tcp::Socks5Stream::connect(f.proxy.socks, (NAME, f.port))
            .await
            .expect("proxied request served");
        use tokio::io::AsyncWriteExt;
        s.write_all(b"WHO\n").await.unwrap();
    }
    let (addrs, _) = f.a(NAME).await;
    assert_eq!(addrs, ["127.0.0.11", "127.0.0.13"]);
    // /status shows the same answer.
    let (_, body) = f.proxy.admin_get("/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let published = &v["clusters"][0]["dns_answer"]["addresses"];
    assert_eq!(published.as_array().unwrap().len(), 2, "{published}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cluster_names_and_allowed_clients_are_answered() {
    let f = Fixture::new(SLOW_HEALTH, "", "allow_clients = [\"127.0.0.0/30\"]\n").await;
    // Another name: REFUSED, nothing recursed.
    let other = f.dig(&["example.com", "A"]).await;
    assert!(other.contains("status: REFUSED"), "{other}");
    let long = format!(
        "{}.cluster.test",
        ["a".repeat(63), "b".repeat(63), "c".repeat(60)].join(".")
    );
    assert!(f.dig(&[&long, "A"]).await.contains("status: REFUSED"));
    // NODATA with the SOA for another type; SOA and a minimal ANY.
    let mx = f.dig(&[NAME, "MX"]).await;
    assert!(
        mx.contains("status: NOERROR") && mx.contains("ANSWER: 0") && mx.contains("SOA"),
        "{mx}"
    );
    assert!(f.dig(&["+short", NAME, "ANY"]).await.contains("RFC8482"));
    // A client outside allow_clients: REFUSED.
    let outside = f.dig(&["-b", "127.0.0.9", NAME, "A"]).await;
    assert!(outside.contains("status: REFUSED"), "{outside}");
    let inside = f.dig(&["-b", "127.0.0.2", "+short", NAME, "A"]).await;
    assert_eq!(inside.lines().count(), 3, "{inside}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_resolver_gets_the_usable_members() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let f = Fixture::new(FAST_HEALTH, "", "").await;
    f.backends[2].stop();
    f.until_answer(&["127.0.0.11", "127.0.0.12"], Duration::from_secs(5))
        .await;
    let mut ns = NameServerConfig::udp_and_tcp(f.responder.ip());
    for c in &mut ns.connections {
        c.port = f.responder.port();
    }
    let mut b = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    *b.options_mut() = opts;
    let r = b.build().unwrap();
    let ips = r.ipv4_lookup(format!("{NAME}.")).await.unwrap();
    let mut got: Vec<String> = ips.answers().iter().map(|r| r.data.to_string()).collect();
    got.sort();
    assert_eq!(got, ["127.0.0.11", "127.0.0.12"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_answers_and_truncation_without_edns() {
    let dns = DnsServer::start().await;
    let ips: Vec<IpAddr> = [11, 12].iter().map(|&i| IpAddr::V4(ip4(i))).collect();
    let (port, _backends) = Backend::start_set(&ips, &["b11", "b12"]).await;
    dns.set_a("a.cluster.test", &[ip4(11)], 30);
    dns.set_a("b.cluster.test", &[ip4(12)], 30);
    dns.set_srv(
        "_chat._tcp.cluster.test",
        &[
            (0, 30, port, "a.cluster.test"),
            (0, 10, port, "b.cluster.test"),
        ],
        30,
    );
    let big: Vec<Ipv4Addr> = (1..=40).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    dns.set_a("big.cluster.test", &big, 30);
    let responder: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!(
        "[responder]\nlisten = [\"{responder}\"]\nmax_answers = 40\n\
         [[cluster]]\nname = \"{NAME}\"\nports = [{port}]\nsrv = \"_chat._tcp.cluster.test\"\n\
         [[cluster]]\nname = \"big.cluster.test\"\nports = [9]\n[cluster.health]\ninterval_ms = 60000\n"
    );
    let proxy = Carousel::start(dns.addr(), &extra).await;
    until_ready(&proxy).await;
    let at = format!("@{}", responder.ip());
    let p = format!("-p{}", responder.port());
    let srv = dig(&[&at, &p, "+short", "_chat._tcp.cluster.test", "SRV"]).await;
    let mut lines: Vec<&str> = srv.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{srv}");
    assert!(
        lines[0].starts_with(&format!("0 10 {port} 127-0-0-12.{NAME}.")),
        "{srv}"
    );
    assert!(
        lines[1].starts_with(&format!("0 30 {port} 127-0-0-11.{NAME}.")),
        "{srv}"
    );
    // The target names answer with their member.
    let t = dig(&[&at, &p, "+short", &format!("127-0-0-11.{NAME}"), "A"]).await;
    assert_eq!(t.trim(), "127.0.0.11");
    // 40 records do not fit 512 bytes: TC=1 without EDNS; TCP carries them all.
    let udp = dig(&[&at, &p, "+noedns", "+ignore", "big.cluster.test", "A"]).await;
    assert!(udp.contains(" tc"), "{udp}");
    let tcp = dig(&[&at, &p, "+tcp", "+short", "big.cluster.test", "A"]).await;
    assert_eq!(tcp.lines().count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_floods_change_nothing_for_other_clients() {
    let f = Fixture::new(SLOW_HEALTH, "", "rate_limit_per_second = 20\n").await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.5:0").await.unwrap();
    for junk in [&b""[..], b"\x00", b"\x12\x34\x01\x00\x00\x01", &[0xff; 600]] {
        let _ = sock.send_to(junk, f.responder).await;
    }
    // A flood from one address: past its rate the queries are dropped and counted.
    let query = {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in NAME.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    // None of the junk above is a query (too short, or a response): it costs no tokens. Each of
    // the 300 queries is then either answered or dropped and counted, and the answered ones are
    // the bucket's burst (2 × rate) plus what refilled while the flood lasted.
    let sent = Instant::now();
    for _ in 0..300 {
        let _ = sock.send_to(&query, f.responder).await;
    }
    let mut answered = 0u32;
    let mut buf = [0u8; 512];
    let start = Instant::now();
    loop {
        let limited = f.proxy.metric("carousel_dns_rate_limited_total").await as u32;
        if answered + limited == 300 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{answered} answered + {limited} dropped != 300"
        );
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await
        {
            answered += 1;
        }
    }
    // Every query was decided by now, so tokens refilled for at most this long.
    let flood = sent.elapsed();
    let refilled = (20.0 * flood.as_secs_f64()).ceil() as u32 + 1;
    assert!(
        (40..=40 + refilled).contains(&answered),
        "{answered} answered in {flood:?} at 20/s, burst 40"
    );
    // Another client is still answered.
    let other = f.dig(&["-b", "127.0.0.6", "+short", NAME, "A"]).await;
    assert_eq!(other.lines().count(), 3, "{other}");
}

/// dnsmasq as the company's DNS, forwarding the cluster zone to carousel; a client with no proxy
/// whose resolv.conf (in a private mount namespace) points at dnsmasq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_clients_behind_dnsmasq_reach_survivors_only() {
    let f = Fixture::new(FAST_HEALTH, "consecutive_failures = 1000\n", "").await;
    let dir = std::env::temp_dir().join(format!("carousel-dnsmasq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // glibc's resolver asks port 53 only: dnsmasq listens there, on a loopback address of its own.
    let company = "127.0.0.154";
    let mut dnsmasq = tokio::process::Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={company}"),
            "--port=53",
            &format!(
                "--server=/cluster.test/{}#{}",
                f.responder.ip(),
                f.responder.port()
            ),
            "--cache-size=100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq runs (dnsmasq-base)");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {company}\noptions timeout:1 attempts:1\n"),
    )
    .unwrap();
    let url = format!("http://{NAME}:{}/", f.port);
    let direct = || {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && curl -q -sS --max-time 5 --noproxy '*' {url}",
            resolv.display()
        );
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new("unshare")
                    .args(["-m", "sh", "-c", &script])
                    .env_remove("http_proxy")
                    .env_remove("HTTP_PROXY")
                    .output(),
            )
            .await
            .expect("direct client timed out")
            .expect("unshare runs");
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if text.is_empty() {
                format!("(failed: {})", String::from_utf8_lossy(&out.stderr).trim())
            } else {
                text
            }
        }
    };
    // dnsmasq answers once it is up.
    let mut first = String::new();
    for _ in 0..50 {
        first = direct().await;
        if first.starts_with('b') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.starts_with('b'), "direct client got {first:?}");
    f.backends[1].stop();
    f.until_answer(&["127.0.0.11", "127.0.0.13"], Duration::from_secs(5))
        .await;
    // Once dnsmasq's cached answer (TTL 2) has expired, direct clients reach survivors only:
    // polled through dnsmasq itself until its answer is the survivors.
    let start = Instant::now();
    loop {
        let mut got: Vec<String> = dig(&["@127.0.0.154", "+short", NAME, "A"])
            .await
            .lines()
            .map(str::to_string)
            .collect();
        got.sort();
        if got == ["127.0.0.11", "127.0.0.13"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dnsmasq still answers {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut served = Vec::new();
    for _ in 0..12 {
        served.push(direct().await);
    }
    assert!(
        served.iter().all(|s| s == "b11" || s == "b13"),
        "direct clients got {served:?}"
    );
    // And what the client's own resolver (glibc, through dnsmasq) hands it no longer holds the
    // dead member: curl's own fallback to the next address is not what makes this pass.
    let script = format!(
        "mount --bind {} /etc/resolv.conf && getent ahostsv4 {NAME}",
        resolv.display()
    );
    let out = tokio::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.11") || text.contains("127.0.0.13"),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.12"),
        "the dead member is still published: {text}"
    );
    let _ = dnsmasq.start_kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hardening (issue 26, items 7 and 9): an SRV answer carried every target whatever
/// `max_answers` said (a 52-byte query reflected 1,222 bytes), CH, HS and ANY classes got IN
/// answers, and AXFR over UDP an empty NOERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_answers_keep_to_max_answers_and_other_classes_and_transfers_are_refused() {
    let dns = DnsServer::start().await;
    let ips: Vec<IpAddr> = (11..=16).map(|i| IpAddr::V4(ip4(i))).collect();
    let names = ["b11", "b12", "b13", "b14", "b15", "b16"];
    let (port, _backends) = Backend::start_set(&ips, &names).await;
    let mut targets = Vec::new();
    for i in 11..=16u8 {
        let t = format!("m{i}.cluster.test");
        dns.set_a(&t, &[ip4(i)], 30);
        targets.push(t);
    }
    let srv: Vec<(u16, u16, u16, &str)> =
        targets.iter().map(|t| (0, 10, port, t.as_str())).collect();
    dns.set_srv("_chat._tcp.cluster.test", &srv, 30);
    let responder: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!(
        "[responder]\nlisten = [\"{responder}\"]\nmax_answers = 2\n\
         [[cluster]]\nname = \"{NAME}\"\nports = [{port}]\nsrv = \"_chat._tcp.cluster.test\"\n"
    );
    let proxy = Carousel::start(dns.addr(), &extra).await;
    until_ready(&proxy).await;
    let at = format!("@{}", responder.ip());
    let p = format!("-p{}", responder.port());
    let out = dig(&[&at, &p, "_chat._tcp.cluster.test", "SRV"]).await;
    assert!(
        out.contains("ANSWER: 2,") && out.contains("ADDITIONAL: 3\n"),
        "{out}"
    );
    // (ADDITIONAL counts the OPT record too.) The answers still rotate over all six.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let short = dig(&[&at, &p, "+short", "_chat._tcp.cluster.test", "SRV"]).await;
        seen.extend(short.lines().map(|l| l.to_string()));
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    for class in ["CH", "HS"] {
        let out = dig(&[&at, &p, "-c", class, NAME, "A"]).await;
        assert!(
            out.contains("status: REFUSED") && out.contains("ANSWER: 0"),
            "{class}: {out}"
        );
    }
    // Class ANY (255) and AXFR over UDP, as raw datagrams (dig sends AXFR over TCP only).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |qtype: u16, class: u16| {
        let mut q = vec![0x43, 0x21, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in NAME.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&class.to_be_bytes());
        q
    };
    for (qtype, class, rcode, ancount) in [(1u16, 255u16, 5u8, 0u8), (252, 1, 4, 0)] {
        sock.send_to(&ask(qtype, class), responder).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n >= 12);
        assert_eq!(
            buf[3] & 0x0f,
            rcode,
            "qtype {qtype} class {class}: {:?}",
            &buf[..n]
        );
        assert_eq!(buf[7], ancount);
    }
    // AXFR over TCP: refused.
    let axfr = dig(&[&at, &p, NAME, "AXFR"]).await;
    assert!(
        axfr.contains("Transfer failed") || axfr.contains("REFUSED"),
        "{axfr}"
    );
}

/// Hardening (issue 26, item 8): a cluster whose SRV targets resolve to nothing silently had 0
/// members: `/status` said ready with `dns_error: null`, the responder answered SERVFAIL and
/// nothing was logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_srv_targets_have_no_address_is_not_ready_and_says_why() {
    let dns = DnsServer::start().await;
    dns.set_srv(
        "_chat._tcp.cluster.test",
        &[
            (0, 10, 5222, "nowhere-1.cluster.test"),
            (0, 10, 5222, "nowhere-2.cluster.test"),
        ],
        30,
    );
    let extra = format!(
        "[[cluster]]\nname = \"{NAME}\"\nports = [5222]\nsrv = \"_chat._tcp.cluster.test\"\n"
    );
    let proxy = Carousel::start(dns.addr(), &extra).await;
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = proxy.admin_get("/status").await;
        status = serde_json::from_str(&body).unwrap();
        if !status["clusters"][0]["dns_error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = &status["clusters"][0];
    assert_eq!(c["ready"], false, "{c}");
    let err = c["dns_error"].as_str().unwrap_or_default();
    assert!(err.contains("no SRV target has an address"), "{c}");
    assert!(err.contains("nowhere-1.cluster.test"), "{c}");
    let (code, body) = proxy.admin_get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("has no members"), "{body}");
    assert!(
        proxy.wait_log("no SRV target has an address").await,
        "nothing logged:\n{}",
        proxy.log_text()
    );
}
