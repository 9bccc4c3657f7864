//! The process's one descriptor budget: the open-file limit, raised to its hard maximum at start,
//! divided into shares so that no consumer can starve the others. Client connections, upstream
//! connect attempts, health checks, responder TCP connections and refusals in progress each draw
//! from their own share and are refused (503, SOCKS 0x01, a skipped check round, a closed DNS
//! connection) when it is spent, while what is left over is never handed out: the descriptors
//! listeners, logs, pipes, pooled upstream connections and DNS lookups need stay free. Without
//! it, 32k connects at the DNS responder took the process to EMFILE in a second, the health
//! checks failed and every member was marked down.
//!
//! A client connection counts two descriptors: its own and its upstream's (a tunnel holds both;
//! the forward path holds one upstream connection per client at a time). Extra attempts of a
//! race draw from the dial share while they run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus::{IntCounter, IntGauge};

use crate::config::Config;
use crate::metrics::metrics;

/// Descriptors a client connection counts (its own and its upstream's).
pub const PER_CLIENT: usize = 2;

/// One share of the budget.
pub struct Share {
    name: &'static str,
    cap: AtomicUsize,
    used: AtomicUsize,
    used_gauge: IntGauge,
    exhausted: IntCounter,
}

/// Descriptors taken from a share; given back when dropped.
pub struct Held {
    share: Arc<Share>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.share.used.fetch_sub(self.n, Ordering::Relaxed);
        self.share.used_gauge.sub(self.n as i64);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} from {})", self.n, self.share.name)
    }
}

impl Share {
    fn new(name: &'static str) -> Arc<Self> {
        let m = metrics();
        Arc::new(Self {
            name,
            cap: AtomicUsize::new(usize::MAX),
            used: AtomicUsize::new(0),
            used_gauge: m.fd_share_used.with_label_values(&[name]),
            exhausted: m.fd_share_exhausted.with_label_values(&[name]),
        })
    }

    /// Takes one descriptor, or `None` (counted) when the share is spent.
    pub fn try_take(self: &Arc<Self>) -> Option<Held> {
        self.try_take_n(1)
    }

    /// Takes `n` descriptors at once, or none.
    pub fn try_take_n(self: &Arc<Self>, n: usize) -> Option<Held> {
        let cap = self.cap.load(Ordering::Relaxed);
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > cap {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.exhausted.inc();
            return None;
        }
        self.used_gauge.add(n as i64);
        Some(Held {
            share: self.clone(),
            n,
        })
    }

    /// Descriptors this share may hold.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Descriptors it holds now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
        metrics()
            .fd_share
            .with_label_values(&[self.name])
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
    }
}

/// The shares of the process (unbounded until [`install`] sizes them, as in unit tests).
pub struct Budget {
    /// Client connections (two descriptors each).
    pub clients: Arc<Share>,
    /// Upstream connect attempts while they run.
    pub dial: Arc<Share>,
    /// Active health checks (the reserve they and discovery keep).
    pub checks: Arc<Share>,
    /// DNS responder TCP connections.
    pub responder: Arc<Share>,
    /// Connections being refused (a short answer in the client's protocol); past it they are
    /// closed without one.
    pub refusals: Arc<Share>,
}

/// The process's budget.
pub fn budget() -> &'static Budget {
    static B: LazyLock<Budget> = LazyLock::new(|| Budget {
        clients: Share::new("clients"),
        dial: Share::new("dial"),
        checks: Share::new("checks"),
        responder: Share::new("responder"),
        refusals: Share::new("refusals"),
    });
    &B
}

/// How an open-file limit is divided for a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The open-file limit.
    pub limit: usize,
    /// Never handed out: listeners, logs, pipes, pooled upstream connections, DNS lookups.
    pub reserved: usize,
    /// Client connections' descriptors.
    pub clients: usize,
    /// Upstream connect attempts'.
    pub dial: usize,
    /// Health checks'.
    pub checks: usize,
    /// DNS responder TCP connections'.
    pub responder: usize,
    /// Refusals in progress.
    pub refusals: usize,
}

/// Upstream connections pingora keeps pooled (its `upstream_keepalive_pool_size` default, which
/// carousel leaves as it is).
const POOLED_UPSTREAMS: usize = 128;

impl Sizes {
    /// Divides `limit` descriptors for `config`.
    pub fn plan(limit: usize, config: &Config) -> Sizes {
        let pipes = crate::tunnel::Options::from_config(&config.tunnel).max_pipes;
        let reserved = 64
            + config.listeners.len()
            + 1
            + 2 * config.responder.listen.len()
            + 2 * pipes
            + POOLED_UPSTREAMS
            + config.limits.max_concurrent_dns_lookups
            + 2 * config.clusters.len();
        let checks = (limit / 20).clamp(64, 4096);
        let responder = if config.responder.listen.is_empty() {
            0
        } else {
            config.responder.max_tcp_connections
        };
        let dial = (limit / 10).clamp(32, 4096);
        let rest = limit.saturating_sub(reserved + checks + responder + dial);
        let refusals = (rest / 10).clamp(16, 1024);
        let clients = rest.saturating_sub(refusals);
        Sizes {
            limit,
            reserved,
            clients,
            dial,
            checks,
            responder,
            refusals,
        }
    }

    /// Client connections the budget admits at once.
    pub fn client_connections(&self) -> usize {
        self.clients / PER_CLIENT
    }

    /// What is wrong with these sizes for `config`, in the words of `carousel check`: the
    /// configured limits the open-file limit cannot hold.
    pub fn warnings(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.client_connections() < config.limits.max_connections {
            out.push(format!(
                "open-file limit {} holds {} client connections, below limits.max_connections = {}: clients past it get 503 / SOCKS 0x01 (each connection needs {PER_CLIENT} descriptors: raise LimitNOFILE by about {})",
                self.limit,
                self.client_connections(),
                config.limits.max_connections,
                (config.limits.max_connections - self.client_connections()) * PER_CLIENT * 11 / 10,
            ));
        }
        out
    }
}

/// Sizes the process's shares (at start-up).
pub fn install(sizes: &Sizes) {
    let b = budget();
    b.clients.set_cap(sizes.clients);
    b.dial.set_cap(sizes.dial);
    b.checks.set_cap(sizes.checks);
    b.responder.set_cap(sizes.responder);
    b.refusals.set_cap(sizes.refusals);
    metrics()
        .fd_share
        .with_label_values(&["reserved"])
        .set(sizes.reserved as i64);
}

/// Raises the open-file limit to its hard maximum and returns it.
pub fn raise_open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let mut raised = lim;
            raised.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_refuses_past_its_cap_and_frees_on_drop() {
        let s = Share::new("test");
        s.set_cap(3);
        let a = s.try_take_n(2).unwrap();
        assert!(s.try_take_n(2).is_none(), "2 + 2 > 3");
        let b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        assert_eq!(s.used(), 3);
        drop(a);
        assert_eq!(s.used(), 1);
        assert!(s.try_take_n(2).is_some());
        drop(b);
    }

    #[test]
    fn the_shares_and_the_reserve_never_exceed_the_limit() {
        let config = Config::embedded();
        for limit in [1024usize, 4096, 20_000, 1 << 20] {
            let s = Sizes::plan(limit, &config);
            let total = s.reserved + s.clients + s.dial + s.checks + s.responder + s.refusals;
            assert!(total <= limit, "{limit}: {s:?}");
            assert!(s.checks >= 64 && s.dial >= 32, "{s:?}");
        }
        // The default config on a stock 1024 limit: a clear refusal long before EMFILE.
        let s = Sizes::plan(1024, &config);
        assert!(s.client_connections() > 100, "{s:?}");
        assert_eq!(s.warnings(&config).len(), 1);
        assert!(Sizes::plan(1 << 20, &config).warnings(&config).is_empty());
    }
}
