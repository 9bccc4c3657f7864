//! `[dial]`, `[forward]` and `[tunnel]`: how carousel connects upstream and carries bytes.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Invalid};

/// Upstream connect settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialSection {
    /// Milliseconds per connect attempt.
    #[serde(rename = "connect_timeout_ms", with = "super::duration::millis")]
    pub connect_timeout: Duration,
    /// Milliseconds for all attempts of one request.
    #[serde(rename = "deadline_ms", with = "super::duration::millis")]
    pub deadline: Duration,
    /// Most addresses tried per request.
    pub max_attempts: usize,
    /// Milliseconds an attempt may go unanswered before the next candidate is started beside it
    /// (connection racing, RFC 8305 §5).
    #[serde(rename = "attempt_delay_ms", with = "super::duration::millis")]
    pub attempt_delay: Duration,
    /// Seconds a failed address is tried last.
    #[serde(rename = "failure_memory_seconds", with = "super::duration::seconds")]
    pub failure_memory: Duration,
    /// Which family a name's first attempt uses when it has both (RFC 8305 §4).
    pub prefer_family: PreferFamily,
    /// Most attempts the races leave behind that are watched to their own connect timeout at
    /// once (each holds a socket); past it they are closed unfinished.
    pub max_watched_attempts: usize,
}

/// The address family a name's first connect attempt goes to when the name has addresses of
/// both: RFC 8305 starts with IPv6 and alternates after it, so a broken IPv6 path costs one
/// attempt delay, not the request. Cluster members are distinct servers whose shares must stay
/// even, so a cluster's first pick is always the rotation's, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferFamily {
    /// IPv6 first (the RFC's default): a dual-stack name is served over IPv6 while it works.
    #[default]
    Ipv6,
    /// IPv4 first: for networks whose IPv6 egress is known to be worse.
    Ipv4,
    /// No preference: the rotation's pick of either family, so every address of the name takes
    /// an even share.
    Any,
}

impl Default for DialSection {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            deadline: Duration::from_millis(5000),
            max_attempts: 8,
            attempt_delay: Duration::from_millis(250),
            failure_memory: Duration::from_secs(30),
            prefer_family: PreferFamily::Ipv6,
            max_watched_attempts: 1024,
        }
    }
}

/// Forwarded HTTP requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardSection {
    /// Milliseconds the upstream may take to start its response (and between later reads)
    /// before the client gets 504.
    #[serde(rename = "response_timeout_ms", with = "super::duration::millis")]
    pub response_timeout: Duration,
}

impl Default for ForwardSection {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_millis(120_000),
        }
    }
}

/// Tunnel settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// Seconds without traffic before a tunnel is closed.
    #[serde(rename = "idle_timeout_seconds", with = "super::duration::seconds")]
    pub idle_timeout: Duration,
    /// Capacity of each splice(2) pipe, bytes (0: the kernel's default, 64 KiB).
    pub pipe_size_bytes: usize,
    /// Most splice pipes the process holds at once; unset: derived from the kernel's per-user
    /// pipe budget; 0: never splice (always copy through user space).
    pub max_pipes: Option<usize>,
}

/// The splice pipe size carousel asks for unless configured: the largest an unprivileged process
/// may have by default (`fs.pipe-max-size`), measured fastest in `bench/run.sh`.
pub const DEFAULT_PIPE_SIZE: usize = 1 << 20;

impl Default for TunnelSection {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(3600),
            pipe_size_bytes: DEFAULT_PIPE_SIZE,
            max_pipes: None,
        }
    }
}

impl DialSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.connect_timeout.is_zero() {
            return invalid("dial.connect_timeout_ms", "must be greater than 0");
        }
        if self.deadline < self.connect_timeout {
            return invalid(
                "dial.deadline_ms",
                "must not be below dial.connect_timeout_ms",
            );
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(2)).contains(&self.attempt_delay) {
            return invalid(
                "dial.attempt_delay_ms",
                "must be between 10 and 2000 (RFC 8305)",
            );
        }
        if self.max_attempts == 0 {
            return invalid("dial.max_attempts", "must be at least 1");
        }
        if self.max_watched_attempts > 1_000_000 {
            return invalid("dial.max_watched_attempts", "must be at most 1000000");
        }
        Ok(())
    }
}

impl ForwardSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.response_timeout.is_zero() {
            return invalid("forward.response_timeout_ms", "must be greater than 0");
        }
        Ok(())
    }
}

impl TunnelSection {
    /// Checks the values serde cannot.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.idle_timeout.is_zero() {
            return invalid("tunnel.idle_timeout_seconds", "must be greater than 0");
        }
        let pipe = self.pipe_size_bytes;
        if pipe != 0 && !(4096..=(256 << 20)).contains(&pipe) {
            return invalid(
                "tunnel.pipe_size_bytes",
                "must be 0 (kernel default) or between 4096 and 268435456",
            );
        }
        Ok(())
    }
}
