//! Choosing members for one request: a lazy iterator over a pool's members in this request's
//! order, usable ones only, falling back to every member (panic mode) when none is usable.
//!
//! The rotation runs over the members that are usable now, not over the full set skipping the
//! others: skipping hands a dead member's whole share to the member after it on the wheel, so two
//! survivors of three would get one third and two thirds. Health changes are rare, so on each one
//! the cluster rebuilds the pool's usable wheels (weighted, per SRV priority) off the request path
//! and swaps them in, as HAProxy rebuilds its map on a state change. The first pick costs one
//! atomic increment and a load, whatever the number of members. Later picks (try-next, and the
//! race against a stalled first pick) are computed only when a connect fails or stalls, and are
//! drawn from the rotation again: each level has a second, failover counter, and a request's
//! failover starts at that counter's next turn over the members it has not tried yet. So the
//! share of a member that fails before anything has noticed goes to all the others evenly, not
//! to its successor on the wheel (3 members, one blackholed: 30/30 instead of 40/20). Ejected
//! members wait in a short list of their own: when an ejection ends, the first request claims
//! the one half-open trial.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::member::{Availability, Member};
use crate::config::Selection as Mode;

/// Members sharing one SRV priority: the rotation counter, which outlives every rebuild of the
/// usable wheels so a health change does not restart the rotation.
struct Level {
    /// Where the members of this level start in `Pool::members`.
    first: usize,
    /// How many members it has.
    len: usize,
    counter: AtomicUsize,
    /// Where failovers start: one turn per request that fails over in this level.
    failover: AtomicUsize,
}

/// The usable members of each level, laid out on weighted wheels; rebuilt on health changes.
#[derive(Default)]
struct Usable {
    /// Per level: member indices, each repeated by its (normalised) weight, interleaved smoothly.
    wheels: Vec<Box<[u32]>>,
    /// Ejected members (up by the active checks): each may become a half-open trial.
    ejected: Box<[u32]>,
}

/// The members one request on one port may use. The member list is immutable once built; what
/// changes with health is the usable snapshot.
pub struct Pool {
    /// Every member, lowest priority value (most preferred) first.
    pub members: Vec<Arc<Member>>,
    levels: Vec<Level>,
    usable: ArcSwap<Usable>,
}

/// Largest wheel built for one priority level; weights are scaled down to fit.
const MAX_WHEEL: u64 = 10_000;

impl Pool {
    /// Builds the pool and its usable wheels from the members' health now.
    pub fn new(mut members: Vec<Arc<Member>>, now_ms: u64) -> Self {
        members.sort_by_key(|m| m.priority);
        let mut levels = Vec::new();
        let mut i = 0;
        while i < members.len() {
            let p = members[i].priority;
            let j = members[i..]
                .iter()
                .position(|m| m.priority != p)
                .map_or(members.len(), |k| i + k);
            levels.push(Level {
                first: i,
                len: j - i,
                counter: AtomicUsize::new(0),
                failover: AtomicUsize::new(0),
            });
            i = j;
        }
        let pool = Self {
            members,
            levels,
            usable: ArcSwap::from_pointee(Usable::default()),
        };
        pool.refresh(now_ms);
        pool
    }

    /// Rebuilds the usable wheels from the members' health at `now_ms` (after a health change).
    pub fn refresh(&self, now_ms: u64) {
        let mut wheels = Vec::with_capacity(self.levels.len());
        let mut ejected = Vec::new();
        for lv in &self.levels {
            let mut idx = Vec::new();
            let mut weights = Vec::new();
            for k in lv.first..lv.first + lv.len {
                let m = &self.members[k];
                if m.is_retired() {
                    continue;
                }
                match m.availability(now_ms) {
                    Availability::Healthy => {
                        idx.push(k as u32);
                        weights.push(u64::from(m.weight));
                    }
                    Availability::Ejected | Availability::HalfOpen => ejected.push(k as u32),
                    Availability::Down => {}
                }
            }
            wheels.push(
                smooth_wheel(&weights)
                    .into_iter()
                    .map(|w| idx[w])
                    .collect::<Box<[u32]>>(),
            );
        }
        self.usable.store(Arc::new(Usable {
            wheels,
            ejected: ejected.into(),
        }));
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many members are in the rotation now (usable, not counting half-open trials).
    pub fn usable(&self) -> usize {
        let u = self.usable.load();
        let mut seen: Vec<u32> = u.wheels.iter().flat_map(|w| w.iter().copied()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// This request's candidates, lazily; `now_ms` is the cluster clock.
    pub fn select(self: &Arc<Self>, mode: Mode, now_ms: u64) -> Picks {
        Picks {
            usable: self.usable.load_full(),
            pool: self.clone(),
            mode,
            now_ms,
            phase: Phase::Trial,
            level: 0,
            start: None,
            pos: 0,
            rest: Vec::new(),
            rest_level: None,
            yielded: [0; MAX_YIELD],
            n: 0,
            panic: false,
            prefer: None,
        }
    }
}

/// Weighted wheel with the heaviest members spread out ("smooth weighted round robin"); entries
/// are indices into `weights`.
fn smooth_wheel(weights: &[u64]) -> Vec<usize> {
    if weights.iter().all(|&w| w == weights[0]) {
        return (0..weights.len()).collect();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| (x / g).max(1)).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_WHEEL.max(weights.len() as u64) {
        for x in &mut w {
            *x = (*x * MAX_WHEEL / sum).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for k in 0..w.len() {
            current[k] += w[k] as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Most candidates one selection hands out (bounded by the dial's max attempts anyway).
const MAX_YIELD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Trial,
    Usable,
    Panic,
    Done,
}

/// One request's candidates in order; see the module docs.
pub struct Picks {
    pool: Arc<Pool>,
    usable: Arc<Usable>,
    mode: Mode,
    now_ms: u64,
    phase: Phase,
    level: usize,
    start: Option<usize>,
    pos: usize,
    /// A failover's order: the untried members of `rest_level`'s wheel, starting at the level's
    /// failover turn (weighted entries kept), consumed from `pos`.
    rest: Vec<u32>,
    rest_level: Option<usize>,
    yielded: [u32; MAX_YIELD],
    n: usize,
    panic: bool,
    /// The address family the next failover pick should have, if the caller said.
    prefer: Option<bool>,
}

impl Picks {
    /// The next candidate, of family `v4` if the level has an untried member of it (address
    /// families alternate after the first pick, RFC 8305 §4).
    pub fn next_preferring(&mut self, v4: bool) -> Option<Arc<Member>> {
        self.prefer = Some(v4);
        let m = self.next();
        self.prefer = None;
        m
    }

    /// True once the selection fell back to trying every member because none was usable.
    pub fn is_panic(&self) -> bool {
        self.panic
    }

    fn seen(&self, idx: u32) -> bool {
        self.yielded[..self.n].contains(&idx)
    }

    fn take(&mut self, idx: u32) -> Option<Arc<Member>> {
        if self.n < MAX_YIELD {
            self.yielded[self.n] = idx;
            self.n += 1;
        }
        Some(self.pool.members[idx as usize].clone())
    }

    fn healthy(&self, idx: u32) -> bool {
        self.pool.members[idx as usize].usable(self.now_ms)
    }

    /// An ejected member whose ejection is over, claimed as this request's half-open trial.
    fn trial(&self) -> Option<u32> {
        self.usable.ejected.iter().copied().find(|&i| {
            let m = &self.pool.members[i as usize];
            m.availability(self.now_ms) == Availability::HalfOpen && m.try_claim_trial()
        })
    }

    /// The next usable member, level by level (a lower SRV priority only when every member of
    /// the preferred one was tried): the rotation's pick if this request has none yet, else a
    /// failover pick (see the module docs), of family `v4` when `prefer` names one and the level
    /// still has an untried member of it.
    fn next_usable(&mut self, prefer: Option<bool>) -> Option<u32> {
        // A second handle on the snapshot, not a copy of the wheel: a pick stays O(1).
        let usable = self.usable.clone();
        while self.level < usable.wheels.len() {
            let wheel = &usable.wheels[self.level];
            if !wheel.is_empty() {
                if self.n == 0 {
                    let counter = &self.pool.levels[self.level].counter;
                    let start = counter.fetch_add(1, Ordering::Relaxed);
                    for step in 0..wheel.len() {
                        let idx = wheel[(start + step) % wheel.len()];
                        // The snapshot may trail a change by a moment: check the member itself.
                        if self.healthy(idx) {
                            return Some(idx);
                        }
                    }
                } else if let Some(idx) = self.failover_pick(wheel, prefer) {
                    return Some(idx);
                }
            }
            self.level += 1;
            self.pos = 0;
        }
        None
    }

    /// A failover pick from the current level (see [`Picks::next_usable`]).
    fn failover_pick(&mut self, wheel: &[u32], prefer: Option<bool>) -> Option<u32> {
        if self.rest_level != Some(self.level) {
            // This request's first failover in this level: one turn of the level's failover
            // counter orders the members it has not tried yet.
            self.rest_level = Some(self.level);
            self.pos = 0;
            let untried: Vec<u32> = wheel.iter().copied().filter(|&i| !self.seen(i)).collect();
            let turn = if untried.is_empty() {
                0
            } else {
                self.pool.levels[self.level]
                    .failover
                    .fetch_add(1, Ordering::Relaxed)
                    % untried.len()
            };
            self.rest = untried[turn..]
                .iter()
                .chain(&untried[..turn])
                .copied()
                .collect();
        }
        // Entries taken already (weighted members repeat) or no longer healthy are passed over.
        while self.pos < self.rest.len()
            && (self.seen(self.rest[self.pos]) || !self.healthy(self.rest[self.pos]))
        {
            self.pos += 1;
        }
        let ahead = |i: &u32| !self.seen(*i) && self.healthy(*i);
        let wanted = prefer.and_then(|v4| {
            self.rest[self.pos..]
                .iter()
                .copied()
                .find(|i| ahead(i) && self.pool.members[*i as usize].addr.is_ipv4() == v4)
        });
        if let Some(idx) = wanted {
            return Some(idx);
        }
        let here = *self.rest.get(self.pos)?;
        // Least connections and random two keep their rules among the rest.
        let load = |i: u32| {
            let m = &self.pool.members[i as usize];
            (m.active().max(0) as u64 * 1000) / u64::from(m.weight)
        };
        let pick = match self.mode {
            Mode::RoundRobin => here,
            Mode::LeastConnections => self.rest[self.pos..]
                .iter()
                .copied()
                .filter(ahead)
                .take(4)
                .min_by_key(|&i| load(i))
                .unwrap_or(here),
            Mode::RandomTwo => {
                let other = self.rest[self.pos + fastrand::usize(..self.rest.len() - self.pos)];
                if ahead(&other) && load(other) < load(here) {
                    other
                } else {
                    here
                }
            }
        };
        Some(pick)
    }

    /// For least-connections and power-of-two: the preferred first member among the usable ones
    /// of the most preferred level that has any.
    fn preferred(&mut self) -> Option<u32> {
        if self.mode == Mode::RoundRobin {
            return None;
        }
        let load = |m: &Member| (m.active().max(0) as u64 * 1000) / u64::from(m.weight);
        // A second handle on the snapshot (not a copy of the wheel: a pick stays O(1)).
        let usable = self.usable.clone();
        let (level, wheel) = usable
            .wheels
            .iter()
            .enumerate()
            .find(|(_, w)| !w.is_empty())?;
        match self.mode {
            Mode::RoundRobin => None,
            Mode::RandomTwo => {
                // Two choices: the next in rotation and a random one; the less loaded wins, a tie
                // goes to the rotation, so idle members still share requests exactly evenly.
                let counter = &self.pool.levels[level].counter;
                let a = wheel[counter.fetch_add(1, Ordering::Relaxed) % wheel.len()];
                let b = wheel[fastrand::usize(..wheel.len())];
                match (self.healthy(a), self.healthy(b)) {
                    (true, true) => {
                        let (ma, mb) = (
                            &self.pool.members[a as usize],
                            &self.pool.members[b as usize],
                        );
                        Some(if load(mb) < load(ma) { b } else { a })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => None,
                }
            }
            Mode::LeastConnections => {
                // The least loaded of the next few usable members in rotation: bounded work.
                let counter = &self.pool.levels[level].counter;
                let start = counter.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(u64, u32)> = None;
                for step in 0..wheel.len().min(4) {
                    let idx = wheel[(start + step) % wheel.len()];
                    if !self.healthy(idx) {
                        continue;
                    }
                    let l = load(&self.pool.members[idx as usize]);
                    if best.is_none_or(|(bl, _)| l < bl) {
                        best = Some((l, idx));
                    }
                }
                best.map(|(_, i)| i)
            }
        }
    }
}

impl Iterator for Picks {
    type Item = Arc<Member>;

    fn next(&mut self) -> Option<Arc<Member>> {
        loop {
            match self.phase {
                Phase::Trial => {
                    self.phase = Phase::Usable;
                    if let Some(idx) = self.trial() {
                        return self.take(idx);
                    }
                    if let Some(idx) = self.preferred() {
                        return self.take(idx);
                    }
                }
                Phase::Usable => {
                    let prefer = self.prefer.take();
                    if let Some(idx) = self.next_usable(prefer) {
                        return self.take(idx);
                    }
                    if self.n > 0 {
                        self.phase = Phase::Done;
                        continue;
                    }
                    // Nothing usable: try every member rather than fail fast.
                    self.phase = Phase::Panic;
                    self.panic = true;
                    self.pos = 0;
                    // Rotate in panic mode too: every member shares the load of the trial.
                    self.start = Some(
                        self.pool
                            .levels
                            .first()
                            .map_or(0, |l| l.counter.fetch_add(1, Ordering::Relaxed)),
                    );
                }
                Phase::Panic => {
                    let len = self.pool.members.len();
                    let start = self.start.unwrap_or(0);
                    while self.pos < len {
                        let idx = ((start + self.pos) % len) as u32;
                        self.pos += 1;
                        if !self.seen(idx) && !self.pool.members[idx as usize].is_retired() {
                            return self.take(idx);
                        }
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutlierSection;
    use std::collections::HashMap;

    fn pool(weights: &[(u32, u16)]) -> Arc<Pool> {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &(w, p))| {
                Arc::new(Member::new(
                    "t",
                    format!("127.0.0.{}:80", i + 1).parse().unwrap(),
                    w,
                    p,
                ))
            })
            .collect();
        Arc::new(Pool::new(members, 0))
    }

    fn firsts(p: &Arc<Pool>, mode: Mode, n: usize) -> HashMap<String, usize> {
        let mut h = HashMap::new();
        for _ in 0..n {
            let m = p.select(mode, 0).next().unwrap();
            *h.entry(m.addr.to_string()).or_insert(0) += 1;
        }
        h
    }

    #[test]
    fn round_robin_is_even_and_skips_down_members() {
        let p = pool(&[(1, 0), (1, 0), (1, 0)]);
        let h = firsts(&p, Mode::RoundRobin, 90);
        assert!(h.values().all(|&c| c == 30), "{h:?}");
        p.members[1].report_check(false, "x", 1, 1, 0);
        p.refresh(0);
        let h = firsts(&p, Mode::RoundRobin, 90);
        assert_eq!(h.get("127.0.0.2:80"), None);
        assert_eq!(h.get("127.0.0.1:80"), Some(&45), "{h:?}");
        assert_eq!(h.get("127.0.0.3:80"), Some(&45), "{h:?}");
    }

    #[test]
    fn survivors_share_evenly_for_every_k_and_mode() {
        let p = pool(&[(1, 0); 10]);
        for dead in 0..10 {
            let k = 10 - dead;
            for mode in [Mode::RoundRobin, Mode::LeastConnections, Mode::RandomTwo] {
                let n = 30 * k;
                let h = firsts(&p, mode, n);
                assert_eq!(h.len(), k, "{mode:?} with {k} usable: {h:?}");
                assert!(
                    h.values().all(|&c| c == 30),
                    "{mode:?} with {k} usable: {h:?}"
                );
            }
            if dead < 9 {
                p.members[dead].report_check(false, "x", 1, 1, 0);
                p.refresh(0);
            }
        }
    }

    /// Issue 20: a member that stalls or fails before anything noticed (still usable): the
    /// request whose first pick it is takes its second from the level's failover turns, so its
    /// share goes to every survivor evenly. The first pick's successor (before) gave 40/20.
    #[test]
    fn a_failing_first_picks_share_spreads_evenly_in_every_mode() {
        for (n, dead) in [(3usize, 2usize), (4, 1), (5, 0)] {
            for mode in [Mode::RoundRobin, Mode::LeastConnections, Mode::RandomTwo] {
                let p = pool(&vec![(1, 0); n]);
                let dead_addr = p.members[dead].addr;
                let mut h: HashMap<String, usize> = HashMap::new();
                let requests = 60 * (n - 1);
                for _ in 0..requests {
                    let mut picks = p.select(mode, 0);
                    let mut m = picks.next().unwrap();
                    if m.addr == dead_addr {
                        m = picks.next().unwrap();
                    }
                    *h.entry(m.addr.to_string()).or_insert(0) += 1;
                }
                assert_eq!(h.len(), n - 1, "{mode:?}: {h:?}");
                assert!(h.values().all(|&c| c == 60), "{mode:?}, {n} members: {h:?}");
            }
        }
    }

    #[test]
    fn try_next_continues_in_rotation_order_over_survivors() {
        let p = pool(&[(1, 0); 4]);
        p.members[1].report_check(false, "x", 1, 1, 0);
        p.refresh(0);
        let order: Vec<String> = p
            .select(Mode::RoundRobin, 0)
            .map(|m| m.addr.to_string())
            .collect();
        assert_eq!(order, ["127.0.0.1:80", "127.0.0.3:80", "127.0.0.4:80"]);
        let order: Vec<String> = p
            .select(Mode::RoundRobin, 0)
            .map(|m| m.addr.to_string())
            .collect();
        assert_eq!(order, ["127.0.0.3:80", "127.0.0.4:80", "127.0.0.1:80"]);
    }

    #[test]
    fn weights_hold_among_survivors() {
        // SRV 3:1:1 with one of the "1"s dead: 3:1.
        let p = pool(&[(3, 0), (1, 0), (1, 0)]);
        p.members[2].report_check(false, "x", 1, 1, 0);
        p.refresh(0);
        let h = firsts(&p, Mode::RoundRobin, 400);
        assert_eq!(h["127.0.0.1:80"], 300, "{h:?}");
        assert_eq!(h["127.0.0.2:80"], 100, "{h:?}");
        assert_eq!(h.get("127.0.0.3:80"), None);
    }

    #[test]
    fn weights_and_priorities_are_honoured() {
        let p = pool(&[(3, 0), (1, 0), (5, 1)]);
        let h = firsts(&p, Mode::RoundRobin, 400);
        assert_eq!(h["127.0.0.1:80"], 300);
        assert_eq!(h["127.0.0.2:80"], 100);
        assert_eq!(
            h.get("127.0.0.3:80"),
            None,
            "lower priority unused while the first level is healthy"
        );
        // Try-next falls through to the next priority level.
        let all: Vec<_> = p
            .select(Mode::RoundRobin, 0)
            .map(|m| m.addr.to_string())
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], "127.0.0.3:80");
    }

    #[test]
    fn panic_mode_tries_everyone() {
        let p = pool(&[(1, 0), (1, 0)]);
        for m in &p.members {
            m.report_check(false, "x", 1, 1, 0);
        }
        p.refresh(0);
        let mut s = p.select(Mode::RoundRobin, 0);
        let got: Vec<_> = s.by_ref().collect();
        assert_eq!(got.len(), 2);
        assert!(s.is_panic());
        // And the panic rotation moves on: the next request starts at the other member.
        let next = p.select(Mode::RoundRobin, 0).next().unwrap();
        assert_ne!(next.addr, got[0].addr);
    }

    #[test]
    fn ejected_members_are_skipped_and_one_trial_follows() {
        let p = pool(&[(1, 0), (1, 0), (1, 0)]);
        let o = OutlierSection {
            consecutive_failures: 1,
            base_ejection: std::time::Duration::from_millis(100),
            max_ejection: std::time::Duration::from_millis(1000),
            max_ejection_percent: 100,
        };
        p.members[0].report_failure(crate::outcome::Attempt::Refused, "x", &o, 0, || true);
        p.refresh(0);
        let h = firsts(&p, Mode::RoundRobin, 30);
        assert!(h.values().all(|&c| c == 15), "{h:?}");
        assert_eq!(h.get("127.0.0.1:80"), None);
        // After the ejection: exactly one request gets it as a trial until the trial reports.
        let trials = (0..30)
            .filter(|_| p.select(Mode::RoundRobin, 200).next().unwrap().addr == p.members[0].addr)
            .count();
        assert_eq!(trials, 1);
    }

    #[test]
    fn least_connections_prefers_the_idle_member() {
        let p = pool(&[(1, 0), (1, 0), (1, 0)]);
        let _g1 = p.members[0].open_connection();
        let _g2 = p.members[1].open_connection();
        let h = firsts(&p, Mode::LeastConnections, 30);
        assert_eq!(h.get("127.0.0.3:80"), Some(&30), "{h:?}");
        // Random two: the rotation's pick against a random one. Whatever the draws, the idle
        // member wins every turn of its own (a third) and a loaded one never wins more than its
        // own turns, losing those where the draw is the idle member.
        fastrand::seed(20);
        let h = firsts(&p, Mode::RandomTwo, 300);
        let got = |a: &str| h.get(a).copied().unwrap_or(0);
        assert!(got("127.0.0.3:80") >= 100, "{h:?}");
        assert!(
            got("127.0.0.1:80") <= 100 && got("127.0.0.2:80") <= 100,
            "{h:?}"
        );
        // And the draws are uniform: of the loaded members' 200 turns the idle one takes a third
        // (binomial, 200 × 1/3 = 67 ± 6.7; the seed makes the run repeatable, the bound is 5 σ).
        assert!(
            (100 + 33..=100 + 100).contains(&got("127.0.0.3:80")),
            "{h:?}"
        );
    }
}
