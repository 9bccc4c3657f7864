//! `[server]`, `[[listener]]` and a listener's TLS files.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Invalid};

/// Pingora server settings; carousel sets them all so Pingora's own defaults (a 300 s grace
/// period among them) never leak through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads per listener service.
    pub threads: usize,
    /// Whether a listener's worker threads share one work-stealing scheduler (`true`) or each run
    /// their own single-threaded one (`false`: no cross-thread wake-ups, connections stay on the
    /// thread that accepted them).
    pub work_stealing: bool,
    /// Seconds of grace before shutdown / upgrade stops accepting.
    #[serde(rename = "grace_period_seconds", with = "super::duration::seconds")]
    pub grace_period: Duration,
    /// Seconds in-flight work gets after the grace period.
    #[serde(
        rename = "graceful_shutdown_timeout_seconds",
        with = "super::duration::seconds"
    )]
    pub graceful_shutdown_timeout: Duration,
    /// Milliseconds a client has for its request head or SOCKS handshake.
    #[serde(rename = "handshake_timeout_ms", with = "super::duration::millis")]
    pub handshake_timeout: Duration,
    /// Pingora pid file.
    pub pid_file: String,
    /// Pingora upgrade socket, for graceful binary upgrades.
    pub upgrade_sock: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: 2,
            work_stealing: true,
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_millis(10_000),
            pid_file: "/tmp/carousel.pid".into(),
            upgrade_sock: "/tmp/carousel_upgrade.sock".into(),
        }
    }
}

/// A protocol family a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP absolute-form forwarding and CONNECT tunnels.
    Http,
    /// SOCKS4, SOCKS4a and SOCKS5.
    Socks,
}

/// One client-facing port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Where to listen, `ip:port`.
    pub address: SocketAddr,
    /// Protocols accepted on this port.
    pub protocols: Vec<Protocol>,
    /// Serve TLS on this port (clients speak HTTP/CONNECT inside): an "HTTPS proxy".
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Whether connections start with a PROXY protocol header from a load balancer.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The balancers allowed to send that header; required when `proxy_protocol` is not off.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The PROXY protocol versions a listener expects in front of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: the peer is the client.
    #[default]
    Off,
    /// The text header (HAProxy `send-proxy`).
    V1,
    /// The binary header (HAProxy `send-proxy-v2`, cloud load balancers).
    V2,
    /// Either, told apart by the first byte.
    Any,
}

impl ListenerSection {
    /// Whether this listener accepts `p`.
    pub fn accepts(&self, p: Protocol) -> bool {
        self.protocols.contains(&p)
    }
}

/// Certificate and key of a TLS ("HTTPS proxy") listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
}

impl ServerSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.threads == 0 || self.threads > 256 {
            return invalid("server.threads", "must be between 1 and 256");
        }
        if self.handshake_timeout.is_zero() {
            return invalid("server.handshake_timeout_ms", "must be greater than 0");
        }
        Ok(())
    }
}

impl ListenerSection {
    /// Checks the values serde cannot; `i` is its index in the file.
    pub(super) fn validate(&self, i: usize) -> Result<(), Invalid> {
        if self.protocols.is_empty() {
            return invalid(
                format!("listener[{i}].protocols"),
                "must name http, socks or both",
            );
        }
        if self.proxy_protocol != ProxyProtocol::Off && self.trusted_proxies.is_empty() {
            return invalid(
                format!("listener[{i}].trusted_proxies"),
                "proxy_protocol needs the balancers' addresses (trusted_proxies)",
            );
        }
        if self.tls.is_some() && self.accepts(Protocol::Socks) {
            return invalid(
                format!("listener[{i}].tls"),
                "a TLS listener speaks HTTP only: protocols = [\"http\"]",
            );
        }
        Ok(())
    }
}
