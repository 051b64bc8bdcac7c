//! Token buckets for per-minute limits. A bucket of capacity C refills C per minute, so a
//! burst of up to C is allowed after a quiet minute and the long-run rate is C per minute.

use std::time::Instant;

/// One bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(per_minute: u64, now: Instant) -> Bucket {
        let capacity = per_minute as f64;
        Bucket {
            capacity,
            level: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.capacity / 60.0).min(self.capacity);
        self.last = now;
    }

    /// Limit changed by a policy reload: keep the used fraction.
    pub(crate) fn resize(&mut self, per_minute: u64) {
        let cap = per_minute as f64;
        if (cap - self.capacity).abs() > f64::EPSILON {
            let used = self.capacity - self.level;
            self.capacity = cap;
            self.level = (cap - used).clamp(0.0, cap);
        }
    }

    /// Can `n` be taken now? `Err(seconds until it can)`; `n` over capacity never can.
    pub(crate) fn check(&mut self, n: u64, now: Instant) -> Result<(), u64> {
        self.refill(now);
        let n = n as f64;
        if n <= self.level {
            Ok(())
        } else {
            let missing = n - self.level;
            Err((missing * 60.0 / self.capacity).ceil().max(1.0) as u64)
        }
    }

    pub(crate) fn take(&mut self, n: u64) {
        self.level -= n as f64;
    }

    /// Give back `n` (a reservation settled lower than reserved).
    pub(crate) fn give(&mut self, n: u64) {
        self.level = (self.level + n as f64).min(self.capacity);
    }

    /// Charge `n` more than was reserved (may go negative: the debt delays later requests).
    pub(crate) fn charge(&mut self, n: u64) {
        self.level -= n as f64;
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.level.max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, t0);
        for _ in 0..60 {
            assert!(b.check(1, t0).is_ok());
            b.take(1);
        }
        assert_eq!(b.check(1, t0), Err(1));
        assert!(b.check(1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn more_than_capacity_reports_wait_and_refunds_are_capped() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert!(b.check(150, t0).is_err());
        b.take(40);
        b.give(1000);
        assert_eq!(b.remaining(), 100);
    }
}
