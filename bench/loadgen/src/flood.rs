//! Floods at the DNS responder (issue 26), with a well-behaved client beside them.
//!
//! - `udp`: `--sources` sockets (the first `--allowed` on 127.0.0.100 and up, the rest on
//!   127.0.1.1 and up, outside a responder's `allow_clients = ["127.0.0.0/24"]`) send A queries
//!   at `--rate` datagrams per second in all, with sendmmsg(2) in batches, for `--seconds`. A
//!   probe on 127.0.0.6 asks `--probe-rate` times a second (1 s timeout each, no retry). The
//!   server's RSS is sampled every 100 ms during the flood and for 10 s after it; its socket's
//!   drops are read from /proc/net/udp.
//! - `tcp`: `--count` TCP connections to the responder from two addresses (127.0.0.31-32),
//!   opened `--parallel` at a time, the latest `--hold` of them held open until the end, while a SOCKS5 probe through
//!   `--socks` asks `--probe-target` every 100 ms (a fresh tunnel to a one-shot backend, 32 bytes
//!   out and back). The
//!   server's descriptors are sampled.
//!
//! Bounded in count and time; only loopback addresses are used.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::client::{check_loopback, other};
use crate::procfs;

/// An A query for `name` (RD=0) without EDNS.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends `n` copies of `packet` to `to` from `sock` in one sendmmsg(2); returns how many went.
fn send_batch(sock: &UdpSocket, packet: &[u8], to: SocketAddr, n: usize) -> usize {
    let SocketAddr::V4(v4) = to else { return 0 };
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = v4.port().to_be();
    addr.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(v4.ip().octets()),
    };
    let mut iov = libc::iovec {
        iov_base: packet.as_ptr() as *mut libc::c_void,
        iov_len: packet.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|_| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at `addr` and `iov`, which outlive the call; the kernel only
    // reads them (and writes msg_len).
    let sent = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
        )
    };
    sent.max(0) as usize
}

/// The drops counted on the UDP socket bound to `port` (/proc/net/udp's last column).
fn socket_drops(port: u16) -> Option<u64> {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .ok()?
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&hex)))
        .map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// What `flood udp` was asked to do.
pub struct UdpOpts {
    pub server: SocketAddr,
    pub name: String,
    pub sources: usize,
    pub allowed: usize,
    pub rate: u64,
    pub seconds: f64,
    pub probe_rate: u64,
    pub pid: Option<i32>,
}

pub fn udp(o: UdpOpts) -> io::Result<()> {
    check_loopback(&o.server)?;
    if o.sources == 0 || o.sources > 250 || o.allowed > o.sources {
        return Err(other("--sources must be 1-250, --allowed at most --sources"));
    }
    let rss = |pid: Option<i32>| pid.and_then(procfs::rss_kib);
    let drops_before = socket_drops(o.server.port());
    let rss_before = rss(o.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs_f64(o.seconds);
    // Two sender threads, half the sources each.
    let mut senders = Vec::new();
    for t in 0..2usize {
        let (stop, sent, name) = (stop.clone(), sent.clone(), o.name.clone());
        let (server, rate) = (o.server, o.rate / 2);
        let mine: Vec<usize> = (0..o.sources).filter(|i| i % 2 == t).collect();
        let allowed = o.allowed;
        senders.push(std::thread::spawn(move || -> io::Result<()> {
            let socks: Vec<UdpSocket> = mine
                .iter()
                .map(|&i| {
                    let ip = if i < allowed {
                        Ipv4Addr::new(127, 0, 0, 100 + i as u8)
                    } else {
                        Ipv4Addr::new(127, 0, 1, 1 + (i - allowed) as u8)
                    };
                    UdpSocket::bind((ip, 0))
                })
                .collect::<io::Result<_>>()?;
            let packet = query(0x5151, &name);
            let started = Instant::now();
            let mut done = 0u64;
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < deadline {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                if done >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let n = ((due - done) as usize).clamp(1, 32);
                let s = &socks[k % socks.len()];
                k += 1;
                let went = send_batch(s, &packet, server, n);
                // A full send buffer drops the batch's rest: it counts as sent (the flood does not
                // slow down for the server).
                done += n as u64;
                sent.fetch_add(went as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    // The probe and the memory samples.
    let probe = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 6), 0))?;
    probe.set_read_timeout(Some(Duration::from_millis(50)))?;
    let interval = Duration::from_secs_f64(1.0 / o.probe_rate.max(1) as f64);
    let (mut asked, mut answered) = (0u64, 0u64);
    let mut peak = rss_before.unwrap_or(0);
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    while started.elapsed() < deadline {
        let id = (asked % 60000) as u16 + 1;
        asked += 1;
        probe.send_to(&query(id, &o.name), o.server)?;
        let sent_at = Instant::now();
        while sent_at.elapsed() < Duration::from_secs(1) {
            match probe.recv_from(&mut buf) {
                Ok((n, _)) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                    answered += 1;
                    break;
                }
                _ => {}
            }
        }
        peak = peak.max(rss(o.pid).unwrap_or(0));
        if let Some(wait) = interval.checked_sub(sent_at.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().map_err(|_| other("sender panicked"))??;
    }
    let flood_s = started.elapsed().as_secs_f64();
    let drops = socket_drops(o.server.port())
        .zip(drops_before)
        .map(|(a, b)| a.saturating_sub(b));
    let rss_end = rss(o.pid);
    // Back within 10 s?
    let mut back_after_s = None;
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(10) {
        if let (Some(now), Some(b)) = (rss(o.pid), rss_before) {
            if now <= b + 10 * 1024 {
                back_after_s = Some(after.elapsed().as_secs_f64());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = sent.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "test": "udp-flood",
            "sources": o.sources,
            "allowed_sources": o.allowed,
            "rate_asked": o.rate,
            "sent": total,
            "sent_per_s": total as f64 / flood_s,
            "seconds": flood_s,
            "server_socket_drops": drops,
            "probe_asked": asked,
            "probe_answered": answered,
            "probe_answered_pct": 100.0 * answered as f64 / asked.max(1) as f64,
            "rss_before_kib": rss_before,
            "rss_peak_kib": peak,
            "rss_growth_mib": rss_before.map(|b| peak.saturating_sub(b) as f64 / 1024.0),
            "rss_end_kib": rss_end,
            "rss_back_within_10s_after_s": back_after_s,
        })
    );
    Ok(())
}

/// What `flood tcp` was asked to do.
pub struct TcpOpts {
    pub responder: SocketAddr,
    pub count: usize,
    pub parallel: usize,
    pub hold: usize,
    pub socks: SocketAddr,
    pub probe_target: String,
    pub pid: Option<i32>,
}

pub async fn tcp(o: TcpOpts) -> io::Result<()> {
    check_loopback(&o.responder)?;
    check_loopback(&o.socks)?;
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let done = done.clone();
        let (socks, target) = (o.socks, o.probe_target.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            // Bounded: at most 10 minutes of probes.
            for _ in 0..6000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let cycle = async {
                    let mut s = tokio_socks::tcp::Socks5Stream::connect(socks, target.as_str())
                        .await
                        .map_err(|e| other(e.to_string()))?;
                    s.write_all(&[b'p'; 32]).await?;
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).await?;
                    Ok::<_, io::Error>(back)
                };
                match tokio::time::timeout(Duration::from_secs(3), cycle).await {
                    Ok(Ok(b)) if b == [b'p'; 32] => ok += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, failed)
        })
    };
    let started = Instant::now();
    let mut held = std::collections::VecDeque::new();
    let mut connected = 0u64;
    let mut errors = 0u64;
    let mut peak_fds = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.count {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 31 + (i % 2) as u8));
        let to = o.responder;
        tasks.spawn(async move {
            let s = TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(src, 0))?;
            tokio::time::timeout(Duration::from_secs(2), s.connect(to))
                .await
                .map_err(|_| other("connect timed out"))?
        });
        if tasks.len() >= o.parallel {
            if let Some(r) = tasks.join_next().await {
                match r {
                    Ok(Ok(s)) => {
                        connected += 1;
                        held.push_back(s);
                        if held.len() > o.hold {
                            held.pop_front();
                        }
                    }
                    _ => errors += 1,
                }
            }
            if i % 1000 == 0 {
                peak_fds = peak_fds.max(o.pid.and_then(procfs::fd_count).unwrap_or(0));
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => {
                connected += 1;
                held.push_back(s);
            }
            _ => errors += 1,
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    // Keep them a few seconds more, with the probe running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    peak_fds = peak_fds.max(o.pid.and_then(procfs::fd_count).unwrap_or(0));
    done.store(true, Ordering::Relaxed);
    let (ok, failed) = probe.await.map_err(|e| other(e.to_string()))?;
    println!(
        "{}",
        json!({
            "test": "tcp-flood",
            "connects": o.count,
            "connected": connected,
            "held": held.len(),
            "connect_errors": errors,
            "open_s": open_s,
            "server_peak_fds": peak_fds,
            "probe_ok": ok,
            "probe_failed": failed,
        })
    );
    Ok(())
}
