//! Every Prometheus metric carousel exports, in one place, so names, units and label sets stay
//! consistent and bounded: cluster and member labels only for configured clusters, never client
//! addresses or arbitrary hostnames.

use std::sync::LazyLock;

use crate::outcome::{ClientProtocol, Outcome};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process-wide metric set.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Requests by protocol (`http`, `connect`, `socks4`, `socks5`) and outcome.
    pub requests: IntCounterVec,
    /// Upstream connect attempts by cluster, member and result.
    pub connect_attempts: IntCounterVec,
    /// Connect duration by cluster.
    pub connect_duration: HistogramVec,
    /// Requests that moved on to another address after a failed connect.
    pub failovers: IntCounterVec,
    /// Active-health state per member (1 up, 0 down).
    pub member_up: IntGaugeVec,
    /// Passive ejection state per member (1 ejected).
    pub member_ejected: IntGaugeVec,
    /// Ejections per member.
    pub member_ejections: IntCounterVec,
    /// Open connections per member.
    pub member_active: IntGaugeVec,
    /// Members per cluster and state.
    pub cluster_members: IntGaugeVec,
    /// Requests served while every member of a cluster was down.
    pub panic_requests: IntCounterVec,
    /// Active health check results.
    pub health_checks: IntCounterVec,
    /// DNS lookups by kind (`name`, `cluster`) and result.
    pub dns_lookups: IntCounterVec,
    /// DNS lookup duration by kind.
    pub dns_duration: HistogramVec,
    /// Names the resolver keeps (bounded by `dns.max_names`).
    pub dns_names: IntGauge,
    /// Names forgotten to stay within `dns.max_names`.
    pub dns_names_evicted: IntCounter,
    /// Background refreshes of names in use.
    pub dns_refreshes: IntCounter,
    /// DNS lookups in flight (bounded by `limits.max_concurrent_dns_lookups`).
    pub dns_in_flight: IntGauge,
    /// Responder queries by type and response code.
    pub dns_queries: IntCounterVec,
    /// Records per responder answer.
    pub dns_answer_records: Histogram,
    /// Responder answers that published every member because none was usable.
    pub dns_all_down: IntCounterVec,
    /// Responder queries dropped by the per-client rate limit.
    pub dns_rate_limited: IntCounter,
    /// Answers served from a set past its TTL because DNS failed.
    pub dns_stale: IntCounterVec,
    /// 1 while a cluster serves its last good member set because DNS fails.
    pub cluster_dns_stale: IntGaugeVec,
    /// Tunnels closed because their member was marked down (`on_member_down = "close_tunnels"`).
    pub tunnels_closed_member_down: IntCounterVec,
    /// Connections refused while reading a PROXY protocol header, by reason.
    pub proxy_protocol_rejected: IntCounterVec,
    /// Open client connections per listener.
    pub listener_connections: IntGaugeVec,
    /// Open tunnels by protocol.
    pub active_tunnels: IntGaugeVec,
    /// Tunnel bytes by direction (`up` client→server, `down`).
    pub tunnel_bytes: IntCounterVec,
    /// Splice pipes the process holds (pooled or busy), against `tunnel.max_pipes`.
    pub tunnel_pipes: IntGauge,
    /// Transfer rounds that copied through user space because every pipe was busy.
    pub tunnel_pipe_budget_spent: IntCounter,
    /// Configuration reloads by result.
    pub reloads: IntCounterVec,
    /// Time of the last successful (re)load.
    pub last_reload_success: IntGauge,
    /// Failed authentications.
    pub auth_failures: IntCounter,
    /// Authentication attempts refused unchecked because the client spent its failure budget.
    pub auth_throttled: IntCounter,
    /// Authentication outcomes by scheme (`basic`, `negotiate`, `socks5-userpass`,
    /// `socks5-gssapi`) and result (`ok`, `invalid`, `malformed`, `throttled`, `unavailable`).
    pub auth: IntCounterVec,
    /// Group lookups by result (`ok`, `cached`, `stale`, `unavailable`).
    pub directory_lookups: IntCounterVec,
    /// Requests refused by a limit.
    pub overload: IntCounterVec,
    /// Access-log lines dropped because the writer's queue was full.
    pub access_log_dropped: IntCounter,
    /// Attempts a race left behind that are watched to their own connect timeout.
    pub dial_watched: IntCounter,
    /// Attempts a race left behind that were closed unfinished because the watch was full.
    pub dial_watch_full: IntCounter,
    /// Responder answers dropped because the socket could not take them at once.
    pub dns_send_dropped: IntCounter,
    /// Responder TCP connections closed at accept, by reason (`client`, `total`, `per_client`).
    pub dns_tcp_refused: IntCounterVec,
    /// The descriptors each share of the process's budget may hold.
    pub fd_share: IntGaugeVec,
    /// The descriptors each share holds now.
    pub fd_share_used: IntGaugeVec,
    /// Times a share was spent when one more descriptor was asked of it.
    pub fd_share_exhausted: IntCounterVec,
    /// Build information.
    pub build_info: IntGaugeVec,
    /// `carousel_requests_total` children for every protocol × outcome, resolved at start-up so
    /// the request path does no label hashing (and every series exists at zero from the start).
    request_handles: Vec<IntCounter>,
    /// Tunnel byte counters (up, down), resolved at start-up.
    pub tunnel_up: IntCounter,
    /// Tunnel byte counter, server to client.
    pub tunnel_down: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let requests = counter(
            &r,
            "carousel_requests_total",
            "Client requests by protocol and outcome.",
            &["protocol", "outcome"],
        );
        let tunnel_bytes = counter(
            &r,
            "carousel_tunnel_bytes_total",
            "Bytes carried by tunnels, by direction (up: client to server).",
            &["direction"],
        );
        let request_handles = ClientProtocol::ALL
            .iter()
            .flat_map(|p| Outcome::ALL.iter().map(move |o| (*p, *o)))
            .map(|(p, o)| requests.with_label_values(&[p.as_str(), o.as_str()]))
            .collect();
        let m = Metrics {
            tunnel_up: tunnel_bytes.with_label_values(&["up"]),
            tunnel_down: tunnel_bytes.with_label_values(&["down"]),
            requests,
            request_handles,
            connect_attempts: counter(&r, "carousel_connect_attempts_total", "Upstream connect attempts by cluster, member and result (cluster and member empty outside clusters).", &["cluster", "member", "result"]),
            connect_duration: histogram(&r, "carousel_connect_duration_seconds", "Time to establish an upstream connection.", &["cluster"]),
            failovers: counter(&r, "carousel_failovers_total", "Requests that moved on to the next address after a failed connect.", &["cluster"]),
            member_up: gauge(&r, "carousel_member_up", "Active health state of a cluster member (1 up, 0 down).", &["cluster", "member"]),
            member_ejected: gauge(&r, "carousel_member_ejected", "Passive outlier ejection of a cluster member (1 ejected).", &["cluster", "member"]),
            member_ejections: counter(&r, "carousel_member_ejections_total", "Passive ejections of a cluster member.", &["cluster", "member"]),
            member_active: gauge(&r, "carousel_member_active_connections", "Open connections to a cluster member.", &["cluster", "member"]),
            cluster_members: gauge(&r, "carousel_cluster_members", "Members of a cluster by state.", &["cluster", "state"]),
            panic_requests: counter(&r, "carousel_panic_requests_total", "Requests made while every member of the cluster was down (all were tried).", &["cluster"]),
            health_checks: counter(&r, "carousel_health_checks_total", "Active health checks by result.", &["cluster", "member", "result"]),
            dns_lookups: counter(&r, "carousel_dns_lookups_total", "DNS lookups carousel made, by kind and result.", &["kind", "result"]),
            dns_duration: histogram(&r, "carousel_dns_lookup_duration_seconds", "DNS lookup duration.", &["kind"]),
            dns_names: plain_gauge(&r, "carousel_dns_names", "Names the resolver keeps, with their address sets (bounded by dns.max_names)."),
            dns_names_evicted: plain_counter(&r, "carousel_dns_names_evicted_total", "Least recently used names forgotten to stay within dns.max_names."),
            dns_refreshes: plain_counter(&r, "carousel_dns_refreshes_total", "Background refreshes of names clients keep asking for."),
            dns_in_flight: plain_gauge(&r, "carousel_dns_lookups_in_flight", "DNS lookups in flight (name lookups bounded by limits.max_concurrent_dns_lookups)."),
            dns_queries: counter(&r, "carousel_dns_queries_total", "Queries the DNS responder answered, by type and response code.", &["qtype", "rcode"]),
            dns_answer_records: {
                let h = Histogram::with_opts(HistogramOpts::new("carousel_dns_answer_records", "Records in one DNS responder answer.").buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0])).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            dns_all_down: counter(&r, "carousel_dns_all_down_answers_total", "DNS responder answers that published every member because none was usable (TTL 1).", &["cluster"]),
            dns_rate_limited: plain_counter(&r, "carousel_dns_rate_limited_total", "DNS responder queries dropped by the per-client rate limit."),
            dns_stale: counter(&r, "carousel_dns_stale_answers_total", "Requests answered from an address set past its TTL because DNS failed.", &["kind"]),
            cluster_dns_stale: gauge(&r, "carousel_cluster_dns_stale", "1 while a cluster serves its last good member set because DNS fails.", &["cluster"]),
            tunnels_closed_member_down: counter(&r, "carousel_tunnels_closed_member_down_total", "Tunnels carousel closed because the active checks marked their member down (on_member_down = close_tunnels).", &["cluster"]),
            proxy_protocol_rejected: counter(&r, "carousel_proxy_protocol_rejected_total", "Connections closed while reading a PROXY protocol header, by reason (untrusted, malformed, version, timeout).", &["reason"]),
            listener_connections: gauge(&r, "carousel_listener_connections", "Open client connections per listener.", &["listener"]),
            active_tunnels: gauge(&r, "carousel_active_tunnels", "Open tunnels by protocol.", &["protocol"]),
            tunnel_bytes,
            tunnel_pipes: plain_gauge(&r, "carousel_tunnel_pipes", "Splice pipes held by the process, pooled or busy (bounded by tunnel.max_pipes)."),
            tunnel_pipe_budget_spent: plain_counter(&r, "carousel_tunnel_pipe_budget_exhausted_total", "Tunnel transfer rounds copied through user space because every pipe tunnel.max_pipes allows was busy."),
            reloads: counter(&r, "carousel_config_reloads_total", "Configuration reloads by result.", &["result"]),
            last_reload_success: plain_gauge(&r, "carousel_config_last_reload_success_timestamp_seconds", "Unix time of the last successful configuration load."),
            auth_failures: plain_counter(&r, "carousel_auth_failures_total", "Failed proxy authentications."),
            auth: {
                let c = counter(&r, "carousel_auth_total", "Proxy authentications by scheme and result.", &["scheme", "result"]);
                // Every series from start-up, so rates and alerts see zero rather than nothing.
                for scheme in ["basic", "negotiate", "socks5-userpass", "socks5-gssapi"] {
                    for result in ["ok", "invalid", "malformed", "throttled", "unavailable"] {
                        c.with_label_values(&[scheme, result]);
                    }
                }
                c
            },
            directory_lookups: {
                let c = counter(&r, "carousel_directory_lookups_total", "Directory group lookups by result: ok (asked), cached (fresh), stale (the directory was unreachable; cached groups served), unavailable (nothing recent enough: rules needing a group deny).", &["result"]);
                for result in ["ok", "cached", "stale", "unavailable"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            auth_throttled: plain_counter(&r, "carousel_auth_throttled_total", "Proxy authentications refused unchecked because the client spent its budget of failed attempts (access.max_auth_failures_per_minute)."),
            overload: counter(&r, "carousel_overload_rejections_total", "Requests refused by a limit.", &["limit"]),
            access_log_dropped: plain_counter(&r, "carousel_access_log_dropped_total", "Access-log lines dropped because the writer's queue was full (the disk or stdout could not keep up)."),
            dial_watched: plain_counter(&r, "carousel_dial_watched_attempts_total", "Connect attempts a race left behind (another candidate won, or the deadline came) that were watched to their own connect timeout."),
            dial_watch_full: plain_counter(&r, "carousel_dial_watch_full_total", "Connect attempts a race left behind that were closed unfinished because dial.max_watched_attempts were watched already."),
            dns_send_dropped: plain_counter(&r, "carousel_dns_send_dropped_total", "DNS responder answers dropped because the socket could not take them at once."),
            dns_tcp_refused: counter(&r, "carousel_dns_tcp_refused_total", "DNS responder TCP connections closed at accept, by reason (client: outside allow_clients; total, per_client: over the responder's TCP limits).", &["reason"]),
            fd_share: gauge(&r, "carousel_fd_share", "Descriptors each share of the process's open-file budget may hold (clients, dial, checks, responder, refusals, reserved).", &["share"]),
            fd_share_used: gauge(&r, "carousel_fd_share_used", "Descriptors each share of the open-file budget holds now.", &["share"]),
            fd_share_exhausted: counter(&r, "carousel_fd_share_exhausted_total", "Descriptors refused because their share of the open-file budget was spent.", &["share"]),
            build_info: gauge(&r, "carousel_build_info", "Build information.", &["version"]),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for r in ["ok", "error"] {
            m.reloads.with_label_values(&[r]);
        }
        for r in ["untrusted", "malformed", "version", "timeout"] {
            m.proxy_protocol_rejected.with_label_values(&[r]);
        }
        // Every series whose labels are known at start exists from the start, at zero, so
        // dashboards and alerts see 0 instead of "no data" (Prometheus instrumentation advice).
        for l in ["global", "per_client", "handshakes_per_client", "dns"] {
            m.overload.with_label_values(&[l]);
        }
        for r in ["client", "total", "per_client"] {
            m.dns_tcp_refused.with_label_values(&[r]);
        }
        for k in ["name", "cluster"] {
            for r in ["ok", "nxdomain", "error"] {
                m.dns_lookups.with_label_values(&[k, r]);
            }
            m.dns_duration.with_label_values(&[k]);
        }
        m.dns_stale.with_label_values(&["name"]);
        for p in ClientProtocol::ALL {
            if p != ClientProtocol::Http {
                m.active_tunnels.with_label_values(&[p.as_str()]);
            }
        }
        for a in crate::outcome::Attempt::ALL {
            m.connect_attempts.with_label_values(&["", "", a.as_str()]);
        }
        m.connect_duration.with_label_values(&[""]);
        m.failovers.with_label_values(&[""]);
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

/// Requests so far by protocol and outcome (for the status page).
pub fn request_counts() -> Vec<(ClientProtocol, Outcome, u64)> {
    let m = metrics();
    ClientProtocol::ALL
        .iter()
        .flat_map(|p| Outcome::ALL.iter().map(move |o| (*p, *o)))
        .zip(m.request_handles.iter())
        .map(|((p, o), c)| (p, o, c.get()))
        .collect()
}

/// Records the outcome of one client request.
pub fn request(protocol: ClientProtocol, outcome: Outcome) {
    let p = ClientProtocol::ALL
        .iter()
        .position(|x| *x == protocol)
        .unwrap_or(0);
    let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
    metrics().request_handles[p * Outcome::ALL.len() + o].inc();
}

/// A histogram handle for observing a duration, resolved once.
pub fn connect_timer(cluster: &str) -> Histogram {
    metrics().connect_duration.with_label_values(&[cluster])
}
