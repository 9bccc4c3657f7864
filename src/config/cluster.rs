//! `[[cluster]]`: a name carousel watches closely, with its health checks and passive ejection.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Invalid};

/// How a cluster picks the member for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Each request starts at the next member (weighted).
    #[default]
    RoundRobin,
    /// The member with the fewest active connections among the next few in rotation.
    LeastConnections,
    /// Power of two choices: the next member in rotation and a random one, the less loaded wins
    /// (a tie goes to the rotation, so idle members share requests evenly).
    RandomTwo,
}

impl Selection {
    /// The configuration's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::RoundRobin => "round_robin",
            Selection::LeastConnections => "least_connections",
            Selection::RandomTwo => "random_two",
        }
    }
}

/// What happens to a member's open tunnels when the active checks mark it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMemberDown {
    /// They stay open: an overloaded member's live sessions are not cut.
    #[default]
    Keep,
    /// They are closed on the client side, so clients reconnect at once and land on a survivor
    /// (HAProxy's `on-marked-down shutdown-sessions`). Not on a passive ejection alone.
    CloseTunnels,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// Send `send`, expect the reply to start with `expect`.
    SendExpect,
    /// A TLS handshake completes.
    Tls,
}

/// Active health checking of a cluster's members.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// Milliseconds between checks of one member.
    #[serde(rename = "interval_ms", with = "super::duration::millis")]
    pub interval: Duration,
    /// Milliseconds one check may take.
    #[serde(rename = "timeout_ms", with = "super::duration::millis")]
    pub timeout: Duration,
    /// Consecutive passes that bring a down member up.
    pub rise: u32,
    /// Consecutive failures that take an up member down.
    pub fall: u32,
    /// Check kind.
    pub kind: HealthKind,
    /// Bytes sent by a `send_expect` check.
    pub send: String,
    /// Prefix the reply must start with for a `send_expect` check.
    pub expect: String,
    /// Server name sent in a `tls` check (default: the cluster name).
    pub tls_server_name: String,
    /// Spread of each interval, in percent, so members are not checked in lockstep.
    pub jitter_percent: u32,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(2000),
            timeout: Duration::from_millis(1000),
            rise: 2,
            fall: 2,
            kind: HealthKind::Tcp,
            send: String::new(),
            expect: String::new(),
            tls_server_name: String::new(),
            jitter_percent: 20,
        }
    }
}

/// Passive outlier detection on the request path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    /// Consecutive connect failures that eject a member.
    pub consecutive_failures: u32,
    /// First ejection length in milliseconds; doubles with each repeated ejection.
    #[serde(rename = "base_ejection_ms", with = "super::duration::millis")]
    pub base_ejection: Duration,
    /// Longest ejection in milliseconds.
    #[serde(rename = "max_ejection_ms", with = "super::duration::millis")]
    pub max_ejection: Duration,
    /// Most of a cluster (percent of members) that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(5000),
            max_ejection: Duration::from_millis(300_000),
            max_ejection_percent: 50,
        }
    }
}

/// One configured cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The name clients ask for (for example `chat.example.com`), normalised as it is read
    /// (lowercase, no trailing dot), so every lookup compares it as it is.
    #[serde(deserialize_with = "normalized")]
    pub name: String,
    /// Ports clients use for this cluster; each member is health-checked on each.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Discover members from this SRV record instead of the name's A/AAAA records (normalised
    /// like `name`).
    #[serde(default, deserialize_with = "normalized_opt")]
    pub srv: Option<String>,
    /// Extra members: `ip` (on every port) or `ip:port`, parsed as the file is read.
    #[serde(default)]
    pub static_members: Vec<StaticMember>,
    /// Member choice per request.
    #[serde(default)]
    pub selection: Selection,
    /// Seconds the last good member set keeps serving while DNS fails (RFC 8767).
    #[serde(default = "default_serve_stale")]
    #[serde(rename = "serve_stale_seconds", with = "super::duration::seconds")]
    pub serve_stale: Duration,
    /// Whether NXDOMAIN also counts as a DNS failure for serve-stale.
    #[serde(default)]
    pub serve_stale_nxdomain: bool,
    /// Send requests for a down member's IP address (on a cluster port) to a healthy member.
    #[serde(default)]
    pub rescue_member_ips: bool,
    /// Seconds a tunnel to this cluster may carry no bytes before it is closed (default:
    /// `tunnel.idle_timeout_seconds`).
    #[serde(default)]
    #[serde(
        rename = "tunnel_idle_timeout_seconds",
        with = "super::duration::opt_seconds"
    )]
    pub tunnel_idle_timeout: Option<Duration>,
    /// What happens to the open tunnels of a member the active checks mark down.
    #[serde(default)]
    pub on_member_down: OnMemberDown,
    /// Forwarded HTTP requests to this cluster: milliseconds its members may take to start a
    /// response (default: `forward.response_timeout_ms`).
    #[serde(default)]
    #[serde(rename = "response_timeout_ms", with = "super::duration::opt_millis")]
    pub response_timeout: Option<Duration>,
    /// Lower TTL clamp for discovery, seconds (default: `dns.min_ttl_seconds`).
    #[serde(default)]
    #[serde(rename = "min_ttl_seconds", with = "super::duration::opt_seconds")]
    pub min_ttl: Option<Duration>,
    /// Upper TTL clamp for discovery, seconds (default: `dns.max_ttl_seconds`).
    #[serde(default)]
    #[serde(rename = "max_ttl_seconds", with = "super::duration::opt_seconds")]
    pub max_ttl: Option<Duration>,
    /// The members are parent proxies (`[cluster.parent]`): a rule's `via` hands them the
    /// destination instead of carousel connecting to it.
    #[serde(default)]
    pub parent: Option<ParentSection>,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthSection,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierSection,
}

fn default_serve_stale() -> Duration {
    Duration::from_secs(300)
}

impl Default for ClusterSection {
    /// The defaults a `[[cluster]]` table gets for every key it leaves out (no name, no ports).
    fn default() -> Self {
        Self {
            name: String::new(),
            ports: Vec::new(),
            srv: None,
            static_members: Vec::new(),
            selection: Selection::default(),
            serve_stale: default_serve_stale(),
            serve_stale_nxdomain: false,
            rescue_member_ips: false,
            tunnel_idle_timeout: None,
            on_member_down: OnMemberDown::default(),
            response_timeout: None,
            min_ttl: None,
            max_ttl: None,
            parent: None,
            health: HealthSection::default(),
            outlier: OutlierSection::default(),
        }
    }
}

/// A cluster of parent proxies: how carousel asks them for the destination.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParentSection {
    /// What the parents speak.
    pub protocol: ParentProtocol,
    /// `user:password` (one line) carousel authenticates to the parents with: Basic for an HTTP
    /// parent, username/password for SOCKS5. Never a client's credentials, never logged.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// PEM file of the CAs an `https` parent's certificate must chain to (unset: the system's
    /// roots). A corporate parent usually has the company's own CA.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The name an `https` parent's certificate must be valid for, sent as SNI (default: the
    /// cluster's name).
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// The protocol of a parent proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParentProtocol {
    /// An HTTP proxy: `CONNECT host:port` for tunnels, absolute-form requests for plain HTTP
    /// (Squid's `cache_peer ... parent`).
    Http,
    /// An HTTP proxy reached over TLS (an "HTTPS proxy"): the same requests inside a TLS session
    /// whose certificate is verified against `ca_file`.
    Https,
    /// A SOCKS5 proxy: CONNECT by domain name (the parent resolves).
    Socks5,
}

impl ClusterSection {
    /// A cluster for `name` on `ports` with every other key at its default: what a program
    /// embedding carousel (the Pingora plugin) builds instead of writing TOML.
    pub fn new(name: impl Into<String>, ports: Vec<u16>) -> Self {
        Self {
            name: normalize_name(&name.into()),
            ports,
            ..Self::default()
        }
    }

    /// Discovers the members from this SRV record.
    pub fn with_srv(mut self, record: impl Into<String>) -> Self {
        self.srv = Some(normalize_name(&record.into()));
        self
    }

    /// Checks what a configuration file's `[[cluster]]` would be checked for; the error names
    /// the key and why.
    pub fn check(&self) -> Result<(), String> {
        self.validate(0)
            .map_err(|(key, why)| format!("{key}: {why}"))
    }
}

/// Parses a static member: `ip` (port `None`: every cluster port) or `ip:port` / `[v6]:port`.
pub fn parse_member(s: &str) -> Option<StaticMember> {
    if let Ok(ip) = s.parse() {
        return Some(StaticMember { ip, port: None });
    }
    let sa: SocketAddr = s.parse().ok()?;
    (sa.port() != 0).then_some(StaticMember {
        ip: sa.ip(),
        port: Some(sa.port()),
    })
}

/// A `static_members` entry: a member that is there whatever DNS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticMember {
    /// Its address.
    pub ip: std::net::IpAddr,
    /// Its port; unset: every port of the cluster.
    pub port: Option<u16>,
}

impl<'de> Deserialize<'de> for StaticMember {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_member(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} must be `ip` or `ip:port`")))
    }
}

/// A DNS name as carousel compares it: lowercase, without the root's trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn normalized<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| normalize_name(&s))
}

fn normalized_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(|s| normalize_name(&s)))
}

impl ClusterSection {
    /// Checks the values serde cannot; `i` is its index in the file.
    pub(super) fn validate(&self, i: usize) -> Result<(), Invalid> {
        let k = |f: &str| format!("cluster[{i}].{f}");
        if !crate::protocol::validate_hostname(&self.name) {
            return invalid(k("name"), "must be a valid DNS name");
        }
        if self.ports.is_empty() && self.srv.is_none() {
            return invalid(k("ports"), "name at least one port (or use srv)");
        }
        if self.ports.contains(&0) {
            return invalid(k("ports"), "port 0 is not a port");
        }
        if let Some(srv) = &self.srv {
            if !crate::protocol::validate_hostname(srv) {
                return invalid(k("srv"), "must be a valid DNS name");
            }
        }
        if self.tunnel_idle_timeout == Some(Duration::ZERO) {
            return invalid(k("tunnel_idle_timeout_seconds"), "must be greater than 0");
        }
        if self.response_timeout == Some(Duration::ZERO) {
            return invalid(k("response_timeout_ms"), "must be greater than 0");
        }
        let h = &self.health;
        if h.interval.is_zero() || h.timeout.is_zero() {
            return invalid(
                k("health"),
                "interval_ms and timeout_ms must be greater than 0",
            );
        }
        if h.rise == 0 || h.fall == 0 {
            return invalid(k("health"), "rise and fall must be at least 1");
        }
        if h.kind == HealthKind::SendExpect && h.expect.is_empty() {
            return invalid(k("health.expect"), "a send_expect check needs `expect`");
        }
        if h.jitter_percent > 100 {
            return invalid(k("health.jitter_percent"), "must be at most 100");
        }
        let o = &self.outlier;
        if o.base_ejection.is_zero() || o.max_ejection < o.base_ejection {
            return invalid(
                k("outlier.max_ejection_ms"),
                "must be at least base_ejection_ms (> 0)",
            );
        }
        if o.max_ejection_percent > 100 {
            return invalid(k("outlier.max_ejection_percent"), "must be at most 100");
        }
        Ok(())
    }
}
