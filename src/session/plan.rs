//! One request's candidates: where they come from (a cluster's rotation, a name's addresses, a
//! member's own address), the policy applied to each, and what the dial reports back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, Member, Picks};
pub use crate::dial::Candidate;
use crate::dial::{Attempts, FailKind, FailureMemory, Watch};
use crate::metrics::metrics;
use crate::outcome::Attempt;
use crate::policy::{Refusal, Verdict};

use super::runtime::Runtime;

pub(super) enum Source {
    List(std::vec::IntoIter<SocketAddr>),
    /// A plain name's addresses, with its failovers drawn from the name's own turns.
    Name(crate::dial::NameOrder),
    Cluster(FamilyPicks),
    /// A member's own address, asked for literally: that member first (if given), then, with
    /// `rescue_member_ips`, the cluster's other members in rotation.
    Member {
        first: Option<Arc<Member>>,
        rest: Option<Picks>,
    },
}

/// A cluster's picks with the address families alternating after the first (RFC 8305 §4): when
/// the first member's family is broken, the next attempt, and the race against the first, go to
/// the other family. The first pick stays the rotation's, of either family, so every member keeps
/// its share of first attempts; the failover picks prefer the other family within the SRV
/// priority level of the last pick (a backup level is never reached early).
pub(super) struct FamilyPicks {
    picks: Picks,
    /// Family of the last member handed out.
    last_v4: Option<bool>,
}

impl FamilyPicks {
    pub(super) fn new(picks: Picks) -> Self {
        Self {
            picks,
            last_v4: None,
        }
    }
}

impl Iterator for FamilyPicks {
    type Item = Arc<Member>;

    fn next(&mut self) -> Option<Arc<Member>> {
        let m = match self.last_v4 {
            None => self.picks.next(),
            Some(v4) => self.picks.next_preferring(!v4),
        }?;
        self.last_v4 = Some(m.addr.is_ipv4());
        Some(m)
    }
}

/// Who is asking: checked against the rules for every candidate address.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The user's directory groups, once looked up (only where rules name groups).
    pub groups: Option<crate::identity::Membership>,
}

impl Requester {
    /// What the policy sees of this requester.
    pub fn as_who(&self) -> crate::policy::Who<'_> {
        crate::policy::Who {
            user: self.user.as_deref(),
            groups: self.groups.as_ref(),
        }
    }
}

/// The ordered candidates of one request and where to report what happened to each.
pub struct Plan {
    /// Through parent proxies: what to ask them for (the cluster is then theirs).
    pub via: Option<Via>,
    /// The cluster serving this request, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// The rule that allowed the request (for the access log).
    pub rule: String,
    pub(super) source: Source,
    /// The member address a literal request named, skipped when its cluster rescues it.
    pub(super) pinned: Option<SocketAddr>,
    pub(super) tried: u32,
    /// Candidates the policy refused.
    pub(super) refused: u32,
    pub(super) panic_counted: bool,
    pub(super) runtime: Arc<Runtime>,
    pub(super) failures: Arc<FailureMemory>,
    pub(super) who: Requester,
    pub(super) name: Option<String>,
}

/// A request sent through parent proxies: the destination as the client named it, and how to
/// ask the parents for it.
#[derive(Debug, Clone)]
pub struct Via {
    /// The destination, unresolved.
    pub target: crate::protocol::Target,
    /// What the parents speak.
    pub protocol: crate::config::ParentProtocol,
    /// How carousel reaches them (credentials, TLS).
    pub link: Arc<crate::parent::Link>,
    /// `target` is the address carousel picked (`resolve_destination`), not the client's name.
    pub resolved: bool,
    /// Sent as an absolute-form HTTP request on the connection to an HTTP(S) parent (the
    /// forward path) instead of asked for with a CONNECT: the parent's answer is the
    /// destination's response, so the connect alone decides the parent's health.
    pub absolute: bool,
}

impl Plan {
    /// A plan with `source`'s candidates and nothing tried yet; the caller sets the cluster, the
    /// pinned member, the name and the parents where they apply.
    pub(super) fn start(
        rule: String,
        source: Source,
        runtime: Arc<Runtime>,
        failures: Arc<FailureMemory>,
        who: Requester,
    ) -> Self {
        Self {
            via: None,
            cluster: None,
            rule,
            source,
            pinned: None,
            tried: 0,
            refused: 0,
            panic_counted: false,
            runtime,
            failures,
            who,
            name: None,
        }
    }

    /// Asks the parent `c` is connected to for the destination (within the dial's deadline),
    /// in a TLS session first for an HTTPS parent. A parent that fails to answer counts against
    /// it, as a failed connect would; one that refuses does not. Returns the connection to the
    /// destination, with the bytes the parent sent after its answer.
    pub async fn through_parent(
        &self,
        via: &Via,
        mut c: crate::dial::Connected,
    ) -> Result<crate::dial::Connected, super::OpenError> {
        let limit = self.runtime.dial.deadline;
        let started = std::time::Instant::now();
        let candidate = Candidate {
            addr: c.addr,
            member: c.member.clone(),
        };
        match crate::parent::open(
            c.stream,
            c.addr,
            via.protocol,
            &via.target,
            &via.link,
            limit,
        )
        .await
        {
            Ok((stream, early)) => {
                self.reporter()
                    .success(&candidate, started.elapsed(), false);
                c.stream = stream;
                c.from_parent = early;
                Ok(c)
            }
            Err(e) => {
                match &e {
                    crate::parent::ParentError::Failed { reason, .. } => {
                        self.reporter()
                            .failure(&candidate, FailKind::Other, reason, false);
                    }
                    // Its answer, not its health: a success for the member.
                    crate::parent::ParentError::Refused { .. } => {
                        self.reporter()
                            .success(&candidate, started.elapsed(), false);
                    }
                }
                Err(super::OpenError::Parent(e))
            }
        }
    }

    /// Marks a request to HTTP(S) parents as sent to them in absolute form (the forward path).
    /// Not with a resolved destination: an absolute-form URL carries one authority, and the
    /// parent (pingora too) makes `Host` agree with it, so the destination would be asked for
    /// its address instead of its name; such a request goes through a CONNECT to the address,
    /// with `Host` as the client sent it.
    pub fn send_absolute(&mut self) {
        if let Some(v) = self.via.as_mut() {
            v.absolute = v.protocol != crate::config::ParentProtocol::Socks5 && !v.resolved;
        }
    }

    /// Whether the policy allows `addr`; a name allowed only by address rules takes the name of
    /// the rule that allowed this address, for the access log.
    fn allowed(&mut self, addr: SocketAddr) -> bool {
        // A parent is configured infrastructure: the destination was checked by name.
        if self.via.is_some() {
            return true;
        }
        let client = self.who.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        match self.runtime.policy.check_address(
            client,
            self.who.as_who(),
            self.name.as_deref(),
            addr,
        ) {
            Verdict::Allow(rule) => {
                if self.rule.is_empty() {
                    self.rule = rule;
                }
                true
            }
            other => {
                tracing::info!(%addr, name = ?self.name, verdict = ?other, "candidate address refused by policy");
                self.refused += 1;
                false
            }
        }
    }

    /// Why this request had nothing to try, if the policy refused every candidate it had: a
    /// name whose every address is guarded or denied.
    pub fn refusal(&self) -> Option<Refusal> {
        (self.tried == 0 && self.refused > 0).then(|| {
            Refusal::NoAllowedAddress(self.name.clone().unwrap_or_else(|| "the target".into()))
        })
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
                Source::Name(it) => it.next().map(|addr| Candidate { addr, member: None }),
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
                    if sel.picks.is_panic() && !self.panic_counted {
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
        self.reporter().failure(c, kind, detail, false);
    }

    /// Records an attempt to `c` given up unfinished because another candidate connected first
    /// (and the watch was full): neither a success nor a failure. A half-open trial it held is
    /// given back.
    fn report_abandoned(&self, c: &Candidate) {
        match &c.member {
            Some(m) => m.report_abandoned(),
            None => unclustered(Attempt::Abandoned),
        }
    }

    /// Records a successful connect to `c` after `took`.
    fn report_success(&self, c: &Candidate, took: Duration) {
        // Through a parent, the connect is half of it: the parent's answer decides
        // (`through_parent`), so a parent that accepts and then fails every request still
        // builds up the run of failures that ejects it. (Not in absolute form: the answer is
        // the destination's, and a destination's 5xx must not eject a parent.)
        if self.via.as_ref().is_none_or(|v| v.absolute) {
            self.reporter().success(c, took, false);
        }
    }

    fn report_late_success(&self, c: &Candidate, took: Duration) {
        self.reporter().success(c, took, true);
    }

    fn watcher(&self) -> Option<Arc<dyn Watch>> {
        Some(Arc::new(self.reporter()))
    }
}

impl Plan {
    fn reporter(&self) -> Reporter {
        Reporter {
            failures: self.failures.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// Counts an attempt outside any cluster (empty cluster and member labels).
fn unclustered(result: Attempt) {
    metrics()
        .connect_attempts
        .with_label_values(&["", "", result.as_str()])
        .inc();
}

/// Where a connect's outcome goes: the failure memory of plain names, the cluster member's
/// health, the metrics. Owned (not borrowed from the plan), so an attempt the race left behind
/// can report when it ends.
struct Reporter {
    failures: Arc<FailureMemory>,
    cluster: Option<Arc<Cluster>>,
}

impl Reporter {
    fn cluster_name(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.name.as_str())
    }

    /// A failed connect; `late`: of an attempt the race left behind.
    fn failure(&self, c: &Candidate, kind: FailKind, detail: &str, late: bool) {
        self.failures.mark_failed(c.addr);
        let result = Attempt::failed(kind, late);
        match (&self.cluster, &c.member) {
            (Some(cluster), Some(m)) => cluster.report_failure(m, result, detail),
            _ => unclustered(result),
        }
    }

    /// A successful connect after `took`; `late`: of an attempt the race left behind (closed).
    fn success(&self, c: &Candidate, took: Duration, late: bool) {
        self.failures.mark_ok(c.addr);
        match (&self.cluster, &c.member, late) {
            (Some(cluster), Some(m), false) => cluster.report_success(m),
            (Some(cluster), Some(m), true) => cluster.report_late_success(m),
            (None, Some(m), false) => {
                m.report_success(crate::cluster::now_ms());
            }
            (None, Some(m), true) => {
                m.report_late_success(crate::cluster::now_ms());
            }
            (_, None, late) => unclustered(if late {
                Attempt::AbandonedLate
            } else {
                Attempt::Ok
            }),
        }
        if !late {
            crate::metrics::connect_timer(self.cluster_name()).observe(took.as_secs_f64());
        }
    }
}

impl Watch for Reporter {
    fn late_failure(&self, c: &Candidate, kind: FailKind, detail: &str) {
        self.failure(c, kind, detail, true);
    }

    fn late_success(&self, c: &Candidate, took: Duration) {
        self.success(c, took, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Pool;
    use crate::config::Selection;

    fn order(members: &[(&str, u16)]) -> Vec<String> {
        let members = members
            .iter()
            .map(|(a, p)| Arc::new(Member::new("c", a.parse().unwrap(), 1, *p)))
            .collect();
        let pool = Arc::new(Pool::new(members, 0));
        FamilyPicks::new(pool.select(Selection::RoundRobin, 0))
            .map(|m| m.addr.to_string())
            .collect()
    }

    #[test]
    fn families_alternate_after_the_first_pick_within_a_level() {
        assert_eq!(
            order(&[("127.0.0.1:80", 0), ("127.0.0.2:80", 0), ("[::1]:80", 0)]),
            ["127.0.0.1:80", "[::1]:80", "127.0.0.2:80"]
        );
        // An IPv6 backup level is not reached before the preferred level is used up.
        assert_eq!(
            order(&[
                ("127.0.0.1:80", 0),
                ("127.0.0.2:80", 0),
                ("127.0.0.3:80", 0),
                ("[::1]:80", 1),
                ("127.0.0.4:80", 1),
            ]),
            [
                "127.0.0.1:80",
                "127.0.0.2:80",
                "127.0.0.3:80",
                "[::1]:80",
                "127.0.0.4:80"
            ]
        );
        // A single-family cluster keeps plain rotation order.
        let v4: Vec<(String, u16)> = (1..=20).map(|i| (format!("127.0.0.{i}:80"), 0)).collect();
        let v4: Vec<(&str, u16)> = v4.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        let want: Vec<String> = v4.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(order(&v4), want);
    }
}
