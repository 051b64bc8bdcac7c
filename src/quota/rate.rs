//! Per-minute limits that hold for the whole fleet. Every limit is counted in UTC-minute
//! windows. A replica serves from units of the current window it leased from the store, where
//! one atomic statement grants a slice only while the window's total stays within the limit —
//! so the fleet never admits more than the limit in a minute, on any number of replicas. A
//! window that runs short asks for more ([`Short::Lease`]); one the store could not fill
//! further is full until the next minute ([`Short::Full`]).

/// Milliseconds per window.
pub const MINUTE_MS: i64 = 60_000;

/// The units a replica leases at a time: a twentieth of the limit, at least one.
pub fn slice(limit: u64) -> u64 {
    (limit / 20).max(1)
}

/// Why a window cannot take `n` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Short {
    /// This replica's units are used up: lease `want` more for `minute`.
    Lease {
        /// The window.
        minute: i64,
        /// Units missing.
        want: u64,
    },
    /// The fleet used the window up: retry after this many seconds (the next minute).
    Full {
        /// Seconds to the next window.
        retry_after: u64,
    },
}

/// This replica's share of one limit's current window.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    limit: u64,
    minute: i64,
    /// Units the store granted this replica for `minute`.
    granted: u64,
    /// Units taken (reservations and settled usage; above `granted` after an overrun).
    used: u64,
    /// The store granted less than asked for `minute`: the fleet has used the window up.
    full: bool,
    /// Units granted to the whole fleet for `minute`, as of this replica's last lease.
    fleet: u64,
    /// Units already leased for the next minute (leased ahead, so a new minute starts
    /// without a store round trip).
    next: u64,
    /// The last minute anything was taken from this limit (kept across minutes).
    active: i64,
}

impl Window {
    pub(crate) fn new(limit: u64, now_ms: i64) -> Window {
        Window {
            limit,
            minute: now_ms.div_euclid(MINUTE_MS),
            granted: 0,
            used: 0,
            full: false,
            fleet: 0,
            next: 0,
            active: i64::MIN,
        }
    }

    /// Move to the window of `now_ms` if a new minute started.
    fn roll(&mut self, now_ms: i64) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        if minute > self.minute {
            let carried = if minute == self.minute + 1 {
                self.next
            } else {
                0
            };
            *self = Window {
                granted: carried,
                fleet: carried,
                active: self.active,
                ..Window::new(self.limit, now_ms)
            };
        }
    }

    /// The limit changed (policy reload). The store's window is checked against the new
    /// limit at the next lease.
    pub(crate) fn resize(&mut self, limit: u64) {
        if limit != self.limit {
            self.limit = limit;
            self.full = false;
        }
    }

    /// Can `n` units be taken at `now_ms`?
    pub(crate) fn check(&mut self, n: u64, now_ms: i64) -> Result<(), Short> {
        self.roll(now_ms);
        let available = self.granted.saturating_sub(self.used);
        if n <= available {
            Ok(())
        } else if self.full {
            let next = (self.minute + 1) * MINUTE_MS;
            let ms = u64::try_from(next - now_ms).unwrap_or(0);
            Err(Short::Full {
                retry_after: ms.div_ceil(1000).max(1),
            })
        } else {
            Err(Short::Lease {
                minute: self.minute,
                want: n - available,
            })
        }
    }

    pub(crate) fn take(&mut self, n: u64) {
        self.used += n;
        self.active = self.minute;
    }

    /// Settle a reservation of `reserved` units made in `minute` at `actual`. A window that
    /// has ended keeps what it counted: its limit no longer matters.
    pub(crate) fn settle(&mut self, minute: i64, reserved: u64, actual: u64) {
        if minute != self.minute {
            return;
        }
        if actual < reserved {
            self.used = self.used.saturating_sub(reserved - actual);
        } else {
            self.used += actual - reserved;
        }
    }

    /// The store granted `got` of `asked` units for `minute`; `fleet` is the window's total.
    pub(crate) fn grant(&mut self, minute: i64, got: u64, asked: u64, fleet: u64) {
        // Only a lease ahead is for a later minute than the window's next one (the window
        // has not rolled since: no request came): it lands in the next minute, never makes
        // the window jump into the future.
        if minute > self.minute + 1 {
            self.roll((minute - 1) * MINUTE_MS);
        }
        if minute == self.minute {
            self.granted += got;
            self.fleet = self.fleet.max(fleet);
            self.full = got < asked;
        } else if minute == self.minute + 1 {
            self.next += got;
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn minute(&self) -> i64 {
        self.minute
    }

    /// Units this replica holds and has not used.
    pub(crate) fn available(&self) -> u64 {
        self.granted.saturating_sub(self.used)
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    pub(crate) fn leased_ahead(&self) -> u64 {
        self.next
    }

    /// The last minute anything was taken.
    pub(crate) fn last_active(&self) -> i64 {
        self.active
    }

    /// What the fleet may still take this minute, as far as this replica knows (headers).
    pub(crate) fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.fleet) + self.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_487_580_000; // a minute boundary

    #[test]
    fn a_window_serves_what_was_leased_then_asks_or_is_full() {
        let mut w = Window::new(10, T0);
        assert_eq!(
            w.check(1, T0),
            Err(Short::Lease {
                minute: T0 / MINUTE_MS,
                want: 1
            })
        );
        w.grant(T0 / MINUTE_MS, 4, 4, 4);
        for _ in 0..4 {
            assert!(w.check(1, T0).is_ok());
            w.take(1);
        }
        // The store had only 6 of the 10 asked for: the fleet used the minute up.
        w.grant(T0 / MINUTE_MS, 6, 10, 10);
        for _ in 0..6 {
            w.check(1, T0 + 1_000).unwrap();
            w.take(1);
        }
        assert_eq!(
            w.check(1, T0 + 20_500),
            Err(Short::Full { retry_after: 40 })
        );
        assert_eq!(w.remaining(), 0);
    }

    #[test]
    fn a_new_minute_starts_from_what_was_leased_ahead() {
        let m = T0 / MINUTE_MS;
        let mut w = Window::new(10, T0);
        w.grant(m, 10, 10, 10);
        w.take(10);
        w.grant(m + 1, 3, 3, 3);
        assert!(w.check(3, T0 + MINUTE_MS).is_ok(), "leased ahead");
        w.take(3);
        assert!(matches!(
            w.check(1, T0 + MINUTE_MS),
            Err(Short::Lease { want: 1, .. })
        ));
        // Two minutes later nothing carries over.
        assert!(matches!(
            w.check(1, T0 + 3 * MINUTE_MS),
            Err(Short::Lease { .. })
        ));
    }

    #[test]
    fn settlement_returns_or_charges_within_its_minute_only() {
        let m = T0 / MINUTE_MS;
        let mut w = Window::new(100, T0);
        w.grant(m, 100, 100, 100);
        w.take(50);
        w.settle(m, 50, 20);
        assert_eq!(w.available(), 80);
        w.settle(m, 0, 30);
        assert_eq!(w.available(), 50);
        w.check(1, T0 + MINUTE_MS).unwrap_err();
        w.settle(m, 50, 0);
        assert_eq!(
            w.used(),
            0,
            "a past minute's settlement changes nothing now"
        );
    }

    mod fleet {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        /// The store's side of a limit: units granted per minute, never past the limit.
        #[derive(Default)]
        struct Store(HashMap<i64, u64>);

        impl Store {
            fn acquire(&mut self, minute: i64, limit: u64, want: u64) -> (u64, u64) {
                let total = self.0.entry(minute).or_default();
                let got = want.min(limit.saturating_sub(*total));
                *total += got;
                (got, *total)
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            /// A replica admits a request of `n` units (leasing when short).
            Admit { replica: usize, n: u64 },
            /// A reservation settles at a share of what it reserved.
            Settle { pick: usize, percent: u8 },
            /// The upkeep leases the next minute's first slice.
            LeaseAhead { replica: usize },
            /// Time passes.
            Wait { ms: i64 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..3, 1u64..40).prop_map(|(replica, n)| Op::Admit { replica, n }),
                2 => (any::<usize>(), 0u8..=100).prop_map(|(pick, percent)| Op::Settle { pick, percent }),
                1 => (0usize..3).prop_map(|replica| Op::LeaseAhead { replica }),
                1 => (0i64..40_000).prop_map(|ms| Op::Wait { ms }),
            ]
        }

        proptest! {
            /// Three replicas, any interleaving of admissions, settlements, leases ahead and
            /// minutes passing: the store never grants a minute past the limit, and what the
            /// fleet holds in use in a minute — reservations and settled usage — never passes
            /// what the store granted for it, so never the limit.
            #[test]
            fn the_fleet_never_takes_more_than_the_limit_in_a_minute(
                limit in 1u64..300,
                ops in proptest::collection::vec(op(), 1..400),
            ) {
                let mut now = T0;
                let mut store = Store::default();
                let mut windows: Vec<Window> = (0..3).map(|_| Window::new(limit, now)).collect();
                // (replica, minute, reserved) of reservations not yet settled.
                let mut open: Vec<(usize, i64, u64)> = Vec::new();
                for o in ops {
                    match o {
                        Op::Admit { replica, n } => {
                            let w = &mut windows[replica];
                            let mut ok = false;
                            for _ in 0..3 {
                                match w.check(n, now) {
                                    Ok(()) => { ok = true; break; }
                                    Err(Short::Lease { minute, want }) => {
                                        let asked = want.max(slice(limit));
                                        let (got, fleet) = store.acquire(minute, limit, asked);
                                        w.grant(minute, got, asked, fleet);
                                    }
                                    Err(Short::Full { retry_after }) => {
                                        prop_assert!((1..=60).contains(&retry_after));
                                        break;
                                    }
                                }
                            }
                            if ok {
                                w.take(n);
                                open.push((replica, w.minute(), n));
                            }
                        }
                        Op::Settle { pick, percent } if !open.is_empty() => {
                            let (replica, minute, reserved) = open.remove(pick % open.len());
                            windows[replica].settle(minute, reserved, reserved * u64::from(percent) / 100);
                        }
                        Op::LeaseAhead { replica } => {
                            let w = &mut windows[replica];
                            if w.leased_ahead() == 0 {
                                let next = now.div_euclid(MINUTE_MS) + 1;
                                let (got, fleet) = store.acquire(next, limit, slice(limit));
                                w.grant(next, got, slice(limit), fleet);
                            }
                        }
                        Op::Wait { ms } => now += ms,
                        Op::Settle { .. } => {}
                    }
                    for (m, total) in &store.0 {
                        prop_assert!(*total <= limit, "minute {} granted {} > {}", m, total, limit);
                    }
                    let mut in_use: HashMap<i64, u64> = HashMap::new();
                    for w in &windows {
                        prop_assert!(w.used() <= w.granted, "a replica used more than it leased");
                        *in_use.entry(w.minute()).or_default() += w.used();
                    }
                    for (m, used) in in_use {
                        let granted = store.0.get(&m).copied().unwrap_or(0);
                        prop_assert!(used <= granted, "minute {}: {} in use, {} granted", m, used, granted);
                    }
                }
            }
        }
    }
}
