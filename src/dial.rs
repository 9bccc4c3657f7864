//! Ordered connect attempts: try each candidate with a short per-attempt timeout inside one
//! overall deadline, and remember addresses that failed so other requests try them last.
//!
//! This is what makes a dead cluster member invisible to clients: the same request simply moves
//! on to the next address.

use std::net::SocketAddr;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::DialSection;
use crate::session::{Plan, Proxy};

/// How a request's attempts are bounded.
#[derive(Debug, Clone, Copy)]
pub struct DialSettings {
    /// Longest single connect attempt.
    pub per_attempt: Duration,
    /// Longest time for all attempts together.
    pub deadline: Duration,
    /// Most candidates tried.
    pub max_attempts: usize,
}

impl From<&DialSection> for DialSettings {
    fn from(d: &DialSection) -> Self {
        Self {
            per_attempt: Duration::from_millis(d.connect_timeout_ms),
            deadline: Duration::from_millis(d.deadline_ms),
            max_attempts: d.max_attempts,
        }
    }
}

/// Why one connect attempt (or a whole request's attempts) failed, in the categories a client
/// reply can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The peer answered with a reset: nothing listens there.
    Refused,
    /// No route to the host or network.
    Unreachable,
    /// The attempt (or the whole deadline) ran out of time.
    Timeout,
    /// Anything else (resource limits, invalid address).
    Other,
}

impl FailKind {
    /// Classifies an I/O error from `connect`.
    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused | K::ConnectionReset => FailKind::Refused,
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                FailKind::Unreachable
            }
            K::TimedOut => FailKind::Timeout,
            _ => FailKind::Other,
        }
    }
}

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
}

/// A connected upstream.
pub struct Connected {
    /// The open connection.
    pub stream: TcpStream,
    /// Which candidate answered.
    pub addr: SocketAddr,
    /// Attempts it took (1 = the first candidate).
    pub attempts: u32,
    /// The cluster member it belongs to, if any.
    pub member: Option<std::sync::Arc<crate::cluster::Member>>,
    /// The cluster name ("" outside clusters).
    pub cluster: String,
}

/// Size at which expired failure entries are swept.
const PRUNE_AT: usize = 10_000;

/// Addresses that recently failed to connect, shared by every request: they are tried last until
/// the memory expires, so one client's failure spares the next client the wait.
pub struct FailureMemory {
    failed: DashMap<SocketAddr, Instant>,
    ttl: Duration,
}

impl FailureMemory {
    /// A memory that forgets a failure after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            failed: DashMap::new(),
            ttl,
        }
    }

    /// Records a failed connect to `addr`.
    pub fn mark_failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        // Clients choose the addresses: expired entries are swept before the map grows large.
        if self.failed.len() >= PRUNE_AT {
            self.failed.retain(|_, until| *until > now);
        }
        self.failed.insert(addr, now + self.ttl);
    }

    /// Records a successful connect: `addr` is good again.
    pub fn mark_ok(&self, addr: SocketAddr) {
        if !self.failed.is_empty() {
            self.failed.remove(&addr);
        }
    }

    /// Whether `addr` failed recently.
    pub fn is_failed(&self, addr: &SocketAddr) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        match self.failed.get(addr).map(|t| *t) {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.failed.remove(addr);
                false
            }
            None => false,
        }
    }

    /// Reorders `candidates` so recently failed ones come last, keeping the rotation otherwise.
    pub fn order(&self, candidates: &mut [SocketAddr]) {
        if self.failed.is_empty() {
            return;
        }
        // A stable sort by "failed" keeps rotation order within each group.
        candidates.sort_by_cached_key(|a| self.is_failed(a));
    }
}

/// Connects to the first candidate of `plan` that answers, in order, within the proxy's dial
/// bounds; every failure and success is reported to the plan (failure memory, member health,
/// metrics).
pub async fn dial(
    plan: &mut Plan,
    proxy: &Proxy,
    settings: DialSettings,
) -> Result<Connected, DialFailure> {
    let deadline = Instant::now() + settings.deadline;
    let mut attempts = 0u32;
    let mut last = DialFailure {
        kind: FailKind::Other,
        attempts: 0,
        detail: "no addresses to try".into(),
    };
    while (attempts as usize) < settings.max_attempts {
        let now = Instant::now();
        if now >= deadline {
            last.kind = FailKind::Timeout;
            last.detail = format!("deadline of {:?} reached", settings.deadline);
            break;
        }
        let Some(candidate) = plan.next_candidate() else {
            break;
        };
        let addr = candidate.addr;
        attempts += 1;
        let budget = settings.per_attempt.min(deadline - now);
        let outcome = tokio::time::timeout(budget, TcpStream::connect(addr)).await;
        match outcome {
            Ok(Ok(stream)) => {
                plan.report_success(proxy, &candidate, now.elapsed());
                let _ = stream.set_nodelay(true);
                return Ok(Connected {
                    stream,
                    addr,
                    attempts,
                    member: candidate.member,
                    cluster: plan.cluster_name().to_string(),
                });
            }
            Ok(Err(e)) => {
                last.kind = FailKind::of(&e);
                last.detail = format!("connect to {addr}: {e}");
                tracing::debug!(%addr, error = %e, "connect failed; trying next");
            }
            Err(_) => {
                last.kind = FailKind::Timeout;
                last.detail = format!("connect to {addr}: timed out after {budget:?}");
                tracing::debug!(%addr, "connect timed out; trying next");
            }
        }
        plan.report_failure(proxy, &candidate, last.kind, &last.detail);
    }
    last.attempts = attempts;
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_addresses_go_last_and_keep_rotation() {
        let m = FailureMemory::new(Duration::from_secs(30));
        let a: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("127.0.0.{i}:80").parse().unwrap())
            .collect();
        m.mark_failed(a[1]);
        let mut c = a.clone();
        m.order(&mut c);
        assert_eq!(c, vec![a[0], a[2], a[3], a[1]]);
        m.mark_ok(a[1]);
        let mut c = a.clone();
        m.order(&mut c);
        assert_eq!(c, a);
    }
}
