//! Keeps a cluster's member set current: looks the name (or its SRV record) up at the clamped TTL
//! with jitter, applies changes without losing the health of members that stay, and serves the
//! last good set for `serve_stale_seconds` when DNS fails (RFC 8767), then says so clearly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{health, Cluster, MemberSpec};
use crate::config::{DnsSection, StaticMember};
use crate::dns::{ResolveError, Resolver};

/// Runs discovery (and starts health checks) for `cluster` until it is retired.
pub async fn run(cluster: Arc<Cluster>, resolver: Arc<Resolver>, dns: DnsSection) {
    let min_ttl = cluster.cfg.min_ttl.unwrap_or(dns.min_ttl);
    let max_ttl = cluster.cfg.max_ttl.unwrap_or(dns.max_ttl).max(min_ttl);
    let serve_stale = cluster.cfg.serve_stale;
    let mut good_until: Option<Instant> = None;
    while !cluster.is_retired() {
        let wait = match discover(&cluster, &resolver).await {
            Ok((specs, ttl)) => {
                let ttl = ttl.clamp(min_ttl, max_ttl);
                good_until = Some(Instant::now() + ttl + serve_stale);
                cluster.set_stale(false);
                for m in cluster.apply(&specs, None) {
                    health::spawn(cluster.clone(), m);
                }
                ttl
            }
            Err(e) => {
                let counts_as_failure = !e.is_not_found() || cluster.cfg.serve_stale_nxdomain;
                let servable = counts_as_failure && good_until.is_some_and(|t| Instant::now() < t);
                if servable {
                    tracing::warn!(cluster = %cluster.name, error = %e, "DNS failed; serving the last good member set");
                    cluster.set_stale(true);
                    let specs = static_specs(&cluster);
                    let snap = cluster.snapshot();
                    let keep: Vec<MemberSpec> = snap
                        .members
                        .iter()
                        .map(|m| MemberSpec::of(m))
                        .chain(specs)
                        .collect();
                    cluster.apply(&keep, Some(e.to_string()));
                } else {
                    tracing::warn!(cluster = %cluster.name, error = %e, "DNS failed; no servable member set");
                    cluster.set_stale(false);
                    good_until = None;
                    let specs = static_specs(&cluster);
                    for m in cluster.apply(&specs, Some(e.to_string())) {
                        health::spawn(cluster.clone(), m);
                    }
                }
                // Retry soon while DNS is failing.
                min_ttl.min(Duration::from_secs(1))
            }
        };
        // ±10% jitter so many clusters with one TTL do not refresh in lockstep.
        let jitter = wait.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(jitter).await;
    }
}

fn static_specs(cluster: &Cluster) -> Vec<MemberSpec> {
    let mut out = Vec::new();
    for &StaticMember { ip, port } in &cluster.cfg.static_members {
        match port {
            Some(p) => out.push(MemberSpec {
                addr: SocketAddr::new(ip, p),
                weight: 1,
                priority: 0,
            }),
            None => {
                for &p in &cluster.cfg.ports {
                    out.push(MemberSpec {
                        addr: SocketAddr::new(ip, p),
                        weight: 1,
                        priority: 0,
                    });
                }
            }
        }
    }
    out
}

/// One discovery round: the member specs and the answer's TTL.
async fn discover(
    cluster: &Cluster,
    resolver: &Resolver,
) -> Result<(Vec<MemberSpec>, Duration), ResolveError> {
    let mut specs = Vec::new();
    let ttl;
    if let Some(srv) = &cluster.cfg.srv {
        let (targets, t) = resolver.lookup_srv(srv).await?;
        ttl = t;
        for target in targets {
            // RFC 2782: weight 0 gets a very small share; 1 of a wheel is close enough.
            for ip in target.addrs {
                specs.push(MemberSpec {
                    addr: SocketAddr::new(ip, target.port),
                    weight: u32::from(target.weight.max(1)),
                    priority: target.priority,
                });
            }
        }
    } else {
        let (ips, t) = resolver.lookup_ips(&cluster.name).await?;
        ttl = t;
        for ip in ips {
            for &port in &cluster.cfg.ports {
                specs.push(MemberSpec {
                    addr: SocketAddr::new(ip, port),
                    weight: 1,
                    priority: 0,
                });
            }
        }
    }
    specs.extend(static_specs(cluster));
    Ok((specs, ttl))
}
