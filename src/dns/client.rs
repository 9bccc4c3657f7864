//! The DNS client: one hickory-resolver query at a time, bounded in time, counted and timed. What
//! carousel keeps of the answers (rotation, refresh, serve-stale) is the resolver's business.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{DnsSection, IpStrategy};

/// Why a name has no usable addresses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The nameserver said the name does not exist or has no addresses.
    #[error("{0}: no such host")]
    NotFound(String),
    /// The lookup failed (timeout, SERVFAIL, network).
    #[error("{name}: {reason}")]
    Failed {
        /// The name asked for.
        name: String,
        /// What went wrong, one line.
        reason: String,
    },
    /// Too many lookups for new names are in flight.
    #[error("too many DNS lookups in flight")]
    Overloaded,
    /// The resolver could not be built from the configuration.
    #[error("resolver setup: {0}")]
    Setup(String),
}

/// Queries the configured nameservers.
pub struct Client {
    dns: TokioResolver,
    /// The most one lookup may take in all (`timeout_ms × attempts`).
    bound: Duration,
    lookups: AtomicU64,
    /// Whether both families are asked for (A and AAAA).
    both: bool,
    /// How long a failed answer is remembered (`dns.negative_ttl_seconds`).
    negative: Duration,
    /// Names whose AAAA query failed (REFUSED, SERVFAIL) recently: asked for A only until then,
    /// as a negative answer is cached like any other (a server that refuses AAAA would otherwise
    /// get a failing AAAA query, with its retries, for every A query).
    aaaa_failing: dashmap::DashMap<String, tokio::time::Instant>,
}

impl Client {
    /// A client for `[dns]`; nameservers empty means the system configuration.
    pub fn new(cfg: &DnsSection) -> Result<Self, ResolveError> {
        let provider = TokioRuntimeProvider::default();
        let (rc, mut opts) = if cfg.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| ResolveError::Setup(e.to_string()))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|sa| nameserver(*sa))
                .collect::<Vec<_>>();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        // carousel keeps its own per-name sets; hickory's cache would hand refreshes an old answer.
        opts.cache_size = 0;
        opts.ip_strategy = match cfg.ip_strategy {
            IpStrategy::Ipv4AndIpv6 => LookupIpStrategy::Ipv4AndIpv6,
            IpStrategy::Ipv4Only => LookupIpStrategy::Ipv4Only,
            IpStrategy::Ipv6Only => LookupIpStrategy::Ipv6Only,
        };
        let mut builder = hickory_resolver::Resolver::builder_with_config(rc, provider);
        *builder.options_mut() = opts;
        let dns = builder
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Self {
            dns,
            bound: cfg.timeout.saturating_mul(cfg.attempts.max(1) as u32),
            lookups: AtomicU64::new(0),
            both: cfg.ip_strategy == IpStrategy::Ipv4AndIpv6,
            negative: cfg.negative_ttl,
            aaaa_failing: dashmap::DashMap::new(),
        })
    }

    /// How many A/AAAA lookups it has made.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// One SRV lookup: targets with priority, weight and port, and the TTL (unclamped).
    /// Targets' addresses come from the additional section when present, else a lookup each.
    pub async fn srv(&self, name: &str) -> Result<(Vec<SrvTarget>, Duration), ResolveError> {
        use hickory_resolver::proto::rr::RData;
        let started = std::time::Instant::now();
        let fqdn = absolute(name);
        let result = self.dns.srv_lookup(fqdn.as_str()).await;
        observe("cluster", started, &result);
        let lookup = result.map_err(|e| classify(name, e))?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let mut out = Vec::new();
        let mut unusable: Vec<String> = Vec::new();
        for rec in lookup.answers() {
            if let RData::SRV(srv) = &rec.data {
                let target = srv.target.to_ascii();
                let mut addrs: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|r| r.name.to_ascii().eq_ignore_ascii_case(&target))
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                if addrs.is_empty() {
                    match self.ips(&target, "cluster").await {
                        Ok((a, _)) => addrs = a,
                        Err(e) => unusable.push(e.to_string()),
                    }
                }
                if addrs.is_empty() {
                    continue;
                }
                out.push(SrvTarget {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    addrs,
                });
            }
        }
        if out.is_empty() && !unusable.is_empty() {
            // Targets that resolve to nothing leave the cluster with no member at all: that is a
            // failure to say, not an empty member set to serve.
            return Err(ResolveError::Failed {
                name: name.to_string(),
                reason: format!("no SRV target has an address ({})", unusable.join("; ")),
            });
        }
        if out.is_empty() {
            return Err(ResolveError::NotFound(name.to_string()));
        }
        if !unusable.is_empty() {
            tracing::warn!(srv = name, targets = %unusable.join("; "), "SRV targets without an address are left out");
        }
        Ok((out, ttl))
    }

    /// One A/AAAA lookup of `name` (`kind` labels the metrics): the addresses, deduplicated,
    /// and their TTL (unclamped).
    pub async fn ips(
        &self,
        name: &str,
        kind: &str,
    ) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let fqdn = absolute(name);
        let in_flight = &crate::metrics::metrics().dns_in_flight;
        in_flight.inc();
        let result = tokio::time::timeout(self.bound, self.addresses(name, &fqdn)).await;
        in_flight.dec();
        let Ok(result) = result else {
            let m = crate::metrics::metrics();
            m.dns_duration
                .with_label_values(&[kind])
                .observe(started.elapsed().as_secs_f64());
            m.dns_lookups.with_label_values(&[kind, "error"]).inc();
            return Err(ResolveError::Failed {
                name: name.to_string(),
                reason: format!("no answer within {:?}", self.bound),
            });
        };
        observe(kind, started, &result);
        match result {
            Ok((addrs, _)) if addrs.is_empty() => Err(ResolveError::NotFound(name.to_string())),
            Ok((addrs, valid_until)) => {
                let ttl = valid_until.saturating_duration_since(std::time::Instant::now());
                Ok((addrs, ttl))
            }
            Err(e) => Err(classify(name, e)),
        }
    }

    /// The A and AAAA answers of `fqdn` (one family if so configured, or while AAAA is
    /// failing for `name`), deduplicated, and when the earliest of them expires.
    async fn addresses(
        &self,
        name: &str,
        fqdn: &str,
    ) -> Result<(Vec<IpAddr>, std::time::Instant), hickory_resolver::net::NetError> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        let collect = |lookup: &hickory_resolver::lookup::Lookup, out: &mut Vec<IpAddr>| {
            for r in lookup.answers() {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        };
        if !self.both {
            let lookup = self.dns.lookup_ip(fqdn).await?;
            let addrs: Vec<IpAddr> = lookup.iter().collect();
            return Ok((addrs, lookup.valid_until()));
        }
        let now = tokio::time::Instant::now();
        let skip_aaaa = self
            .aaaa_failing
            .get(name)
            .is_some_and(|until| now < *until);
        let a = self.dns.lookup(fqdn, RecordType::A);
        let (a, aaaa) = if skip_aaaa {
            (a.await, None)
        } else {
            let (a, aaaa) = tokio::join!(a, self.dns.lookup(fqdn, RecordType::AAAA));
            (a, Some(aaaa))
        };
        let mut addrs = Vec::new();
        let mut valid_until: Option<std::time::Instant> = None;
        match &aaaa {
            Some(Ok(l)) => {
                collect(l, &mut addrs);
                valid_until = Some(l.valid_until());
                self.aaaa_failing.remove(name);
            }
            Some(Err(e)) if !(e.is_nx_domain() || e.is_no_records_found()) => {
                if self.aaaa_failing.len() >= 10_000 {
                    self.aaaa_failing.retain(|_, until| now < *until);
                }
                self.aaaa_failing
                    .insert(name.to_string(), now + self.negative);
            }
            _ => {}
        }
        match a {
            Ok(l) => {
                let mut v4 = Vec::new();
                collect(&l, &mut v4);
                v4.append(&mut addrs);
                let until = valid_until.map_or(l.valid_until(), |u| u.min(l.valid_until()));
                Ok((v4, until))
            }
            // No A: the AAAA answer alone, or the A error.
            Err(e) => match aaaa {
                Some(Ok(_)) if !addrs.is_empty() => {
                    Ok((addrs, valid_until.unwrap_or_else(std::time::Instant::now)))
                }
                _ => Err(e),
            },
        }
    }
}

/// One SRV target with its addresses.
#[derive(Debug, Clone)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative share within a priority.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The target's addresses.
    pub addrs: Vec<IpAddr>,
}

/// A trailing dot makes the name absolute: no search-domain guessing for a proxy.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn classify(name: &str, e: hickory_resolver::net::NetError) -> ResolveError {
    if e.is_nx_domain() || e.is_no_records_found() {
        ResolveError::NotFound(name.to_string())
    } else {
        ResolveError::Failed {
            name: name.to_string(),
            reason: one_line(&e.to_string()),
        }
    }
}

/// hickory's error text as one short line: the caller already says it is DNS, so hickory's
/// "DNS error: error response: " prefixes go ("nameserver answered Query Refused").
fn one_line(text: &str) -> String {
    let mut line = text.lines().next().unwrap_or("lookup failed").trim();
    for prefix in ["DNS error: ", "dns error: ", "proto error: "] {
        line = line.strip_prefix(prefix).unwrap_or(line);
    }
    match line.strip_prefix("error response: ") {
        Some(code) => format!("the nameserver answered {code}"),
        None => line.to_string(),
    }
}

fn observe<T>(
    kind: &str,
    started: std::time::Instant,
    r: &Result<T, hickory_resolver::net::NetError>,
) {
    let m = crate::metrics::metrics();
    m.dns_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    let result = match r {
        Ok(_) => "ok",
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => "nxdomain",
        Err(_) => "error",
    };
    m.dns_lookups.with_label_values(&[kind, result]).inc();
}

impl ResolveError {
    /// Whether the name positively does not exist (as opposed to DNS failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ResolveError::NotFound(_))
    }
}

fn nameserver(sa: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
    for c in &mut ns.connections {
        c.port = sa.port();
    }
    ns
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_say_dns_once() {
        assert_eq!(
            super::one_line("DNS error: error response: Query Refused\nmore"),
            "the nameserver answered Query Refused"
        );
        assert_eq!(super::one_line("request timed out"), "request timed out");
    }
}
