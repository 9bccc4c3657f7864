//! Integration-test support: an in-process DNS server (hickory-server),
//! self-identifying loopback backends, payload checksums and a `curl` runner.
//!
//! Use from an integration test with `mod support;`. Only loopback addresses
//! (127.0.0.0/8, ::1) are ever bound.
#![allow(dead_code, unused_imports)]

pub use carousel::testbed::{backend, dns};
pub mod proxy;

use std::process::Stdio;
use std::time::Duration;

pub use backend::Backend;
pub use dns::{DnsMode, DnsServer};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub use carousel::testbed::blob_byte;

/// The first `n` bytes of the deterministic blob payload.
pub fn blob_bytes(n: usize) -> Vec<u8> {
    (0..n).map(blob_byte).collect()
}

/// FNV-1a 64 of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(FNV_OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// FNV-1a 64 of the `n`-byte blob served at `/blob/<n>` (no allocation).
pub fn blob_checksum(n: usize) -> u64 {
    (0..n).fold(FNV_OFFSET, |h, i| {
        (h ^ blob_byte(i) as u64).wrapping_mul(FNV_PRIME)
    })
}

/// Result of a `curl` run.
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// Exit code (-1 if killed by a signal, failed to spawn or timed out).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run the system `curl` with `-q -sS --max-time 20` prepended (`-q`: ignore
/// `~/.curlrc`), proxy environment variables removed, bounded to 30 s.
pub async fn curl(args: &[&str]) -> CurlOutput {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-q", "-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(out)) => CurlOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => CurlOutput {
            status: -1,
            stdout: Vec::new(),
            stderr: format!("failed to run curl: {e}"),
        },
        Err(_) => CurlOutput {
            status: -1,
            stdout: Vec::new(),
            stderr: "curl timed out after 30 s (killed)".to_string(),
        },
    }
}

/// A SOCKS4a CONNECT request for `host:port` (user id `u`; the 0.0.0.1 address that asks the
/// proxy to resolve `host`).
pub fn socks4a_connect(host: &str, port: u16) -> Vec<u8> {
    let mut req = vec![4, 1];
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&[0, 0, 0, 1, b'u', 0]);
    req.extend_from_slice(host.as_bytes());
    req.push(0);
    req
}

/// A SOCKS5 CONNECT request for `host:port`: an IPv4 literal as ATYP 1, anything else as a
/// domain name (ATYP 3).
pub fn socks5_connect(host: &str, port: u16) -> Vec<u8> {
    let mut req = vec![5, 1, 0];
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.extend_from_slice(&[3, host.len() as u8]);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    req
}

/// The value of the metric series `series` (exact text before the value) in a Prometheus text
/// exposition, or 0 if absent. A series that exists is not one that moved: counters are exposed
/// at 0 as soon as their labels are known.
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
