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

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use crate::config::{DnsSection, IpStrategy};

/// Why a name has no usable addresses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The nameserver said the name does not exist or has no addresses.
    #[error("{0}: no such host")]
    NotFound(String),
    /// The lookup failed (timeout, SERVFAIL, network).
    #[error("{name}: {reason}")]
    Failed {
        /// The name asked for.
        name: String,
        /// What went wrong, one line.
        reason: String,
    },
    /// Too many lookups for new names are in flight.
    #[error("too many DNS lookups in flight")]
    Overloaded,
    /// The resolver could not be built from the configuration.
    #[error("resolver setup: {0}")]
    Setup(String),
}

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
    /// The most one lookup may take in all (`timeout_ms × attempts`).
    lookup_bound: Duration,
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
    last_used_ms: AtomicU64,
    /// When the last lookup finished (resolver clock): a name not used since is not refreshed.
    looked_up_ms: AtomicU64,
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
            last_used_ms: AtomicU64::new(0),
            looked_up_ms: AtomicU64::new(0),
            refresher_running: AtomicBool::new(false),
            lookup: tokio::sync::Mutex::new(()),
        }
    }
}

/// The shared resolver: one per process, used by every listener.
pub struct Resolver {
    dns: TokioResolver,
    names: DashMap<String, Arc<NameEntry>>,
    timing: Timing,
    epoch: Instant,
    lookups: AtomicU64,
    lookup_slots: tokio::sync::Semaphore,
}

impl Resolver {
    /// Builds the resolver from `[dns]`; nameservers empty means the system configuration.
    pub fn new(cfg: &DnsSection, max_lookups: usize) -> Result<Arc<Self>, ResolveError> {
        let provider = TokioRuntimeProvider::default();
        let (rc, mut opts) = if cfg.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| ResolveError::Setup(e.to_string()))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|sa| nameserver(*sa))
                .collect::<Vec<_>>();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = Duration::from_millis(cfg.timeout_ms);
        opts.attempts = cfg.attempts;
        // carousel keeps its own per-name sets; hickory's cache would hand refreshes an old answer.
        opts.cache_size = 0;
        opts.ip_strategy = match cfg.ip_strategy {
            IpStrategy::Ipv4AndIpv6 => LookupIpStrategy::Ipv4AndIpv6,
            IpStrategy::Ipv4Only => LookupIpStrategy::Ipv4Only,
            IpStrategy::Ipv6Only => LookupIpStrategy::Ipv6Only,
        };
        let mut builder = hickory_resolver::Resolver::builder_with_config(rc, provider);
        *builder.options_mut() = opts;
        let dns = builder
            .build()
            .map_err(|e| ResolveError::Setup(e.to_string()))?;
        Ok(Arc::new(Self {
            dns,
            names: DashMap::new(),
            timing: Timing {
                min_ttl: Duration::from_secs(cfg.min_ttl_seconds),
                max_ttl: Duration::from_secs(cfg.max_ttl_seconds),
                negative_ttl: Duration::from_secs(cfg.negative_ttl_seconds),
                stale: Duration::from_secs(cfg.stale_seconds),
                idle: Duration::from_secs(cfg.idle_seconds),
                lookup_bound: Duration::from_millis(cfg.timeout_ms)
                    .saturating_mul(cfg.attempts.max(1) as u32),
                max_names: cfg.max_names.max(1),
            },
            epoch: Instant::now(),
            lookups: AtomicU64::new(0),
            lookup_slots: tokio::sync::Semaphore::new(max_lookups.max(1)),
        }))
    }

    /// How many DNS lookups carousel itself has started (first lookups and refreshes).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
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
                }))
            }
            State::Failed { error, until } => (now < *until).then(|| Err(error.clone())),
        }
    }

    /// One A/AAAA lookup, bypassing the per-name sets: cluster discovery keeps its own state.
    /// Returns the addresses and their TTL (unclamped).
    pub async fn lookup_ips(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.query_kind(name, "cluster").await
    }

    /// One SRV lookup: targets with priority, weight and port, and the TTL (unclamped).
    /// Targets' addresses come from the additional section when present, else a lookup each.
    pub async fn lookup_srv(&self, name: &str) -> Result<(Vec<SrvTarget>, Duration), ResolveError> {
        use hickory_resolver::proto::rr::RData;
        let started = std::time::Instant::now();
        let fqdn = absolute(name);
        let result = self.dns.srv_lookup(fqdn.as_str()).await;
        observe("cluster", started, &result);
        let lookup = result.map_err(|e| classify(name, e))?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let mut out = Vec::new();
        for rec in lookup.answers() {
            if let RData::SRV(srv) = &rec.data {
                let target = srv.target.to_ascii();
                let mut addrs: Vec<IpAddr> = lookup
                    .additionals()
                    .iter()
                    .filter(|r| r.name.to_ascii().eq_ignore_ascii_case(&target))
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                if addrs.is_empty() {
                    addrs = self
                        .lookup_ips(&target)
                        .await
                        .map(|(a, _)| a)
                        .unwrap_or_default();
                }
                out.push(SrvTarget {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    addrs,
                });
            }
        }
        if out.is_empty() {
            return Err(ResolveError::NotFound(name.to_string()));
        }
        Ok((out, ttl))
    }

    async fn query(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.query_kind(name, "name").await
    }

    async fn query_kind(
        &self,
        name: &str,
        kind: &str,
    ) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let fqdn = absolute(name);
        let in_flight = &crate::metrics::metrics().dns_in_flight;
        in_flight.inc();
        let result =
            tokio::time::timeout(self.timing.lookup_bound, self.dns.lookup_ip(fqdn.as_str())).await;
        in_flight.dec();
        let Ok(result) = result else {
            let m = crate::metrics::metrics();
            m.dns_duration
                .with_label_values(&[kind])
                .observe(started.elapsed().as_secs_f64());
            m.dns_lookups.with_label_values(&[kind, "error"]).inc();
            return Err(ResolveError::Failed {
                name: name.to_string(),
                reason: format!("no answer within {:?}", self.timing.lookup_bound),
            });
        };
        observe(kind, started, &result);
        match result {
            Ok(lookup) => {
                let mut addrs: Vec<IpAddr> = Vec::new();
                for ip in lookup.iter() {
                    if !addrs.contains(&ip) {
                        addrs.push(ip);
                    }
                }
                if addrs.is_empty() {
                    return Err(ResolveError::NotFound(name.to_string()));
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                Ok((addrs, ttl))
            }
            Err(e) => Err(classify(name, e)),
        }
    }

    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.timing.min_ttl, self.timing.max_ttl)
    }

    /// Performs a lookup and stores the outcome: a success replaces the set; a failure keeps a
    /// still-servable good set (stale) and otherwise records the error for `negative_ttl`.
    async fn lookup_into(self: &Arc<Self>, name: &str, entry: &Arc<NameEntry>) {
        let result = self.query(name).await;
        entry.looked_up_ms.store(self.now_ms(), Ordering::Relaxed);
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
            if used < entry.looked_up_ms.load(Ordering::Relaxed) && !failing {
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

/// One SRV target with its addresses.
#[derive(Debug, Clone)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative share within a priority.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The target's addresses.
    pub addrs: Vec<IpAddr>,
}

/// A trailing dot makes the name absolute: no search-domain guessing for a proxy.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn classify(name: &str, e: hickory_resolver::net::NetError) -> ResolveError {
    if e.is_nx_domain() || e.is_no_records_found() {
        ResolveError::NotFound(name.to_string())
    } else {
        ResolveError::Failed {
            name: name.to_string(),
            reason: e
                .to_string()
                .lines()
                .next()
                .unwrap_or("lookup failed")
                .into(),
        }
    }
}

fn observe<T>(
    kind: &str,
    started: std::time::Instant,
    r: &Result<T, hickory_resolver::net::NetError>,
) {
    let m = crate::metrics::metrics();
    m.dns_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    let result = match r {
        Ok(_) => "ok",
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => "nxdomain",
        Err(_) => "error",
    };
    m.dns_lookups.with_label_values(&[kind, result]).inc();
}

impl ResolveError {
    /// Whether the name positively does not exist (as opposed to DNS failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ResolveError::NotFound(_))
    }
}

fn nameserver(sa: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
    for c in &mut ns.connections {
        c.port = sa.port();
    }
    ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::dns::DnsServer;

    fn settings(dns: SocketAddr) -> DnsSection {
        DnsSection {
            nameservers: vec![dns],
            timeout_ms: 2000,
            attempts: 1,
            min_ttl_seconds: 1,
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
        cfg.negative_ttl_seconds = 1;
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
