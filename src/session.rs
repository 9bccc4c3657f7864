//! One request's journey, top to bottom: policy → route → candidates → dial. The listener (for
//! tunnels) and the forwarder (for absolute-form HTTP) both come here, so every protocol rotates
//! and fails over the same way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cluster::{Cluster, ClusterTable, Member, Selection};
use crate::config::Config;
use crate::dial::{self, Connected, DialFailure, DialSettings, FailKind, FailureMemory};
use crate::metrics::metrics;
use crate::policy::Policy;
use crate::protocol::{Target, TargetHost};
use crate::resolve::{ResolveError, Resolver};

/// Why a request could not be given an upstream connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The policy refused the request.
    #[error("denied: {0}")]
    Denied(String),
    /// The target name has no usable addresses.
    #[error("DNS: {0}")]
    Dns(#[from] ResolveError),
    /// A configured cluster has no members to offer.
    #[error("cluster {0}: no members available")]
    NoMembers(String),
    /// Every candidate failed to connect.
    #[error("connect failed: {0}")]
    Dial(#[from] DialFailure),
}

impl OpenError {
    /// The `outcome` label of `carousel_requests_total` for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            OpenError::Denied(_) => "denied",
            OpenError::Dns(_) | OpenError::NoMembers(_) => "dns_error",
            OpenError::Dial(d) if d.kind == FailKind::Timeout => "timeout",
            OpenError::Dial(_) => "connect_error",
        }
    }
}

/// One address to try, and the cluster member behind it if any.
#[derive(Clone)]
pub struct Candidate {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The cluster member, for passive health and per-member metrics.
    pub member: Option<Arc<Member>>,
}

enum Source {
    List(std::vec::IntoIter<SocketAddr>),
    Cluster(Selection),
}

/// The ordered candidates of one request and where to report what happened to each.
pub struct Plan {
    /// The cluster serving this request, if any.
    pub cluster: Option<Arc<Cluster>>,
    source: Source,
    tried: u32,
    panic_counted: bool,
}

impl Plan {
    fn list(addrs: Vec<SocketAddr>) -> Self {
        Plan {
            cluster: None,
            source: Source::List(addrs.into_iter()),
            tried: 0,
            panic_counted: false,
        }
    }

    /// The cluster label for metrics ("" outside clusters).
    pub fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.name.as_str())
    }

    /// The next address to try, or `None` when every candidate was handed out.
    pub fn next_candidate(&mut self) -> Option<Candidate> {
        let c = match &mut self.source {
            Source::List(it) => it.next().map(|addr| Candidate { addr, member: None }),
            Source::Cluster(sel) => {
                let m = sel.next()?;
                if sel.is_panic() && !self.panic_counted {
                    self.panic_counted = true;
                    metrics()
                        .panic_requests
                        .with_label_values(&[self.cluster_name()])
                        .inc();
                    tracing::warn!(
                        cluster = self.cluster_name(),
                        "every member is down: trying them all (panic mode)"
                    );
                }
                Some(Candidate {
                    addr: m.addr,
                    member: Some(m),
                })
            }
        }?;
        if self.tried > 0 {
            metrics()
                .failovers
                .with_label_values(&[self.cluster_name()])
                .inc();
        }
        self.tried += 1;
        Some(c)
    }

    /// Records a failed connect to `c`.
    pub fn report_failure(&self, proxy: &Proxy, c: &Candidate, kind: FailKind, detail: &str) {
        proxy.failures.mark_failed(c.addr);
        let result = match kind {
            FailKind::Refused => "refused",
            FailKind::Timeout => "timeout",
            FailKind::Unreachable => "unreachable",
            FailKind::Other => "error",
        };
        match (&self.cluster, &c.member) {
            (Some(cluster), Some(m)) => cluster.report_failure(m, result, detail),
            _ => metrics()
                .connect_attempts
                .with_label_values(&["", "", result])
                .inc(),
        }
    }

    /// Records a successful connect to `c` after `took`.
    pub fn report_success(&self, proxy: &Proxy, c: &Candidate, took: Duration) {
        proxy.failures.mark_ok(c.addr);
        match &c.member {
            Some(m) => m.report_success(crate::cluster::now_ms()),
            None => metrics()
                .connect_attempts
                .with_label_values(&["", "", "ok"])
                .inc(),
        }
        crate::metrics::connect_timer(self.cluster_name()).observe(took.as_secs_f64());
    }
}

/// Everything requests share: configuration, resolver, clusters, failure memory. One per process.
pub struct Proxy {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The access rules.
    pub policy: Policy,
    /// The shared resolver.
    pub resolver: Arc<Resolver>,
    /// Configured clusters (swapped whole by a reload).
    pub clusters: ArcSwap<ClusterTable>,
    /// Recently failed upstream addresses.
    pub failures: FailureMemory,
    /// Connect bounds.
    pub dial: DialSettings,
}

impl Proxy {
    /// Builds the shared state from a validated configuration (clusters not yet discovering).
    pub fn new(config: Arc<Config>) -> Result<Arc<Self>, ResolveError> {
        let resolver = Resolver::new(&config.dns)?;
        let clusters = config.clusters.iter().cloned().map(Cluster::new).collect();
        Ok(Arc::new(Self {
            policy: Policy::new(&config.access),
            failures: FailureMemory::new(Duration::from_secs(config.dial.failure_memory_seconds)),
            dial: DialSettings::from(&config.dial),
            clusters: ArcSwap::from_pointee(ClusterTable::new(clusters)),
            resolver,
            config,
        }))
    }

    /// How long a tunnel may idle.
    pub fn tunnel_idle(&self) -> Duration {
        Duration::from_secs(self.config.tunnel.idle_timeout_seconds)
    }

    /// Whether `client` may use the proxy.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), OpenError> {
        match client {
            Some(ip) if self.policy.allows_client(ip) => Ok(()),
            Some(ip) => Err(OpenError::Denied(format!("client {ip} is not allowed"))),
            None => Err(OpenError::Denied("client address unknown".into())),
        }
    }

    /// Routes `target` and returns its candidates in this request's order: a configured cluster's
    /// healthy members in rotation; any other name's addresses rotated one step per request with
    /// recently failed ones last; a literal address as given (or, with `rescue_member_ips`, the
    /// cluster of a down member).
    pub async fn plan(&self, target: &Target) -> Result<Plan, OpenError> {
        if target.port == 0 {
            return Err(OpenError::Denied("port 0".into()));
        }
        let clusters = self.clusters.load();
        let cluster = match &target.host {
            TargetHost::Name(name) => clusters.get(name).filter(|c| c.serves_port(target.port)),
            TargetHost::Ip(ip) => clusters.rescue(*ip, target.port),
        };
        if let Some(cluster) = cluster {
            if !cluster.is_ready() {
                cluster.wait_ready(self.dial.deadline).await;
            }
            let sel = cluster.select(target.port).ok_or_else(|| {
                let snap = cluster.snapshot();
                match &snap.dns_error {
                    Some(e) => OpenError::NoMembers(format!("{} (DNS: {e})", cluster.name)),
                    None => OpenError::NoMembers(cluster.name.clone()),
                }
            })?;
            return Ok(Plan {
                cluster: Some(cluster.clone()),
                source: Source::Cluster(sel),
                tried: 0,
                panic_counted: false,
            });
        }
        let mut addrs: Vec<SocketAddr> = match &target.host {
            TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            TargetHost::Name(name) => {
                let resolved = self.resolver.resolve(name).await?;
                resolved
                    .rotated()
                    .map(|ip| SocketAddr::new(ip, target.port))
                    .collect()
            }
        };
        self.failures.order(&mut addrs);
        Ok(Plan::list(addrs))
    }

    /// Opens a connection to `target` for a tunnel: plan, then ordered attempts.
    pub async fn open(&self, target: &Target) -> Result<Connected, OpenError> {
        let mut plan = self.plan(target).await?;
        Ok(dial::dial(&mut plan, self).await?)
    }
}
