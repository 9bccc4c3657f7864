//! `/status`: everything an operator asks about, as one typed document in the configuration's own
//! words. The status page and `carousel status` render this same type (the latter after reading
//! it back from the JSON), so the three can only disagree in layout, never in what they say.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Admin;
use crate::cluster::{now_ms, Availability, Member};
use crate::config::{OnMemberDown, Selection};

/// The whole document (fields documented in the README).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// carousel's version.
    pub version: String,
    /// SIGTERM received: `/readyz` says 503.
    pub draining: bool,
    /// The configuration file, or `<embedded>`.
    pub config: String,
    /// The last (re)load.
    pub reload: Reload,
    /// The client listeners.
    pub listeners: Vec<ListenerStatus>,
    /// Requests so far, by protocol and outcome.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// The resolver and the responder.
    pub dns: DnsStatus,
    /// The configured clusters.
    pub clusters: Vec<ClusterStatus>,
}

/// The last configuration (re)load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Reload {
    /// When (Unix seconds).
    pub last_unix: u64,
    /// `ok`, or the error.
    pub result: String,
}

/// One client listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerStatus {
    /// `ip:port`.
    pub address: String,
    /// `http`, `socks`.
    pub protocols: Vec<String>,
    /// An HTTPS-proxy listener.
    pub tls: bool,
    /// `off`, `v1`, `v2`, `any`.
    pub proxy_protocol: String,
    /// Its open connections.
    pub open_connections: i64,
}

/// The resolver and the DNS responder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsStatus {
    /// Configured cluster names (discovered by the clusters themselves).
    pub cluster_names: usize,
    /// Other names the resolver keeps.
    pub plain_names_cached: usize,
    /// Lookups in flight.
    pub lookups_in_flight: i64,
    /// The responder's addresses (empty: off).
    pub responder: Vec<String>,
}

/// What the responder publishes for a cluster now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsAnswer {
    /// The addresses answered.
    pub addresses: Vec<String>,
    /// No member is usable: every member is published, TTL 1.
    pub all_down: bool,
    /// Some member is not usable: the TTL is halved.
    pub degraded: bool,
}

/// One configured cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    /// Its name.
    pub name: String,
    /// The responder's answer for it now (`None` before discovery).
    pub dns_answer: Option<DnsAnswer>,
    /// Its client ports.
    pub ports: Vec<u16>,
    /// The SRV record it is discovered from.
    pub srv: Option<String>,
    /// How it picks members.
    pub selection: Selection,
    /// What a member marked down does to its tunnels.
    pub on_member_down: OnMemberDown,
    /// Discovered, with members.
    pub ready: bool,
    /// Serving its last good member set because DNS fails.
    pub dns_stale: bool,
    /// Why its member set is empty or stale.
    pub dns_error: Option<String>,
    /// Its members (draining ones last).
    pub members: Vec<MemberStatus>,
}

/// A member's state as the views say it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Up, not ejected: in the rotation.
    #[default]
    Healthy,
    /// Its ejection is over: one trial request may try it.
    Halfopen,
    /// Ejected by the request path.
    Ejected,
    /// Failing its active checks.
    Down,
    /// Removed from DNS, still carrying connections.
    Draining,
}

impl Health {
    /// The word the views use.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Halfopen => "halfopen",
            Health::Ejected => "ejected",
            Health::Down => "down",
            Health::Draining => "draining",
        }
    }
}

/// One cluster member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberStatus {
    /// Its IP address.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// SRV weight (1 otherwise).
    pub weight: u32,
    /// SRV priority.
    pub priority: u16,
    /// Its state.
    pub health: Health,
    /// Whether an active check has run.
    pub checked: bool,
    /// Whether the last one passed.
    pub last_check_ok: bool,
    /// When it ran (Unix seconds).
    pub last_check_unix: u64,
    /// The last error a check or a request saw.
    pub last_error: String,
    /// When (Unix seconds; 0: never).
    pub last_error_unix: u64,
    /// When its ejection ends (Unix milliseconds), if ejected.
    pub ejected_until_unix_ms: Option<u64>,
    /// Its ejections.
    pub ejections: u32,
    /// Its open connections.
    pub active_connections: i64,
    /// Requests that tried it.
    pub requests: u64,
    /// Of which failed to connect.
    pub connect_failures: u64,
    /// In the last second.
    pub requests_per_second: f32,
    /// In the last second.
    pub failures_per_second: f32,
}

impl Admin {
    /// The status document now.
    pub(super) fn status(&self) -> Status {
        let now = now_ms();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let history = &self.proxy.history;
        let table = self.proxy.clusters.load();
        let clusters = table
            .iter()
            .map(|c| {
                let snap = c.snapshot();
                let member = |m: &Arc<Member>, draining: bool| {
                    let rec = m.record();
                    let (requests, failures) = m.totals();
                    let until = m.ejected_until_ms();
                    MemberStatus {
                        address: m.addr.ip().to_string(),
                        port: m.addr.port(),
                        weight: m.weight,
                        priority: m.priority,
                        health: match (draining, m.availability(now)) {
                            (true, _) => Health::Draining,
                            (_, Availability::Healthy) => Health::Healthy,
                            (_, Availability::HalfOpen) => Health::Halfopen,
                            (_, Availability::Ejected) => Health::Ejected,
                            (_, Availability::Down) => Health::Down,
                        },
                        checked: m.was_checked(),
                        last_check_ok: rec.ok,
                        last_check_unix: rec.at_unix,
                        last_error: rec.last_error,
                        last_error_unix: rec.last_error_unix,
                        ejected_until_unix_ms: (until > now).then(|| unix_now + (until - now)),
                        ejections: m.ejections(),
                        active_connections: m.active(),
                        requests,
                        connect_failures: failures,
                        requests_per_second: super::sampler::last(
                            history,
                            &super::sampler::key("req", &c.name, m.addr),
                        ),
                        failures_per_second: super::sampler::last(
                            history,
                            &super::sampler::key("fail", &c.name, m.addr),
                        ),
                    }
                };
                let dns_answer = match table.publish(&c.name) {
                    crate::dns::responder::Lookup::Found(a) => Some(DnsAnswer {
                        addresses: a.addrs.iter().map(|ip| ip.to_string()).collect(),
                        all_down: a.all_down,
                        degraded: a.degraded,
                    }),
                    _ => None,
                };
                ClusterStatus {
                    name: c.name.clone(),
                    dns_answer,
                    ports: c.cfg.ports.clone(),
                    srv: c.cfg.srv.clone(),
                    selection: c.cfg.selection,
                    on_member_down: c.cfg.on_member_down,
                    ready: c.is_ready(),
                    dns_stale: c.is_stale(),
                    dns_error: snap.dns_error.clone(),
                    members: snap
                        .members
                        .iter()
                        .map(|m| member(m, false))
                        .chain(snap.draining.iter().map(|m| member(m, true)))
                        .collect(),
                }
            })
            .collect();
        let config = self.proxy.config();
        let m = crate::metrics::metrics();
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                address: l.address.to_string(),
                protocols: l
                    .protocols
                    .iter()
                    .map(|p| match p {
                        crate::config::Protocol::Http => "http".to_string(),
                        crate::config::Protocol::Socks => "socks".to_string(),
                    })
                    .collect(),
                tls: l.tls.is_some(),
                proxy_protocol: format!("{:?}", l.proxy_protocol).to_lowercase(),
                open_connections: m
                    .listener_connections
                    .with_label_values(&[&l.address.to_string()])
                    .get(),
            })
            .collect();
        let mut requests: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (p, o, n) in crate::metrics::request_counts() {
            requests
                .entry(p.as_str().to_string())
                .or_default()
                .insert(o.as_str().to_string(), n);
        }
        let (reload_unix, reload_result) = crate::reload::last();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            draining: self.proxy.is_draining(),
            config: crate::reload::config_path(),
            reload: Reload {
                last_unix: reload_unix,
                result: reload_result,
            },
            listeners,
            requests,
            dns: DnsStatus {
                cluster_names: table.iter().count(),
                plain_names_cached: self.proxy.resolver.names(),
                lookups_in_flight: m.dns_in_flight.get(),
                responder: config
                    .responder
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            },
            clusters,
        }
    }
}
