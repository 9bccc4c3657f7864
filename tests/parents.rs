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
/// password `right` (basic_ncsa_auth).
struct Squid {
    child: Option<tokio::process::Child>,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Squid {
    async fn start(ip: Ipv4Addr, port: u16, backend: Ipv4Addr, auth: bool) -> Squid {
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
    // Told apart from a dead parent: never ejected, though 5 > consecutive_failures.
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
