//! One cluster member and its health: active check state (rise/fall) and passive outlier state
//! (consecutive failures, ejection with exponential back-off, half-open trial). Everything the
//! request path reads is an atomic; nothing here blocks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntGauge};

use crate::config::OutlierSection;
use crate::metrics::metrics;
use crate::outcome::Attempt;

/// What the selection may do with a member right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Up and not ejected: a normal candidate.
    Healthy,
    /// Its ejection ended: one trial request may try it.
    HalfOpen,
    /// Ejected by passive detection.
    Ejected,
    /// Failing active health checks.
    Down,
}

/// The last active check, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct CheckRecord {
    /// Unix time (seconds) of the last check, 0 if none yet.
    pub at_unix: u64,
    /// Whether it passed.
    pub ok: bool,
    /// The last error seen by a check or a request.
    pub last_error: String,
    /// When it was seen (Unix seconds; 0: never), so a view can show its age and let it fade
    /// once the member is healthy again.
    pub last_error_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Per-member metric handles, resolved once so the request path does no label lookups.
struct MemberMetrics {
    up: IntGauge,
    ejected: IntGauge,
    ejections: IntCounter,
    active: IntGauge,
    /// `carousel_connect_attempts_total`, by [`Attempt::index`].
    attempts: [IntCounter; Attempt::ALL.len()],
    checks_ok: IntCounter,
    checks_fail: IntCounter,
}

/// One backend of a cluster: an address and port, with weight and priority from SRV.
///
/// `repr(C)`, with what a pick reads first: right behind the `Arc`'s counts (which a pick
/// touches when it hands the member out) come the selection's reads (state, load, weight) and
/// then the caller's (the address). A pick from 1,000 members, which cannot keep them all in
/// the L1 cache, then misses about 1.7 cache lines instead of 3.2 (docs/BENCHMARKS.md).
#[repr(C)]
pub struct Member {
    active: AtomicI64,
    /// Milliseconds since the cluster epoch until which it is ejected; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// Relative share of requests (SRV weight; 1 otherwise).
    pub weight: u32,
    up: AtomicBool,
    retired: AtomicBool,
    trial: AtomicBool,
    checked: AtomicBool,
    /// Where it listens.
    pub addr: SocketAddr,
    /// SRV priority: lower is preferred.
    pub priority: u16,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    last_unejected_ms: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// The owning cluster's name, for metrics and logs.
    pub cluster: String,
    record: Mutex<CheckRecord>,
    down: tokio::sync::watch::Sender<bool>,
    m: MemberMetrics,
}

impl Member {
    fn count(&self, a: Attempt) {
        self.m.attempts[a.index()].inc();
    }

    /// A new member, up until a check says otherwise (so discovery never delays traffic).
    pub fn new(cluster: &str, addr: SocketAddr, weight: u32, priority: u16) -> Self {
        let mm = metrics();
        let member = addr.to_string();
        let l = [cluster, member.as_str()];
        let attempt = |r: &str| {
            mm.connect_attempts
                .with_label_values(&[cluster, &member, r])
        };
        let m = MemberMetrics {
            up: mm.member_up.with_label_values(&l),
            ejected: mm.member_ejected.with_label_values(&l),
            ejections: mm.member_ejections.with_label_values(&l),
            active: mm.member_active.with_label_values(&l),
            attempts: Attempt::ALL.map(|a| attempt(a.as_str())),
            checks_ok: mm
                .health_checks
                .with_label_values(&[cluster, &member, "ok"]),
            checks_fail: mm
                .health_checks
                .with_label_values(&[cluster, &member, "fail"]),
        };
        m.up.set(1);
        m.ejected.set(0);
        Self {
            addr,
            weight: weight.max(1),
            priority,
            cluster: cluster.to_string(),
            up: AtomicBool::new(true),
            checked: AtomicBool::new(false),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_unejected_ms: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            active: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            record: Mutex::new(CheckRecord::default()),
            down: tokio::sync::watch::channel(false).0,
            m,
        }
    }

    /// Whether requests may use it now (`now_ms`: milliseconds on the cluster clock).
    /// Whether requests may be sent to it now: up, not ejected, not retired. The one
    /// definition the rotation, the DNS responder, the state gauges, `/status` and the plugin
    /// all use (a half-open member is not usable: only its one claimed trial goes to it).
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.is_retired() && self.availability(now_ms) == Availability::Healthy
    }

    /// Where it stands in its state machine now.
    pub fn availability(&self, now_ms: u64) -> Availability {
        if !self.up.load(Ordering::Relaxed) {
            return Availability::Down;
        }
        match self.ejected_until_ms.load(Ordering::Relaxed) {
            0 => Availability::Healthy,
            until if now_ms < until => Availability::Ejected,
            _ => Availability::HalfOpen,
        }
    }

    /// Claims the single half-open trial; false if another request already holds it.
    pub fn try_claim_trial(&self) -> bool {
        !self.trial.swap(true, Ordering::AcqRel)
    }

    /// Whether active checks currently pass.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether it has been checked at least once.
    pub fn was_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    /// Open connections through carousel.
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent and connect failures, since discovery.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Times ejected so far (drives the back-off).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Milliseconds (cluster clock) until which it is ejected, 0 if not.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// The last check, for `/status`.
    pub fn record(&self) -> CheckRecord {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Marks it removed from the cluster: its check loop stops and it takes no new requests.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether it was removed from the cluster.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Counts a connection opened through it; the guard counts it closed.
    pub fn open_connection(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.m.active.inc();
        ActiveGuard(self.clone())
    }

    /// A request connected: passive state resets, a half-open trial ends the ejection. Returns
    /// whether it came back into service (the cluster then rebuilds its rotation).
    pub fn report_success(&self, now_ms: u64) -> bool {
        self.count(Attempt::Ok);
        self.succeeded(now_ms)
    }

    /// An attempt a race left behind connected after all (closed at once): slow, not dead, so it
    /// counts as a success for its health (`result="abandoned_late"`).
    pub fn report_late_success(&self, now_ms: u64) -> bool {
        self.count(Attempt::AbandonedLate);
        self.succeeded(now_ms)
    }

    fn succeeded(&self, now_ms: u64) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.trial.swap(false, Ordering::AcqRel)
            || self.ejected_until_ms.load(Ordering::Relaxed) != 0
        {
            return self.unejected_now(Some(now_ms));
        }
        false
    }

    /// An attempt raced against another that connected first: neither a success nor a failure
    /// for its health. A half-open trial it held is given back, so another request may make it.
    pub fn report_abandoned(&self) {
        self.count(Attempt::Abandoned);
        if self.availability(super::now_ms()) == Availability::HalfOpen {
            self.trial.store(false, Ordering::Release);
        }
    }

    /// A request failed to connect (`result`: refused, timeout, unreachable, error, or a watched
    /// attempt's timeout). Ejects after
    /// `consecutive_failures`, or at once when a half-open trial fails; `may_eject` says whether
    /// the cluster's ejection budget (`max_ejection_percent`) allows another ejection. Returns
    /// whether it left service.
    pub fn report_failure(
        &self,
        result: Attempt,
        error: &str,
        outlier: &OutlierSection,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.count(result);
        if let Ok(mut r) = self.record.lock() {
            r.last_error = error.to_string();
            r.last_error_unix = unix_now();
        }
        let was_trial = self.trial.swap(false, Ordering::AcqRel);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let ejected = self.ejected_until_ms.load(Ordering::Relaxed);
        if was_trial || (ejected == 0 && n >= outlier.consecutive_failures.max(1) && may_eject()) {
            self.eject(outlier, now_ms);
            return ejected == 0;
        }
        false
    }

    fn eject(&self, outlier: &OutlierSection, now_ms: u64) {
        // A member that stayed in service for a whole max ejection starts its back-off afresh.
        let calm = now_ms.saturating_sub(self.last_unejected_ms.load(Ordering::Relaxed));
        if self.ejected_until_ms.load(Ordering::Relaxed) == 0
            && calm > millis(outlier.max_ejection)
            && self.last_unejected_ms.load(Ordering::Relaxed) != 0
        {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(30);
        let len = millis(outlier.base_ejection)
            .saturating_mul(1u64 << k)
            .min(millis(outlier.max_ejection));
        self.ejected_until_ms
            .store(now_ms + len.max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.m.ejected.set(1);
        self.m.ejections.inc();
        tracing::warn!(cluster = %self.cluster, member = %self.addr, ejection_ms = len, "member ejected");
    }

    fn unejected_now(&self, now_ms: Option<u64>) -> bool {
        if self.ejected_until_ms.swap(0, Ordering::Relaxed) != 0 {
            if let Some(now) = now_ms {
                self.last_unejected_ms.store(now, Ordering::Relaxed);
            }
            self.m.ejected.set(0);
            tracing::info!(cluster = %self.cluster, member = %self.addr, "member back in service");
            return true;
        }
        false
    }

    /// Applies one active check result with rise/fall hysteresis; a pass also ends an ejection.
    /// Returns whether the member's state changed (up, down, or back from an ejection).
    pub fn report_check(&self, ok: bool, error: &str, rise: u32, fall: u32, now_ms: u64) -> bool {
        let mut changed = false;
        let first = !self.checked.swap(true, Ordering::Relaxed);
        if let Ok(mut r) = self.record.lock() {
            r.at_unix = unix_now();
            r.ok = ok;
            if !ok {
                r.last_error = error.to_string();
                r.last_error_unix = r.at_unix;
            }
        }
        if ok {
            self.m.checks_ok.inc();
            self.fail_streak.store(0, Ordering::Relaxed);
            let n = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.up.load(Ordering::Relaxed) && n >= rise {
                self.up.store(true, Ordering::Relaxed);
                self.m.up.set(1);
                changed = true;
                tracing::info!(cluster = %self.cluster, member = %self.addr, "member up");
            }
            if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                changed |= self.unejected_now(Some(now_ms));
            }
        } else {
            self.m.checks_fail.inc();
            self.ok_streak.store(0, Ordering::Relaxed);
            let n = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            // The very first check decides at once: a member that is down at discovery
            // should not wait `fall` intervals before being skipped.
            if self.up.load(Ordering::Relaxed) && (n >= fall || first) {
                self.up.store(false, Ordering::Relaxed);
                self.m.up.set(0);
                changed = true;
                let _ = self.down.send_replace(true);
                tracing::warn!(cluster = %self.cluster, member = %self.addr, error, "member down");
            }
        }
        if changed && self.up.load(Ordering::Relaxed) {
            let _ = self.down.send_replace(false);
        }
        changed
    }

    /// Watches the active-check state: `true` while the checks mark the member down. Tunnels to
    /// it close on `true` when its cluster is set to `on_member_down = "close_tunnels"`.
    pub fn watch_down(&self) -> tokio::sync::watch::Receiver<bool> {
        self.down.subscribe()
    }

    /// Drops this member's per-member metric series (after removal from the cluster).
    pub fn forget_metrics(&self) {
        let mm = metrics();
        let member = self.addr.to_string();
        let l = [self.cluster.as_str(), member.as_str()];
        let _ = mm.member_up.remove_label_values(&l);
        let _ = mm.member_ejected.remove_label_values(&l);
        let _ = mm.member_active.remove_label_values(&l);
    }
}

/// Holds one open connection's place in a member's active count.
pub struct ActiveGuard(std::sync::Arc<Member>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.m.active.dec();
    }
}

/// A configured length in the whole milliseconds the member's clock counts in.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier() -> OutlierSection {
        OutlierSection {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(1000),
            max_ejection_percent: 100,
        }
    }

    #[test]
    fn ejection_backs_off_and_half_open_trial_decides() {
        let m = Member::new("t", "127.0.0.1:1".parse().unwrap(), 1, 0);
        let o = outlier();
        m.report_failure(Attempt::Refused, "x", &o, 0, || true);
        assert_eq!(m.availability(0), Availability::Healthy);
        m.report_failure(Attempt::Refused, "x", &o, 0, || true);
        assert_eq!(m.availability(50), Availability::Ejected);
        assert_eq!(m.ejected_until_ms(), 100);
        // Ejection over: half-open, and only one trial at a time.
        assert_eq!(m.availability(100), Availability::HalfOpen);
        assert!(m.try_claim_trial());
        assert!(!m.try_claim_trial());
        // The trial fails: ejected again for twice as long.
        m.report_failure(Attempt::Refused, "x", &o, 100, || true);
        assert_eq!(m.ejected_until_ms(), 300);
        assert!(m.try_claim_trial());
        m.report_failure(Attempt::Refused, "x", &o, 300, || true);
        assert_eq!(m.ejected_until_ms(), 700);
        // A successful trial ends it.
        assert!(m.try_claim_trial());
        m.report_success(700);
        assert_eq!(m.availability(700), Availability::Healthy);
        assert_eq!(m.ejections(), 3);
    }

    #[test]
    fn ejection_budget_is_respected() {
        let m = Member::new("t", "127.0.0.1:2".parse().unwrap(), 1, 0);
        let o = outlier();
        for _ in 0..5 {
            m.report_failure(Attempt::Refused, "x", &o, 0, || false);
        }
        assert_eq!(m.availability(0), Availability::Healthy);
    }

    #[test]
    fn rise_and_fall_hysteresis() {
        let m = Member::new("t", "127.0.0.1:3".parse().unwrap(), 1, 0);
        m.report_check(true, "", 2, 2, 0);
        m.report_check(false, "e", 2, 2, 0);
        assert!(
            m.is_up(),
            "one failure after a pass is not enough with fall = 2"
        );
        m.report_check(false, "e", 2, 2, 0);
        assert!(!m.is_up());
        m.report_check(true, "", 2, 2, 0);
        assert!(!m.is_up());
        m.report_check(true, "", 2, 2, 0);
        assert!(m.is_up());
    }

    #[test]
    fn first_failed_check_marks_down_at_once() {
        let m = Member::new("t", "127.0.0.1:4".parse().unwrap(), 1, 0);
        m.report_check(false, "refused", 2, 3, 0);
        assert!(!m.is_up());
    }

    #[test]
    fn passing_check_ends_an_ejection() {
        let m = Member::new("t", "127.0.0.1:5".parse().unwrap(), 1, 0);
        let o = outlier();
        m.report_failure(Attempt::Refused, "x", &o, 0, || true);
        m.report_failure(Attempt::Refused, "x", &o, 0, || true);
        assert_eq!(m.availability(10), Availability::Ejected);
        m.report_check(true, "", 2, 2, 10);
        assert_eq!(m.availability(10), Availability::Healthy);
    }
}
