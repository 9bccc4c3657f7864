//! The operator's view: the status page in a real headless Chromium, `carousel status` against
//! the same state, and the day-one rough edges (check's syntax errors and warnings, a clean start
//! log, no escape codes in a log file, every known series at zero, one "DNS" per error).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use support::proxy::{free_port, Carousel};
use support::{Backend, DnsMode, DnsServer};

const NAME: &str = "chat.cluster.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn cluster_with_one_down() -> (DnsServer, u16, Vec<Backend>, Carousel) {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], 30);
    let ips: Vec<IpAddr> = [11, 12, 13].iter().map(|&i| IpAddr::V4(ip4(i))).collect();
    let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
    let extra = format!(
        "[[cluster]]\nname = \"{NAME}\"\nports = [{port}]\n[cluster.health]\ninterval_ms = 200\ntimeout_ms = 200\nrise = 2\nfall = 2\n"
    );
    let proxy = Carousel::start(dns.addr(), &extra).await;
    backends[1].stop();
    for _ in 0..100 {
        let series =
            format!("carousel_member_up{{cluster=\"{NAME}\",member=\"127.0.0.12:{port}\"}}");
        if proxy.metric(&series).await == 0.0 && proxy.admin_get("/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (dns, port, backends, proxy)
}

/// Headless Chromium with the flags this machine needs (no sandbox as root, no background
/// networking on a closed network), a fresh profile; bounded to 60 s.
async fn chromium(args: &[&str]) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!(
        "carousel-chromium-{}-{}",
        std::process::id(),
        free_port()
    ));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium timed out")
    .expect("chromium runs (Debian chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_the_dead_member_down() {
    let (_dns, port, _backends, proxy) = cluster_with_one_down().await;
    let url = format!("http://{}/", proxy.admin);
    let dom = chromium(&["--dump-dom", &url]).await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&format!(
            "data-member=\"127.0.0.12:{port}\" data-state=\"down\""
        )),
        "{dom}"
    );
    for healthy in [11, 13] {
        assert!(
            dom.contains(&format!(
                "data-member=\"127.0.0.{healthy}:{port}\" data-state=\"healthy\""
            )),
            "{dom}"
        );
    }
    assert!(
        dom.contains("keep it on loopback"),
        "the page says it is private"
    );
    // The screenshot, kept as a test artefact.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,640",
        &url,
    ])
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// `carousel status` with `args` against `proxy`.
async fn status_cmd(proxy: &Carousel, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .arg("status")
        .arg("--admin")
        .arg(proxy.admin.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carousel_status_prints_the_same_state_as_a_table_and_as_json() {
    let (_dns, port, _backends, proxy) = cluster_with_one_down().await;
    let table = status_cmd(&proxy, &[]).await;
    assert!(
        !table.contains('\x1b'),
        "no colours when stdout is not a terminal"
    );
    // The layout, with the numbers that change masked.
    let masked: String = table
        .lines()
        .filter(|l| l.contains("MEMBER") || l.contains(&format!(":{port}")) || l.starts_with(NAME))
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    if w.chars().all(|c| c.is_ascii_digit() || c == '.') {
                        "#"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
                .replace(&port.to_string(), "PORT")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let want = "chat.cluster.test (round_robin, ports [PORT], DNS answer 127.0.0.11,127.0.0.13)\n\
MEMBER STATE CHECK ACTIVE REQ/S FAIL/S REQUESTS FAILURES EJECTIONS\n\
127.0.0.11:PORT healthy pass # # # # # #\n\
127.0.0.12:PORT down fail # # # # # #\n\
127.0.0.13:PORT healthy pass # # # # # #";
    assert_eq!(masked, want, "\n{table}");
    // --json is /status.
    let json: serde_json::Value =
        serde_json::from_str(&status_cmd(&proxy, &["--json"]).await).unwrap();
    let (_, body) = proxy.admin_get("/status").await;
    let direct: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["clusters"][0]["members"].as_array().unwrap().len(), 3);
    assert_eq!(json["clusters"][0]["selection"], "round_robin");
    assert_eq!(
        json["clusters"][0]["members"][1]["health"],
        direct["clusters"][0]["members"][1]["health"]
    );
    assert_eq!(json["listeners"], direct["listeners"]);
}

async fn check(text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "carousel-check-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_names_line_and_column_of_a_syntax_error_and_warns_about_likely_mistakes() {
    let (code, _, err) = check("[server]\nthreads = 2\npid_file = \"/tmp/x\n").await;
    assert_eq!(code, 2);
    // Line 3, column 19: where the string should have ended, and what was expected there.
    assert!(
        err.contains("c.toml:3:19: TOML syntax:") && err.contains("expected"),
        "{err}"
    );
    assert!(!err.contains("key `-`"), "{err}");
    let (code, out, err) = check(
        "[[listener]]\naddress = \"0.0.0.0:3128\"\nprotocols = [\"http\"]\n\
         [pac]\nhttp_proxy = \"proxy.example.com:3128\"\n\
         [access]\nallow_clients = [\"0.0.0.0/0\"]\n\
         [[access.rule]]\naction = \"allow\"\ndestinations = [\"*\"]\nports = [443]\n\
         [[cluster]]\nname = \"10.1.2.3\"\nports = [5222]\n",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"), "{out}");
    assert!(err.contains("no access rule allows port 5222"), "{err}");
    assert!(err.contains("the name is an IP address"), "{err}");
    assert!(err.contains("includes everyone"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_start_is_clean_plain_and_every_known_series_exists() {
    // The embedded default, on free ports.
    let text = carousel::config::DEFAULT_TOML
        .replace("127.0.0.1:3128", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:1080", &format!("127.0.0.1:{}", free_port()));
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("carousel-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = text
        .replace("127.0.0.1:9090", &admin)
        .replace("/tmp/carousel.pid", &dir.join("pid").display().to_string())
        .replace(
            "/tmp/carousel_upgrade.sock",
            &dir.join("sock").display().to_string(),
        );
    let path = dir.join("carousel.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_carousel"))
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    let mut metrics = String::new();
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await;
            let _ = s.read_to_string(&mut metrics).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("WARN"), "a default start warned:\n{log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in a log that is no terminal:\n{log}"
    );
    for series in [
        "carousel_requests_total{outcome=\"ok\",protocol=\"socks5\"} 0",
        "carousel_overload_rejections_total{limit=\"global\"} 0",
        "carousel_dns_lookups_total{kind=\"name\",result=\"error\"} 0",
        "carousel_connect_attempts_total{cluster=\"\",member=\"\",result=\"abandoned\"} 0",
        "carousel_active_tunnels{protocol=\"connect\"} 0",
        "carousel_proxy_protocol_rejected_total{reason=\"untrusted\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing at start");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_failure_says_dns_once() {
    let dns = DnsServer::start().await;
    dns.set_mode(DnsMode::ServFail);
    let proxy = Carousel::start(dns.addr(), "").await;
    let out = support::curl(&[
        "-x",
        &format!("http://{}", proxy.http),
        "http://nosuch.corp.test/",
    ])
    .await;
    let body = out.stdout_str();
    assert_eq!(body.matches("DNS").count(), 1, "{body}");
    assert!(body.contains("nosuch.corp.test"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_aaaa_answer_is_remembered_like_any_negative_answer() {
    use hickory_server::proto::rr::RecordType;
    let dns = DnsServer::start().await;
    dns.set_a("v4only.corp.test", &[ip4(11)], 1);
    dns.set_refuse_aaaa(true);
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(11))], &["b11"]).await;
    // The harness: TTLs clamped to 1 s at least, failures remembered 1 s.
    let proxy = Carousel::start(dns.addr(), "").await;
    // Requests keep the name in use for several TTLs: refreshes ask A each time.
    for _ in 0..40 {
        let mut s =
            tokio_socks::tcp::Socks5Stream::connect(proxy.socks, ("v4only.corp.test", port))
                .await
                .expect("served");
        use tokio::io::AsyncWriteExt;
        let _ = s.write_all(b"WHO\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = dns.queries_of_type("v4only.corp.test", RecordType::A);
    let aaaa = dns.queries_of_type("v4only.corp.test", RecordType::AAAA);
    assert!(a >= 2, "{a} A queries");
    // Without the memory: about 3 AAAA queries per A query (hickory's retries of REFUSED).
    assert!(aaaa <= a, "{aaaa} AAAA queries for {a} A queries");
}
