//! Name resolution with per-name address sets, TTL clamping, background refresh and
//! last-known-good answers.
//!
//! hickory-resolver answers one query; it neither rotates nor serves stale. carousel keeps the
//! names it has seen with their whole address sets, refreshes a name in the background before its
//! (clamped) TTL runs out while clients keep asking for it, keeps serving the last good set for a
//! bounded time while refreshes fail, and lets concurrent first requests for a new name share a
//! single lookup. The request path for a name in use therefore never waits on DNS.
//!
//! Clients choose the names, so everything here is bounded: at most `dns.max_names` names are
//! kept (the least recently used go first), a name nobody asked for since its last refresh is not
//! refreshed again (it is looked up anew if it is asked for after its TTL), every lookup (new
//! name or refresh) holds one of `limits.max_concurrent_dns_lookups` slots, which bounds the
//! sockets in flight, and one lookup never takes longer than `dns.timeout_ms × dns.attempts`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio::time::Instant;

use super::client::{Client, ResolveError, SrvTarget};
use crate::config::DnsSection;

/// One answer for one request: the name's addresses and where this request starts in them.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Every address of the name, in the order the nameserver gave them.
    pub addrs: Arc<[IpAddr]>,
    /// This request's turn on the name: successive requests get successive turns, and the
    /// rotation starts at `start % addrs.len()`.
    pub start: usize,
    /// True when the set is past its TTL and served because refreshes fail.
    pub stale: bool,
    /// The name's failover turns: a request whose first address fails or stalls takes the next
    /// one, and starts its other addresses there (so the failed address's share spreads evenly).
    pub failovers: Arc<AtomicUsize>,
}

impl Resolved {
    /// The addresses in this request's rotation order.
    pub fn rotated(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let n = self.addrs.len();
        let first = self.start % n.max(1);
        (0..n).map(move |i| self.addrs[(first + i) % n])
    }
}

/// Timing knobs, taken from `[dns]`.
#[derive(Debug, Clone)]
struct Timing {
    min_ttl: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    stale: Duration,
    idle: Duration,
    max_names: usize,
}

enum State {
    Good {
        addrs: Arc<[IpAddr]>,
        fresh_until: Instant,
        ttl: Duration,
    },
    Failed {
        error: ResolveError,
        until: Instant,
    },
}

struct NameEntry {
    state: ArcSwapOption<State>,
    /// When the last good answer stops being fresh plus the stale window; for `Good` only.
    stale_until: AtomicU64,
    /// Whether the last lookup of a name with a good set failed: only then is the set served
    /// past its TTL (RFC 8767), otherwise an expired set is looked up again.
    failing: AtomicBool,
    counter: AtomicUsize,
    failovers: Arc<AtomicUsize>,
    last_used_ms: AtomicU64,
    /// Whether the name was asked for since its last lookup finished: one that was not is not
    /// refreshed. (A flag, not a comparison of timestamps: a request in the same millisecond as
    /// the lookup counted as a later one.)
    asked_since_lookup: AtomicBool,
    refresher_running: AtomicBool,
    lookup: tokio::sync::Mutex<()>,
}

impl NameEntry {
    fn new() -> Self {
        Self {
            state: ArcSwapOption::empty(),
            stale_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            counter: AtomicUsize::new(0),
            failovers: Arc::new(AtomicUsize::new(0)),
            last_used_ms: AtomicU64::new(0),
            asked_since_lookup: AtomicBool::new(false),
            refresher_running: AtomicBool::new(false),
            lookup: tokio::sync::Mutex::new(()),
        }
    }
}

/// The shared resolver: one per process, used by every listener.
pub struct Resolver {
    client: Client,
    names: DashMap<String, Arc<NameEntry>>,
    timing: Timing,
    epoch: Instant,
    lookup_slots: tokio::sync::Semaphore,
}

impl Resolver {
    /// Builds the resolver from `[dns]`; nameservers empty means the system configuration.
    pub fn new(cfg: &DnsSection, max_lookups: usize) -> Result<Arc<Self>, ResolveError> {
        let client = Client::new(cfg)?;
        Ok(Arc::new(Self {
            client,
            names: DashMap::new(),
            timing: Timing {
                min_ttl: cfg.min_ttl,
                max_ttl: cfg.max_ttl,
                negative_ttl: cfg.negative_ttl,
                stale: cfg.stale,
                idle: cfg.idle,
                max_names: cfg.max_names.max(1),
            },
            epoch: Instant::now(),
            lookup_slots: tokio::sync::Semaphore::new(max_lookups.max(1)),
        }))
    }

    /// How many DNS lookups carousel itself has started (first lookups and refreshes).
    pub fn lookups(&self) -> u64 {
        self.client.lookups()
    }

    /// How many names are currently kept.
    pub fn names(&self) -> usize {
        self.names.len()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The addresses of `name`, rotated one step further than the previous call.
    ///
    /// A name in use answers from memory; only a new (or expired, failed) name waits for DNS, and
    /// concurrent callers for the same name share that one lookup. With every lookup slot taken,
    /// a known name is answered from its last good set while that is servable, and a new one is
    /// refused at once (a flood of random names is refused fast, not queued).
    pub async fn resolve(self: &Arc<Self>, name: &str) -> Result<Resolved, ResolveError> {
        let entry = self.entry(name);
        entry.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        entry.asked_since_lookup.store(true, Ordering::Relaxed);
        if let Some(r) = self.answer_from(&entry, false) {
            return r;
        }
        let _guard = entry.lookup.lock().await;
        if let Some(r) = self.answer_from(&entry, false) {
            return r;
        }
        let Ok(_slot) = self.lookup_slots.try_acquire() else {
            if let Some(r) = self.answer_from(&entry, true) {
                return r;
            }
            crate::metrics::metrics()
                .overload
                .with_label_values(&["dns"])
                .inc();
            return Err(ResolveError::Overloaded);
        };
        self.lookup_into(name, &entry).await;
        self.answer_from(&entry, true).unwrap_or_else(|| {
            Err(ResolveError::Failed {
                name: name.to_string(),
                reason: "no answer".into(),
            })
        })
    }

    /// The entry of `name`, made if new; past `dns.max_names` the least recently used tenth is
    /// forgotten first.
    fn entry(&self, name: &str) -> Arc<NameEntry> {
        if let Some(e) = self.names.get(name) {
            return e.clone();
        }
        if self.names.len() >= self.timing.max_names {
            self.evict_oldest();
        }
        let e = self
            .names
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(NameEntry::new()))
            .clone();
        crate::metrics::metrics()
            .dns_names
            .set(self.names.len() as i64);
        e
    }

    /// Forgets the least recently used tenth of the names (at least one), amortising the scan.
    fn evict_oldest(&self) {
        let mut ages: Vec<u64> = self
            .names
            .iter()
            .map(|e| e.last_used_ms.load(Ordering::Relaxed))
            .collect();
        let n = (self.timing.max_names / 10).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        let (_, cutoff, _) = ages.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let mut removed = 0u64;
        self.names.retain(|_, e| {
            let keep = removed >= n as u64 || e.last_used_ms.load(Ordering::Relaxed) > cutoff;
            if !keep {
                removed += 1;
            }
            keep
        });
        let m = crate::metrics::metrics();
        m.dns_names_evicted.inc_by(removed);
        m.dns_names.set(self.names.len() as i64);
    }

    /// Answers from the stored state if it is usable now; `None` means "look it up". A set past
    /// its TTL is served (within the stale window) only while DNS is failing, or when
    /// `stale_ok` says no lookup can be made now.
    fn answer_from(
        &self,
        entry: &NameEntry,
        stale_ok: bool,
    ) -> Option<Result<Resolved, ResolveError>> {
        let state = entry.state.load_full()?;
        let now = Instant::now();
        match &*state {
            State::Good {
                addrs, fresh_until, ..
            } => {
                let stale = now >= *fresh_until;
                if stale {
                    let servable = self.now_ms() < entry.stale_until.load(Ordering::Relaxed);
                    if !servable || !(stale_ok || entry.failing.load(Ordering::Relaxed)) {
                        return None;
                    }
                    crate::metrics::metrics()
                        .dns_stale
                        .with_label_values(&["name"])
                        .inc();
                }
                let start = entry.counter.fetch_add(1, Ordering::Relaxed);
                Some(Ok(Resolved {
                    addrs: addrs.clone(),
                    start,
                    stale,
                    failovers: entry.failovers.clone(),
                }))
            }
            State::Failed { error, until } => (now < *until).then(|| Err(error.clone())),
        }
    }

    /// One A/AAAA lookup, bypassing the per-name sets: cluster discovery keeps its own state.
    /// Returns the addresses and their TTL (unclamped).
    pub async fn lookup_ips(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.client.ips(name, "cluster").await
    }

    /// One SRV lookup: targets with priority, weight and port, and the TTL (unclamped).
    pub async fn lookup_srv(&self, name: &str) -> Result<(Vec<SrvTarget>, Duration), ResolveError> {
        self.client.srv(name).await
    }

    async fn query(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.client.ips(name, "name").await
    }

    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.timing.min_ttl, self.timing.max_ttl)
    }

    /// Performs a lookup and stores the outcome: a success replaces the set; a failure keeps a
    /// still-servable good set (stale) and otherwise records the error for `negative_ttl`.
    async fn lookup_into(self: &Arc<Self>, name: &str, entry: &Arc<NameEntry>) {
        let result = self.query(name).await;
        entry.asked_since_lookup.store(false, Ordering::Relaxed);
        match result {
            Ok((addrs, ttl)) => {
                let ttl = self.clamp(ttl);
                let now = Instant::now();
                entry.failing.store(false, Ordering::Relaxed);
                entry.stale_until.store(
                    self.now_ms() + (ttl + self.timing.stale).as_millis() as u64,
                    Ordering::Relaxed,
                );
                entry.state.store(Some(Arc::new(State::Good {
                    addrs: addrs.into(),
                    fresh_until: now + ttl,
                    ttl,
                })));
                self.ensure_refresher(name, entry);
            }
            Err(error) => {
                let keep = matches!(entry.state.load().as_deref(), Some(State::Good { .. }))
                    && self.now_ms() < entry.stale_until.load(Ordering::Relaxed);
                entry.failing.store(keep, Ordering::Relaxed);
                if !keep {
                    tracing::debug!(%name, %error, "lookup failed");
                    entry.state.store(Some(Arc::new(State::Failed {
                        error,
                        until: Instant::now() + self.timing.negative_ttl,
                    })));
                    self.forget_failed_later(name, entry);
                } else {
                    tracing::debug!(%name, %error, "refresh failed; serving last good set");
                }
            }
        }
    }

    /// Client-supplied names that fail must not pile up: a failed entry is dropped once its
    /// negative TTL is over (unless a later lookup succeeded meanwhile).
    fn forget_failed_later(self: &Arc<Self>, name: &str, entry: &Arc<NameEntry>) {
        let this = Arc::clone(self);
        let entry = Arc::clone(entry);
        let name = name.to_string();
        let wait = self.timing.negative_ttl + Duration::from_millis(100);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            this.names.remove_if(&name, |_, e| {
                Arc::ptr_eq(e, &entry)
                    && matches!(e.state.load().as_deref(), Some(State::Failed { until, .. }) if Instant::now() >= *until)
            });
        });
    }

    /// Starts the background refresh loop for `name` unless one is running.
    fn ensure_refresher(self: &Arc<Self>, name: &str, entry: &Arc<NameEntry>) {
        if entry.refresher_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        let entry = Arc::clone(entry);
        let name = name.to_string();
        tokio::spawn(async move {
            this.refresh_loop(&name, &entry).await;
            entry.refresher_running.store(false, Ordering::Release);
        });
    }

    async fn refresh_loop(self: &Arc<Self>, name: &str, entry: &Arc<NameEntry>) {
        loop {
            let Some(state) = entry.state.load_full() else {
                return;
            };
            let State::Good {
                fresh_until, ttl, ..
            } = &*state
            else {
                return;
            };
            // Refresh at 80% of the TTL so the new set is in place before the old one expires;
            // once expired (refreshes failing), retry at the negative TTL or sooner.
            let now = Instant::now();
            let wake = if now < *fresh_until {
                (*fresh_until - ttl.mul_f32(0.2)).max(now)
            } else {
                now + self.timing.negative_ttl.min(Duration::from_secs(1))
            };
            tokio::time::sleep_until(wake).await;
            let used = entry.last_used_ms.load(Ordering::Relaxed);
            let idle_ms = self.now_ms().saturating_sub(used);
            if Duration::from_millis(idle_ms) > self.timing.idle {
                self.names.remove_if(name, |_, e| Arc::ptr_eq(e, entry));
                crate::metrics::metrics()
                    .dns_names
                    .set(self.names.len() as i64);
                return;
            }
            // Nobody asked since the last lookup: no background work for it. It stays known, and
            // is looked up again if asked for after its TTL.
            let failing = entry.failing.load(Ordering::Relaxed);
            if !entry.asked_since_lookup.load(Ordering::Relaxed) && !failing {
                return;
            }
            if !self.names.get(name).is_some_and(|e| Arc::ptr_eq(&e, entry)) {
                return; // evicted
            }
            let Ok(_slot) = self.lookup_slots.acquire().await else {
                return;
            };
            let _guard = entry.lookup.lock().await;
            crate::metrics::metrics().dns_refreshes.inc();
            self.lookup_into(name, entry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::dns::DnsServer;

    fn settings(dns: std::net::SocketAddr) -> DnsSection {
        DnsSection {
            nameservers: vec![dns],
            timeout: Duration::from_millis(2000),
            attempts: 1,
            min_ttl: Duration::from_secs(1),
            ..DnsSection::default()
        }
    }

    #[tokio::test]
    async fn lookups_of_new_names_are_bounded() {
        let dns = DnsServer::start().await;
        dns.set_a("a.test", &["127.0.0.11".parse().unwrap()], 30);
        dns.set_a("b.test", &["127.0.0.12".parse().unwrap()], 30);
        dns.set_delay(Duration::from_millis(300));
        let r = Resolver::new(&settings(dns.addr()), 1).unwrap();
        let (a, b) = tokio::join!(r.resolve("a.test"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.resolve("b.test").await
        });
        assert_eq!(
            &*a.unwrap().addrs,
            &["127.0.0.11".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(b, Err(ResolveError::Overloaded)), "{b:?}");
        // Once the first lookup is done the slot is free again.
        assert!(r.resolve("b.test").await.is_ok());
    }

    #[tokio::test]
    async fn failed_names_do_not_pile_up() {
        let dns = DnsServer::start().await;
        let mut cfg = settings(dns.addr());
        cfg.negative_ttl = Duration::from_secs(1);
        let r = Resolver::new(&cfg, 64).unwrap();
        for i in 0..20 {
            assert!(r.resolve(&format!("missing-{i}.test")).await.is_err());
        }
        assert_eq!(r.names(), 20);
        for _ in 0..40 {
            if r.names() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            r.names(),
            0,
            "failed names were kept past their negative TTL"
        );
    }

    #[tokio::test]
    async fn rotation_moves_one_step_per_request() {
        let dns = DnsServer::start().await;
        let ips: Vec<std::net::Ipv4Addr> = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        dns.set_a("r.test", &ips, 30);
        let r = Resolver::new(&settings(dns.addr()), 4).unwrap();
        let firsts: Vec<IpAddr> = futures_first(&r, 6).await;
        assert_eq!(
            firsts[0..3]
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        assert_eq!(firsts[0..3], firsts[3..6]);
    }

    #[tokio::test]
    async fn names_are_bounded_least_recently_used_first() {
        let dns = DnsServer::start().await;
        for i in 0..30 {
            dns.set_a(&format!("n{i}.test"), &["127.0.0.11".parse().unwrap()], 30);
        }
        let mut cfg = settings(dns.addr());
        cfg.max_names = 10;
        let r = Resolver::new(&cfg, 64).unwrap();
        r.resolve("n0.test").await.unwrap();
        for i in 1..30 {
            r.resolve(&format!("n{i}.test")).await.unwrap();
            // n0 stays in use: it is never the least recently used.
            r.resolve("n0.test").await.unwrap();
            assert!(r.names() <= 10, "{} names kept", r.names());
        }
        let before = dns.queries_for("n0.test");
        r.resolve("n0.test").await.unwrap();
        assert_eq!(
            dns.queries_for("n0.test"),
            before,
            "the name in use was evicted"
        );
    }

    async fn futures_first(r: &Arc<Resolver>, n: usize) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(r.resolve("r.test").await.unwrap().rotated().next().unwrap());
        }
        out
    }
}
