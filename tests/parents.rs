//! Parent proxies (issue 23, first part): real Squid parents started by the test, a cluster of
//! them behind one name, a rule sending one destination through them. The destination name is
//! known only to the parents (their hosts file): carousel never resolves it.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::proxy::{free_port, Carousel};
use support::{curl, Backend, DnsServer};
use tokio::time::Instant;

const PARENTS: &str = "hq.parents.test";
const DEST: &str = "app.parents.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// One Squid on `ip:port`, forwarding CONNECT (to any port) and plain requests for loopback
/// clients, `DEST` resolved from its own hosts file; `auth`: Basic with the user `branch`,
/// password `right` (basic_ncsa_auth); `rules`: more `http_access` lines, first.
struct Squid {
    child: Option<tokio::process::Child>,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Squid {
    async fn start(ip: Ipv4Addr, port: u16, backend: Ipv4Addr, auth: bool) -> Squid {
        Self::start_with(ip, port, backend, auth, "").await
    }

    async fn start_with(
        ip: Ipv4Addr,
        port: u16,
        backend: Ipv4Addr,
        auth: bool,
        rules: &str,
    ) -> Squid {
        let dir =
            std::env::temp_dir().join(format!("carousel-squid-{}-{ip}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Squid drops to its own user: the directory must be writable for it.
        let _ = std::process::Command::new("chmod")
            .args(["0777", &dir.display().to_string()])
            .status();
        std::fs::write(dir.join("hosts"), format!("{backend} {DEST}\n")).unwrap();
        let auth_conf = if auth {
            let hash = std::process::Command::new("openssl")
                .args(["passwd", "-apr1", "right"])
                .output()
                .expect("openssl");
            let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
            std::fs::write(dir.join("passwd"), format!("branch:{hash}\n")).unwrap();
            format!(
                "auth_param basic program /usr/lib/squid/basic_ncsa_auth {}\n\
                 acl authed proxy_auth REQUIRED\nhttp_access deny !authed\n",
                dir.join("passwd").display()
            )
        } else {
            String::new()
        };
        let conf = format!(
            "http_port {ip}:{port}\n\
             acl localnet src 127.0.0.0/8\n\
             {rules}\
             {auth_conf}\
             http_access allow localnet\n\
             http_access deny all\n\
             cache deny all\ncache_mem 0 MB\n\
             dns_nameservers 127.0.0.1\nhosts_file {hosts}\n\
             access_log none\ncache_store_log none\ncache_log {dir}/cache.log\n\
             pid_filename {dir}/squid.pid\ncoredump_dir {dir}\n\
             pinger_enable off\nnetdb_filename none\nshutdown_lifetime 0 seconds\n\
             visible_hostname parent.test\n",
            hosts = dir.join("hosts").display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("squid.conf"), conf).unwrap();
        let child = tokio::process::Command::new("squid")
            .args(["-N", "-f", &dir.join("squid.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("squid runs (package squid)");
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        // Ready when it accepts (bounded: 10 s).
        let start = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "squid on {addr} did not start: {}",
                std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Squid {
            child: Some(child),
            dir,
            addr,
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `/readyz` (bounded: 10 s) until the parents are discovered and checked.
async fn until_ready(proxy: &Carousel) {
    let start = Instant::now();
    while proxy.admin_get("/readyz").await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parents_cluster(port: u16, extra: &str) -> String {
    format!(
        "[[cluster]]\nname = \"{PARENTS}\"\nports = [{port}]\n\
         [cluster.parent]\nprotocol = \"http\"\n{extra}\
         [cluster.health]\ninterval_ms = 500\ntimeout_ms = 300\nrise = 1\nfall = 1\n"
    )
}

/// The rules: `DEST` goes via the parents; everything else as the tests usually allow.
fn access(via: &str) -> String {
    format!(
        "[access]\nallow_clients = [\"127.0.0.0/8\"]\n\
         [[access.rule]]\nname = \"via parents\"\naction = \"allow\"\ndestinations = [\"{DEST}\"]\nvia = \"{via}\"\n\
         [[access.rule]]\nname = \"direct\"\naction = \"allow\"\ndestinations = [\"*\", \"127.0.0.0/8\"]\n"
    )
}

/// Requests served through each parent: its `ok` connects.
async fn per_parent(proxy: &Carousel, parents: &[SocketAddr]) -> Vec<f64> {
    let mut v = Vec::new();
    for p in parents {
        v.push(
            proxy
                .metric(&format!(
                    "carousel_connect_attempts_total{{cluster=\"{PARENTS}\",member=\"{p}\",result=\"ok\"}}"
                ))
                .await,
        );
    }
    v
}

async fn fetch(proxy: &Carousel, mode: &str, url: &str) -> Result<String, String> {
    let http = format!("http://{}", proxy.http);
    let socks = proxy.socks.to_string();
    let args: Vec<&str> = match mode {
        "connect" => vec!["-sS", "-p", "-x", &http, url],
        "socks5" => vec!["-sS", "--socks5-hostname", &socks, url],
        _ => vec!["-sS", "-x", &http, url],
    };
    let out = curl(&args).await;
    if out.status == 0 {
        Ok(out.stdout_str().trim().to_string())
    } else {
        Err(format!("curl {}: {}", out.status, out.stderr.trim()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parents_share_the_destination_and_a_dead_one_costs_nothing() {
    let dns = DnsServer::start().await;
    dns.set_a(PARENTS, &[ip4(41), ip4(42)], 30);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let squid_port = free_port();
    let mut squids = [
        Squid::start(ip4(41), squid_port, ip4(11), false).await,
        Squid::start(ip4(42), squid_port, ip4(11), false).await,
    ];
    let parents: Vec<SocketAddr> = squids.iter().map(|s| s.addr).collect();
    let proxy = Carousel::start_with_access(
        dns.addr(),
        &access(PARENTS),
        &parents_cluster(squid_port, ""),
    )
    .await;
    let url = format!("http://{DEST}:{port}/");
    // Until the parents are discovered and checked.
    until_ready(&proxy).await;
    // 60 requests each way in: every one served by the backend, the parents 30 ± 3 each (by
    // the access log, which names the parent of each request: the forward path reuses its
    // connections through a parent, so connects do not count requests there).
    for (mode, proto) in [
        ("connect", "connect"),
        ("socks5", "socks5"),
        ("forward", "http"),
    ] {
        let mut failures = Vec::new();
        for _ in 0..60 {
            match fetch(&proxy, mode, &url).await {
                Ok(body) if body == "b11" => {}
                Ok(other) => failures.push(format!("body {other:?}")),
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.is_empty(),
            "{mode}: {failures:?}\n{}",
            proxy.log_text()
        );
        let needle = format!(" {proto} {DEST}:{port} cluster={PARENTS} member=");
        let log = proxy.wait_log_lines(&needle, 60).await;
        let got: Vec<usize> = parents
            .iter()
            .map(|p| {
                log.lines()
                    .filter(|l| l.contains(&format!("{needle}{p} ")) && l.contains("outcome=ok"))
                    .count()
            })
            .collect();
        assert!(
            got.iter().all(|&n| (27..=33).contains(&n)),
            "{mode}: per parent {got:?}\n{log}"
        );
    }
    // The access log names the parent and the destination as the client gave it.
    let log = proxy.wait_log_lines(&format!("{DEST}:{port}"), 180).await;
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("cluster={PARENTS} member={}", parents[0]))),
        "{log}"
    );
    // One parent killed: nothing fails, the other takes every request.
    squids[0].kill().await;
    let before = per_parent(&proxy, &parents).await;
    let mut failures = Vec::new();
    for _ in 0..30 {
        if let Err(e) = fetch(&proxy, "connect", &url).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    let after = per_parent(&proxy, &parents).await;
    assert_eq!(after[1] - before[1], 30.0, "{before:?} -> {after:?}");
    assert_eq!(after[0] - before[0], 0.0);
    // Restarted: its checks bring it back (rise 1, every 500 ms) and it gets its share again.
    squids[0] = Squid::start(ip4(41), squid_port, ip4(11), false).await;
    let up = format!(
        "carousel_member_up{{cluster=\"{PARENTS}\",member=\"{}\"}}",
        parents[0]
    );
    let start = Instant::now();
    while proxy.metric(&up).await != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the parent never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The request path ejected it while it was dead: back in service once the ejection has
    // ended and a trial request through it succeeded (bounded: 15 s).
    let start = Instant::now();
    loop {
        let before = per_parent(&proxy, &parents).await;
        fetch(&proxy, "connect", &url).await.unwrap();
        if per_parent(&proxy, &parents).await[0] > before[0] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no request reached it again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = per_parent(&proxy, &parents).await;
    for _ in 0..60 {
        fetch(&proxy, "connect", &url).await.unwrap();
    }
    let after = per_parent(&proxy, &parents).await;
    let got: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        got.iter().all(|&n| (27.0..=33.0).contains(&n)),
        "after the restart: {got:?}"
    );
    // Another destination is allowed by the rule without `via`: carousel connects itself.
    let direct = format!("http://127.0.0.11:{port}/");
    assert_eq!(fetch(&proxy, "connect", &direct).await.unwrap(), "b11");
    let needle = format!(" connect 127.0.0.11:{port} cluster=- member=127.0.0.11:{port} ");
    assert!(proxy.wait_log(&needle).await, "{}", proxy.log_text());
    // A parent that accepts and then fails (Squid's 503: it cannot reach a closed port) counts
    // against it as a failed connect would: after `consecutive_failures` (3) one is ejected.
    let closed = format!("http://{DEST}:{}/", free_port());
    let ejections = || async {
        let mut n = 0.0;
        for p in &parents {
            n += proxy
                .metric(&format!(
                    "carousel_member_ejections_total{{cluster=\"{PARENTS}\",member=\"{p}\"}}"
                ))
                .await;
        }
        n
    };
    let before = ejections().await;
    for _ in 0..6 {
        assert!(fetch(&proxy, "connect", &closed).await.is_err());
    }
    assert!(
        ejections().await > before,
        "a failing parent was never ejected"
    );
    assert!(proxy.wait_log("failed: 503").await, "{}", proxy.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_refuses_is_not_ejected_and_the_client_gets_502() {
    let dns = DnsServer::start().await;
    dns.set_a(PARENTS, &[ip4(43)], 30);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let squid_port = free_port();
    let squid = Squid::start(ip4(43), squid_port, ip4(11), true).await;
    let creds = squid.dir.join("carousel-creds");
    std::fs::write(&creds, "branch:wrong\n").unwrap();
    let extra = parents_cluster(
        squid_port,
        &format!("credentials_file = \"{}\"\n", creds.display()),
    )
    .replace(
        "[cluster.health]",
        "[cluster.outlier]\nconsecutive_failures = 2\n[cluster.health]",
    );
    let proxy = Carousel::start_with_access(dns.addr(), &access(PARENTS), &extra).await;
    until_ready(&proxy).await;
    let url = format!("http://{DEST}:{port}/");
    let http = format!("http://{}", proxy.http);
    for _ in 0..5 {
        let out = curl(&[
            "-sS",
            "-p",
            "-x",
            &http,
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            &url,
        ])
        .await;
        assert_eq!(out.stdout_str().trim(), "502", "{}", out.stderr);
    }
    // Plain HTTP goes to the parent in absolute form: its 407 is answered 502 too (the client
    // could not answer a challenge about carousel's credentials).
    for _ in 0..3 {
        let out = curl(&[
            "-sS",
            "-x",
            &http,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .await;
        assert_eq!(out.stdout_str().trim(), "502", "{}", out.stderr);
    }
    // Told apart from a dead parent: never ejected, though 8 > consecutive_failures.
    let ejections = proxy
        .metric(&format!(
            "carousel_member_ejections_total{{cluster=\"{PARENTS}\",member=\"{}\"}}",
            squid.addr
        ))
        .await;
    assert_eq!(ejections, 0.0);
    assert!(
        proxy.wait_log("refused: 407").await,
        "the reason is logged:\n{}",
        proxy.log_text()
    );
    // The parent's credentials never reach the log.
    assert!(!proxy.log_text().contains("wrong"));
    // The right credentials (a reload reads the file again): served.
    std::fs::write(&creds, "branch:right\n").unwrap();
    proxy.signal("HUP");
    let start = Instant::now();
    while proxy
        .metric(r#"carousel_config_reloads_total{result="ok"}"#)
        .await
        != 1.0
    {
        assert!(start.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    loop {
        let out = curl(&["-sS", "-p", "-x", &http, &url]).await;
        if out.status == 0 && out.stdout_str().trim() == "b11" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not served with the right credentials: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second carousel as the SOCKS5 parent: it alone knows the destination (its own DNS), so
/// every request reaching the backend was resolved by the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks5_parent_is_handed_the_name() {
    let parent_dns = DnsServer::start().await;
    parent_dns.set_a(DEST, &[ip4(11)], 30);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let parent = Carousel::start(parent_dns.addr(), "").await;
    let dns = DnsServer::start().await;
    dns.set_a(
        PARENTS,
        &[*match parent.socks.ip() {
            IpAddr::V4(v4) => Box::new(v4),
            IpAddr::V6(_) => unreachable!("the test bed listens on IPv4"),
        }],
        30,
    );
    let extra = parents_cluster(parent.socks.port(), "").replace("\"http\"", "\"socks5\"");
    let proxy = Carousel::start_with_access(dns.addr(), &access(PARENTS), &extra).await;
    until_ready(&proxy).await;
    let url = format!("http://{DEST}:{port}/");
    for mode in ["connect", "socks5", "forward"] {
        for _ in 0..20 {
            assert_eq!(
                fetch(&proxy, mode, &url).await.as_deref(),
                Ok("b11"),
                "{mode}"
            );
        }
    }
    // The parent was asked by name (its access lines have the name): one finished tunnel per
    // CONNECT and SOCKS5 request. (The forwarded requests share a kept-alive connection
    // through the parent, whose line comes when it closes.)
    let log = parent
        .wait_log_lines(&format!(" socks5 {DEST}:{port} "), 40)
        .await;
    let lines = log
        .lines()
        .filter(|l| l.contains(&format!(" socks5 {DEST}:{port} ")) && l.contains("outcome=ok"))
        .count();
    assert!((40..=60).contains(&lines), "{lines}: {log}");
}

/// Plain HTTP goes to an HTTP parent as it came, in absolute form, with carousel's credentials
/// and never the client's: a Squid that refuses every CONNECT (and requires Basic) serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_to_an_http_parent_in_absolute_form() {
    let dns = DnsServer::start().await;
    dns.set_a(PARENTS, &[ip4(46)], 30);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let squid_port = free_port();
    let squid = Squid::start_with(
        ip4(46),
        squid_port,
        ip4(11),
        true,
        "acl CONNECT method CONNECT\nhttp_access deny CONNECT\n",
    )
    .await;
    let creds = squid.dir.join("carousel-creds");
    std::fs::write(&creds, "branch:right\n").unwrap();
    let extra = parents_cluster(
        squid_port,
        &format!("credentials_file = \"{}\"\n", creds.display()),
    );
    let proxy = Carousel::start_with_access(dns.addr(), &access(PARENTS), &extra).await;
    until_ready(&proxy).await;
    let url = format!("http://{DEST}:{port}/");
    let http = format!("http://{}", proxy.http);
    // The client's own proxy credentials (carousel has no users file, so they are ignored)
    // never reach the parent: had they, Squid would refuse them.
    for _ in 0..20 {
        let out = curl(&["-sS", "-x", &http, "-U", "client:guess", &url]).await;
        assert_eq!(out.stdout_str().trim(), "b11", "{}", out.stderr);
    }
    // The same parent refuses CONNECT (403): the client gets 502 and the parent is not
    // ejected for its answer.
    for _ in 0..4 {
        let out = curl(&[
            "-sS",
            "-p",
            "-x",
            &http,
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            &url,
        ])
        .await;
        assert_eq!(out.stdout_str().trim(), "502", "{}", out.stderr);
    }
    assert!(proxy.wait_log("refused: 403").await, "{}", proxy.log_text());
    let ejections = proxy
        .metric(&format!(
            "carousel_member_ejections_total{{cluster=\"{PARENTS}\",member=\"{}\"}}",
            squid.addr
        ))
        .await;
    assert_eq!(ejections, 0.0);
    // Plain HTTP still served after the refusals.
    let out = curl(&["-sS", "-x", &http, &url]).await;
    assert_eq!(out.stdout_str().trim(), "b11", "{}", out.stderr);
    assert!(
        !proxy.log_text().contains("right"),
        "a credential was logged"
    );
}

/// With `resolve_destination`, carousel resolves the destination (its DNS has two addresses
/// the parents' do not) and hands each request's parent the next address: the destination's
/// load is spread, 30 ± 3 of 60, over CONNECT, SOCKS5 and forward. Then a parent blackholed:
/// no request fails, and none waits much more than one attempt delay. The parents' active check
/// is a CONNECT through them to the destination. (The rule names the
/// addresses too: they are loopback, which the policy guards unless a rule names it, as it
/// would for a name resolved for a direct connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_destinations_rotate_and_a_blackholed_parent_costs_one_attempt_delay() {
    const SPREAD: &str = "spread.parents.test";
    let dns = DnsServer::start().await;
    dns.set_a(PARENTS, &[ip4(44), ip4(45)], 30);
    dns.set_a(SPREAD, &[ip4(11), ip4(12)], 30);
    let ips = [IpAddr::V4(ip4(11)), IpAddr::V4(ip4(12))];
    let (port, _backends) = Backend::start_set(&ips, &["b11", "b12"]).await;
    let squid_port = free_port();
    let mut squids = [
        Squid::start(ip4(44), squid_port, ip4(11), false).await,
        Squid::start(ip4(45), squid_port, ip4(11), false).await,
    ];
    let access = access(PARENTS).replace(
        "[[access.rule]]\nname = \"direct\"",
        &format!(
            "[[access.rule]]\nname = \"spread\"\naction = \"allow\"\n\
             destinations = [\"{SPREAD}\", \"127.0.0.11/32\", \"127.0.0.12/32\"]\n\
             via = \"{PARENTS}\"\nresolve_destination = true\n\
             [[access.rule]]\nname = \"direct\""
        ),
    );
    let proxy = Carousel::start_with_access(
        dns.addr(),
        &access,
        &parents_cluster(squid_port, "").replace(
            "[cluster.health]",
            &format!(
                "[cluster.outlier]\nconsecutive_failures = 1\n[cluster.health]\n\
                 kind = \"send_expect\"\n\
                 send = \"CONNECT 127.0.0.11:{port} HTTP/1.1\\r\\nHost: 127.0.0.11:{port}\\r\\n\\r\\n\"\n\
                 expect = \"HTTP/1.1 200\""
            ),
        ),
    )
    .await;
    until_ready(&proxy).await;
    // The CONNECT probe passes through both parents (bounded: 10 s).
    let start = Instant::now();
    for s in &squids {
        let up = format!(
            "carousel_member_up{{cluster=\"{PARENTS}\",member=\"{}\"}}",
            s.addr
        );
        while proxy.metric(&up).await != 1.0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}",
                proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let url = format!("http://{SPREAD}:{port}/");
    for mode in ["connect", "socks5", "forward"] {
        let mut got = [0usize; 2];
        for _ in 0..60 {
            match fetch(&proxy, mode, &url).await.as_deref() {
                Ok("b11") => got[0] += 1,
                Ok("b12") => got[1] += 1,
                other => panic!("{mode}: {other:?}\n{}", proxy.log_text()),
            }
        }
        assert!(
            got.iter().all(|n| (27..=33).contains(n)),
            "{mode}: per destination address {got:?}"
        );
    }
    // The access line names the destination as the client gave it.
    let needle = format!(" connect {SPREAD}:{port} cluster={PARENTS} member=");
    assert!(proxy.wait_log(&needle).await, "{}", proxy.log_text());
    // A parent blackholed (its port accepts nothing: connects hang, as to a dead host).
    squids[0].kill().await;
    let _hole = carousel::testbed::blackhole::Blackhole::new(squids[0].addr).unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let r = fetch(&proxy, "connect", &url).await;
        assert!(r.is_ok(), "request {i}: {r:?}\n{}", proxy.log_text());
        slowest = slowest.max(t.elapsed());
    }
    // The attempt delay is 250 ms: the race starts the other parent then, and the blackholed
    // one is ejected after its first failure. (A bound 4x that, for a loaded machine; without
    // the race a request would wait for the 300 ms connect timeout and retry, without the
    // ejection every other request would.)
    assert!(
        slowest < Duration::from_millis(1000),
        "slowest request {slowest:?}"
    );
    let timeouts = proxy
        .metric(&format!(
            "carousel_connect_attempts_total{{cluster=\"{PARENTS}\",member=\"{}\",result=\"timeout\"}}",
            squids[0].addr
        ))
        .await;
    assert!(
        timeouts <= 2.0,
        "the blackholed parent was tried {timeouts} times"
    );
}

/// A CA and a certificate for `name` (and 127.0.0.1) signed by it: (CA, cert, key) files.
fn make_ca(dir: &std::path::Path, tag: &str, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("carousel parents CA {tag}"),
    );
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(ip4(1))));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join(format!("ca-{tag}.pem")),
        dir.join(format!("cert-{tag}.pem")),
        dir.join(format!("key-{tag}.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// An HTTPS parent (a second carousel's TLS listener, an HTTPS proxy): reached over TLS verified
/// against the configured CA, for CONNECT, SOCKS5 and forwarded requests; a parent whose
/// certificate another CA signed is never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_parent_is_reached_over_verified_tls() {
    let dir = std::env::temp_dir().join(format!("carousel-https-parent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = make_ca(&dir, "right", PARENTS);
    let (other_ca, _, _) = make_ca(&dir, "other", PARENTS);
    let parent_dns = DnsServer::start().await;
    parent_dns.set_a(DEST, &[ip4(11)], 30);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    let tls_port = free_port();
    let parent = Carousel::start(
        parent_dns.addr(),
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\nprotocols = [\"http\"]\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    parent
        .wait_listening(format!("127.0.0.1:{tls_port}").parse().unwrap())
        .await;
    let dns = DnsServer::start().await;
    dns.set_a(PARENTS, &[ip4(1)], 30);
    let cluster = |ca: &std::path::Path| {
        parents_cluster(tls_port, &format!("ca_file = \"{}\"\n", ca.display()))
            .replace("\"http\"", "\"https\"")
    };
    let proxy = Carousel::start_with_access(dns.addr(), &access(PARENTS), &cluster(&ca)).await;
    until_ready(&proxy).await;
    let url = format!("http://{DEST}:{port}/");
    for mode in ["connect", "socks5", "forward"] {
        for i in 0..10 {
            let r = fetch(&proxy, mode, &url).await;
            assert_eq!(r.as_deref(), Ok("b11"), "{mode} {i}\n{}", proxy.log_text());
        }
    }
    // Every one of them reached the parent's TLS listener (its access lines: one per tunnel,
    // the forwarded ones on kept-alive connections, logged as requests).
    let log = parent.wait_log_lines(&format!("{DEST}:{port}"), 30).await;
    assert!(
        log.lines()
            .filter(|l| l.contains(&format!("{DEST}:{port}")))
            .count()
            >= 30,
        "{log}"
    );
    // Verified: with another CA, the parent's certificate is refused and nothing is sent.
    let wrong =
        Carousel::start_with_access(dns.addr(), &access(PARENTS), &cluster(&other_ca)).await;
    until_ready(&wrong).await;
    for mode in ["connect", "forward"] {
        let r = fetch(&wrong, mode, &url).await;
        assert_ne!(
            r.as_deref(),
            Ok("b11"),
            "{mode}: served through an unverified parent"
        );
    }
    assert!(wrong.wait_log("TLS").await, "{}", wrong.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}
