//! The TOML configuration: schema, defaults, validation and error locations.
//!
//! Every error names the file, the key and the line, so an operator can fix a typo without
//! guessing; unknown keys are errors because a misspelt key silently ignored is a security hole
//! in a proxy's access rules.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The configuration carousel runs on when no file is given: the same text as
/// `conf/carousel.toml`, so the documented file and the built-in behaviour never drift apart.
pub const DEFAULT_TOML: &str = include_str!("../conf/carousel.toml");

/// Why a configuration was refused, with where in the file the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path that was asked for.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but a key is wrong: syntax, type, unknown key or invalid value.
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The path of the file (or `<embedded>`).
        file: String,
        /// The dotted key path, for example `listener[1].address`.
        key: String,
        /// 1-based line of the key, or 0 if unknown.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pingora server settings carousel controls.
    #[serde(default)]
    pub server: ServerSection,
    /// Client-facing listeners.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// Name resolution.
    #[serde(default)]
    pub dns: DnsSection,
    /// Upstream connect behaviour.
    #[serde(default)]
    pub dial: DialSection,
    /// Established tunnels.
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// Forwarded (absolute-form) HTTP requests.
    #[serde(default)]
    pub forward: ForwardSection,
    /// Who may use the proxy.
    #[serde(default)]
    pub access: AccessSection,
    /// Diagnostics and the access log.
    #[serde(default)]
    pub log: LogSection,
    /// Connection and lookup limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The admin HTTP listener (metrics, health, status, PAC).
    #[serde(default)]
    pub admin: AdminSection,
    /// What the generated PAC file (`/proxy.pac`, `/wpad.dat`) tells browsers and clients.
    #[serde(default)]
    pub pac: PacSection,
    /// Configured clusters: names watched closely (health checks, ejection, serve-stale).
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterSection>,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One human-readable line.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Diagnostic level (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter);
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// Access log destination: `stdout`, `off`, or a file path.
    pub access: String,
    /// Access log format.
    pub access_format: AccessFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access: "stdout".into(),
            access_format: AccessFormat::Text,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Whether to run it.
    pub enabled: bool,
    /// Where it listens. Keep it on loopback or a management network: it is unauthenticated.
    pub address: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9090".parse().expect("literal address"),
        }
    }
}

/// Inputs of the generated PAC file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PacSection {
    /// `host:port` clients use for the HTTP proxy (default: the first HTTP listener's address).
    pub http_proxy: Option<String>,
    /// `host:port` clients use for SOCKS (default: the first SOCKS listener's address).
    pub socks_proxy: Option<String>,
    /// Domain suffixes (`.example.com`) or host names sent through carousel besides the clusters.
    pub domains: Vec<String>,
    /// What everything else gets, for example `DIRECT` or `PROXY other:8080`.
    pub default: Option<String>,
}

/// How a cluster picks the member for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
    pub interval_ms: u64,
    /// Milliseconds one check may take.
    pub timeout_ms: u64,
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
            interval_ms: 2000,
            timeout_ms: 1000,
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
    pub base_ejection_ms: u64,
    /// Longest ejection in milliseconds.
    pub max_ejection_ms: u64,
    /// Most of a cluster (percent of members) that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection_ms: 5000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
        }
    }
}

/// One configured cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The name clients ask for (for example `chat.example.com`).
    pub name: String,
    /// Ports clients use for this cluster; each member is health-checked on each.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Discover members from this SRV record instead of the name's A/AAAA records.
    #[serde(default)]
    pub srv: Option<String>,
    /// Extra members: `ip` (on every port) or `ip:port`.
    #[serde(default)]
    pub static_members: Vec<String>,
    /// Member choice per request.
    #[serde(default)]
    pub selection: Selection,
    /// Seconds the last good member set keeps serving while DNS fails (RFC 8767).
    #[serde(default = "default_serve_stale")]
    pub serve_stale_seconds: u64,
    /// Whether NXDOMAIN also counts as a DNS failure for serve-stale.
    #[serde(default)]
    pub serve_stale_nxdomain: bool,
    /// Send requests for a down member's IP address (on a cluster port) to a healthy member.
    #[serde(default)]
    pub rescue_member_ips: bool,
    /// Forwarded HTTP requests to this cluster: milliseconds its members may take to start a
    /// response (default: `forward.response_timeout_ms`).
    #[serde(default)]
    pub response_timeout_ms: Option<u64>,
    /// Lower TTL clamp for discovery, seconds (default: `dns.min_ttl_seconds`).
    #[serde(default)]
    pub min_ttl_seconds: Option<u64>,
    /// Upper TTL clamp for discovery, seconds (default: `dns.max_ttl_seconds`).
    #[serde(default)]
    pub max_ttl_seconds: Option<u64>,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthSection,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierSection,
}

fn default_serve_stale() -> u64 {
    300
}

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
    pub grace_period_seconds: u64,
    /// Seconds in-flight work gets after the grace period.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Milliseconds a client has for its request head or SOCKS handshake.
    pub handshake_timeout_ms: u64,
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
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            handshake_timeout_ms: 10_000,
            pid_file: "/tmp/carousel.pid".into(),
            upgrade_sock: "/tmp/carousel_upgrade.sock".into(),
        }
    }
}

impl ServerSection {
    /// The handshake timeout as a `Duration`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
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
}

impl ListenerSection {
    /// Whether this listener accepts `p`.
    pub fn accepts(&self, p: Protocol) -> bool {
        self.protocols.contains(&p)
    }
}

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

/// Upstream connect settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialSection {
    /// Milliseconds per connect attempt.
    pub connect_timeout_ms: u64,
    /// Milliseconds for all attempts of one request.
    pub deadline_ms: u64,
    /// Most addresses tried per request.
    pub max_attempts: usize,
    /// Milliseconds an attempt may go unanswered before the next candidate is started beside it
    /// (connection racing, RFC 8305 §5).
    pub attempt_delay_ms: u64,
    /// Seconds a failed address is tried last.
    pub failure_memory_seconds: u64,
}

impl Default for DialSection {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 500,
            deadline_ms: 5000,
            max_attempts: 8,
            attempt_delay_ms: 250,
            failure_memory_seconds: 30,
        }
    }
}

/// Forwarded HTTP requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardSection {
    /// Milliseconds the upstream may take to start its response (and between later reads)
    /// before the client gets 504.
    pub response_timeout_ms: u64,
}

impl Default for ForwardSection {
    fn default() -> Self {
        Self {
            response_timeout_ms: 120_000,
        }
    }
}

impl ForwardSection {
    /// The response timeout as a `Duration`.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

/// Tunnel settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// Seconds without traffic before a tunnel is closed.
    pub idle_timeout_seconds: u64,
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
            idle_timeout_seconds: 300,
            pipe_size_bytes: DEFAULT_PIPE_SIZE,
            max_pipes: None,
        }
    }
}

/// Access control: a coarse client gate, then ordered rules. What no rule allows is denied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    /// Client networks allowed to connect at all.
    pub allow_clients: Vec<IpNet>,
    /// htpasswd file with bcrypt hashes (`user:$2y$...`), for rules that name users.
    pub users_file: Option<std::path::PathBuf>,
    /// Realm sent in `Proxy-Authenticate`.
    pub realm: String,
    /// Seconds a verified username/password pair is remembered (bcrypt is slow on purpose).
    pub auth_cache_seconds: u64,
    /// Failed authentications one client address may make per minute, across all its
    /// connections (a burst of this many, refilled evenly); past it the client is refused at once.
    pub max_auth_failures_per_minute: u32,
    /// Ordered rules; the first that matches decides.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleSection>,
}

impl Default for AccessSection {
    fn default() -> Self {
        Self {
            allow_clients: vec![
                "127.0.0.0/8".parse().expect("literal CIDR"),
                "::1/128".parse().expect("literal CIDR"),
            ],
            users_file: None,
            realm: "carousel".into(),
            auth_cache_seconds: 60,
            max_auth_failures_per_minute: 10,
            rules: Vec::new(),
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}

/// A port or an inclusive range (`443` or `"1000-2000"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port.
    pub to: u16,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Range(String),
        }
        match Raw::deserialize(d)? {
            Raw::One(p) => Ok(PortRange { from: p, to: p }),
            Raw::Range(s) => {
                let (a, b) = s.split_once('-').unwrap_or((&s, &s));
                let from = a.trim().parse().map_err(serde::de::Error::custom)?;
                let to = b.trim().parse().map_err(serde::de::Error::custom)?;
                if from > to {
                    return Err(serde::de::Error::custom("port range runs backwards"));
                }
                Ok(PortRange { from, to })
            }
        }
    }
}

/// One access rule. Empty lists match anything, except `destinations`, which must be given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// A label for the access log.
    #[serde(default)]
    pub name: Option<String>,
    /// What a match does.
    pub action: Action,
    /// Client networks.
    #[serde(default)]
    pub clients: Vec<IpNet>,
    /// Users (`"*"`: any authenticated user). Naming users makes the rule require authentication.
    #[serde(default)]
    pub users: Vec<String>,
    /// `"*"`, host names, domain suffixes (`.example.com`), cluster names, CIDRs or addresses.
    pub destinations: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
}

/// Limits that keep one client, or a flood, from taking the proxy down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Open client connections in all.
    pub max_connections: usize,
    /// Open client connections from one client address.
    pub max_connections_per_client: usize,
    /// DNS lookups in flight for new names.
    pub max_concurrent_dns_lookups: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_client: 1024,
            max_concurrent_dns_lookups: 256,
        }
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

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Self::parse(DEFAULT_TOML, "<embedded>").expect("the embedded default config is valid")
    }

    /// Parses and validates `text`; `file` only labels errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (key, line) = locate_span(text, span.start);
            ConfigError::Invalid {
                file: file.to_string(),
                key,
                line,
                message: first_line(e.message()),
            }
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_string(),
                line: line_of_key(text, &key),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Semantic checks serde cannot express; returns the key path and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.server.threads == 0 || self.server.threads > 256 {
            return err("server.threads", "must be between 1 and 256");
        }
        if self.server.handshake_timeout_ms == 0 {
            return err("server.handshake_timeout_ms", "must be greater than 0");
        }
        if self.listeners.is_empty() {
            return err("listener", "at least one [[listener]] is required");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.protocols.is_empty() {
                return err(
                    &format!("listener[{i}].protocols"),
                    "must name http, socks or both",
                );
            }
            if l.tls.is_some() && l.accepts(Protocol::Socks) {
                return err(
                    &format!("listener[{i}].tls"),
                    "a TLS listener speaks HTTP only: protocols = [\"http\"]",
                );
            }
            if let Some(t) = &l.tls {
                for (k, p) in [("cert", &t.cert), ("key", &t.key)] {
                    if !p.is_file() {
                        return err(
                            &format!("listener[{i}].tls.{k}"),
                            &format!("{} is not a readable file", p.display()),
                        );
                    }
                }
                if let Err(e) = crate::tls::load_certified_key(t) {
                    return err(&format!("listener[{i}].tls"), &e);
                }
            }
            if self.listeners[..i].iter().any(|o| o.address == l.address) {
                return err(
                    &format!("listener[{i}].address"),
                    "address used by another listener",
                );
            }
        }
        let d = &self.dns;
        if d.timeout_ms == 0 {
            return err("dns.timeout_ms", "must be greater than 0");
        }
        if d.attempts == 0 {
            return err("dns.attempts", "must be at least 1");
        }
        if d.max_names == 0 {
            return err("dns.max_names", "must be at least 1");
        }
        if d.min_ttl_seconds == 0 {
            return err("dns.min_ttl_seconds", "must be at least 1");
        }
        if d.max_ttl_seconds < d.min_ttl_seconds {
            return err(
                "dns.max_ttl_seconds",
                "must not be below dns.min_ttl_seconds",
            );
        }
        if self.dial.connect_timeout_ms == 0 {
            return err("dial.connect_timeout_ms", "must be greater than 0");
        }
        if self.dial.deadline_ms < self.dial.connect_timeout_ms {
            return err(
                "dial.deadline_ms",
                "must not be below dial.connect_timeout_ms",
            );
        }
        if !(10..=2000).contains(&self.dial.attempt_delay_ms) {
            return err(
                "dial.attempt_delay_ms",
                "must be between 10 and 2000 (RFC 8305)",
            );
        }
        if self.dial.max_attempts == 0 {
            return err("dial.max_attempts", "must be at least 1");
        }
        if self.forward.response_timeout_ms == 0 {
            return err("forward.response_timeout_ms", "must be greater than 0");
        }
        if self.tunnel.idle_timeout_seconds == 0 {
            return err("tunnel.idle_timeout_seconds", "must be greater than 0");
        }
        let pipe = self.tunnel.pipe_size_bytes;
        if pipe != 0 && !(4096..=(256 << 20)).contains(&pipe) {
            return err(
                "tunnel.pipe_size_bytes",
                "must be 0 (kernel default) or between 4096 and 268435456",
            );
        }
        for (i, r) in self.access.rules.iter().enumerate() {
            let k = |f: &str| format!("access.rule[{i}].{f}");
            if r.destinations.is_empty() {
                return err(
                    &k("destinations"),
                    "name at least one destination (\"*\" for any)",
                );
            }
            for (j, d) in r.destinations.iter().enumerate() {
                if crate::policy::Destination::parse(d).is_none() {
                    return err(
                        &format!("access.rule[{i}].destinations[{j}]"),
                        "not \"*\", a host name, a .suffix or a CIDR",
                    );
                }
            }
            if !r.users.is_empty() && self.access.users_file.is_none() {
                return err(&k("users"), "rules naming users need access.users_file");
            }
        }
        if self.access.max_auth_failures_per_minute == 0 {
            return err("access.max_auth_failures_per_minute", "must be at least 1");
        }
        if let Some(path) = &self.access.users_file {
            if let Err(e) = crate::auth::Users::load(path) {
                return err("access.users_file", &e.to_string());
            }
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_client == 0 {
            return err("limits", "connection limits must be at least 1");
        }
        if self.limits.max_concurrent_dns_lookups == 0 {
            return err("limits.max_concurrent_dns_lookups", "must be at least 1");
        }
        for (i, c) in self.clusters.iter().enumerate() {
            let k = |f: &str| format!("cluster[{i}].{f}");
            let name = c.name.trim_end_matches('.');
            if !crate::protocol::validate_hostname(name) {
                return err(&k("name"), "must be a valid DNS name");
            }
            if self.clusters[..i]
                .iter()
                .any(|o| o.name.trim_end_matches('.').eq_ignore_ascii_case(name))
            {
                return err(&k("name"), "another cluster has this name");
            }
            if c.ports.is_empty() && c.srv.is_none() {
                return err(&k("ports"), "name at least one port (or use srv)");
            }
            if c.ports.contains(&0) {
                return err(&k("ports"), "port 0 is not a port");
            }
            if let Some(srv) = &c.srv {
                if !crate::protocol::validate_hostname(srv.trim_end_matches('.')) {
                    return err(&k("srv"), "must be a valid DNS name");
                }
            }
            for (j, m) in c.static_members.iter().enumerate() {
                if parse_member(m).is_none() {
                    return err(
                        &format!("cluster[{i}].static_members[{j}]"),
                        "must be `ip` or `ip:port`",
                    );
                }
            }
            if c.response_timeout_ms == Some(0) {
                return err(&k("response_timeout_ms"), "must be greater than 0");
            }
            let h = &c.health;
            if h.interval_ms == 0 || h.timeout_ms == 0 {
                return err(
                    &k("health"),
                    "interval_ms and timeout_ms must be greater than 0",
                );
            }
            if h.rise == 0 || h.fall == 0 {
                return err(&k("health"), "rise and fall must be at least 1");
            }
            if h.kind == HealthKind::SendExpect && h.expect.is_empty() {
                return err(&k("health.expect"), "a send_expect check needs `expect`");
            }
            if h.jitter_percent > 100 {
                return err(&k("health.jitter_percent"), "must be at most 100");
            }
            let o = &c.outlier;
            if o.base_ejection_ms == 0 || o.max_ejection_ms < o.base_ejection_ms {
                return err(
                    &k("outlier.max_ejection_ms"),
                    "must be at least base_ejection_ms (> 0)",
                );
            }
            if o.max_ejection_percent > 100 {
                return err(&k("outlier.max_ejection_percent"), "must be at most 100");
            }
        }
        Ok(())
    }

    /// A one-line summary for `carousel check`.
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|l| {
                let p: Vec<&str> = l
                    .protocols
                    .iter()
                    .map(|p| match p {
                        Protocol::Http => "http",
                        Protocol::Socks => "socks",
                    })
                    .collect();
                format!("{} ({})", l.address, p.join("+"))
            })
            .collect();
        let dns = if self.dns.nameservers.is_empty() {
            "system resolver".to_string()
        } else {
            format!("{} nameserver(s)", self.dns.nameservers.len())
        };
        format!(
            "ok: {} listener(s): {}; dns: {}; {} cluster(s); {} client network(s) allowed",
            self.listeners.len(),
            listeners.join(", "),
            dns,
            self.clusters.len(),
            self.access.allow_clients.len()
        )
    }
}

/// Parses a static member: `ip` (port `None`: every cluster port) or `ip:port` / `[v6]:port`.
pub fn parse_member(s: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse() {
        return Some((ip, None));
    }
    let sa: SocketAddr = s.parse().ok()?;
    (sa.port() != 0).then_some((sa.ip(), Some(sa.port())))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// One step of a key path.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// The line where a dotted key path (as produced by `validate`) is written, or 0.
fn line_of_key(text: &str, key: &str) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut span = 0..0;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&DeValue> = None;
    for seg in parse_path(key) {
        match seg {
            Seg::Key(k) => {
                let Some(t) = table.or(match value {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                }) else {
                    break;
                };
                let Some((kk, v)) = t.iter().find(|(kk, _)| kk.get_ref().as_ref() == k) else {
                    break;
                };
                span = kk.span();
                value = Some(v.get_ref());
                table = None;
            }
            Seg::Index(n) => {
                let Some(DeValue::Array(a)) = value else {
                    break;
                };
                let Some(v) = a.get(n) else { break };
                span = v.span();
                value = Some(v.get_ref());
            }
        }
    }
    if span == (0..0) {
        0
    } else {
        line_at(text, span.start)
    }
}

/// The dotted key path whose text contains byte `offset`, and the line of `offset`.
fn locate_span(text: &str, offset: usize) -> (String, usize) {
    use toml::de::{DeTable, DeValue};
    fn within(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    // Table values' spans may cover only their header, so every table is searched.
    fn walk(t: &DeTable, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in t.iter() {
            let key = k.get_ref().to_string();
            let on_key = within(k.span(), offset);
            match v.get_ref() {
                DeValue::Table(inner) => {
                    path.push(key);
                    if walk(inner, offset, path) || on_key {
                        return true;
                    }
                    path.pop();
                }
                DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        path.push(format!("{key}[{i}]"));
                        let found = match item.get_ref() {
                            DeValue::Table(inner) => walk(inner, offset, path),
                            _ => false,
                        };
                        if found || within(item.span(), offset) {
                            return true;
                        }
                        path.pop();
                    }
                    if on_key || within(v.span(), offset) {
                        path.push(key);
                        return true;
                    }
                }
                _ => {
                    if on_key || within(v.span(), offset) {
                        path.push(key);
                        return true;
                    }
                }
            }
        }
        false
    }
    let line = line_at(text, offset);
    let mut path = Vec::new();
    if let Ok(root) = DeTable::parse(text) {
        walk(root.get_ref(), offset, &mut path);
    }
    let key = if path.is_empty() {
        "-".to_string()
    } else {
        path.join(".")
    };
    (key, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_safe() {
        let c = Config::embedded();
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners.iter().all(|l| l.address.ip().is_loopback()));
        assert!(c
            .access
            .allow_clients
            .iter()
            .all(|n| n.addr().is_loopback()));
        assert_eq!(c.server.grace_period_seconds, 5);
    }

    #[test]
    fn unknown_key_is_reported_with_key_and_line() {
        let text = "[server]\nthreads = 2\n\n[dial]\nconect_timeout_ms = 5\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:5: key `dial"), "{e}");
        assert!(e.contains("conect_timeout_ms"), "{e}");
    }

    #[test]
    fn semantic_error_points_at_the_key_line() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n\n[[listener]]\naddress = \"127.0.0.1:2\"\nprotocols = []\n";
        let e = Config::parse(text, "f").unwrap_err();
        match e {
            ConfigError::Invalid { key, line, .. } => {
                assert_eq!(key, "listener[1].protocols");
                assert_eq!(line, 7);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn type_error_names_the_key() {
        let text = "[dns]\ntimeout_ms = \"soon\"\n";
        let e = Config::parse(text, "f").unwrap_err().to_string();
        assert!(e.contains("f:2: key `dns.timeout_ms`"), "{e}");
    }

    #[test]
    fn ttl_clamp_order_is_checked() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n[dns]\nmin_ttl_seconds = 10\nmax_ttl_seconds = 5\n";
        let e = Config::parse(text, "f").unwrap_err().to_string();
        assert!(
            e.contains("dns.max_ttl_seconds") && e.contains("f:6"),
            "{e}"
        );
    }

    #[test]
    fn pipe_size_is_bounded_and_zero_means_kernel_default() {
        let base = "[[listener]]\naddress = \"127.0.0.1:1\"\nprotocols = [\"http\"]\n[tunnel]\n";
        let e = Config::parse(&format!("{base}pipe_size_bytes = 100\n"), "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f:5") && e.contains("tunnel.pipe_size_bytes"),
            "{e}"
        );
        let c = Config::parse(&format!("{base}pipe_size_bytes = 0\nmax_pipes = 0\n"), "f").unwrap();
        assert_eq!((c.tunnel.pipe_size_bytes, c.tunnel.max_pipes), (0, Some(0)));
        assert_eq!(Config::embedded().tunnel.pipe_size_bytes, DEFAULT_PIPE_SIZE);
    }
}
