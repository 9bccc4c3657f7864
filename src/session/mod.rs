//! One request's journey, top to bottom: policy → route → candidates → dial. The listener (for
//! tunnels) and the forwarder (for absolute-form HTTP) both come here, so every protocol is
//! authorised, rotated and failed over the same way.

mod error;
mod plan;
mod runtime;

pub use error::{OpenError, SetupError};
use plan::Source;
pub use plan::{Plan, Requester};
pub use runtime::Runtime;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log::{AccessLog, Entry};
use crate::auth::Authenticator;
use crate::cluster::{Cluster, ClusterTable};
use crate::config::Config;
pub use crate::dial::Candidate;
use crate::dial::{self, Connected, FailureMemory};
use crate::dns::Resolver;
use crate::limits::Limits;
use crate::policy::{Refusal, Verdict};
use crate::protocol::{Target, TargetHost};
use crate::resources::Resources;
use crate::tls::Acceptor;

/// Everything requests share: configuration, resolver, clusters, failure memory. One per process.
pub struct Proxy {
    runtime: ArcSwap<Runtime>,
    /// The shared resolver.
    pub resolver: Arc<Resolver>,
    /// Configured clusters (swapped whole by a reload).
    pub clusters: Arc<ArcSwap<ClusterTable>>,
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
    /// The last minute of per-member request and failure rates, for the status page.
    pub history: crate::history::History,
    /// How carousel reaches each cluster of parent proxies: credentials, TLS (replaced by a
    /// reload).
    pub parents: ArcSwap<HashMap<String, Arc<crate::parent::Link>>>,
    /// Kerberos and the directory (replaced by a reload).
    pub identity: ArcSwap<crate::identity::Sources>,
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
        let parents = ArcSwap::from_pointee(resources.parents);
        let auth = Authenticator::new(
            users,
            config.access.auth_cache,
            config.access.max_auth_failures_per_minute,
        );
        if config.access.basic == crate::config::BasicSource::Ldap {
            auth.set_directory(resources.identity.directory.clone());
        }
        Ok(Arc::new(Self {
            parents,
            identity: ArcSwap::from_pointee(resources.identity),
            failures: Arc::new(FailureMemory::new(config.dial.failure_memory)),
            clusters: Arc::new(ArcSwap::from_pointee(ClusterTable::new(clusters))),
            auth,
            limits: Limits::new(&config.limits),
            resolver,
            tls,
            access_log: ArcSwap::from_pointee(
                AccessLog::new(&config.log)
                    .map_err(|e| SetupError::AccessLog(config.log.access.clone(), e))?,
            ),
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            draining: false.into(),
            history: crate::history::History::default(),
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

    /// How a tunnel opened now to `cluster` ("" outside clusters) moves bytes and when it idles
    /// out: the cluster's `tunnel_idle_timeout_seconds` if it sets one, else `[tunnel]`'s.
    pub fn tunnel_options(&self, cluster: &str) -> crate::tunnel::Options {
        let mut opts = self.runtime.load().tunnel;
        if let Some(idle) = self
            .clusters
            .load()
            .get(cluster)
            .and_then(|c| c.cfg.tunnel_idle_timeout)
        {
            opts.idle = idle;
        }
        opts
    }

    /// Whether `client` may connect at all.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), OpenError> {
        match client {
            Some(ip) if self.runtime.load().policy.allows_client(ip) => Ok(()),
            Some(ip) => Err(OpenError::Denied(Refusal::Client(ip))),
            None => Err(OpenError::Denied(Refusal::UnknownClient)),
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

    /// The directory groups of `user` (unknown without a directory).
    async fn groups_of(&self, user: &str) -> crate::identity::Membership {
        match self.identity.load_full().directory.clone() {
            Some(dir) => dir.groups(user).await,
            None => crate::identity::Membership::Unavailable("no [access.ldap] directory".into()),
        }
    }

    /// Routes `target` for `who` and returns its candidates in this request's order: a configured
    /// cluster's healthy members in rotation; any other name's addresses rotated one step per
    /// request with recently failed ones last; a literal address as given (or, with
    /// `rescue_member_ips`, the cluster of a down member). The policy is applied to the target
    /// before resolution and to every candidate address after it.
    pub async fn plan(&self, who: &Requester, target: &Target) -> Result<Plan, OpenError> {
        if target.port == 0 {
            return Err(OpenError::Denied(Refusal::PortZero));
        }
        let runtime = self.runtime();
        let client = who.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let looked_up;
        let who = match (&who.user, runtime.policy.wants_groups, &who.groups) {
            (Some(user), true, None) => {
                looked_up = Requester {
                    groups: Some(self.groups_of(user).await),
                    ..who.clone()
                };
                &looked_up
            }
            _ => who,
        };
        let rule =
            match runtime
                .policy
                .check_target(client, who.as_who(), &target.host, target.port)
            {
                Verdict::Allow(rule) => rule,
                // Decided per address (`Plan::allowed` names the rule then).
                Verdict::ByAddress => String::new(),
                Verdict::Deny(why) => return Err(OpenError::Denied(why)),
                Verdict::AuthRequired => return Err(OpenError::AuthRequired),
            };
        let name = match &target.host {
            TargetHost::Name(n) => Some(n.clone()),
            TargetHost::Ip(_) => None,
        };
        let clusters = self.clusters.load();
        // A rule that sends its traffic via parents: the candidates are the parents (rotated,
        // checked, ejected like members), and the destination goes to them by name, or as the
        // address this request's rotation picks when the rule says `resolve_destination`.
        if let Some((via, resolve)) = runtime.policy.via(&rule) {
            let dest = if resolve {
                self.pick_destination(who, target, &runtime).await?
            } else {
                target.clone()
            };
            let (mut via, parents, source) = self.via_parents(via, &dest, &runtime).await?;
            via.resolved = resolve && dest.host != target.host;
            let mut plan = Plan::start(rule, source, runtime, self.failures.clone(), who.clone());
            plan.via = Some(via);
            plan.cluster = Some(parents);
            return Ok(plan);
        }
        let mut pinned = None;
        let (cluster, source) = match &target.host {
            TargetHost::Name(name) => {
                match clusters.get(name).filter(|c| c.serves_port(target.port)) {
                    Some(cluster) => (
                        Some(cluster.clone()),
                        self.cluster_source(cluster, &runtime, target).await?,
                    ),
                    None => (
                        None,
                        Source::Name(self.name_order(name, target.port, &runtime).await?),
                    ),
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
        let mut plan = Plan::start(rule, source, runtime, self.failures.clone(), who.clone());
        plan.cluster = cluster;
        plan.pinned = pinned;
        plan.name = name;
        Ok(plan)
    }

    /// A name that is not a cluster: its resolved addresses on `port`, rotated one step per
    /// request with recently failed ones last. One place, so a direct request and a
    /// `resolve_destination` rule rotate the same way.
    async fn name_order(
        &self,
        name: &str,
        port: u16,
        runtime: &Runtime,
    ) -> Result<crate::dial::NameOrder, OpenError> {
        let resolved = self.resolver.resolve(name).await?;
        let all: Vec<SocketAddr> = resolved
            .addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        Ok(self.failures.plan(
            &all,
            resolved.start,
            runtime.config.dial.prefer_family,
            resolved.failovers.clone(),
        ))
    }

    /// The parents a `via` rule names, as candidates, and what to ask them for.
    async fn via_parents(
        &self,
        via: &str,
        target: &Target,
        runtime: &Runtime,
    ) -> Result<(plan::Via, Arc<Cluster>, Source), OpenError> {
        let parents =
            self.clusters
                .load()
                .get(via)
                .cloned()
                .ok_or_else(|| OpenError::NoMembers {
                    cluster: via.to_string(),
                    dns: None,
                })?;
        let at = Target {
            host: TargetHost::Name(parents.name.clone()),
            port: parents.cfg.ports.first().copied().unwrap_or(0),
        };
        let source = self.cluster_source(&parents, runtime, &at).await?;
        let via = plan::Via {
            target: target.clone(),
            protocol: parents
                .cfg
                .parent
                .as_ref()
                .map_or(crate::config::ParentProtocol::Http, |p| p.protocol),
            link: self.parents.load().get(via).cloned().unwrap_or_default(),
            resolved: false,
            absolute: false,
        };
        Ok((via, parents, source))
    }

    /// The address a `resolve_destination` rule hands its parents for `target`: a configured
    /// cluster's next usable member, or the next of a name's addresses (recently failed ones
    /// last), in rotation per request. The policy is applied to the address, as to any
    /// resolved name (a name pointing at a guarded address is refused).
    async fn pick_destination(
        &self,
        who: &Requester,
        target: &Target,
        runtime: &Runtime,
    ) -> Result<Target, OpenError> {
        let TargetHost::Name(name) = &target.host else {
            return Ok(target.clone());
        };
        let cluster = self
            .clusters
            .load()
            .get(name)
            .filter(|c| c.serves_port(target.port) && c.cfg.parent.is_none())
            .cloned();
        let picked = match cluster {
            Some(c) => match self.cluster_source(&c, runtime, target).await? {
                Source::Cluster(mut picks) => picks.next().map(|m| m.addr),
                _ => None,
            },
            None => self.name_order(name, target.port, runtime).await?.next(),
        };
        let Some(addr) = picked else {
            return Err(OpenError::NoMembers {
                cluster: name.clone(),
                dns: None,
            });
        };
        let client = who.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match runtime
            .policy
            .check_address(client, who.as_who(), Some(name), addr)
        {
            Verdict::Allow(_) => Ok(Target {
                host: TargetHost::Ip(addr.ip()),
                port: addr.port(),
            }),
            _ => Err(OpenError::Denied(Refusal::NoAllowedAddress(name.clone()))),
        }
    }

    /// A configured cluster's candidates for `target`: its usable members in rotation, waiting
    /// (within the dial deadline) for a first discovery still under way.
    async fn cluster_source(
        &self,
        cluster: &Arc<Cluster>,
        runtime: &Runtime,
        target: &Target,
    ) -> Result<Source, OpenError> {
        if !cluster.is_discovered() {
            cluster.wait_discovered(runtime.dial.deadline).await;
        }
        let sel = cluster
            .select(target.port)
            .ok_or_else(|| OpenError::NoMembers {
                cluster: cluster.name.clone(),
                dns: cluster.snapshot().dns_error.clone(),
            })?;
        Ok(Source::Cluster(plan::FamilyPicks::new(sel)))
    }

    /// Opens a connection to `target` for a tunnel: plan, then ordered attempts.
    pub async fn open(
        &self,
        who: &Requester,
        target: &Target,
    ) -> Result<(Connected, String), OpenError> {
        let mut plan = self.plan(who, target).await?;
        let dial = plan.runtime.dial;
        let mut c = match dial::dial(&mut plan, dial).await {
            Ok(c) => c,
            Err(e) => {
                return Err(match plan.refusal() {
                    Some(r) => OpenError::Denied(r),
                    None => e.into(),
                })
            }
        };
        if let Some(via) = plan.via.clone() {
            c = plan.through_parent(&via, c).await?;
        }
        Ok((c, plan.rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MemberSpec;
    use crate::dial::Attempts;
    use crate::testbed::dns::DnsServer;

    const CLUSTER: &str = "chat.plan.test";

    /// A proxy whose resolver asks `dns`, with `rules` and one cluster (`rescue` as given) whose
    /// members .11/.12/.13 on port 5222 are installed by hand (no discovery runs in a unit test).
    async fn proxy(dns: &DnsServer, rules: &str, rescue: bool) -> Arc<Proxy> {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:3128\"\nprotocols = [\"http\"]\n\
             [admin]\naddress = \"127.0.0.1:9090\"\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 500\nattempts = 1\n\
             {rules}\n\
             [[cluster]]\nname = \"{CLUSTER}\"\nports = [5222]\nrescue_member_ips = {rescue}\n",
            dns.addr()
        );
        let config = Arc::new(Config::parse(&text, "t").unwrap());
        let resources = Resources::load(&config).unwrap();
        let proxy = Proxy::new(config, resources).unwrap();
        let specs: Vec<MemberSpec> = [11, 12, 13]
            .iter()
            .map(|i| MemberSpec {
                addr: format!("127.0.0.{i}:5222").parse().unwrap(),
                weight: 1,
                priority: 0,
            })
            .collect();
        proxy
            .clusters
            .load()
            .get(CLUSTER)
            .unwrap()
            .apply(&specs, None);
        proxy
    }

    const LOOPBACK_RULE: &str =
        "[[access.rule]]\naction = \"allow\"\ndestinations = [\"*\", \"127.0.0.0/8\"]\n";

    fn target(host: &str, port: u16) -> Target {
        crate::protocol::http::host_port(&format!("{host}:{port}"), 0).unwrap()
    }

    fn who() -> Requester {
        Requester {
            client: Some("127.0.0.1".parse().unwrap()),
            user: None,
            groups: None,
        }
    }

    /// The candidates of one plan, in order, and its cluster.
    async fn plan(p: &Proxy, t: &Target) -> Result<(Vec<String>, String), String> {
        let mut plan = p.plan(&who(), t).await.map_err(|e| e.to_string())?;
        let cluster = plan.cluster_name().to_string();
        let mut out = Vec::new();
        while let Some(c) = plan.next_candidate() {
            out.push(format!(
                "{}{}",
                c.addr,
                if c.member.is_some() { "*" } else { "" }
            ));
        }
        Ok((out, cluster))
    }

    #[tokio::test]
    async fn routes_and_candidates_table() {
        let dns = DnsServer::start().await;
        dns.set_a(
            "name.plan.test",
            &["127.0.0.21".parse().unwrap(), "127.0.0.22".parse().unwrap()],
            30,
        );
        dns.set_a("meta.plan.test", &["169.254.169.254".parse().unwrap()], 30);
        let p = proxy(&dns, LOOPBACK_RULE, false).await;
        // (target, expected candidates ("*" = a cluster member), expected cluster) or an error.
        type Want<'a> = Result<(Vec<&'a str>, &'a str), &'a str>;
        let cases: Vec<(Target, Want)> = vec![
            (target("127.0.0.31", 80), Ok((vec!["127.0.0.31:80"], ""))),
            (
                target("name.plan.test", 80),
                Ok((vec!["127.0.0.21:80", "127.0.0.22:80"], "")),
            ),
            (
                target("name.plan.test", 80),
                Ok((vec!["127.0.0.22:80", "127.0.0.21:80"], "")),
            ),
            (
                target(CLUSTER, 5222),
                Ok((
                    vec!["127.0.0.11:5222*", "127.0.0.12:5222*", "127.0.0.13:5222*"],
                    CLUSTER,
                )),
            ),
            // A member's own address is that member's request, and only that member's without
            // rescue_member_ips.
            (
                target("127.0.0.12", 5222),
                Ok((vec!["127.0.0.12:5222*"], CLUSTER)),
            ),
            // A name whose every address is protected: planned (the policy is judged per resolved
            // address) with nothing to try; opening it answers "denied".
            (target("meta.plan.test", 80), Ok((vec![], ""))),
            (target("169.254.169.254", 80), Err("denied")),
            (target("[::]", 80), Err("denied")),
        ];
        for (t, want) in cases {
            let got = plan(&p, &t).await;
            match want {
                Ok((cands, cluster)) => {
                    let (gc, gcl) = got.unwrap_or_else(|e| panic!("{t}: {e}"));
                    assert_eq!(gc, cands, "{t}");
                    assert_eq!(gcl, cluster, "{t}");
                }
                Err(word) => {
                    let e = got.err().unwrap_or_else(|| panic!("{t} was planned"));
                    assert!(e.contains(word), "{t}: {e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn rescue_puts_the_member_first_then_the_others_and_skips_it_once_down() {
        let dns = DnsServer::start().await;
        let p = proxy(&dns, LOOPBACK_RULE, true).await;
        let (c, cluster) = plan(&p, &target("127.0.0.12", 5222)).await.unwrap();
        assert_eq!(cluster, CLUSTER);
        assert_eq!(c[0], "127.0.0.12:5222*");
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(!c[1..].contains(&"127.0.0.12:5222*".to_string()));
        let cl = p.clusters.load().get(CLUSTER).unwrap().clone();
        let m = cl.member_at("127.0.0.12:5222".parse().unwrap()).unwrap();
        cl.report_check(&m, false, "refused");
        let (c, _) = plan(&p, &target("127.0.0.12", 5222)).await.unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(!c.contains(&"127.0.0.12:5222*".to_string()), "{c:?}");
    }

    #[tokio::test]
    async fn policy_refusals_are_named() {
        let dns = DnsServer::start().await;
        let p = proxy(&dns, "", false).await;
        let e = plan(&p, &target("127.0.0.31", 80)).await.unwrap_err();
        assert!(e.contains("no rule allows it"), "{e}");
        let port0 = Target {
            host: TargetHost::Ip("127.0.0.31".parse().unwrap()),
            port: 0,
        };
        let e = plan(&p, &port0).await.unwrap_err();
        assert!(e.contains("port 0"), "{e}");
    }
}
