//! Floods at carousel's surfaces (issue 26): the DNS responder under a UDP flood from many
//! sources, allowed and refused; TCP connections piled on the responder; tunnels and idle
//! connections piled on the proxy with the default limits, in a process with a small open-file
//! limit. The sizes are scaled down from the (`bench/flood.sh` runs the full ones); the
//! real binary, real sockets, loopback only, every loop bounded in count and time.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::timeout;

use support::proxy::{free_port, Carousel};
use support::{Backend, DnsServer};

const NAME: &str = "chat.flood.test";

fn ip4(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, a, b)
}

/// An A query for `name` with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

struct Cluster {
    _dns: DnsServer,
    port: u16,
    _backends: Vec<Backend>,
}

async fn cluster() -> Cluster {
    let dns = DnsServer::start().await;
    dns.set_a(NAME, &[ip4(0, 11), ip4(0, 12), ip4(0, 13)], 30);
    let ips: Vec<IpAddr> = [11, 12, 13]
        .iter()
        .map(|&i| IpAddr::V4(ip4(0, i)))
        .collect();
    let (port, backends) = Backend::start_set(&ips, &["b11", "b12", "b13"]).await;
    Cluster {
        _dns: dns,
        port,
        _backends: backends,
    }
}

fn cluster_config(port: u16, responder: SocketAddr, responder_extra: &str) -> String {
    format!(
        "[responder]\nlisten = [\"{responder}\"]\n{responder_extra}\n\
         [[cluster]]\nname = \"{NAME}\"\nports = [{port}]\n\
         [cluster.health]\ninterval_ms = 200\ntimeout_ms = 300\nrise = 2\nfall = 2\n"
    )
}

async fn wait_ready(proxy: &Carousel) {
    for _ in 0..200 {
        if proxy.admin_get("/readyz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never ready:\n{}", proxy.log_text());
}

/// 80,000 datagrams from 100 sources, half of them outside `allow_clients`, paced at about
/// 20,000 a second for 4 s (what a debug build takes in on two cores beside its generator
/// without the kernel dropping datagrams at the socket; the release figure of 200,000/s for
/// 15 s is bench/flood.sh's), while one normal client asks 20 times a second.
/// Before (hickory-server's task per datagram): 1 source for 10 s took RSS from 16 to 290 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_keeps_memory_flat_and_a_normal_client_answered() {
    let c = cluster().await;
    let responder: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = cluster_config(
        c.port,
        responder,
        "allow_clients = [\"127.0.0.0/24\"]\nrate_limit_per_second = 100\n",
    );
    let proxy = Carousel::start(c._dns.addr(), &extra).await;
    wait_ready(&proxy).await;
    let before = proxy.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // Allowed sources 127.0.0.100-149, refused ones 127.0.1.1-50.
    let mut floods = Vec::new();
    for t in 0..2u8 {
        let (stop, sent) = (stop.clone(), sent.clone());
        floods.push(std::thread::spawn(move || {
            let socks: Vec<std::net::UdpSocket> = (0..50u8)
                .map(|i| {
                    let src = if t == 0 {
                        ip4(0, 100 + i)
                    } else {
                        ip4(1, 1 + i)
                    };
                    std::net::UdpSocket::bind((src, 0)).unwrap()
                })
                .collect();
            let packet = query(0x7777, NAME);
            let started = Instant::now();
            // 40,000 per thread, in rounds of 50 (one per socket) every 5 ms: 10,000/s each.
            for round in 0..800u32 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                for s in &socks {
                    let _ = s.send_to(&packet, responder);
                }
                sent.fetch_add(50, Ordering::Relaxed);
                let due = started + Duration::from_millis(5) * (round + 1);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }));
    }
    // The normal client, and the memory, while the flood runs.
    let client = UdpSocket::bind((ip4(0, 6), 0)).await.unwrap();
    let mut answered = 0;
    let mut peak = before;
    let mut buf = [0u8; 1500];
    for i in 0..80u16 {
        let id = 1000 + i;
        client.send_to(&query(id, NAME), responder).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, client.recv_from(&mut buf)).await
        {
            if n >= 12 && buf[..2] == id.to_be_bytes() {
                answered += 1;
                break;
            }
        }
        peak = peak.max(proxy.rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let port_hex = format!(":{:04X} ", responder.port());
    let drops = std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(port_hex.trim()))
        })
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect::<Vec<_>>();
    println!("responder socket drops: {drops:?}");
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    let total = sent.load(Ordering::Relaxed);
    let grew_mib = peak.saturating_sub(before) / 1024;
    println!(
        "flood: {total} datagrams; normal client {answered}/80; RSS {before} KiB before, peak {peak} KiB"
    );
    assert!(total >= 60_000, "the flood sent only {total}");
    assert!(
        grew_mib < 50,
        "RSS grew {grew_mib} MiB: {before} -> {peak} KiB"
    );
    // At least 99%: 80 of 80 (79.2 rounds up).
    assert_eq!(
        answered, 80,
        "the normal client got {answered} of 80 answers"
    );
    // Back where it was within 10 s (it never left: nothing is kept per datagram).
    let mut after = proxy.rss_kib();
    for _ in 0..40 {
        if after <= before + 10 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = proxy.rss_kib();
    }
    assert!(
        after <= before + 10 * 1024,
        "RSS {before} -> {after} KiB after the flood"
    );
    // The refused sources were refused, and everyone past the rate dropped, counted.
    let refused = proxy
        .metric("carousel_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\"}")
        .await;
    assert!(refused > 0.0, "no REFUSED counted");
    assert!(proxy.metric("carousel_dns_rate_limited_total").await > 0.0);
}

/// 3,000 TCP connections piled on the responder from two addresses, held open, in a process
/// limited to 1,024 descriptors; meanwhile a proxy client asks every 100 ms and the health
/// checks run every 200 ms. Before: the responder took every descriptor (32k connects reached
/// the 20,000 limit in a second), the checks failed and every member was marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_piled_on_the_responder_starve_neither_proxy_nor_checks() {
    let c = cluster().await;
    let responder: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = cluster_config(c.port, responder, "");
    let proxy = Carousel::start_with_nofile(c._dns.addr(), &extra, 1024).await;
    wait_ready(&proxy).await;
    let checks_failed = "carousel_health_checks_total";
    let fails_before = fail_checks(&proxy, checks_failed).await;
    let attack = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..3000u32 {
            let src = ip4(0, 31 + (i % 2) as u8);
            tasks.spawn(async move {
                let s = TcpSocket::new_v4().ok()?;
                s.bind(SocketAddr::new(IpAddr::V4(src), 0)).ok()?;
                timeout(Duration::from_secs(2), s.connect(responder))
                    .await
                    .ok()?
                    .ok()
            });
            if i % 200 == 199 {
                while let Some(r) = tasks.join_next().await {
                    held.extend(r.ok().flatten());
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            held.extend(r.ok().flatten());
        }
        held
    });
    let (mut ok, mut failed) = (0, Vec::new());
    for _ in 0..50 {
        match timeout(
            Duration::from_secs(3),
            tokio_socks::tcp::Socks5Stream::connect(proxy.socks, (NAME, c.port)),
        )
        .await
        {
            Ok(Ok(mut s)) => {
                let mut who = String::new();
                let r = async {
                    s.write_all(b"WHO\n").await?;
                    s.read_to_string(&mut who).await
                };
                match timeout(Duration::from_secs(3), r).await {
                    Ok(Ok(_)) if who.starts_with('b') => ok += 1,
                    other => failed.push(format!("{other:?} {who:?}")),
                }
            }
            other => failed.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = attack.await.unwrap();
    let fds = proxy.open_fds();
    println!(
        "attack held {} connections; carousel holds {fds} descriptors",
        held.len()
    );
    assert!(
        failed.is_empty(),
        "{} of 50 probes failed: {failed:?}",
        failed.len()
    );
    assert_eq!(ok, 50);
    assert!(fds < 1000, "{fds} descriptors open");
    for last in [11, 12, 13] {
        let up = format!(
            "carousel_member_up{{cluster=\"{NAME}\",member=\"127.0.0.{last}:{}\"}}",
            c.port
        );
        assert_eq!(proxy.metric(&up).await, 1.0, "{up}");
    }
    assert_eq!(
        fail_checks(&proxy, checks_failed).await,
        fails_before,
        "a health check failed"
    );
    let per_client = proxy
        .metric("carousel_dns_tcp_refused_total{reason=\"per_client\"}")
        .await;
    assert!(per_client >= 2500.0, "{per_client} refused per client");
    drop(held);
}

/// Sum of the failed health checks of every member.
async fn fail_checks(proxy: &Carousel, series: &str) -> f64 {
    let (_, body) = proxy.admin_get("/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(series) && l.contains("result=\"fail\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A SOCKS5 CONNECT to `target` from `src`: the reply code, or `None` if the connection closed
/// or stalled without one.
async fn socks5_from(
    src: Ipv4Addr,
    proxy: SocketAddr,
    target: SocketAddr,
) -> Option<(u8, TcpStream)> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0)).ok()?;
    let mut s = timeout(Duration::from_secs(3), s.connect(proxy))
        .await
        .ok()?
        .ok()?;
    let IpAddr::V4(ip) = target.ip() else {
        return None;
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await.ok()?;
    let mut reply = [0u8; 12];
    timeout(Duration::from_secs(3), s.read_exact(&mut reply))
        .await
        .ok()?
        .ok()?;
    Some((reply[3], s))
}

/// 700 tunnels from five addresses and then 300 connections that never send a byte, in a
/// process limited to 1,024 descriptors with the default `[limits]`: the budget admits what its
/// descriptors hold and refuses the rest with SOCKS 0x01 / HTTP 503, so a fresh client gets a
/// clear answer at once. Before: the tunnels took the process to EMFILE (each holds two
/// descriptors) and fresh clients hung in the accept queue (3 of 5 timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_descriptor_budget_get_a_clear_refusal() {
    let dns = DnsServer::start().await;
    let (port, _backends) = Backend::start_set(&[IpAddr::V4(ip4(0, 11))], &["b11"]).await;
    let target = SocketAddr::new(IpAddr::V4(ip4(0, 11)), port);
    let proxy = Carousel::start_with_nofile(dns.addr(), "", 1024).await;
    let mut tunnels = Vec::new();
    let mut refused = 0;
    for i in 0..700u32 {
        match socks5_from(ip4(0, 21 + (i % 5) as u8), proxy.socks, target).await {
            Some((0, s)) => tunnels.push(s),
            Some((1, _)) => refused += 1,
            other => panic!("tunnel {i}: {:?}", other.map(|o| o.0)),
        }
    }
    // Connections that never send anything, from the same five addresses.
    let mut idle = Vec::new();
    for i in 0..300u32 {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(IpAddr::V4(ip4(0, 21 + (i % 5) as u8)), 0))
            .unwrap();
        if let Ok(Ok(s)) = timeout(Duration::from_secs(2), s.connect(proxy.http)).await {
            idle.push(s);
        }
    }
    let fds = proxy.open_fds();
    println!(
        "{} tunnels open, {refused} refused; carousel holds {fds} descriptors",
        tunnels.len()
    );
    assert!(refused > 0, "nothing was refused");
    assert!(
        tunnels.len() >= 100,
        "only {} tunnels admitted",
        tunnels.len()
    );
    assert!(fds < 1024, "{fds} descriptors: at the limit");
    // Fresh clients from another address: a clear refusal in their protocol, at once.
    for i in 0..5u8 {
        let started = Instant::now();
        let got = socks5_from(ip4(0, 40 + i), proxy.socks, target)
            .await
            .map(|r| r.0);
        assert_eq!(got, Some(1), "fresh SOCKS5 client {i}");
        let out = support::curl(&[
            "--interface",
            &ip4(0, 40 + i).to_string(),
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &format!("http://{}", proxy.http),
            &format!("http://{target}/who"),
        ])
        .await;
        assert_eq!(out.stdout_str(), "503", "fresh HTTP client {i}: {out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(
        proxy
            .metric("carousel_overload_rejections_total{limit=\"global\"}")
            .await
            > 0.0
    );
    assert!(
        !proxy.log_text().contains("Too many open files"),
        "EMFILE was logged"
    );
    // The tunnels still work.
    for t in tunnels.iter_mut().take(5) {
        t.write_all(b"ECHO\nz").await.unwrap();
        let mut b = [0u8; 1];
        timeout(Duration::from_secs(3), t.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"z");
    }
    drop(idle);
}
