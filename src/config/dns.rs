//! `[dns]`: how carousel resolves names.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, Invalid};

/// Which address families to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpStrategy {
    /// A and AAAA, IPv4 first.
    Ipv4AndIpv6,
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
}

/// Name resolution settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Nameservers (`ip:port`); empty means the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Milliseconds per query.
    pub timeout_ms: u64,
    /// Tries per nameserver.
    pub attempts: usize,
    /// Lower TTL clamp in seconds.
    pub min_ttl_seconds: u64,
    /// Upper TTL clamp in seconds.
    pub max_ttl_seconds: u64,
    /// Seconds a failed lookup is remembered.
    pub negative_ttl_seconds: u64,
    /// Seconds a last-known-good set keeps serving while refreshes fail.
    pub stale_seconds: u64,
    /// Seconds after which an unused name is forgotten.
    pub idle_seconds: u64,
    /// Most names kept at once; past it the least recently used are forgotten.
    pub max_names: usize,
    /// Address families.
    pub ip_strategy: IpStrategy,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_ms: 2000,
            attempts: 2,
            min_ttl_seconds: 5,
            max_ttl_seconds: 300,
            negative_ttl_seconds: 5,
            stale_seconds: 60,
            idle_seconds: 600,
            max_names: 10_000,
            ip_strategy: IpStrategy::Ipv4AndIpv6,
        }
    }
}

impl DnsSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.timeout_ms == 0 {
            return invalid("dns.timeout_ms", "must be greater than 0");
        }
        if self.attempts == 0 {
            return invalid("dns.attempts", "must be at least 1");
        }
        if self.max_names == 0 {
            return invalid("dns.max_names", "must be at least 1");
        }
        if self.min_ttl_seconds == 0 {
            return invalid("dns.min_ttl_seconds", "must be at least 1");
        }
        if self.max_ttl_seconds < self.min_ttl_seconds {
            return invalid(
                "dns.max_ttl_seconds",
                "must not be below dns.min_ttl_seconds",
            );
        }
        Ok(())
    }
}
