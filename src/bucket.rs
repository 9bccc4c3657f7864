//! A token bucket: a budget of events that refills evenly, for the per-client budgets that must
//! hold across connections (failed logins, DNS queries).

use tokio::time::Instant;

/// One client's budget.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens.
    pub fn full(capacity: f64) -> Self {
        Self {
            tokens: capacity,
            at: Instant::now(),
        }
    }

    /// When it was last used.
    pub fn last_used(&self) -> Instant {
        self.at
    }

    /// Refills at `per_second` up to `capacity`, then takes one token if there is one.
    pub fn take(&mut self, per_second: f64, capacity: f64) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives one token back (up to `capacity`).
    pub fn give_back(&mut self, capacity: f64) {
        self.tokens = (self.tokens + 1.0).min(capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn takes_refills_and_caps() {
        let mut b = TokenBucket::full(2.0);
        assert!(b.take(1.0, 2.0) && b.take(1.0, 2.0));
        assert!(!b.take(1.0, 2.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.take(1.0, 2.0));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.take(1.0, 2.0) && b.take(1.0, 2.0) && !b.take(1.0, 2.0));
        b.give_back(2.0);
        assert!(b.take(0.0, 2.0));
    }
}
