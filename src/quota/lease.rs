//! One replica's share of a pool's budget: money leased from the store for a UTC day of the
//! pool's window, split into available, reserved and spent (DESIGN.md "Quotas across
//! replicas"). The store grants money only while the window's total stays within the cap, so
//! a replica that never reserves more than it holds keeps the whole fleet within the cap.
//!
//! The allowance is the replica's promise in the store: the most it will newly reserve before
//! its next successful heartbeat. Money above it may be reclaimed if the replica dies, so the
//! replica never reserves past it without reporting first.

/// A lease on one pool-day.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lease {
    /// First day of the pool's window, as of the last admission.
    pub first_day: i64,
    /// Leased and neither reserved nor spent.
    pub available: i64,
    /// Reserved by requests in flight.
    pub reserved: i64,
    /// Spent (settled) from this lease.
    pub spent: i64,
    /// What must stay available: the store may hand it to others if this replica dies
    /// (`available - allowance` of its last report), or more while a report is being stored.
    pub floor: i64,
    /// Reservations made since the last report (sizes the next allowance).
    pub recent: i64,
}

/// Why a lease cannot take a reservation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// Not enough money leased: acquire at least this much.
    Money(i64),
    /// Enough money, but it was promised to the store: report (heartbeat) first.
    Allowance,
}

impl Lease {
    /// Reserve `worst` or say what is missing.
    pub fn reserve(&mut self, worst: i64) -> Result<(), Short> {
        if worst > self.available {
            return Err(Short::Money(worst - self.available));
        }
        if self.available - worst < self.floor {
            return Err(Short::Allowance);
        }
        self.available -= worst;
        self.reserved += worst;
        self.recent += worst;
        Ok(())
    }

    /// Settle a reservation of `worst` at `actual`. A provider that billed more than the
    /// reservation (it ignored `max_tokens`) is charged from what is left available.
    pub fn settle(&mut self, worst: i64, actual: i64) {
        self.reserved -= worst;
        self.spent += actual;
        self.available += worst - actual;
    }

    /// Everything this lease holds: what the store should be granting it.
    pub fn held(&self) -> i64 {
        self.available + self.reserved + self.spent
    }

    /// Money granted by the store (which adds it to the allowance: usable at once).
    pub fn grant(&mut self, amount: i64) {
        self.available += amount;
    }

    /// Money handed back to the store (which takes it out of what it may reclaim).
    pub fn give_back(&mut self, amount: i64) {
        self.available -= amount;
        self.floor = (self.floor - amount).max(0);
    }

    /// Start a report: the `(available, allowance)` to store. The new promise applies at
    /// once, before the store has it, so that neither the old nor the new one is broken
    /// whichever is in force.
    pub fn begin_report(&mut self, min_allowance: i64) -> (i64, i64) {
        let allowance = self
            .available
            .min(min_allowance.max(self.recent.saturating_mul(4)))
            .max(0);
        self.floor = self.floor.max(self.available - allowance);
        (self.available, allowance)
    }

    /// The report `(available, allowance)` is stored: its promise alone is in force.
    pub fn confirm_report(&mut self, available: i64, allowance: i64) {
        self.floor = (available - allowance).max(0);
        self.recent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reservations_need_money_and_keep_the_promise() {
        let mut l = Lease::default();
        assert_eq!(l.reserve(10), Err(Short::Money(10)));
        l.grant(100);
        l.reserve(60).unwrap();
        assert_eq!(l.reserve(50), Err(Short::Money(10)));
        let (avail, allowance) = l.begin_report(10);
        assert_eq!(
            (avail, allowance),
            (40, 40),
            "recent pace: 4 × 60, bounded by available"
        );
        l.confirm_report(avail, allowance);
        l.recent = 0;
        let (avail, allowance) = l.begin_report(10);
        l.confirm_report(avail, allowance);
        assert_eq!(l.floor, 30, "30 of the 40 available were promised to stay");
        assert_eq!(l.reserve(20), Err(Short::Allowance));
        l.reserve(10).unwrap();
        // A refund does not renew the promise: it only adds to what is available.
        l.settle(60, 15);
        assert_eq!((l.available, l.reserved, l.spent), (75, 10, 15));
        l.reserve(45).unwrap();
        assert_eq!(l.reserve(1), Err(Short::Allowance));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant(i64),
        Reserve(i64),
        Settle(usize, u8),
        GiveBack(i64),
        Report(i64, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..200).prop_map(Op::Grant),
            (1i64..100).prop_map(Op::Reserve),
            (any::<usize>(), 0u8..=100).prop_map(|(i, f)| Op::Settle(i, f)),
            (0i64..100).prop_map(Op::GiveBack),
            (0i64..100, any::<bool>()).prop_map(|(f, ok)| Op::Report(f, ok)),
        ]
    }

    proptest! {
        /// Money is conserved (granted − given back = available + reserved + spent) and the
        /// money promised to the store (`available − allowance` of the report in force, or of
        /// a report that may or may not have been stored) is never reserved.
        #[test]
        fn money_is_conserved_and_promises_kept(ops in proptest::collection::vec(op(), 1..300)) {
            let mut l = Lease::default();
            let mut open: Vec<i64> = Vec::new();
            let mut held = 0i64;
            // What the store may reclaim, per the reports it may hold.
            let mut promised = 0i64;
            for o in ops {
                match o {
                    Op::Grant(x) => { l.grant(x); held += x; }
                    Op::Reserve(w) => open.extend(l.reserve(w).ok().map(|()| w)),
                    Op::Settle(i, f) if !open.is_empty() => {
                        let w = open.remove(i % open.len());
                        l.settle(w, w * i64::from(f) / 100);
                    }
                    Op::GiveBack(x) => {
                        let x = x.min(l.available.max(0));
                        l.give_back(x);
                        held -= x;
                        promised = (promised - x).max(0);
                    }
                    Op::Report(min, stored) => {
                        let (a, allowance) = l.begin_report(min);
                        if stored {
                            l.confirm_report(a, allowance);
                            promised = a - allowance;
                        } else {
                            promised = promised.max(a - allowance);
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(held, l.available + l.reserved + l.spent);
                prop_assert!(l.available >= promised, "available {} < promised {}", l.available, promised);
            }
        }
    }
}
