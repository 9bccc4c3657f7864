//! Choosing members for one request: a lazy iterator over a pool's members in this request's
//! order, healthy ones only, falling back to every member (panic mode) when none is healthy.
//!
//! The first pick costs one atomic increment and, when most members are healthy, a probe or two;
//! it does not depend on the number of members. Later picks (try-next) are computed only when a
//! connect actually fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::member::{Availability, Member};
use crate::config::Selection as Mode;

/// Members sharing one SRV priority, laid out on a weighted wheel.
struct Level {
    /// Member indices, each repeated by its (normalised) weight, interleaved smoothly.
    wheel: Box<[u32]>,
    counter: AtomicUsize,
}

/// The members one request on one port may use, immutable once built (health is in the members).
pub struct Pool {
    /// Every member, lowest priority value (most preferred) first.
    pub members: Vec<Arc<Member>>,
    levels: Vec<Level>,
}

/// Largest wheel built for one priority level; weights are scaled down to fit.
const MAX_WHEEL: u64 = 10_000;

impl Pool {
    /// Builds the pool; the wheel is laid out here, never on the request path.
    pub fn new(mut members: Vec<Arc<Member>>) -> Self {
        members.sort_by_key(|m| m.priority);
        let mut levels = Vec::new();
        let mut i = 0;
        while i < members.len() {
            let p = members[i].priority;
            let j = members[i..]
                .iter()
                .position(|m| m.priority != p)
                .map_or(members.len(), |k| i + k);
            let weights: Vec<u64> = members[i..j].iter().map(|m| u64::from(m.weight)).collect();
            let wheel = smooth_wheel(&weights)
                .into_iter()
                .map(|k| (i + k) as u32)
                .collect();
            levels.push(Level {
                wheel,
                counter: AtomicUsize::new(0),
            });
            i = j;
        }
        Self { members, levels }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// This request's candidates, lazily; `now_ms` is the cluster clock.
    pub fn select(self: &Arc<Self>, mode: Mode, now_ms: u64) -> Selection {
        Selection {
            pool: self.clone(),
            mode,
            now_ms,
            phase: Phase::Healthy,
            level: 0,
            start: None,
            pos: 0,
            yielded: [0; MAX_YIELD],
            n: 0,
            panic: false,
        }
    }
}

/// Weighted wheel with the heaviest members spread out ("smooth weighted round robin").
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
    Healthy,
    Panic,
    Done,
}

/// One request's candidates in order; see the module docs.
pub struct Selection {
    pool: Arc<Pool>,
    mode: Mode,
    now_ms: u64,
    phase: Phase,
    level: usize,
    start: Option<usize>,
    pos: usize,
    yielded: [u32; MAX_YIELD],
    n: usize,
    panic: bool,
}

impl Selection {
    /// True once the selection fell back to trying every member because none was healthy.
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

    /// The next member of the current level in rotation that is usable, claiming a half-open
    /// trial if that is what it finds.
    fn next_healthy(&mut self) -> Option<u32> {
        while self.level < self.pool.levels.len() {
            let lv = &self.pool.levels[self.level];
            let start = *self
                .start
                .get_or_insert_with(|| lv.counter.fetch_add(1, Ordering::Relaxed));
            while self.pos < lv.wheel.len() {
                let idx = lv.wheel[(start + self.pos) % lv.wheel.len()];
                self.pos += 1;
                if self.seen(idx) {
                    continue;
                }
                let m = &self.pool.members[idx as usize];
                match m.availability(self.now_ms) {
                    Availability::Healthy => return Some(idx),
                    Availability::HalfOpen if m.try_claim_trial() => return Some(idx),
                    _ => {}
                }
            }
            self.level += 1;
            self.start = None;
            self.pos = 0;
        }
        None
    }

    /// For least-connections and power-of-two: the preferred first member, if any is healthy.
    fn preferred(&mut self) -> Option<u32> {
        let load = |m: &Member| (m.active().max(0) as u64 * 1000) / u64::from(m.weight);
        match self.mode {
            Mode::RoundRobin => None,
            Mode::RandomTwo => {
                let lv = self.pool.levels.first()?;
                let a = lv.wheel[fastrand::usize(..lv.wheel.len())];
                let b = lv.wheel[fastrand::usize(..lv.wheel.len())];
                let ok = |i: u32| {
                    self.pool.members[i as usize].availability(self.now_ms) == Availability::Healthy
                };
                match (ok(a), ok(b)) {
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
                // The least loaded of the next few healthy members in rotation: bounded work.
                let lv = self.pool.levels.first()?;
                let start = *self
                    .start
                    .get_or_insert_with(|| lv.counter.fetch_add(1, Ordering::Relaxed));
                let mut best: Option<(u64, u32)> = None;
                let mut looked = 0;
                for step in 0..lv.wheel.len().min(64) {
                    let idx = lv.wheel[(start + step) % lv.wheel.len()];
                    let m = &self.pool.members[idx as usize];
                    if m.availability(self.now_ms) != Availability::Healthy {
                        continue;
                    }
                    let l = load(m);
                    if best.is_none_or(|(bl, _)| l < bl) {
                        best = Some((l, idx));
                    }
                    looked += 1;
                    if looked == 4 {
                        break;
                    }
                }
                best.map(|(_, i)| i)
            }
        }
    }
}

impl Iterator for Selection {
    type Item = Arc<Member>;

    fn next(&mut self) -> Option<Arc<Member>> {
        loop {
            match self.phase {
                Phase::Healthy => {
                    if self.n == 0 {
                        if let Some(idx) = self.preferred() {
                            return self.take(idx);
                        }
                    }
                    if let Some(idx) = self.next_healthy() {
                        return self.take(idx);
                    }
                    if self.n > 0 {
                        self.phase = Phase::Done;
                        continue;
                    }
                    // Nothing healthy: try every member rather than fail fast.
                    self.phase = Phase::Panic;
                    self.panic = true;
                    self.pos = 0;
                    self.start = Some(
                        self.pool
                            .levels
                            .first()
                            .map_or(0, |l| l.counter.load(Ordering::Relaxed)),
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
        Arc::new(Pool::new(members))
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
        let h = firsts(&p, Mode::RoundRobin, 90);
        assert_eq!(h.get("127.0.0.2:80"), None);
        assert_eq!(h.values().sum::<usize>(), 90);
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
        let mut s = p.select(Mode::RoundRobin, 0);
        let got: Vec<_> = s.by_ref().collect();
        assert_eq!(got.len(), 2);
        assert!(s.is_panic());
    }

    #[test]
    fn ejected_members_are_skipped_and_one_trial_follows() {
        let p = pool(&[(1, 0), (1, 0), (1, 0)]);
        let o = OutlierSection {
            consecutive_failures: 1,
            base_ejection_ms: 100,
            max_ejection_ms: 1000,
            max_ejection_percent: 100,
        };
        p.members[0].report_failure("refused", "x", &o, 0, || true);
        let h = firsts(&p, Mode::RoundRobin, 30);
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
        let h = firsts(&p, Mode::RandomTwo, 300);
        assert!(h.get("127.0.0.3:80").copied().unwrap_or(0) > 150, "{h:?}");
    }
}
