//! `[responder]`: the authoritative DNS answers carousel publishes for its clusters, for the
//! clients that resolve a cluster name themselves.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{invalid, Invalid};

/// The health-aware DNS responder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponderSection {
    /// Where to answer, UDP and TCP on each; empty: off.
    pub listen: Vec<SocketAddr>,
    /// TTL of positive answers, seconds (halved while a member is down, 1 when all are).
    pub ttl_seconds: u32,
    /// Most A/AAAA records in one answer.
    pub max_answers: usize,
    /// Who may query (default: `access.allow_clients`).
    pub allow_clients: Option<Vec<IpNet>>,
    /// Queries one client address may make per second (a burst of twice this); past it the
    /// queries are dropped, so the responder is never a reflector.
    pub rate_limit_per_second: u32,
    /// TCP connections open at once, over all responder addresses (each holds a descriptor of
    /// the responder's share); past it new ones are closed at accept.
    pub max_tcp_connections: usize,
    /// TCP connections open at once from one client address.
    pub max_tcp_connections_per_client: usize,
    /// Milliseconds a TCP connection may wait for its next query, or take to send one.
    #[serde(rename = "tcp_idle_timeout_ms", with = "super::duration::millis")]
    pub tcp_idle_timeout: Duration,
}

impl Default for ResponderSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            ttl_seconds: 2,
            max_answers: 8,
            allow_clients: None,
            rate_limit_per_second: 100,
            max_tcp_connections: 128,
            max_tcp_connections_per_client: 8,
            tcp_idle_timeout: Duration::from_millis(5000),
        }
    }
}

impl ResponderSection {
    /// The TTL of positive answers.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl_seconds))
    }

    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(1..=300).contains(&self.ttl_seconds) {
            return invalid("responder.ttl_seconds", "must be between 1 and 300");
        }
        if !(1..=64).contains(&self.max_answers) {
            return invalid("responder.max_answers", "must be between 1 and 64");
        }
        if self.rate_limit_per_second == 0 {
            return invalid("responder.rate_limit_per_second", "must be at least 1");
        }
        if self.max_tcp_connections == 0 {
            return invalid("responder.max_tcp_connections", "must be at least 1");
        }
        if self.max_tcp_connections_per_client == 0 {
            return invalid(
                "responder.max_tcp_connections_per_client",
                "must be at least 1",
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(120)).contains(&self.tcp_idle_timeout)
        {
            return invalid(
                "responder.tcp_idle_timeout_ms",
                "must be between 100 and 120000",
            );
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                return invalid(format!("responder.listen[{i}]"), "address listed twice");
            }
        }
        Ok(())
    }
}
