//! Configured clusters: names carousel watches closely. Members come from DNS (A/AAAA or SRV) plus
//! static entries, are health-checked actively and ejected passively, and every request is steered
//! to a healthy one. The request path reads an immutable snapshot (`arc-swap`) and atomics only.

pub mod discovery;
pub mod health;
pub mod member;
pub mod publish;
pub mod select;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::ClusterSection;
use crate::metrics::metrics;
pub use member::{Availability, Member};
pub use select::{Picks, Pool};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on the clock every member's ejection times are written in.
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One discovered member before it becomes a `Member`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberSpec {
    /// Address and port.
    pub addr: SocketAddr,
    /// Weight (SRV weight, at least 1).
    pub weight: u32,
    /// SRV priority.
    pub priority: u16,
}

impl MemberSpec {
    /// The spec an existing member was built from.
    pub fn of(m: &Member) -> Self {
        MemberSpec {
            addr: m.addr,
            weight: m.weight,
            priority: m.priority,
        }
    }
}

/// The member set in force, swapped whole on every discovery change.
#[derive(Default)]
pub struct Snapshot {
    /// Pools by client port; an SRV cluster has one pool under port 0 used for every port.
    pub pools: HashMap<u16, Arc<Pool>>,
    /// Every member once.
    pub members: Vec<Arc<Member>>,
    /// Members removed from DNS that still carry connections: no new requests.
    pub draining: Vec<Arc<Member>>,
    /// Why the set is empty or stale, if it is.
    pub dns_error: Option<String>,
}

/// A configured cluster at run time.
pub struct Cluster {
    /// The name clients ask for, lowercase, without a trailing dot.
    pub name: String,
    /// Its configuration.
    pub cfg: ClusterSection,
    snapshot: ArcSwap<Snapshot>,
    discovered: tokio::sync::watch::Sender<bool>,
    had_members: AtomicBool,
    stale: AtomicBool,
    retired: AtomicBool,
}

impl Cluster {
    /// A cluster with no members yet; discovery fills it.
    pub fn new(cfg: ClusterSection) -> Arc<Self> {
        let name = cfg.name.clone();
        metrics()
            .cluster_dns_stale
            .with_label_values(&[&name])
            .set(0);
        let m = metrics();
        m.panic_requests.with_label_values(&[&name]);
        m.failovers.with_label_values(&[&name]);
        m.tunnels_closed_member_down.with_label_values(&[&name]);
        m.dns_all_down.with_label_values(&[&name]);
        m.connect_duration.with_label_values(&[&name]);
        for state in ["healthy", "unhealthy", "ejected", "draining"] {
            m.cluster_members.with_label_values(&[&name, state]);
        }
        Arc::new(Self {
            name,
            cfg,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            discovered: tokio::sync::watch::channel(false).0,
            had_members: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        })
    }

    /// The member set in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether discovery has run at least once (with or without finding members).
    pub fn is_discovered(&self) -> bool {
        *self.discovered.borrow()
    }

    /// Whether it has members to offer: discovered, with a member set that is not empty (a
    /// cluster whose SRV targets resolve to nothing is not ready, and says why in `dns_error`).
    pub fn is_ready(&self) -> bool {
        self.is_discovered() && !self.snapshot.load().members.is_empty()
    }

    /// Whether it ever had members (a cluster that lost them all later keeps `/readyz` as it
    /// was: one broken cluster does not take every replica out of its balancer).
    pub fn had_members(&self) -> bool {
        self.had_members.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) for the first discovery; requests arriving during start-up use it.
    pub async fn wait_discovered(&self, limit: Duration) {
        let mut rx = self.discovered.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
    }

    /// Whether the member set is served past its DNS lifetime.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Takes over the members (and their health state) of the cluster this one replaces after a
    /// reload changed its settings; the caller retires `old` without retiring its members.
    pub fn adopt(&self, old: &Cluster) -> Vec<Arc<Member>> {
        let snap = old.snapshot();
        let specs: Vec<MemberSpec> = snap.members.iter().map(|m| MemberSpec::of(m)).collect();
        self.snapshot.store(Arc::new(Snapshot {
            pools: self.build_pools(&snap.members),
            members: snap.members.clone(),
            draining: snap.draining.clone(),
            dns_error: snap.dns_error.clone(),
        }));
        // Re-apply so members of ports that were added or removed come and go.
        let fresh = self.apply(&specs, snap.dns_error.clone());
        if !old.is_discovered() {
            self.discovered.send_replace(false);
        }
        snap.members
            .iter()
            .filter(|m| !m.is_retired())
            .cloned()
            .chain(fresh)
            .collect()
    }

    /// Stops the background work of a cluster replaced by a reload, keeping its members alive for
    /// the cluster that adopted them.
    pub fn retire_keeping_members(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Stops background work for a cluster removed by a reload.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for m in &self.snapshot().members {
            m.retire();
        }
    }

    /// Whether a reload removed this cluster.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether `port` is one this cluster serves.
    pub fn serves_port(&self, port: u16) -> bool {
        self.cfg.ports.is_empty() || self.cfg.ports.contains(&port)
    }

    /// This request's candidates for client port `port`, or `None` when the cluster has no
    /// members for it.
    pub fn select(&self, port: u16) -> Option<Picks> {
        let snap = self.snapshot.load();
        let pool = snap.pools.get(&port).or_else(|| snap.pools.get(&0))?;
        if pool.is_empty() {
            return None;
        }
        Some(pool.select(self.cfg.selection, now_ms()))
    }

    /// The member at `addr`, if it is one of this cluster's.
    pub fn member_at(&self, addr: SocketAddr) -> Option<Arc<Member>> {
        self.snapshot
            .load()
            .members
            .iter()
            .find(|m| m.addr == addr)
            .cloned()
    }

    /// Whether the ejection budget (`max_ejection_percent`) allows one more ejection.
    pub fn may_eject(&self) -> bool {
        let snap = self.snapshot.load();
        let total = snap.members.len();
        if total == 0 {
            return false;
        }
        let now = now_ms();
        let ejected = snap
            .members
            .iter()
            .filter(|m| m.availability(now) == Availability::Ejected)
            .count();
        (ejected + 1) * 100 <= total * self.cfg.outlier.max_ejection_percent as usize
    }

    /// Reports a failed connect to `member` (passive outlier detection).
    pub fn report_failure(&self, member: &Member, result: crate::outcome::Attempt, error: &str) {
        let left = member.report_failure(result, error, &self.cfg.outlier, now_ms(), || {
            self.may_eject()
        });
        if left {
            self.refresh_rotation();
        }
        self.update_state_gauges();
    }

    /// Reports a successful connect to `member`; one back from an ejection rejoins the rotation.
    pub fn report_success(&self, member: &Member) {
        self.succeeded(member.report_success(now_ms()));
    }

    /// Reports that an attempt to `member` the race left behind connected after all.
    pub fn report_late_success(&self, member: &Member) {
        self.succeeded(member.report_late_success(now_ms()));
    }

    fn succeeded(&self, changed: bool) {
        if changed {
            self.refresh_rotation();
            self.update_state_gauges();
        }
    }

    /// Applies an active check result to `member`; a state change rebuilds the rotation.
    pub fn report_check(&self, member: &Member, ok: bool, error: &str) {
        let h = &self.cfg.health;
        if member.report_check(ok, error, h.rise, h.fall, now_ms()) {
            self.refresh_rotation();
        }
        self.update_state_gauges();
    }

    /// Rebuilds every pool's usable wheels from the members' health now: called on each health
    /// change, never on the request path.
    pub fn refresh_rotation(&self) {
        let now = now_ms();
        for pool in self.snapshot.load().pools.values() {
            pool.refresh(now);
        }
    }

    /// Installs a new member set from discovery, keeping the state of members that stay; returns
    /// the members that are new (to be health-checked at once).
    pub fn apply(&self, specs: &[MemberSpec], dns_error: Option<String>) -> Vec<Arc<Member>> {
        let old = self.snapshot.load_full();
        let mut by_addr: HashMap<SocketAddr, Arc<Member>> =
            old.members.iter().map(|m| (m.addr, m.clone())).collect();
        let mut members = Vec::with_capacity(specs.len());
        let mut fresh = Vec::new();
        for spec in specs {
            if members.iter().any(|m: &Arc<Member>| m.addr == spec.addr) {
                continue;
            }
            let m = match by_addr.remove(&spec.addr) {
                Some(m) if m.weight == spec.weight.max(1) && m.priority == spec.priority => m,
                changed => {
                    // New, or its weight or priority changed: a new member that inherits nothing.
                    if let Some(old) = changed {
                        old.retire();
                    }
                    let m = Arc::new(Member::new(
                        &self.name,
                        spec.addr,
                        spec.weight,
                        spec.priority,
                    ));
                    fresh.push(m.clone());
                    m
                }
            };
            members.push(m);
        }
        // Whatever is left in `by_addr` was removed from DNS: retire it, drain its connections.
        let mut draining: Vec<Arc<Member>> = old
            .draining
            .iter()
            .filter(|m| m.active() > 0)
            .cloned()
            .collect();
        for (_, m) in by_addr {
            m.retire();
            if m.active() > 0 {
                draining.push(m);
            } else {
                m.forget_metrics();
            }
        }
        let unchanged = fresh.is_empty()
            && members.len() == old.members.len()
            && draining.len() == old.draining.len();
        if !unchanged || old.dns_error != dns_error {
            let pools = self.build_pools(&members);
            self.snapshot.store(Arc::new(Snapshot {
                pools,
                members,
                draining,
                dns_error,
            }));
        }
        if !specs.is_empty() {
            self.had_members.store(true, Ordering::Relaxed);
        }
        self.discovered.send_replace(true);
        self.update_state_gauges();
        fresh
    }

    fn build_pools(&self, members: &[Arc<Member>]) -> HashMap<u16, Arc<Pool>> {
        let mut pools = HashMap::new();
        if self.cfg.srv.is_some() {
            pools.insert(0, Arc::new(Pool::new(members.to_vec(), now_ms())));
        } else {
            for &port in &self.cfg.ports {
                let ms = members
                    .iter()
                    .filter(|m| m.addr.port() == port)
                    .cloned()
                    .collect();
                pools.insert(port, Arc::new(Pool::new(ms, now_ms())));
            }
        }
        pools
    }

    /// Marks the set as served past its DNS lifetime (or not).
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
        metrics()
            .cluster_dns_stale
            .with_label_values(&[&self.name])
            .set(stale as i64);
    }

    /// Refreshes `carousel_cluster_members{state}`.
    pub fn update_state_gauges(&self) {
        let snap = self.snapshot.load();
        let now = now_ms();
        let (mut healthy, mut unhealthy, mut ejected) = (0, 0, 0);
        for m in &snap.members {
            // Healthy means usable, as the rotation and the DNS answer have it: a half-open
            // member (only its one trial goes to it) counts as ejected.
            if m.usable(now) {
                healthy += 1;
            } else if m.availability(now) == Availability::Down {
                unhealthy += 1;
            } else {
                ejected += 1;
            }
        }
        let g = &metrics().cluster_members;
        g.with_label_values(&[&self.name, "healthy"]).set(healthy);
        g.with_label_values(&[&self.name, "unhealthy"])
            .set(unhealthy);
        g.with_label_values(&[&self.name, "ejected"]).set(ejected);
        g.with_label_values(&[&self.name, "draining"])
            .set(snap.draining.len() as i64);
    }
}

/// Every configured cluster, by name and by member address (for `rescue_member_ips`).
#[derive(Default)]
pub struct ClusterTable {
    by_name: HashMap<String, Arc<Cluster>>,
}

impl ClusterTable {
    /// A table of the given clusters.
    pub fn new(clusters: Vec<Arc<Cluster>>) -> Self {
        Self {
            by_name: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        }
    }

    /// The cluster called `name` (lowercase, no trailing dot), if configured.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name)
    }

    /// Every cluster.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.by_name.values()
    }

    /// For a literal-address target: the cluster member at `addr` (on a port its cluster
    /// serves) and its cluster, if it is one.
    pub fn member_at(&self, addr: SocketAddr) -> Option<(&Arc<Cluster>, Arc<Member>)> {
        self.by_name.values().find_map(|c| {
            if !c.serves_port(addr.port()) && c.cfg.srv.is_none() {
                return None;
            }
            c.member_at(addr).map(|m| (c, m))
        })
    }
}
