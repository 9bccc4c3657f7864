//! `[dns]`: how carousel resolves names.

use std::time::Duration;

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
    #[serde(rename = "timeout_ms", with = "super::duration::millis")]
    pub timeout: Duration,
    /// Tries per nameserver.
    pub attempts: usize,
    /// Lower TTL clamp in seconds.
    #[serde(rename = "min_ttl_seconds", with = "super::duration::seconds")]
    pub min_ttl: Duration,
    /// Upper TTL clamp in seconds.
    #[serde(rename = "max_ttl_seconds", with = "super::duration::seconds")]
    pub max_ttl: Duration,
    /// Seconds a failed lookup is remembered.
    #[serde(rename = "negative_ttl_seconds", with = "super::duration::seconds")]
    pub negative_ttl: Duration,
    /// Seconds a last-known-good set keeps serving while refreshes fail.
    #[serde(rename = "stale_seconds", with = "super::duration::seconds")]
    pub stale: Duration,
    /// Seconds after which an unused name is forgotten.
    #[serde(rename = "idle_seconds", with = "super::duration::seconds")]
    pub idle: Duration,
    /// Most names kept at once; past it the least recently used are forgotten.
    pub max_names: usize,
    /// Address families.
    pub ip_strategy: IpStrategy,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_millis(2000),
            attempts: 2,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            stale: Duration::from_secs(60),
            idle: Duration::from_secs(600),
            max_names: 10_000,
            ip_strategy: IpStrategy::Ipv4AndIpv6,
        }
    }
}

impl DnsSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.timeout.is_zero() {
            return invalid("dns.timeout_ms", "must be greater than 0");
        }
        if self.attempts == 0 {
            return invalid("dns.attempts", "must be at least 1");
        }
        if self.max_names == 0 {
            return invalid("dns.max_names", "must be at least 1");
        }
        if self.min_ttl.is_zero() {
            return invalid("dns.min_ttl_seconds", "must be at least 1");
        }
        if self.max_ttl < self.min_ttl {
            return invalid(
                "dns.max_ttl_seconds",
                "must not be below dns.min_ttl_seconds",
            );
        }
        Ok(())
    }
}
