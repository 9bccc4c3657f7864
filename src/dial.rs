//! Ordered connect attempts: try each candidate with a short per-attempt timeout inside one
//! overall deadline, and remember addresses that failed so other requests try them last.
//!
//! This is what makes a dead cluster member invisible to clients: the same request simply moves
//! on to the next address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cluster::Member;
use crate::config::{DialSection, PreferFamily};
use crate::metrics::metrics;
use crate::recent::Recent;

/// One address to try, and the cluster member behind it if any.
#[derive(Clone)]
pub struct Candidate {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The cluster member, for passive health and per-member metrics.
    pub member: Option<std::sync::Arc<Member>>,
}

/// Where a dial gets its candidates and reports what happened to each: the session's plan. A
/// trait, so that the dial knows nothing of sessions, policy or routing.
pub trait Attempts {
    /// The next address to try, or `None` when there is none left.
    fn next_candidate(&mut self) -> Option<Candidate>;
    /// A connect to `c` failed.
    fn report_failure(&self, c: &Candidate, kind: FailKind, detail: &str);
    /// A connect to `c` succeeded after `took`.
    fn report_success(&self, c: &Candidate, took: Duration);
    /// An attempt to `c` lost the race to another candidate and was closed unfinished (the
    /// watch was full, or nothing watches this plan's attempts).
    fn report_abandoned(&self, c: &Candidate);
    /// An attempt to `c` that lost the race connected anyway, after `took`: closed, and a
    /// success for `c` (slow, not dead).
    fn report_late_success(&self, c: &Candidate, took: Duration);
    /// Who reports the outcome of an attempt this plan's race leaves behind, after the request
    /// is gone; `None`: such attempts are closed and reported abandoned.
    fn watcher(&self) -> Option<Arc<dyn Watch>>;
    /// The cluster label of these attempts ("" outside clusters).
    fn cluster_name(&self) -> &str;
}

/// The reports of an attempt the race left behind, which it makes itself when it ends (the
/// request that started it may be long gone).
pub trait Watch: Send + Sync {
    /// It failed after the race: a timeout at its own connect timeout counts as a connect
    /// failure (`result="abandoned_timeout"`), a refusal as a refusal.
    fn late_failure(&self, c: &Candidate, kind: FailKind, detail: &str);
    /// It connected after the race: closed, and a success (`result="abandoned_late"`).
    fn late_success(&self, c: &Candidate, took: Duration);
}

/// How a request's attempts are bounded.
#[derive(Debug, Clone, Copy)]
pub struct DialSettings {
    /// Longest single connect attempt.
    pub per_attempt: Duration,
    /// Longest time for all attempts together.
    pub deadline: Duration,
    /// Most candidates tried.
    pub max_attempts: usize,
    /// How long an attempt runs alone before the next candidate races it.
    pub attempt_delay: Duration,
    /// Most attempts the races leave behind that the process watches at once.
    pub max_watched: usize,
}

impl From<&DialSection> for DialSettings {
    fn from(d: &DialSection) -> Self {
        Self {
            per_attempt: d.connect_timeout,
            deadline: d.deadline,
            max_attempts: d.max_attempts,
            attempt_delay: d.attempt_delay,
            max_watched: d.max_watched_attempts,
        }
    }
}

pub use crate::outcome::FailKind;

/// Every attempt of a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail} ({attempts} attempt(s))")]
pub struct DialFailure {
    /// The category the client reply is chosen from.
    pub kind: FailKind,
    /// How many candidates were tried.
    pub attempts: u32,
    /// One line for the client and the log: last address and error.
    pub detail: String,
    /// The cluster label of the attempts ("" outside clusters).
    pub cluster: String,
}

/// A connected upstream.
pub struct Connected {
    /// The open connection (plain TCP from the dial; TLS once an HTTPS parent's session is
    /// up).
    pub stream: crate::tunnel::Upstream,
    /// Which candidate answered.
    pub addr: SocketAddr,
    /// Attempts it took (1 = the first candidate).
    pub attempts: u32,
    /// The cluster member it belongs to, if any.
    pub member: Option<std::sync::Arc<crate::cluster::Member>>,
    /// The cluster name ("" outside clusters).
    pub cluster: String,
    /// Bytes a parent proxy sent after its answer: the destination's first, for the client.
    pub from_parent: Vec<u8>,
}

/// Addresses the failure memory keeps at least (clients choose them; see [`Recent`]).
const REMEMBERED: usize = 16_384;

/// The first back-off of a failed address before one request may try it again.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);

/// What carousel remembers of a failed address.
#[derive(Debug, Clone, Copy)]
struct Failed {
    /// Until then it is tried last; after it, one request tries it first (half-open).
    until: Instant,
    /// The current back-off: doubles on each failed trial, up to the memory's longest.
    backoff: Duration,
}

/// Addresses that recently failed to connect, shared by every request, for names that have no
/// active health checks. A failed address is never the first pick while another is not failed,
/// and the others rotate evenly among themselves. After a short back-off (2 s, doubling with each
/// failed trial up to `dial.failure_memory_seconds`) one request tries it first: a success puts
/// it back in rotation with its full share.
pub struct FailureMemory {
    failed: Recent<SocketAddr, Failed>,
    longest: Duration,
}

impl FailureMemory {
    /// A memory whose back-off grows up to `longest`.
    pub fn new(longest: Duration) -> Self {
        Self {
            failed: Recent::new(REMEMBERED),
            longest: longest.max(FIRST_RETRY),
        }
    }

    /// Records a failed connect to `addr`.
    pub fn mark_failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        let longest = self.longest;
        self.failed.with(
            &addr,
            || Failed {
                until: now,
                backoff: Duration::ZERO,
            },
            |e| {
                e.backoff = if e.backoff.is_zero() {
                    FIRST_RETRY
                } else {
                    (e.backoff * 2).min(longest)
                };
                e.until = now + e.backoff;
            },
        );
    }

    /// Records a successful connect: `addr` is good again.
    pub fn mark_ok(&self, addr: SocketAddr) {
        if !self.failed.is_empty() {
            self.failed.remove(&addr);
        }
    }

    /// Whether `addr` failed recently (and is not yet due for a trial).
    pub fn is_failed(&self, addr: &SocketAddr) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        self.failed
            .with_existing(addr, |f| Instant::now() < f.until)
            .unwrap_or(false)
    }

    /// Orders this request's candidates: a failed address due for its half-open trial first (at
    /// most one, claimed by this request), then the addresses that are not failed, rotated by
    /// `turn` among themselves (the preferred family's first, then the families alternating),
    /// then the failed ones. `addrs` is the name's full set in a stable order; `turn` is the
    /// name's per-request counter.
    pub fn order(
        &self,
        addrs: &[SocketAddr],
        turn: usize,
        prefer: PreferFamily,
    ) -> Vec<SocketAddr> {
        self.order_parts(addrs, turn, prefer).0
    }

    /// This request's candidates as [`FailureMemory::order`] gives them, with the failovers
    /// drawn from `failovers` (see [`NameOrder`]).
    pub fn plan(
        &self,
        addrs: &[SocketAddr],
        turn: usize,
        prefer: PreferFamily,
        failovers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> NameOrder {
        let (list, good_end) = self.order_parts(addrs, turn, prefer);
        NameOrder {
            list,
            good_end,
            next: 0,
            failovers,
        }
    }

    /// The order, and where its good addresses end (the trial and the good ones come first).
    fn order_parts(
        &self,
        addrs: &[SocketAddr],
        turn: usize,
        prefer: PreferFamily,
    ) -> (Vec<SocketAddr>, usize) {
        if self.failed.is_empty() {
            return (arrange(addrs, turn, prefer), addrs.len());
        }
        let now = Instant::now();
        let mut trial = None;
        let mut good = Vec::with_capacity(addrs.len());
        let mut bad = Vec::new();
        enum Seen {
            Good,
            Trial,
            Forgotten,
            Bad,
        }
        let longest = self.longest;
        for &a in addrs {
            let seen = self.failed.with_existing(&a, |f| {
                if trial.is_none() && now >= f.until && now < f.until + longest {
                    // Claim the trial: until its outcome is known, it counts as failed again.
                    f.until = now + f.backoff;
                    Seen::Trial
                } else if now >= f.until + longest {
                    Seen::Forgotten
                } else {
                    Seen::Bad
                }
            });
            match seen.unwrap_or(Seen::Good) {
                Seen::Good => good.push(a),
                Seen::Trial => trial = Some(a),
                Seen::Forgotten => {
                    self.failed.remove(&a);
                    good.push(a);
                }
                Seen::Bad => bad.push(a),
            }
        }
        let mut out: Vec<SocketAddr> = trial.into_iter().collect();
        out.extend(arrange(&good, turn, prefer));
        let good_end = out.len();
        out.extend(bad);
        (out, good_end)
    }
}

/// A plain name's candidates for one request: the rotation's first pick (or the half-open
/// trial), then, if that one fails or stalls, the name's other good addresses starting at the
/// name's next failover turn (each family rotated by it, the families alternating, the other one
/// first), then the failed ones. Drawing the failover from a counter of its own, instead of
/// taking the first pick's successor, spreads a dead address's share evenly over the others
/// before the failure memory has noticed it (3 addresses, one blackholed: 30/30, not 40/20).
pub struct NameOrder {
    list: Vec<SocketAddr>,
    good_end: usize,
    next: usize,
    failovers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Iterator for NameOrder {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        if self.next == 1 && self.good_end > 2 {
            let turn = self
                .failovers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let first_v4 = self.list[0].is_ipv4();
            let (same, other): (Vec<SocketAddr>, Vec<SocketAddr>) = self.list[1..self.good_end]
                .iter()
                .partition(|a| a.is_ipv4() == first_v4);
            let rotate = |v: Vec<SocketAddr>| -> std::collections::VecDeque<SocketAddr> {
                let n = v.len().max(1);
                (0..v.len()).map(|i| v[(turn + i) % n]).collect()
            };
            let (mut same, mut other) = (rotate(same), rotate(other));
            let mut take_other = true;
            for slot in &mut self.list[1..self.good_end] {
                let next = if take_other {
                    other.pop_front().or_else(|| same.pop_front())
                } else {
                    same.pop_front().or_else(|| other.pop_front())
                };
                if let Some(a) = next {
                    *slot = a;
                }
                take_other = !take_other;
            }
        }
        let a = self.list.get(self.next).copied()?;
        self.next += 1;
        Some(a)
    }
}

/// The good addresses of a name in this request's order: the preferred family's rotated by
/// `turn`, then the other family's rotated alike, the families alternating from the second on.
/// Rotating each family on its own keeps the shares even within it (rotating the mixed list
/// and then moving the first preferred address up would give one address most of the turns).
fn arrange(addrs: &[SocketAddr], turn: usize, prefer: PreferFamily) -> Vec<SocketAddr> {
    fn rotate(v: Vec<SocketAddr>, turn: usize) -> Vec<SocketAddr> {
        let n = v.len().max(1);
        (0..v.len()).map(|i| v[(turn + i) % n]).collect()
    }
    let want_v4 = match prefer {
        PreferFamily::Ipv6 => false,
        PreferFamily::Ipv4 => true,
        PreferFamily::Any => return interleave(rotate(addrs.to_vec(), turn)),
    };
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv4() == want_v4);
    let mut out = rotate(preferred, turn);
    out.extend(rotate(other, turn));
    interleave(out)
}

/// Alternates address families after the first candidate (RFC 8305 §4), keeping each family's
/// order: when one family is broken (a dead IPv6 path, say), the next attempt, and the race
/// against the first, go to the other one. The first candidate stays the rotation's pick, so the
/// load still spreads over every address of the name, whatever its family.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    type Queue = std::collections::VecDeque<SocketAddr>;
    let (mut same, mut other): (Queue, Queue) = addrs[1..]
        .iter()
        .copied()
        .partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(addrs.len());
    out.push(first);
    let mut take_other = true;
    while !same.is_empty() || !other.is_empty() {
        let next = if take_other {
            other.pop_front().or_else(|| same.pop_front())
        } else {
            same.pop_front().or_else(|| other.pop_front())
        };
        out.extend(next);
        take_other = !take_other;
    }
    out
}

/// Attempts the race left behind that are still watched, process-wide.
static WATCHED: AtomicUsize = AtomicUsize::new(0);

/// Attempts the race left behind that are watched now.
pub fn watched_attempts() -> usize {
    WATCHED.load(Ordering::Relaxed)
}

/// Where one attempt stands, between its task and the race.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// The race still waits for it.
    Live,
    /// It ended and handed its outcome to the race.
    Done,
    /// The race was decided without it: it reports its own outcome when it ends.
    Watched,
}

/// One attempt's outcome, as the race receives it.
type Outcome = (usize, Instant, Result<TcpStream, FailKind>, String);

/// Connects to the first candidate of `plan` that answers, racing them (RFC 8305 §5): the next
/// candidate starts when the previous one failed or has gone unanswered for the attempt delay,
/// without abandoning it, and the first to connect wins. Each attempt is bounded by the
/// per-attempt timeout and all of them by the deadline. Every failure and success is reported to
/// the plan (failure memory, member health, metrics).
///
/// An attempt still running when the race is decided is not cut off: it is watched to its own
/// per-attempt timeout (at most `settings.max_watched` of them in the process), and its outcome
/// is reported as the plan's [`Attempts::watcher`] says: a timeout as a connect failure, so a
/// blackholed member is ejected by traffic alone and a blackholed address goes behind the
/// others; a late connect as a success (slow, not dead), closed at once. Past the bound the
/// attempt is closed and reported abandoned, as before, neither success nor failure.
pub async fn dial(
    plan: &mut impl Attempts,
    settings: DialSettings,
) -> Result<Connected, DialFailure> {
    let deadline = Instant::now() + settings.deadline;
    let mut attempts = 0u32;
    let mut last = DialFailure {
        kind: FailKind::Other,
        attempts: 0,
        detail: "no addresses to try".into(),
        cluster: plan.cluster_name().to_string(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    // Per attempt: its candidate (taken when its outcome arrives), its stand and its task.
    let mut candidates: Vec<Option<Candidate>> = Vec::new();
    let mut stands: Vec<Arc<Mutex<Stand>>> = Vec::new();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut in_flight = 0usize;
    let watcher = plan.watcher();
    let mut exhausted = false;
    let mut next_start = Instant::now();
    let result = loop {
        let now = Instant::now();
        if now >= deadline {
            last.kind = FailKind::Timeout;
            last.detail = format!("deadline of {:?} reached", settings.deadline);
            break Err(());
        }
        if !exhausted && now >= next_start && (attempts as usize) < settings.max_attempts {
            let Some(fd) = crate::descriptors::budget().dial.try_take() else {
                // No descriptor for another attempt: the ones running may still win.
                exhausted = true;
                if in_flight == 0 {
                    last.kind = FailKind::Exhausted;
                    last.detail = "overloaded: no descriptor left for an upstream connect".into();
                    break Err(());
                }
                continue;
            };
            match plan.next_candidate() {
                Some(candidate) => {
                    let k = candidates.len();
                    let stand = Arc::new(Mutex::new(Stand::Live));
                    candidates.push(Some(candidate.clone()));
                    stands.push(stand.clone());
                    attempts += 1;
                    in_flight += 1;
                    let budget = settings.per_attempt.min(deadline - now);
                    let (tx, watcher) = (tx.clone(), watcher.clone());
                    tasks.push(tokio::spawn(async move {
                        let _fd = fd;
                        let addr = candidate.addr;
                        let (r, detail) =
                            match tokio::time::timeout(budget, TcpStream::connect(addr)).await {
                                Ok(Ok(s)) => (Ok(s), String::new()),
                                Ok(Err(e)) => {
                                    (Err(FailKind::of(&e)), format!("connect to {addr}: {e}"))
                                }
                                Err(_) => (
                                    Err(FailKind::Timeout),
                                    format!("connect to {addr}: timed out after {budget:?}"),
                                ),
                            };
                        let mut stand = stand.lock().unwrap_or_else(|e| e.into_inner());
                        if *stand == Stand::Live {
                            // Sent under the lock: once the race sees `Done`, it is in the
                            // channel.
                            *stand = Stand::Done;
                            let _ = tx.send((k, now, r, detail));
                            return;
                        }
                        drop(stand);
                        WATCHED.fetch_sub(1, Ordering::Relaxed);
                        let Some(w) = watcher else { return };
                        match r {
                            Ok(stream) => {
                                drop(stream);
                                w.late_success(&candidate, now.elapsed());
                            }
                            Err(kind) => w.late_failure(&candidate, kind, &detail),
                        }
                    }));
                    next_start = now + settings.attempt_delay;
                }
                None => exhausted = true,
            }
        }
        if in_flight == 0 {
            if exhausted || (attempts as usize) >= settings.max_attempts {
                break Err(());
            }
            continue;
        }
        let wake = if exhausted || (attempts as usize) >= settings.max_attempts {
            deadline
        } else {
            next_start.min(deadline)
        };
        tokio::select! {
            done = rx.recv() => {
                let Some((k, started, r, detail)) = done else { continue };
                in_flight -= 1;
                let Some(candidate) = candidates[k].take() else { continue };
                match r {
                    Ok(stream) => {
                        plan.report_success(&candidate, started.elapsed());
                        let _ = stream.set_nodelay(true);
                        break Ok(Connected {
                            stream: crate::tunnel::Upstream::Tcp(stream),
                            addr: candidate.addr,
                            attempts,
                            member: candidate.member,
                            cluster: plan.cluster_name().to_string(),
                            from_parent: Vec::new(),
                        });
                    }
                    Err(kind) => {
                        tracing::debug!(addr = %candidate.addr, %detail, "connect failed; trying next");
                        last.kind = kind;
                        last.detail = detail;
                        plan.report_failure(&candidate, kind, &last.detail);
                        // A failure starts the next candidate at once.
                        next_start = Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    };
    // Whatever is still running lost the race (or the deadline came): watched, within the
    // bound, or closed now.
    let mut late: Vec<Option<Candidate>> = vec![None; candidates.len()];
    for (k, slot) in candidates.iter_mut().enumerate() {
        let Some(c) = slot.take() else { continue };
        let mut stand = stands[k].lock().unwrap_or_else(|e| e.into_inner());
        if *stand == Stand::Done {
            // Ended just now: its outcome waits in the channel (drained below).
            late[k] = Some(c);
            continue;
        }
        let room =
            watcher.is_some() && WATCHED.fetch_add(1, Ordering::Relaxed) < settings.max_watched;
        if room {
            *stand = Stand::Watched;
            metrics().dial_watched.inc();
        } else {
            if watcher.is_some() {
                WATCHED.fetch_sub(1, Ordering::Relaxed);
                metrics().dial_watch_full.inc();
            }
            tasks[k].abort();
            plan.report_abandoned(&c);
        }
    }
    drop(tx);
    // Outcomes that arrived after the race was decided: a late connect is closed and counts as
    // a success (slow, not dead); a failure as a failure.
    while let Ok((k, started, r, detail)) = rx.try_recv() {
        let Some(c) = late.get_mut(k).and_then(Option::take) else {
            continue;
        };
        match r {
            Ok(stream) => {
                drop(stream);
                plan.report_late_success(&c, started.elapsed());
            }
            Err(kind) => plan.report_failure(&c, kind, &detail),
        }
    }
    last.attempts = attempts;
    result.map_err(|()| last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        (1..=4)
            .map(|i| format!("127.0.0.{i}:80").parse().unwrap())
            .collect()
    }

    /// Issue 20: a plain name's address that stalls before the failure memory knows it: the
    /// request whose first pick it is takes its second from the name's failover turns, so the
    /// other addresses share its load evenly (the successor took it all before: 40/20).
    #[test]
    fn a_failing_first_addresss_share_spreads_evenly() {
        let m = FailureMemory::new(Duration::from_secs(30));
        for n in [3usize, 4] {
            let a: Vec<SocketAddr> = addrs().into_iter().take(n).collect();
            let failovers = Arc::new(AtomicUsize::new(0));
            let mut h = std::collections::HashMap::new();
            for turn in 0..60 * (n - 1) {
                let mut order = m.plan(&a, turn, PreferFamily::Any, failovers.clone());
                let mut first = order.next().unwrap();
                if first == a[1] {
                    first = order.next().unwrap();
                }
                *h.entry(first).or_insert(0) += 1;
            }
            assert_eq!(h.len(), n - 1, "{h:?}");
            assert!(h.values().all(|&c| c == 60), "{n} addresses: {h:?}");
        }
        // The rest of one request's order is every other address once, the failed ones last.
        m.mark_failed(a4()[3]);
        let got: Vec<SocketAddr> = m
            .plan(&a4(), 0, PreferFamily::Any, Arc::new(AtomicUsize::new(1)))
            .collect();
        assert_eq!(got, vec![a4()[0], a4()[2], a4()[1], a4()[3]]);
    }

    fn a4() -> Vec<SocketAddr> {
        addrs()
    }

    #[test]
    fn failed_addresses_go_last_and_keep_rotation() {
        let m = FailureMemory::new(Duration::from_secs(30));
        let a = addrs();
        m.mark_failed(a[1]);
        assert_eq!(
            m.order(&a, 0, PreferFamily::Any),
            vec![a[0], a[2], a[3], a[1]]
        );
        m.mark_ok(a[1]);
        assert_eq!(m.order(&a, 0, PreferFamily::Any), a);
    }

    #[test]
    fn the_others_rotate_evenly_while_one_is_failed() {
        let m = FailureMemory::new(Duration::from_secs(30));
        let a = addrs();
        m.mark_failed(a[2]);
        let mut firsts = std::collections::HashMap::new();
        for turn in 0..90 {
            let order = m.order(&a, turn, PreferFamily::Any);
            assert_eq!(order[3], a[2], "the failed address is last");
            *firsts.entry(order[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts.get(&a[2]), None);
        assert!(firsts.values().all(|&n| n == 30), "{firsts:?}");
    }

    #[test]
    fn families_interleave_after_the_rotations_pick() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v = vec![
            a("[::1]:80"),
            a("[::2]:80"),
            a("127.0.0.1:80"),
            a("127.0.0.2:80"),
        ];
        assert_eq!(
            interleave(v.clone()),
            vec![
                a("[::1]:80"),
                a("127.0.0.1:80"),
                a("[::2]:80"),
                a("127.0.0.2:80")
            ]
        );
        let w = vec![a("127.0.0.1:80"), a("127.0.0.2:80"), a("[::1]:80")];
        assert_eq!(
            interleave(w),
            vec![a("127.0.0.1:80"), a("[::1]:80"), a("127.0.0.2:80")]
        );
    }

    #[test]
    fn the_preferred_family_goes_first_and_its_addresses_rotate_evenly() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v = vec![
            a("127.0.0.1:80"),
            a("127.0.0.2:80"),
            a("[::1]:80"),
            a("[::2]:80"),
            a("[::3]:80"),
        ];
        let m = FailureMemory::new(Duration::from_secs(30));
        let mut firsts = std::collections::HashMap::new();
        for turn in 0..90 {
            let order = m.order(&v, turn, PreferFamily::Ipv6);
            assert!(
                order[0].is_ipv6() && order[1].is_ipv4() && order[2].is_ipv6(),
                "{order:?}"
            );
            assert_eq!(order.len(), 5);
            *firsts.entry(order[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert!(firsts.values().all(|&n| n == 30), "{firsts:?}");
        let order = m.order(&v, 1, PreferFamily::Ipv4);
        assert_eq!(
            order[..3],
            [a("127.0.0.2:80"), a("[::2]:80"), a("127.0.0.1:80")]
        );
        // No preference: every address of either family takes an even share of first picks.
        let mut firsts = std::collections::HashMap::new();
        for turn in 0..100 {
            *firsts
                .entry(m.order(&v, turn, PreferFamily::Any)[0])
                .or_insert(0) += 1;
        }
        assert!(
            firsts.len() == 5 && firsts.values().all(|&n| n == 20),
            "{firsts:?}"
        );
        // A failed IPv6 address goes last; the other IPv6 addresses still go first.
        m.mark_failed(v[2]);
        for turn in 0..4 {
            let order = m.order(&v, turn, PreferFamily::Ipv6);
            assert!(order[0].is_ipv6() && order[0] != v[2], "{order:?}");
            assert_eq!(*order.last().unwrap(), v[2]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_address_gets_one_half_open_trial_after_its_back_off() {
        let m = FailureMemory::new(Duration::from_secs(30));
        let a = addrs();
        m.mark_failed(a[0]);
        assert_eq!(*m.order(&a, 0, PreferFamily::Any).last().unwrap(), a[0]);
        tokio::time::advance(FIRST_RETRY).await;
        // One request, and only one, tries it first.
        assert_eq!(m.order(&a, 0, PreferFamily::Any)[0], a[0]);
        assert_eq!(*m.order(&a, 0, PreferFamily::Any).last().unwrap(), a[0]);
        // The trial fails: the back-off doubles.
        m.mark_failed(a[0]);
        tokio::time::advance(FIRST_RETRY).await;
        assert_eq!(*m.order(&a, 1, PreferFamily::Any).last().unwrap(), a[0]);
        tokio::time::advance(FIRST_RETRY).await;
        assert_eq!(m.order(&a, 1, PreferFamily::Any)[0], a[0]);
        // The trial succeeds: back in rotation with its full share.
        m.mark_ok(a[0]);
        assert_eq!(m.order(&a, 0, PreferFamily::Any), a);
    }
}
