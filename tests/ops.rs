//! Operations end to end: a real Prometheus scraping carousel, promtool on the exposition, the
//! status API and PAC file, SIGHUP hot reload (clusters added, changed, removed; health kept;
//! tunnels untouched; bad files refused), graceful upgrade under load with zero failed requests,
//! graceful shutdown, the JSON access log, and `carousel check`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::proxy::{free_port, Carousel, DEFAULT_ACCESS};
use support::{curl, Backend, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

const NAME: &str = "chat.cluster.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn cluster(name: &str, port: u16, interval_ms: u64) -> String {
    format!("[[cluster]]\nname = \"{name}\"\nports = [{port}]\n[cluster.health]\ninterval_ms = {interval_ms}\ntimeout_ms = 200\nrise = 1\nfall = 1\n")
}

async fn backends() -> (DnsServer, u16, Vec<Backend>) {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], 30);
    dns.set_a("other.cluster.test", &[ip4(11)], 30);
    let ips: Vec<IpAddr> = [11, 12, 13].iter().map(|&i| IpAddr::V4(ip4(i))).collect();
    let (port, b) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
    (dns, port, b)
}

async fn poll<F, Fut>(what: &str, limit: Duration, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    for _ in 0..1000 {
        if cond().await {
            return;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// Writes `text` as the configuration, sends SIGHUP and waits (bounded) until the reload counter
/// for `result` (`ok` or `error`) reaches `count`.
async fn reload(proxy: &Carousel, text: &str, result: &str, count: f64) {
    proxy.rewrite(text);
    proxy.signal("HUP");
    let series = format!("carousel_config_reloads_total{{result=\"{result}\"}}");
    poll(
        &format!("reload {result} #{count}"),
        Duration::from_secs(5),
        || async { proxy.metric(&series).await == count },
    )
    .await;
}

/// One SOCKS5 request with a remote name: the backend's name.
async fn who(proxy: SocketAddr, host: &str, port: u16) -> Result<String, String> {
    let work = async {
        let mut s = tokio_socks::tcp::Socks5Stream::connect(proxy, (host, port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"WHO\n").await.map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(out.trim().to_string())
    };
    timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_member_health() {
    let (dns, port, b) = backends().await;
    let proxy = Carousel::start(dns.addr(), &cluster(NAME, port, 200)).await;
    b[1].stop();
    poll("b12 down", Duration::from_secs(3), || async {
        proxy
            .metric(&format!(
                "carousel_member_up{{cluster=\"{NAME}\",member=\"127.0.0.12:{port}\"}}"
            ))
            .await
            == 0.0
    })
    .await;
    assert!(who(proxy.socks, NAME, port).await.is_ok());
    // promtool accepts the exposition.
    let (_, metrics) = proxy.admin_get("/metrics").await;
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .await
        .unwrap();
    let out = timeout(Duration::from_secs(20), promtool.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A real Prometheus scrapes it and answers a query for the member health series.
    let dir = proxy.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let web = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: carousel\n    static_configs:\n      - targets: ['{}']\n", proxy.admin),
    )
    .unwrap();
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian package) must be installed");
    let query = format!(
        "http://127.0.0.1:{web}/api/v1/query?query=carousel_member_up%7Bcluster%3D%22{NAME}%22%7D"
    );
    let mut last = String::new();
    let mut series = serde_json::Value::Null;
    for _ in 0..120 {
        let out = curl(&[&query]).await;
        last = out.stdout_str();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) {
            if v["data"]["result"].as_array().is_some_and(|r| r.len() == 3) {
                series = v["data"]["result"].clone();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = prom.start_kill();
    let series = series
        .as_array()
        .unwrap_or_else(|| panic!("Prometheus never returned 3 member series: {last}"))
        .clone();
    let value_of = |member: &str| {
        series
            .iter()
            .find(|s| s["metric"]["member"] == member)
            .map(|s| s["value"][1].as_str().unwrap_or("").to_string())
    };
    assert_eq!(
        value_of(&format!("127.0.0.12:{port}")).as_deref(),
        Some("0")
    );
    assert_eq!(
        value_of(&format!("127.0.0.11:{port}")).as_deref(),
        Some("1")
    );
    assert!(series.iter().all(|s| s["metric"]["job"] == "carousel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_and_pac() {
    let (dns, port, b) = backends().await;
    let proxy = Carousel::start(
        dns.addr(),
        &format!(
            "{}\n[pac]\ndomains = [\".corp.test\"]\n",
            cluster(NAME, port, 200)
        ),
    )
    .await;
    b[2].stop();
    assert_eq!(proxy.admin_get("/healthz").await, (200, "ok\n".into()));
    poll("ready", Duration::from_secs(3), || async {
        proxy.admin_get("/readyz").await.0 == 200
    })
    .await;
    poll("b13 down", Duration::from_secs(3), || async {
        let (_, body) = proxy.admin_get("/status").await;
        body.contains("\"health\":\"down\"")
    })
    .await;
    let (status, body) = proxy.admin_get("/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let members = v["clusters"][0]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let b13 = members
        .iter()
        .find(|m| m["address"] == "127.0.0.13")
        .unwrap();
    assert_eq!(b13["health"], "down");
    assert_eq!(b13["port"], port);
    assert!(b13["last_error"].as_str().unwrap().contains("connect"));
    assert!(b13["last_check_unix"].as_u64().unwrap() > 1_700_000_000);
    for key in [
        "ejected_until_unix_ms",
        "active_connections",
        "requests",
        "connect_failures",
        "weight",
    ] {
        assert!(b13.get(key).is_some(), "{key} missing");
    }
    for path in ["/proxy.pac", "/wpad.dat"] {
        let (status, pac) = proxy.admin_get(path).await;
        assert_eq!(status, 200);
        assert!(pac.contains("function FindProxyForURL(url, host)"), "{pac}");
        assert!(pac.contains(&format!("host == \"{NAME}\"")), "{pac}");
        assert!(pac.contains("dnsDomainIs(host, \".corp.test\")"), "{pac}");
        assert!(
            pac.contains(&format!("PROXY {}; SOCKS5 {}", proxy.http, proxy.socks)),
            "{pac}"
        );
        assert!(pac.contains("return \"DIRECT\";"), "{pac}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_swaps_clusters_and_keeps_state() {
    let (dns, port, b) = backends().await;
    let proxy = Carousel::start(dns.addr(), &cluster(NAME, port, 200)).await;
    b[1].stop();
    let b12 = format!("carousel_member_up{{cluster=\"{NAME}\",member=\"127.0.0.12:{port}\"}}");
    poll("b12 down", Duration::from_secs(3), || async {
        proxy.metric(&b12).await == 0.0
    })
    .await;
    // A tunnel in flight before the reload.
    let mut tunnel = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, (NAME, port))
        .await
        .unwrap();
    tunnel.write_all(b"ECHO\n").await.unwrap();
    // Reload: the cluster's settings change (slow checks now), another cluster is added.
    let text = proxy.config_text(
        DEFAULT_ACCESS,
        &format!(
            "{}{}",
            cluster(NAME, port, 60_000),
            cluster("other.cluster.test", port, 200)
        ),
    );
    reload(&proxy, &text, "ok", 1.0).await;
    let (_, body) = proxy.admin_get("/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&NAME) && names.contains(&"other.cluster.test"),
        "{names:?}"
    );
    // The changed cluster kept its members' health: b12 is still down (its check is slow now,
    // so only kept state can say so) and it still gets no requests.
    assert_eq!(proxy.metric(&b12).await, 0.0);
    for _ in 0..9 {
        assert_ne!(who(proxy.socks, NAME, port).await.unwrap(), "b12");
    }
    assert_eq!(
        who(proxy.socks, "other.cluster.test", port).await.unwrap(),
        "b11"
    );
    // The tunnel opened before the reload still carries bytes.
    tunnel.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    timeout(Duration::from_secs(5), tunnel.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
    // An invalid file: refused with file, key and line; the running configuration stays.
    let bad = proxy
        .config_text(DEFAULT_ACCESS, "")
        .replace("connect_timeout_ms = 300", "conect_timeout_ms = 300");
    reload(&proxy, &bad, "error", 1.0).await;
    // The log is read from the process's stderr pipe in the background: wait for the line.
    let file = proxy.config.display().to_string();
    let logged = || {
        proxy.log_text().lines().any(|l| {
            l.contains(&file) && l.contains("conect_timeout_ms") && l.contains("key `dial")
        })
    };
    poll(
        "reload error logged with file, key and line",
        Duration::from_secs(5),
        || async { logged() },
    )
    .await;
    assert_eq!(
        who(proxy.socks, "other.cluster.test", port).await.unwrap(),
        "b11"
    );
    // Removing a cluster: it disappears from status; the name is then an ordinary name.
    let text = proxy.config_text(DEFAULT_ACCESS, &cluster(NAME, port, 200));
    reload(&proxy, &text, "ok", 2.0).await;
    let (_, body) = proxy.admin_get("/status").await;
    assert!(!body.contains("other.cluster.test"), "{body}");
    assert!(
        proxy
            .metric("carousel_config_last_reload_success_timestamp_seconds")
            .await
            > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_fails_no_request() {
    let (dns, port, _b) = backends().await;
    let mut old = Carousel::start(dns.addr(), "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let (socks, http) = (old.socks, old.http);
        tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..5000u32 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let r = if i % 2 == 0 {
                    who(socks, NAME, port).await
                } else {
                    let out = curl(&[
                        "-x",
                        &format!("http://{http}"),
                        &format!("http://{NAME}:{port}/"),
                    ])
                    .await;
                    if out.status == 0 {
                        Ok(out.stdout_str())
                    } else {
                        Err(out.stderr)
                    }
                };
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    poll("traffic flowing", Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) >= 20
    })
    .await;
    let mut new = old.spawn_upgrade().await;
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(15)).await;
    assert!(
        exited.is_some(),
        "the old process did not hand over and exit"
    );
    let at_handover = ok.load(Ordering::Relaxed);
    poll(
        "traffic through the new process",
        Duration::from_secs(10),
        || async { ok.load(Ordering::Relaxed) >= at_handover + 20 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let _ = new.start_kill();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the upgrade: {:?}",
        errors.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnels_then_exits() {
    let (dns, port, _b) = backends().await;
    let mut proxy = Carousel::start(dns.addr(), "").await;
    let mut tunnel = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, (NAME, port))
        .await
        .unwrap();
    tunnel.write_all(b"ECHO\n").await.unwrap();
    proxy.signal("TERM");
    let sent = Instant::now();
    // Within the grace period the open tunnel still works.
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(Duration::from_secs(2), tunnel.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    assert!(sent.elapsed() < Duration::from_secs(1));
    // And the process ends within grace + shutdown timeout (1 s + 1 s here), not Pingora's 300 s.
    let code = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(code.is_some(), "carousel did not exit after SIGTERM");
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "exit took {:?}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_to_a_file() {
    let (dns, port, _b) = backends().await;
    let dir = std::env::temp_dir().join(format!(
        "carousel-ops-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let proxy = Carousel::start(
        dns.addr(),
        &format!(
            "[log]\naccess = \"{}\"\naccess_format = \"json\"\n",
            file.display()
        ),
    )
    .await;
    assert!(who(proxy.socks, NAME, port).await.is_ok());
    let out = curl(&[
        "-x",
        &format!("http://{}", proxy.http),
        &format!("http://{NAME}:{port}/"),
    ])
    .await;
    assert_eq!(out.status, 0);
    assert!(who(proxy.socks, "nope.cluster.test", port).await.is_err());
    let mut lines = Vec::new();
    poll("three access lines", Duration::from_secs(5), || async {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count() >= 3)
            .unwrap_or(false)
    })
    .await;
    for l in std::fs::read_to_string(&file).unwrap().lines() {
        lines.push(serde_json::from_str::<serde_json::Value>(l).expect("JSON line"));
    }
    let socks = lines
        .iter()
        .find(|l| l["protocol"] == "socks5" && l["outcome"] == "ok")
        .expect("socks5 line");
    assert_eq!(socks["target"], format!("{NAME}:{port}"));
    assert_eq!(socks["client"], "127.0.0.1");
    assert!(socks["member"].as_str().unwrap().starts_with("127.0.0.1"));
    assert_eq!(socks["attempts"], 1);
    assert!(socks["bytes_up"].as_u64().unwrap() >= 4);
    assert!(socks["bytes_down"].as_u64().unwrap() >= 3);
    let http = lines
        .iter()
        .find(|l| l["protocol"] == "http")
        .expect("http line");
    assert_eq!(http["status"], 200);
    assert_eq!(http["outcome"], "ok");
    let failed = lines
        .iter()
        .find(|l| l["outcome"] == "dns_error")
        .expect("failure line");
    // The reason is in `error`; `rule` names a rule only (none allowed a request that failed
    // before its policy check ended).
    assert!(failed["error"].as_str().unwrap().contains("DNS"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_command_reports_file_key_and_line() {
    let dir = std::env::temp_dir().join(format!("carousel-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, carousel::config::DEFAULT_TOML).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok: 2 listener(s)") && stdout.lines().count() == 1,
        "{stdout}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[dns]\ntimeout_ms = 100\n\n[dial]\nconnect_timeout_ms = \"fast\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:5: key `dial.connect_timeout_ms`",
            bad.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tunnel.max_pipes` lowered to 1 by a reload: a tunnel whose server stopped reading keeps the
/// only pipe, and other tunnels go on by copying through user space, byte-exact; the copies are
/// counted and the process never holds more pipes than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_pipe_budget_still_carries_every_byte() {
    let (dns, port, _backends) = backends().await;
    let proxy = Carousel::start(dns.addr(), "").await;
    let text = proxy.config_text(DEFAULT_ACCESS, "");
    let limited = text.replace(
        "idle_timeout_seconds = 30\n",
        "idle_timeout_seconds = 30\nmax_pipes = 1\n",
    );
    assert_ne!(
        text, limited,
        "the harness config has no [tunnel] idle timeout line"
    );
    reload(&proxy, &limited, "ok", 1.0).await;

    // A server that accepts and never reads: the tunnel to it stalls holding a pipe.
    let deaf = tokio::net::TcpListener::bind((ip4(15), 0)).await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 4 {
            match deaf.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => break,
            }
        }
        held
    });
    let mut stalled = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, deaf_addr)
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        // At most 256 MiB; in practice it blocks once the socket buffers on the way are full.
        for _ in 0..4096 {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });

    // Echo tunnels until one of them had to copy (bounded: 200 rounds, 20 s).
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let mut rounds = 0;
    while proxy
        .metric("carousel_tunnel_pipe_budget_exhausted_total")
        .await
        == 0.0
    {
        assert!(
            rounds < 200 && started.elapsed() < Duration::from_secs(20),
            "no transfer copied after {rounds} rounds with one pipe held"
        );
        rounds += 1;
        let s = tokio_socks::tcp::Socks5Stream::connect(proxy.socks, (NAME, port))
            .await
            .unwrap();
        let (mut r, mut w) = tokio::io::split(s);
        let payload = body.clone();
        let send = tokio::spawn(async move {
            w.write_all(b"ECHO\n").await.unwrap();
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        timeout(Duration::from_secs(10), r.read_to_end(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        send.await.unwrap();
        assert!(back == body, "round {rounds}: echo differs");
    }
    assert!(
        proxy.metric("carousel_tunnel_pipes").await <= 1.0,
        "more pipes than the budget of 1"
    );
    writer.abort();
    keep.abort();
}
