//! carousel as a Pingora plugin, through its public API only (`carousel::plugin`), and the
//! example reverse proxy built on it, against the test bed (a hickory DNS server, real backends).
#![cfg(feature = "pingora-lb")]

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use carousel::plugin::{Outcome, Upstream, UpstreamConfig};
use support::proxy::free_port;
use support::{Backend, DnsMode, DnsServer};

const NAME: &str = "app.plugin.test";

fn ip4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn firsts(u: &Upstream, n: usize) -> HashMap<SocketAddr, usize> {
    let mut h = HashMap::new();
    for _ in 0..n {
        *h.entry(u.select().next().expect("a candidate"))
            .or_insert(0) += 1;
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_rotates_ejects_follows_dns_and_serves_stale() {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13), ip4(14)], 1);
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], 1);
    let ips: Vec<IpAddr> = [11, 12, 13, 14]
        .iter()
        .map(|&i| IpAddr::V4(ip4(i)))
        .collect();
    let (port, _backends) = Backend::start_set(&ips, &["b11", "b12", "b13", "b14"]).await;
    let u = Upstream::new(
        UpstreamConfig::new(NAME, port)
            .nameservers(vec![dns.addr()])
            .ttl_clamp(Duration::from_secs(1), Duration::from_secs(1))
            .check_interval(Duration::from_secs(60)),
    )
    .unwrap();
    u.start();
    assert!(u.ready(Duration::from_secs(5)).await);
    let h = firsts(&u, 90);
    assert!(h.values().all(|&n| n == 30), "{h:?}");
    // Three refused connects reported by the request path eject the member; the survivors share.
    let dead = SocketAddr::new(IpAddr::V4(ip4(12)), port);
    // First the start-up checks must have run: a passing check in between the reports would
    // (rightly) reset the member's run of failures, or end the ejection. The series exists (at 0)
    // as soon as the member does, so its value is what counts.
    let checked = |last: u8| {
        format!(
            "carousel_health_checks_total{{cluster=\"{NAME}\",member=\"127.0.0.{last}:{port}\",result=\"ok\"}}"
        )
    };
    let start = Instant::now();
    while ![11, 12, 13]
        .iter()
        .all(|&i| support::metric_in(&Upstream::metrics_text(), &checked(i)) >= 1.0)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "start-up checks: {}",
            Upstream::metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        u.report(dead, Outcome::Refused);
    }
    assert!(u.members().contains(&(dead, false)));
    // Pingora's LoadBalancer can use it too: the members with their usability (checked while the
    // 5 s ejection certainly lasts).
    use pingora::lb::discovery::ServiceDiscovery;
    let (backends, enabled) = u.discover().await.unwrap();
    assert_eq!(backends.len(), 3);
    assert_eq!(
        enabled.values().filter(|&&e| !e).count(),
        1,
        "the ejected member is disabled"
    );
    let h = firsts(&u, 90);
    assert_eq!(h.get(&dead), None);
    assert!(h.values().all(|&n| n == 45), "{h:?}");
    // Try-next continues in rotation order and never repeats.
    let all: Vec<SocketAddr> = u.select().collect();
    assert_eq!(all.len(), 2, "{all:?}");
    // A DNS change is followed within the (clamped) TTL.
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13), ip4(14)], 1);
    let start = Instant::now();
    let added = SocketAddr::new(IpAddr::V4(ip4(14)), port);
    while !u.members().iter().any(|(a, _)| *a == added) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "DNS change not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DNS goes away: the last good set keeps serving.
    // Waits for the refresh that failed (the cluster says it serves stale), not for a fixed time.
    dns.set_mode(DnsMode::ServFail);
    let stale = format!("carousel_cluster_dns_stale{{cluster=\"{NAME}\"}}");
    let start = Instant::now();
    while support::metric_in(&Upstream::metrics_text(), &stale) != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no failed refresh: {}",
            Upstream::metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(u.members().len(), 4);
    assert!(u.select().next().is_some());
    // One `carousel_member_up` series per member; those never failed read 1.
    let text = Upstream::metrics_text();
    let series = text
        .lines()
        .filter(|l| l.starts_with(&format!("carousel_member_up{{cluster=\"{NAME}\"")))
        .count();
    assert_eq!(series, 4, "{text}");
    for last in [11, 13] {
        let up =
            format!("carousel_member_up{{cluster=\"{NAME}\",member=\"127.0.0.{last}:{port}\"}}");
        assert_eq!(support::metric_in(&text, &up), 1.0, "{up}: {text}");
    }
    // Pingora's LoadBalancer sees the members DNS last gave.
    let (backends, _) = u.discover().await.unwrap();
    assert_eq!(backends.len(), 4);
}

/// The example binary, built by `make test` first (`cargo build --examples --features pingora-lb`):
/// `--all-targets` alone builds examples only as test harnesses.
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/pingora_reverse_proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_reverse_proxy_rotates_and_fails_over() {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(11), ip4(12), ip4(13)], 1);
    let ips: Vec<IpAddr> = [11, 12, 13].iter().map(|&i| IpAddr::V4(ip4(i))).collect();
    let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let _child = tokio::process::Command::new(example())
        .args([
            &listen,
            &metrics,
            NAME,
            &port.to_string(),
            &dns.addr().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the example was built (cargo build --examples --features pingora-lb, as make test does)");
    let url = format!("http://{listen}/");
    let mut up = false;
    for _ in 0..200 {
        if support::curl(&[&url]).await.stdout_str().starts_with('b') {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the example never served");
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let out = support::curl(&[&url]).await;
        *seen.entry(out.stdout_str().trim().to_string()).or_insert(0) += 1;
    }
    assert!(
        ["b11", "b12", "b13"]
            .iter()
            .all(|b| seen.get(*b).is_some_and(|&n| (8..=12).contains(&n))),
        "{seen:?}"
    );
    // Killed: the listener and its open connections go.
    backends[1].stop();
    backends[1].drop_connections();
    let mut failed = 0;
    for _ in 0..30 {
        let out = support::curl(&["-f", &url]).await;
        if out.status != 0 || out.stdout_str().trim() == "b12" {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "requests failed with one backend killed");
    // A DNS change is followed within the TTL (the example clamps to 5 s at least).
    dns.set_a(NAME, &[ip4(11), ip4(13), ip4(14)], 1);
    let b14 = Backend::start(IpAddr::V4(ip4(14)), port, "b14")
        .await
        .unwrap();
    let start = Instant::now();
    let mut reached = false;
    while start.elapsed() < Duration::from_secs(15) {
        if support::curl(&[&url]).await.stdout_str().trim() == "b14" {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reached, "the added member was never used");
    // The DNS server stops answering: the last good set keeps serving.
    // Waits for the refresh that failed (the example's own metrics say it serves stale).
    dns.set_mode(DnsMode::Drop);
    let metrics_url = format!("http://{metrics}/metrics");
    let stale = format!("carousel_cluster_dns_stale{{cluster=\"{NAME}\"}}");
    let start = Instant::now();
    loop {
        let m = support::curl(&[&metrics_url]).await.stdout_str();
        if support::metric_in(&m, &stale) == 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no failed refresh: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..6 {
        let out = support::curl(&["-f", &url]).await;
        assert_eq!(out.status, 0, "served stale: {}", out.stderr);
    }
    drop(b14);
    let m = support::curl(&[&format!("http://{metrics}/metrics")])
        .await
        .stdout_str();
    // The example reports its connects (the series exist at 0 as soon as a member does).
    let ok = format!(
        "carousel_connect_attempts_total{{cluster=\"{NAME}\",member=\"127.0.0.11:{port}\",result=\"ok\"}}"
    );
    assert!(support::metric_in(&m, &ok) >= 1.0, "{m}");
}
