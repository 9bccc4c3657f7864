//! Connection limits: in all and per client address. Over a limit a client is answered at once
//! (HTTP 503, SOCKS5 0x01) instead of queueing; connections already open are not disturbed.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::config::LimitsSection;
use crate::metrics::metrics;

/// Open connection counts.
pub struct Limits {
    total: AtomicUsize,
    per_client: DashMap<IpAddr, usize>,
    max_total: AtomicUsize,
    max_per_client: AtomicUsize,
}

/// Holds one connection's place; dropping it frees the place.
pub struct Admitted {
    limits: Arc<Limits>,
    client: Option<IpAddr>,
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
            max_total: AtomicUsize::new(cfg.max_connections),
            max_per_client: AtomicUsize::new(cfg.max_connections_per_client),
        })
    }

    /// Applies new limits (reload); connections already open stay.
    pub fn update(&self, cfg: &LimitsSection) {
        self.max_total.store(cfg.max_connections, Ordering::Relaxed);
        self.max_per_client
            .store(cfg.max_connections_per_client, Ordering::Relaxed);
    }

    /// Open connections in all.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits one more connection from `client`, or names the limit it would break.
    pub fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Admitted, &'static str> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total.load(Ordering::Relaxed) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            metrics().overload.with_label_values(&["global"]).inc();
            return Err("global");
        }
        if let Some(ip) = client {
            let mut n = self.per_client.entry(ip).or_insert(0);
            if *n >= self.max_per_client.load(Ordering::Relaxed) {
                drop(n);
                self.total.fetch_sub(1, Ordering::Relaxed);
                metrics().overload.with_label_values(&["per_client"]).inc();
                return Err("per_client");
            }
            *n += 1;
        }
        Ok(Admitted {
            limits: self.clone(),
            client,
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
            max_concurrent_dns_lookups: 1,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = l.admit(Some(a)).unwrap();
        let _g2 = l.admit(Some(a)).unwrap();
        assert_eq!(l.admit(Some(a)).err(), Some("per_client"));
        let _g3 = l.admit(Some(b)).unwrap();
        assert_eq!(l.admit(Some(b)).err(), Some("global"));
        drop(g1);
        assert!(l.admit(Some(a)).is_ok());
        assert_eq!(l.open(), 2);
    }
}
