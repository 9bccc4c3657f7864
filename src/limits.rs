//! Connection limits: in all, per client address (off by default), and connections per client
//! address still in their handshake. Over a limit a client is answered at once (HTTP 503, SOCKS5
//! 0x01) instead of queueing; connections already open are not disturbed.
//!
//! Many users can share one client address (an office NAT, a terminal-server farm, a balancer
//! without the PROXY protocol): a reconnect storm after a chat server dies opens thousands of
//! tunnels from it at once. So open connections per address are not capped by default (Squid,
//! HAProxy and Envoy set no per-source cap either); what is capped is what an attacker holds
//! cheaply, connections that never finish their handshake.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::config::LimitsSection;
use crate::metrics::metrics;

/// Which connection limit refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    /// Open connections in all (`limits.max_connections`, or the descriptor budget's share).
    #[error("overloaded: global connection limit reached")]
    Global,
    /// Open connections of one client address.
    #[error("overloaded: per_client connection limit reached")]
    PerClient,
    /// Connections of one client address still in their handshake.
    #[error("overloaded: handshakes_per_client connection limit reached")]
    HandshakesPerClient,
}

impl Limit {
    /// The `limit` label of `carousel_overload_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Global => "global",
            Limit::PerClient => "per_client",
            Limit::HandshakesPerClient => "handshakes_per_client",
        }
    }

    fn count(self) -> Self {
        metrics().overload.with_label_values(&[self.as_str()]).inc();
        self
    }
}

/// Refusals one client address may have in progress at once; past it its connections are closed
/// without an answer, so clients that hold refused connections open (idle, never sending their
/// request) cannot take the refusals' descriptors from everyone else.
pub const REFUSALS_PER_CLIENT: usize = 4;

/// Open connection counts.
pub struct Limits {
    total: AtomicUsize,
    per_client: DashMap<IpAddr, usize>,
    handshakes: DashMap<IpAddr, usize>,
    refusing: Arc<DashMap<IpAddr, usize>>,
    max_total: AtomicUsize,
    max_per_client: AtomicUsize,
    max_handshakes: AtomicUsize,
}

/// Holds one connection's place among its client's connections still in their handshake.
pub struct Handshake {
    limits: Arc<Limits>,
    client: IpAddr,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.limits.handshakes.entry(self.client) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Holds one refusal in progress: a descriptor of the refusals' share and the client's place.
pub struct RefusalSlot {
    _descriptor: crate::descriptors::Held,
    table: Arc<DashMap<IpAddr, usize>>,
    client: Option<IpAddr>,
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        if let dashmap::Entry::Occupied(mut e) = self.table.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Holds one connection's place; dropping it frees the place.
pub struct Admitted {
    limits: Arc<Limits>,
    client: Option<IpAddr>,
    _descriptors: Option<crate::descriptors::Held>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.client {
            if let dashmap::Entry::Occupied(mut e) = self.limits.per_client.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

impl Limits {
    /// Limits from `[limits]`.
    pub fn new(cfg: &LimitsSection) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_client: DashMap::new(),
            handshakes: DashMap::new(),
            refusing: Arc::new(DashMap::new()),
            max_total: AtomicUsize::new(cfg.max_connections),
            max_per_client: AtomicUsize::new(cfg.max_connections_per_client),
            max_handshakes: AtomicUsize::new(cfg.max_handshakes_per_client),
        })
    }

    /// Applies new limits (reload); connections already open stay.
    pub fn update(&self, cfg: &LimitsSection) {
        self.max_total.store(cfg.max_connections, Ordering::Relaxed);
        self.max_per_client
            .store(cfg.max_connections_per_client, Ordering::Relaxed);
        self.max_handshakes
            .store(cfg.max_handshakes_per_client, Ordering::Relaxed);
    }

    /// Counts one more connection of `client` in its handshake, or names the limit it breaks;
    /// the guard is dropped when the request is complete.
    pub fn handshake(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Option<Handshake>, Limit> {
        let Some(ip) = client else { return Ok(None) };
        let mut n = self.handshakes.entry(ip).or_insert(0);
        if *n >= self.max_handshakes.load(Ordering::Relaxed) {
            drop(n);
            return Err(Limit::HandshakesPerClient.count());
        }
        *n += 1;
        Ok(Some(Handshake {
            limits: self.clone(),
            client: ip,
        }))
    }

    /// A place to answer a refused connection of `client` in its protocol, or `None`: the
    /// refusals' descriptor share is spent, or the client has [`REFUSALS_PER_CLIENT`] in progress
    /// (the connection is then closed at once).
    pub fn refusal(&self, client: Option<IpAddr>) -> Option<RefusalSlot> {
        let descriptor = crate::descriptors::budget().refusals.try_take()?;
        if let Some(ip) = client {
            let mut n = self.refusing.entry(ip).or_insert(0);
            if *n >= REFUSALS_PER_CLIENT {
                return None;
            }
            *n += 1;
        }
        Some(RefusalSlot {
            _descriptor: descriptor,
            table: self.refusing.clone(),
            client,
        })
    }

    /// Open connections in all.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits one more connection from `client`, or names the limit it would break. The global
    /// limit is `max_connections` or what the descriptor budget's client share holds, whichever
    /// is lower, so a client past it gets a clear refusal before the process runs out of
    /// descriptors.
    pub fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Admitted, Limit> {
        let descriptors = crate::descriptors::budget()
            .clients
            .try_take_n(crate::descriptors::PER_CLIENT);
        if descriptors.is_none()
            || self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total.load(Ordering::Relaxed)
        {
            if descriptors.is_some() {
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(Limit::Global.count());
        }
        let cap = self.max_per_client.load(Ordering::Relaxed);
        if let Some(ip) = client.filter(|_| cap > 0) {
            let mut n = self.per_client.entry(ip).or_insert(0);
            if *n >= cap {
                drop(n);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Limit::PerClient.count());
            }
            *n += 1;
        }
        Ok(Admitted {
            limits: self.clone(),
            client: client.filter(|_| cap > 0),
            _descriptors: descriptors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_total_limits() {
        let l = Limits::new(&LimitsSection {
            max_connections: 3,
            max_connections_per_client: 2,
            max_handshakes_per_client: 1,
            max_concurrent_dns_lookups: 1,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = l.admit(Some(a)).unwrap();
        let _g2 = l.admit(Some(a)).unwrap();
        assert_eq!(l.admit(Some(a)).err(), Some(Limit::PerClient));
        let _g3 = l.admit(Some(b)).unwrap();
        assert_eq!(l.admit(Some(b)).err(), Some(Limit::Global));
        drop(g1);
        assert!(l.admit(Some(a)).is_ok());
        assert_eq!(l.open(), 2);
        // One handshake at a time per client here; a finished one frees its place.
        let h = l.handshake(Some(a)).unwrap();
        assert_eq!(l.handshake(Some(a)).err(), Some(Limit::HandshakesPerClient));
        assert!(l.handshake(Some(b)).is_ok());
        drop(h);
        assert!(l.handshake(Some(a)).is_ok());
        // Refusals in progress: a few per client, freed when answered.
        let held: Vec<_> = (0..REFUSALS_PER_CLIENT)
            .map(|_| l.refusal(Some(a)).unwrap())
            .collect();
        assert!(l.refusal(Some(a)).is_none());
        assert!(l.refusal(Some(b)).is_some());
        drop(held);
        assert!(l.refusal(Some(a)).is_some());
    }

    #[test]
    fn no_per_client_cap_by_default() {
        let l = Limits::new(&LimitsSection::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5000).map(|_| l.admit(Some(a)).unwrap()).collect();
        assert_eq!(l.open(), 5000);
        drop(held);
    }
}
