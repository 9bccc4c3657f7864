//! carousel's rotating, health-aware upstream for any Pingora service (cargo feature
//! `pingora-lb`).
//!
//! # The shape, and why
//!
//! Pingora's `pingora-load-balancing` splits discovery, health and selection into three traits,
//! but its health state is crate-private: a `ProxyHttp` that meets a refused connect cannot tell
//! the `LoadBalancer` to stop sending traffic there, and its checks flip on one result. What
//! carousel adds (passive ejection with back-off and a half-open trial, rotation over the usable
//! members only, try-next in rotation order, serve-stale DNS) lives exactly in that gap, so it
//! cannot be a `ServiceDiscovery` alone. The API is therefore carousel's own cluster as a
//! library type, [`Upstream`]: DNS discovery (A/AAAA or SRV with weights, TTL clamp, jittered
//! refresh, serve-stale per RFC 8767, single-flight lookups), active checks, passive ejection,
//! and selection; [`Upstream::select`] hands a request its candidates in order and
//! [`Upstream::report`] takes back what happened to each. For services that do want Pingora's
//! `LoadBalancer`, [`Upstream`] also implements `ServiceDiscovery`, publishing its members with
//! their weights and their usability as the enablement map.
//!
//! ```no_run
//! # async fn example() -> Result<(), carousel::plugin::PluginError> {
//! use carousel::plugin::{Outcome, Upstream, UpstreamConfig};
//!
//! let upstream = Upstream::new(
//!     UpstreamConfig::new("chat.example.com", 5222).nameservers(vec!["10.0.0.53:53".parse().unwrap()]),
//! )?;
//! upstream.start(); // discovery and health checks, in the current tokio runtime
//! let mut picks = upstream.select();
//! if let Some(addr) = picks.next() {
//!     // ... connect to addr ...
//!     upstream.report(addr, Outcome::Refused);
//!     let _next = picks.next(); // try-next continues in rotation order
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Only carousel's own types and `std` types cross this API, apart from the
//! `ServiceDiscovery` impl, which is Pingora's trait; config and error types are
//! `#[non_exhaustive]` with constructors, so fields can be added without a breaking change.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{now_ms, Cluster, Picks};
use crate::config::{ClusterSection, DnsSection};
use crate::dns::Resolver;

/// What an [`Upstream`] is: a DNS name and how to watch it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// The name clients of the service go to (its A/AAAA records are the members).
    pub name: String,
    /// The members' port.
    pub port: u16,
    /// Discover the members from this SRV record instead (weights and priorities included).
    pub srv: Option<String>,
    /// Nameservers to ask (empty: the system's resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Lower and upper clamp of the answers' TTL.
    pub ttl_clamp: (Duration, Duration),
    /// How long the last good member set serves while DNS fails (RFC 8767).
    pub serve_stale: Duration,
    /// Milliseconds between active checks of a member (TCP connect).
    pub check_interval: Duration,
    /// Consecutive connect failures the request path reports before a member is ejected.
    pub consecutive_failures: u32,
}

impl UpstreamConfig {
    /// The members of `name`'s A/AAAA records on `port`, with carousel's defaults (TTL clamp
    /// 5-300 s, serve-stale 300 s, checks every 2 s, ejection after 3 failures).
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            srv: None,
            nameservers: Vec::new(),
            ttl_clamp: (Duration::from_secs(5), Duration::from_secs(300)),
            serve_stale: Duration::from_secs(300),
            check_interval: Duration::from_secs(2),
            consecutive_failures: 3,
        }
    }

    /// Asks these nameservers.
    pub fn nameservers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.nameservers = servers;
        self
    }

    /// Discovers from an SRV record.
    pub fn srv(mut self, record: impl Into<String>) -> Self {
        self.srv = Some(record.into());
        self
    }

    /// Clamps answers' TTLs into `[min, max]`.
    pub fn ttl_clamp(mut self, min: Duration, max: Duration) -> Self {
        self.ttl_clamp = (min, max);
        self
    }

    /// Serves the last good set this long while DNS fails.
    pub fn serve_stale(mut self, d: Duration) -> Self {
        self.serve_stale = d;
        self
    }

    /// Checks each member this often.
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.check_interval = d;
        self
    }

    /// The cluster and DNS sections carousel's own configuration would have for this
    /// upstream, built directly. A TTL clamp is whole seconds (a DNS TTL is), so a sub-second
    /// value is rounded up, never down to zero; serve-stale and the check interval keep their
    /// precision.
    fn sections(&self) -> Result<(ClusterSection, DnsSection), PluginError> {
        let secs = |d: Duration| Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let dns = DnsSection {
            nameservers: self.nameservers.clone(),
            min_ttl: secs(self.ttl_clamp.0).max(Duration::from_secs(1)),
            max_ttl: secs(self.ttl_clamp.1).max(Duration::from_secs(1)),
            ..DnsSection::default()
        };
        let mut cluster = ClusterSection::new(self.name.clone(), vec![self.port]);
        if let Some(srv) = &self.srv {
            cluster = cluster.with_srv(srv.clone());
        }
        cluster.serve_stale = self.serve_stale;
        cluster.health.interval = self.check_interval.max(Duration::from_millis(1));
        cluster.outlier.consecutive_failures = self.consecutive_failures.max(1);
        cluster.check().map_err(PluginError::Invalid)?;
        if dns.min_ttl > dns.max_ttl {
            return Err(PluginError::Invalid(
                "ttl_clamp: the minimum is above the maximum".into(),
            ));
        }
        Ok((cluster, dns))
    }
}

/// Why an [`Upstream`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The settings are not valid (an invalid name, say).
    #[error("invalid upstream: {0}")]
    Invalid(String),
    /// The resolver could not be built.
    #[error("{0}")]
    Resolver(#[from] crate::dns::ResolveError),
}

/// What happened when a request tried a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It connected.
    Connected,
    /// It refused the connection.
    Refused,
    /// The connect timed out.
    TimedOut,
    /// There was no route to it.
    Unreachable,
    /// Anything else.
    Failed,
}

/// One request's candidates, in order: the usable members in rotation (a half-open trial first
/// when an ejection ends), every member when none is usable.
pub struct Candidates(Option<Picks>);

impl Iterator for Candidates {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        self.0.as_mut()?.next().map(|m| m.addr)
    }
}

/// carousel's cluster as a library type; see the module docs.
pub struct Upstream {
    cluster: Arc<Cluster>,
    resolver: Arc<Resolver>,
    dns: crate::config::DnsSection,
    port: u16,
}

impl Upstream {
    /// An upstream for `config`; nothing runs until [`Upstream::start`].
    pub fn new(config: UpstreamConfig) -> Result<Self, PluginError> {
        let (section, dns) = config.sections()?;
        let resolver = Resolver::new(&dns, 16)?;
        Ok(Self {
            cluster: Cluster::new(section),
            resolver,
            dns,
            port: config.port,
        })
    }

    /// Starts discovery (which starts the active checks) in the current tokio runtime, for as
    /// long as the process runs. Call it once, from inside the runtime (a Pingora background
    /// service, say).
    pub fn start(&self) {
        tokio::spawn(crate::cluster::discovery::run(
            self.cluster.clone(),
            self.resolver.clone(),
            self.dns.clone(),
        ));
    }

    /// Waits (at most `limit`) until the first discovery has finished.
    pub async fn ready(&self, limit: Duration) -> bool {
        self.cluster.wait_discovered(limit).await;
        self.cluster.is_ready()
    }

    /// This request's candidates, in order (empty before discovery).
    pub fn select(&self) -> Candidates {
        Candidates(self.cluster.select(self.port))
    }

    /// Reports what happened when a request tried `addr`: passive ejection (with back-off and a
    /// half-open trial) and the per-member metrics follow from it.
    pub fn report(&self, addr: SocketAddr, outcome: Outcome) {
        let Some(m) = self.cluster.member_at(addr) else {
            return;
        };
        use crate::outcome::{Attempt, FailKind};
        let kind = match outcome {
            Outcome::Connected => {
                self.cluster.report_success(&m);
                return;
            }
            Outcome::Refused => FailKind::Refused,
            Outcome::TimedOut => FailKind::Timeout,
            Outcome::Unreachable => FailKind::Unreachable,
            Outcome::Failed => FailKind::Other,
        };
        let result = Attempt::failed(kind, false);
        let detail = format!("connect to {addr}: {}", result.as_str());
        self.cluster.report_failure(&m, result, &detail);
    }

    /// The members now, with whether each is usable.
    pub fn members(&self) -> Vec<(SocketAddr, bool)> {
        let now = now_ms();
        self.cluster
            .snapshot()
            .members
            .iter()
            .map(|m| (m.addr, m.usable(now)))
            .collect()
    }

    /// carousel's Prometheus metrics (per-member health, attempts, ejections, DNS) as text.
    pub fn metrics_text() -> String {
        crate::metrics::metrics().render()
    }
}

#[async_trait]
impl pingora::lb::discovery::ServiceDiscovery for Upstream {
    async fn discover(
        &self,
    ) -> pingora::Result<(BTreeSet<pingora::lb::Backend>, HashMap<u64, bool>)> {
        let now = now_ms();
        let mut backends = BTreeSet::new();
        let mut enabled = HashMap::new();
        for m in &self.cluster.snapshot().members {
            let b = pingora::lb::Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(m.addr),
                weight: m.weight as usize,
                ext: Default::default(),
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            enabled.insert(h.finish(), m.usable(now));
            backends.insert(b);
        }
        Ok((backends, enabled))
    }
}
