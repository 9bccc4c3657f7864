//! A bounded map of recently used keys, for the per-client state that clients choose the keys of
//! (failed-login budgets, DNS query budgets, the failure memory of addresses): a flood of new keys
//! must cost neither unbounded memory nor a sweep over every entry.
//!
//! Each of a fixed number of shards keeps two generations. New keys go into the current one; when
//! it is full, the previous generation is dropped whole and the current one takes its place, so
//! a key used within the last generation survives (it is moved forward when touched) and the
//! table never holds more than twice its capacity. Every operation is O(1) (amortised: dropping a
//! generation frees its entries), with no scan on the request path.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shards: enough that two worker threads rarely meet on one lock.
const SHARDS: usize = 32;

struct Shard<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

/// A bounded map of recently used keys (see the module doc).
pub struct Recent<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: RandomState,
    /// Keys held in all shards, kept exact, so `is_empty` costs one load (the failure memory
    /// asks it on every request).
    held: AtomicUsize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// A table keeping at least the `capacity` most recently used keys (at most twice that).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    current: HashMap::new(),
                    previous: HashMap::new(),
                })
            })
            .collect();
        Self {
            shards,
            per_shard,
            hasher: RandomState::new(),
            held: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on `key`'s value, made by `init` if the key is new (or was forgotten).
    pub fn with<R>(&self, key: &K, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut s = self.shard(key);
        if !s.current.contains_key(key) {
            let v = match s.previous.remove(key) {
                Some(v) => v,
                None => {
                    self.held.fetch_add(1, Ordering::Relaxed);
                    init()
                }
            };
            if s.current.len() >= self.per_shard {
                let full = std::mem::take(&mut s.current);
                let gone = std::mem::replace(&mut s.previous, full).len();
                self.held.fetch_sub(gone, Ordering::Relaxed);
            }
            s.current.insert(key.clone(), v);
        }
        match s.current.get_mut(key) {
            Some(v) => f(v),
            None => unreachable!("inserted above"),
        }
    }

    /// Runs `f` on `key`'s value if it is known; `None` otherwise (nothing is inserted).
    pub fn with_existing<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut s = self.shard(key);
        if let Some(v) = s.current.get_mut(key) {
            return Some(f(v));
        }
        s.previous.get_mut(key).map(f)
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &K) {
        let mut s = self.shard(key);
        let gone = usize::from(s.current.remove(key).is_some())
            + usize::from(s.previous.remove(key).is_some());
        self.held.fetch_sub(gone, Ordering::Relaxed);
    }

    /// Forgets every key.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let gone = s.current.len() + s.previous.len();
            s.current.clear();
            s.previous.clear();
            self.held.fetch_sub(gone, Ordering::Relaxed);
        }
    }

    /// Keys held now (the current and previous generations).
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether no key is held: one load, no lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys it ever holds.
    pub fn bound(&self) -> usize {
        2 * self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_new_keys_stays_bounded_and_recent_keys_survive() {
        let t: Recent<u32, u32> = Recent::new(1000);
        t.with(&7, || 0, |v| *v = 42);
        for k in 1_000_000..1_100_000u32 {
            t.with(&k, || 1, |_| ());
            // A key in use is touched now and then (as a real client's is): it survives.
            if k % 100 == 0 {
                t.with(&7, || 0, |_| ());
            }
            assert!(t.len() <= t.bound(), "{} > {}", t.len(), t.bound());
        }
        // The count is exact: it is what the shards hold.
        let counted: usize = t
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum();
        assert_eq!(t.len(), counted);
        assert_eq!(t.with_existing(&7, |v| *v), Some(42));
        // An old key nobody touched is gone.
        assert_eq!(t.with_existing(&1_000_000, |v| *v), None);
        assert!(
            t.len() >= 1000,
            "at least the capacity is kept: {}",
            t.len()
        );
    }

    #[test]
    fn remove_and_clear() {
        let t: Recent<&str, u8> = Recent::new(10);
        t.with(&"a", || 1, |_| ());
        t.with(&"b", || 2, |_| ());
        t.remove(&"a");
        assert_eq!(t.with_existing(&"a", |v| *v), None);
        assert_eq!(t.len(), 1);
        t.clear();
        assert!(t.is_empty());
    }
}
