//! Short, bounded histories for the status page's sparklines: a ring of the last 60 samples per
//! series, for a bounded number of series. Kept in process (the page must work without a
//! Prometheus), sampled once a second by the admin sampler.

use std::collections::HashMap;
use std::sync::Mutex;

/// Samples kept per series (one a second: the last minute).
pub const SAMPLES: usize = 60;

/// Series kept at most; samples for further series are dropped.
pub const MAX_SERIES: usize = 512;

/// One series' last [`SAMPLES`] values, oldest first when read.
#[derive(Debug, Clone)]
struct Ring {
    values: [f32; SAMPLES],
    len: usize,
    next: usize,
}

impl Ring {
    fn new() -> Self {
        Self {
            values: [0.0; SAMPLES],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, v: f32) {
        self.values[self.next] = v;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    fn read(&self) -> Vec<f32> {
        let start = (self.next + SAMPLES - self.len) % SAMPLES;
        (0..self.len)
            .map(|i| self.values[(start + i) % SAMPLES])
            .collect()
    }
}

/// Every series, by name.
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, Ring>>,
}

impl History {
    /// Appends `v` to `series`; a new series past [`MAX_SERIES`] is not kept.
    pub fn push(&self, series: &str, v: f32) {
        let Ok(mut map) = self.series.lock() else {
            return;
        };
        if let Some(r) = map.get_mut(series) {
            r.push(v);
        } else if map.len() < MAX_SERIES {
            let mut r = Ring::new();
            r.push(v);
            map.insert(series.to_string(), r);
        }
    }

    /// The samples of `series`, oldest first (empty if unknown).
    pub fn read(&self, series: &str) -> Vec<f32> {
        self.series
            .lock()
            .ok()
            .and_then(|m| m.get(series).map(Ring::read))
            .unwrap_or_default()
    }

    /// Forgets every series `keep` says no to (members removed from their cluster).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.series.lock() {
            m.retain(|k, _| keep(k));
        }
    }

    /// How many series are kept.
    pub fn len(&self) -> usize {
        self.series.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no series is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_keep_the_last_minute_and_series_are_bounded() {
        let h = History::default();
        for i in 0..100 {
            h.push("a", i as f32);
        }
        let a = h.read("a");
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(a[0], 40.0);
        assert_eq!(a[SAMPLES - 1], 99.0);
        for i in 0..MAX_SERIES + 50 {
            h.push(&format!("s{i}"), 1.0);
        }
        assert_eq!(h.len(), MAX_SERIES);
        assert!(h.read(&format!("s{}", MAX_SERIES + 10)).is_empty());
        h.retain(|k| k == "a");
        assert_eq!(h.len(), 1);
        assert_eq!(h.read("b"), Vec::<f32>::new());
    }
}
