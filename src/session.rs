//! One request's journey, top to bottom: policy → route → candidates → dial. The listener (for
//! tunnels) and the forwarder (for absolute-form HTTP) both come here, so every protocol is
//! authorised, rotated and failed over the same way.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access_log::{AccessLog, Entry};
use crate::auth::Authenticator;
use crate::cluster::{Cluster, ClusterTable, Member, Picks};
use crate::config::Config;
pub use crate::dial::Candidate;
use crate::dial::{self, Attempts, Connected, DialFailure, DialSettings, FailKind, FailureMemory};
use crate::limits::Limits;
use crate::metrics::metrics;
use crate::outcome::Outcome;
use crate::policy::{Policy, Verdict};
use crate::protocol::{Target, TargetHost};
use crate::resolve::{ResolveError, Resolver};
use crate::resources::Resources;
use crate::tls::Acceptor;

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The resolver could not be built from `[dns]`.
    #[error("{0}")]
    Resolver(#[from] ResolveError),
    /// A TLS listener's certificate could not be used.
    #[error("TLS listener: {0}")]
    Tls(String),
    /// The access log could not be opened.
    #[error("access log {0}: {1}")]
    AccessLog(String, std::io::Error),
}

/// Why a request could not be given an upstream connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The policy refused the request.
    #[error("denied: {0}")]
    Denied(String),
    /// A rule would allow it for an authenticated user, and the client gave no valid credentials.
    #[error("proxy authentication required")]
    AuthRequired,
    /// The target name has no usable addresses.
    #[error("DNS: {0}")]
    Dns(#[from] ResolveError),
    /// A configured cluster has no members to offer.
    #[error("cluster {0}: no members available")]
    NoMembers(String),
    /// A limit refused the request (too many lookups in flight).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Every candidate failed to connect.
    #[error("connect failed: {0}")]
    Dial(#[from] DialFailure),
}

impl OpenError {
    /// How a request that met this error ended, for the metrics and the access log.
    pub fn outcome(&self) -> Outcome {
        match self {
            OpenError::Denied(_) => Outcome::Denied,
            OpenError::AuthRequired => Outcome::AuthFailed,
            OpenError::Dns(ResolveError::Overloaded) | OpenError::Overloaded(_) => {
                Outcome::Overload
            }
            OpenError::Dns(_) | OpenError::NoMembers(_) => Outcome::DnsError,
            OpenError::Dial(d) if d.kind == FailKind::Timeout => Outcome::Timeout,
            OpenError::Dial(_) => Outcome::ConnectError,
        }
    }
}

enum Source {
    List(std::vec::IntoIter<SocketAddr>),
    Cluster(Picks),
    /// A member's own address, asked for literally: that member first (if given), then, with
    /// `rescue_member_ips`, the cluster's other members in rotation.
    Member {
        first: Option<Arc<Member>>,
        rest: Option<Picks>,
    },
}

/// Who is asking: checked against the rules for every candidate address.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

/// The ordered candidates of one request and where to report what happened to each.
pub struct Plan {
    /// The cluster serving this request, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// The rule that allowed the request (for the access log).
    pub rule: String,
    source: Source,
    /// The member address a literal request named, skipped when its cluster rescues it.
    pinned: Option<SocketAddr>,
    tried: u32,
    panic_counted: bool,
    runtime: Arc<Runtime>,
    failures: Arc<FailureMemory>,
    who: Requester,
    name: Option<String>,
}

impl Plan {
    fn allowed(&self, addr: SocketAddr) -> bool {
        let client = self.who.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match self.runtime.policy.check_address(
            client,
            self.who.user.as_deref(),
            self.name.as_deref(),
            addr,
        ) {
            Verdict::Allow(_) => true,
            other => {
                tracing::info!(%addr, name = ?self.name, verdict = ?other, "candidate address refused by policy");
                false
            }
        }
    }
}

impl Attempts for Plan {
    fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.name.as_str())
    }

    /// The next address to try, or `None` when every candidate was handed out. Addresses the
    /// policy refuses (a name resolving to a protected address) are skipped.
    fn next_candidate(&mut self) -> Option<Candidate> {
        loop {
            let c = match &mut self.source {
                Source::List(it) => it.next().map(|addr| Candidate { addr, member: None }),
                Source::Member { first, rest } => match first.take() {
                    Some(m) => Some(Candidate {
                        addr: m.addr,
                        member: Some(m),
                    }),
                    None => {
                        let pinned = self.pinned;
                        let sel = rest.as_mut()?;
                        let m = sel.find(|m| Some(m.addr) != pinned)?;
                        Some(Candidate {
                            addr: m.addr,
                            member: Some(m),
                        })
                    }
                },
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
            if !self.allowed(c.addr) {
                continue;
            }
            if self.tried > 0 {
                metrics()
                    .failovers
                    .with_label_values(&[self.cluster_name()])
                    .inc();
            }
            self.tried += 1;
            return Some(c);
        }
    }

    /// Records a failed connect to `c`.
    fn report_failure(&self, c: &Candidate, kind: FailKind, detail: &str) {
        self.failures.mark_failed(c.addr);
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

    /// Records an attempt to `c` given up because another candidate connected first. For a
    /// cluster member that is neither a success nor a failure (its active checks judge it). A
    /// plain name has no checks: an address that left a connect unanswered for the whole attempt
    /// delay is tried last, like a failed one, with the same half-open way back, so a blackholed
    /// address does not cost every request that starts with it the delay.
    fn report_abandoned(&self, c: &Candidate) {
        match &c.member {
            Some(m) => m.report_abandoned(),
            None => {
                self.failures.mark_failed(c.addr);
                metrics()
                    .connect_attempts
                    .with_label_values(&["", "", "abandoned"])
                    .inc()
            }
        }
    }

    /// Records a successful connect to `c` after `took`.
    fn report_success(&self, c: &Candidate, took: Duration) {
        self.failures.mark_ok(c.addr);
        match (&self.cluster, &c.member) {
            (Some(cluster), Some(m)) => cluster.report_success(m),
            (None, Some(m)) => {
                m.report_success(crate::cluster::now_ms());
            }
            (_, None) => metrics()
                .connect_attempts
                .with_label_values(&["", "", "ok"])
                .inc(),
        }
        crate::metrics::connect_timer(self.cluster_name()).observe(took.as_secs_f64());
    }
}

/// What a reload replaces as a whole: configuration, rules and dial bounds.
pub struct Runtime {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The access rules.
    pub policy: Policy,
    /// Connect bounds.
    pub dial: DialSettings,
    /// How tunnels move bytes (the pipe budget is worked out once per load).
    pub tunnel: crate::tunnel::Options,
}

impl Runtime {
    /// The runtime view of a validated configuration.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            policy: Policy::new(&config),
            dial: DialSettings::from(&config.dial),
            tunnel: crate::tunnel::Options::from_config(&config.tunnel),
            config,
        }
    }
}

/// Everything requests share: configuration, resolver, clusters, failure memory. One per process.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    /// The shared resolver.
    pub resolver: Arc<Resolver>,
    /// Configured clusters (swapped whole by a reload).
    pub clusters: ArcSwap<ClusterTable>,
    /// Recently failed upstream addresses.
    pub failures: Arc<FailureMemory>,
    /// Credentials.
    pub auth: Authenticator,
    /// Connection limits.
    pub limits: Arc<Limits>,
    /// TLS acceptors by listener address.
    pub tls: HashMap<SocketAddr, Acceptor>,
    /// Where access lines go (replaced by a reload).
    pub access_log: ArcSwap<AccessLog>,
    draining: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// Builds the shared state from a validated configuration and the files it names (clusters
    /// not yet discovering).
    pub fn new(config: Arc<Config>, resources: Resources) -> Result<Arc<Self>, SetupError> {
        let resolver = Resolver::new(&config.dns, config.limits.max_concurrent_dns_lookups)?;
        let clusters = config.clusters.iter().cloned().map(Cluster::new).collect();
        let mut tls = HashMap::new();
        for (addr, key) in resources.certs {
            tls.insert(addr, Acceptor::new(key).map_err(SetupError::Tls)?);
        }
        let users = resources.users;
        Ok(Arc::new(Self {
            failures: Arc::new(FailureMemory::new(Duration::from_secs(
                config.dial.failure_memory_seconds,
            ))),
            clusters: ArcSwap::from_pointee(ClusterTable::new(clusters)),
            auth: Authenticator::new(
                users,
                Duration::from_secs(config.access.auth_cache_seconds),
                config.access.max_auth_failures_per_minute,
            ),
            limits: Limits::new(&config.limits),
            resolver,
            tls,
            access_log: ArcSwap::from_pointee(
                AccessLog::new(&config.log)
                    .map_err(|e| SetupError::AccessLog(config.log.access.clone(), e))?,
            ),
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            draining: false.into(),
        }))
    }

    /// Marks the process as shutting down: `/readyz` says so, so balancers stop sending clients.
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The configuration, rules and bounds in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Installs a reloaded configuration (the caller reconciles clusters and files).
    pub fn set_runtime(&self, rt: Runtime) {
        self.limits.update(&rt.config.limits);
        self.runtime.store(Arc::new(rt));
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    /// How a tunnel opened now moves bytes and when it idles out.
    pub fn tunnel_options(&self) -> crate::tunnel::Options {
        self.runtime.load().tunnel
    }

    /// Whether `client` may connect at all.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), OpenError> {
        match client {
            Some(ip) if self.runtime.load().policy.allows_client(ip) => Ok(()),
            Some(ip) => Err(OpenError::Denied(format!("client {ip} is not allowed"))),
            None => Err(OpenError::Denied("client address unknown".into())),
        }
    }

    /// Writes one access log line.
    pub fn log(&self, e: &Entry) {
        self.access_log.load().write(e);
    }

    /// Whether SOCKS5 should offer username/password (some rule names users).
    pub fn wants_users(&self) -> bool {
        self.runtime.load().policy.wants_users
    }

    /// Routes `target` for `who` and returns its candidates in this request's order: a configured
    /// cluster's healthy members in rotation; any other name's addresses rotated one step per
    /// request with recently failed ones last; a literal address as given (or, with
    /// `rescue_member_ips`, the cluster of a down member). The policy is applied to the target
    /// before resolution and to every candidate address after it.
    pub async fn plan(&self, who: &Requester, target: &Target) -> Result<Plan, OpenError> {
        if target.port == 0 {
            return Err(OpenError::Denied("port 0".into()));
        }
        let runtime = self.runtime();
        let client = who.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let rule = match runtime.policy.check_target(
            client,
            who.user.as_deref(),
            &target.host,
            target.port,
        ) {
            Verdict::Allow(rule) => rule,
            Verdict::Deny(why) => return Err(OpenError::Denied(why)),
            Verdict::AuthRequired => return Err(OpenError::AuthRequired),
        };
        let name = match &target.host {
            TargetHost::Name(n) => Some(n.clone()),
            TargetHost::Ip(_) => None,
        };
        let clusters = self.clusters.load();
        let mut pinned = None;
        let (cluster, source) = match &target.host {
            TargetHost::Name(name) => {
                match clusters.get(name).filter(|c| c.serves_port(target.port)) {
                    Some(cluster) => (
                        Some(cluster.clone()),
                        self.cluster_source(cluster, &runtime, target).await?,
                    ),
                    None => {
                        let resolved = self.resolver.resolve(name).await?;
                        let all: Vec<SocketAddr> = resolved
                            .addrs
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, target.port))
                            .collect();
                        let order = self.failures.order(&all, resolved.start);
                        (None, Source::List(order.into_iter()))
                    }
                }
            }
            TargetHost::Ip(ip) => {
                let addr = SocketAddr::new(*ip, target.port);
                match clusters.member_at(addr) {
                    // A member's address is that member's request: it counts in its metrics and
                    // passive ejection; with rescue, the others follow in rotation, and a member
                    // known to be out of service is not tried at all.
                    Some((cluster, member)) if cluster.cfg.rescue_member_ips => {
                        pinned = Some(addr);
                        let usable = member.availability(crate::cluster::now_ms())
                            == crate::cluster::Availability::Healthy;
                        let rest = cluster.select(target.port);
                        (
                            Some(cluster.clone()),
                            Source::Member {
                                first: usable.then_some(member),
                                rest,
                            },
                        )
                    }
                    Some((cluster, member)) => (
                        Some(cluster.clone()),
                        Source::Member {
                            first: Some(member),
                            rest: None,
                        },
                    ),
                    None => (None, Source::List(vec![addr].into_iter())),
                }
            }
        };
        Ok(Plan {
            cluster,
            rule,
            source,
            pinned,
            tried: 0,
            panic_counted: false,
            runtime,
            failures: self.failures.clone(),
            who: who.clone(),
            name,
        })
    }

    /// A configured cluster's candidates for `target`: its usable members in rotation, waiting
    /// (within the dial deadline) for a first discovery still under way.
    async fn cluster_source(
        &self,
        cluster: &Arc<Cluster>,
        runtime: &Runtime,
        target: &Target,
    ) -> Result<Source, OpenError> {
        if !cluster.is_ready() {
            cluster.wait_ready(runtime.dial.deadline).await;
        }
        let sel = cluster.select(target.port).ok_or_else(|| {
            let snap = cluster.snapshot();
            match &snap.dns_error {
                Some(e) => OpenError::NoMembers(format!("{} (DNS: {e})", cluster.name)),
                None => OpenError::NoMembers(cluster.name.clone()),
            }
        })?;
        Ok(Source::Cluster(sel))
    }

    /// Opens a connection to `target` for a tunnel: plan, then ordered attempts.
    pub async fn open(
        &self,
        who: &Requester,
        target: &Target,
    ) -> Result<(Connected, String), OpenError> {
        let mut plan = self.plan(who, target).await?;
        let dial = plan.runtime.dial;
        match dial::dial(&mut plan, dial).await {
            Ok(c) => Ok((c, plan.rule)),
            Err(e) if e.attempts == 0 && plan.tried == 0 => Err(OpenError::Denied(format!(
                "no address of {target} is allowed"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
