//! Rate limits, concurrency and budgets on the hot path, all in memory.
//!
//! A request is *admitted* with its worst case (estimated input + `max_tokens`, priced) and
//! *settled* with its actual usage; the difference is returned. Limits apply per token (from
//! its claims) and per pool (from policy).
//!
//! Budgets are fleet-wide: a request reserves from this replica's [`lease::Lease`] on the
//! pool's current UTC day, money the store granted under the window's cap (DESIGN.md "Quotas
//! across replicas"). When the lease is short, admission says so ([`Denied::NeedsBudget`],
//! [`Denied::NeedsReport`]) and the caller tops it up through the store and asks again; a
//! background task keeps leases topped up so that this is rare.
//!
//! Invariant: a replica never reserves more than its lease holds, and the store never grants
//! past the cap, so the fleet's `spent + reserved` stays within the cap under any concurrency
//! as long as actual cost ≤ reserved worst case.

pub mod lease;
mod rate;
mod window;

pub use window::{first_day, window_start};

use crate::policy::BudgetWindow;
use crate::pricing::Usd;
use parking_lot::Mutex;
use rate::Bucket;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Per-minute and concurrency limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
}

/// A pool's budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSpec {
    /// Hard cap per window.
    pub cap: Usd,
    /// The window.
    pub window: BudgetWindow,
}

/// What a request asks for.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The token's id (per-token limits).
    pub jti: &'a str,
    /// Limits from the token's claims.
    pub token_limits: Limits,
    /// The pool.
    pub pool: &'a str,
    /// The pool's limits from policy.
    pub pool_limits: Limits,
    /// The pool's budget from policy.
    pub budget: Option<BudgetSpec>,
    /// Worst-case tokens (estimated input + max output).
    pub worst_tokens: u64,
    /// Worst-case cost.
    pub worst_cost: Usd,
    /// Wall clock, unix ms (budget windows).
    pub now_ms: i64,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A per-minute limit; retry after the given seconds.
    #[error("{scope} limit of {limit} {unit} per minute reached")]
    Rate {
        /// `token` or `pool`.
        scope: &'static str,
        /// `requests` or `tokens`.
        unit: &'static str,
        /// The limit.
        limit: u64,
        /// Seconds until enough capacity returns.
        retry_after: u64,
    },
    /// Too many requests in flight.
    #[error("{scope} concurrency limit of {limit} requests in flight reached")]
    Concurrency {
        /// `token` or `pool`.
        scope: &'static str,
        /// The limit.
        limit: u32,
    },
    /// The request alone exceeds a per-minute token limit: it can never pass.
    #[error(
        "request needs up to {needed} tokens but the {scope} limit is {limit} tokens per minute; lower max_tokens or the prompt"
    )]
    TooLarge {
        /// `token` or `pool`.
        scope: &'static str,
        /// Worst-case tokens.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The pool's budget for this window cannot cover the worst case.
    #[error(
        "budget of pool {pool} exhausted: its cap of {cap} this window cannot cover a request that may cost up to {worst}"
    )]
    Budget {
        /// Pool name.
        pool: String,
        /// The cap.
        cap: Usd,
        /// The request's worst case.
        worst: Usd,
    },
    /// This replica's lease is short of money: acquire at least `want` and ask again.
    #[error("budget lease of pool {pool} needs {want} more")]
    NeedsBudget {
        /// Pool name.
        pool: String,
        /// Missing money, micro-dollars.
        want: i64,
    },
    /// This replica must report its lease (heartbeat) before reserving more.
    #[error("budget lease of pool {pool} must be reported before more is reserved")]
    NeedsReport {
        /// Pool name.
        pool: String,
    },
}

/// Limits and remaining capacity, for `x-ratelimit-*` headers (the token's own limits).
#[derive(Clone, Copy, Debug, Default)]
pub struct RateInfo {
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens`.
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
}

struct Counters {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    in_flight: u32,
    last_used: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            rpm: None,
            tpm: None,
            in_flight: 0,
            last_used: Instant::now(),
        }
    }
}

impl Counters {
    fn sync_limits(&mut self, l: &Limits, now: Instant) {
        sync_bucket(&mut self.rpm, l.rpm.map(u64::from), now);
        sync_bucket(&mut self.tpm, l.tpm, now);
    }

    fn check(
        &mut self,
        scope: &'static str,
        l: &Limits,
        tokens: u64,
        now: Instant,
    ) -> Result<(), Denied> {
        if let Some(c) = l.concurrency
            && self.in_flight >= c
        {
            return Err(Denied::Concurrency { scope, limit: c });
        }
        if let Some(b) = &mut self.rpm {
            b.check(1, now).map_err(|retry_after| Denied::Rate {
                scope,
                unit: "requests",
                limit: b.capacity(),
                retry_after,
            })?;
        }
        if let Some(b) = &mut self.tpm {
            if tokens > b.capacity() {
                return Err(Denied::TooLarge {
                    scope,
                    needed: tokens,
                    limit: b.capacity(),
                });
            }
            b.check(tokens, now).map_err(|retry_after| Denied::Rate {
                scope,
                unit: "tokens",
                limit: b.capacity(),
                retry_after,
            })?;
        }
        Ok(())
    }

    fn take(&mut self, tokens: u64) {
        self.in_flight += 1;
        self.last_used = Instant::now();
        if let Some(b) = &mut self.rpm {
            b.take(1);
        }
        if let Some(b) = &mut self.tpm {
            b.take(tokens);
        }
    }

    fn settle(&mut self, reserved: u64, actual: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(b) = &mut self.tpm {
            if actual < reserved {
                b.give(reserved - actual);
            } else {
                b.charge(actual - reserved);
            }
        }
    }
}

fn sync_bucket(slot: &mut Option<Bucket>, limit: Option<u64>, now: Instant) {
    match (slot.as_mut(), limit) {
        (Some(b), Some(l)) => b.resize(l),
        (None, Some(l)) => *slot = Some(Bucket::new(l, now)),
        (_, None) => *slot = None,
    }
}

#[derive(Default)]
struct PoolState {
    counters: Counters,
    /// The cap of the pool's budget as of the last admission.
    cap: i64,
    /// Leases by UTC day (today's, and earlier ones until their reservations settle).
    leases: std::collections::BTreeMap<i64, lease::Lease>,
}

/// A lease the background task should act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// Pool.
    pub pool: String,
    /// UTC day of the lease.
    pub day: i64,
    /// First day of the pool's window.
    pub first_day: i64,
    /// The pool's cap.
    pub cap: i64,
    /// Available.
    pub available: i64,
    /// Reserved.
    pub reserved: i64,
}

/// A lease report to store, with what to confirm once stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingReport {
    /// Pool.
    pub pool: String,
    /// Day.
    pub day: i64,
    /// Available at the time of the report.
    pub available: i64,
    /// The new allowance.
    pub allowance: i64,
}

/// The in-memory ledger of one replica.
#[derive(Default)]
pub struct Quota {
    tokens: Mutex<HashMap<String, Counters>>,
    pools: Mutex<HashMap<String, PoolState>>,
}

impl Quota {
    /// An empty ledger.
    pub fn new() -> Arc<Quota> {
        Arc::new(Quota::default())
    }

    /// Admit a request or say why not. Nothing is taken unless every check passes.
    pub fn admit(self: &Arc<Self>, ask: &Ask<'_>) -> Result<Admission, Denied> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        let mut pools = self.pools.lock();
        let tc = tokens.entry(ask.jti.to_owned()).or_default();
        tc.sync_limits(&ask.token_limits, now);
        let ps = pools.entry(ask.pool.to_owned()).or_default();
        ps.counters.sync_limits(&ask.pool_limits, now);
        tc.check("token", &ask.token_limits, ask.worst_tokens, now)?;
        ps.counters
            .check("pool", &ask.pool_limits, ask.worst_tokens, now)?;
        let mut lease_day = None;
        if let Some(b) = &ask.budget {
            let day = ask.now_ms.div_euclid(window::DAY_MS);
            ps.cap = b.cap.micros();
            let lease = ps.leases.entry(day).or_default();
            lease.first_day = window::first_day(&b.window, ask.now_ms);
            match lease.reserve(ask.worst_cost.micros()) {
                Ok(()) => lease_day = Some(day),
                Err(lease::Short::Money(want)) => {
                    return Err(Denied::NeedsBudget {
                        pool: ask.pool.to_owned(),
                        want,
                    });
                }
                Err(lease::Short::Allowance) => {
                    return Err(Denied::NeedsReport {
                        pool: ask.pool.to_owned(),
                    });
                }
            }
        }
        tc.take(ask.worst_tokens);
        ps.counters.take(ask.worst_tokens);
        let info = RateInfo {
            limit_requests: tc.rpm.as_ref().map(Bucket::capacity),
            remaining_requests: tc.rpm.as_ref().map(Bucket::remaining),
            limit_tokens: tc.tpm.as_ref().map(Bucket::capacity),
            remaining_tokens: tc.tpm.as_ref().map(Bucket::remaining),
        };
        Ok(Admission {
            quota: Arc::clone(self),
            jti: ask.jti.to_owned(),
            pool: ask.pool.to_owned(),
            reserved_tokens: ask.worst_tokens,
            reserved_cost: ask.worst_cost,
            lease_day,
            rate: info,
            settled: false,
        })
    }

    /// What this replica has spent from its leases of a pool (tests, admin).
    pub fn spent(&self, pool: &str) -> Usd {
        self.pools
            .lock()
            .get(pool)
            .map_or(Usd::ZERO, |p| Usd(p.leases.values().map(|l| l.spent).sum()))
    }

    /// Add money the store granted to this replica's lease of `pool` on `day`.
    pub fn grant(&self, pool: &str, day: i64, amount: i64) {
        let mut pools = self.pools.lock();
        pools
            .entry(pool.to_owned())
            .or_default()
            .leases
            .entry(day)
            .or_default()
            .grant(amount);
    }

    /// Take up to `amount` of available money out of a lease, to hand back to the store.
    /// Returns what was taken. A past day's lease with nothing left is forgotten.
    pub fn take_back(&self, pool: &str, day: i64, amount: i64) -> i64 {
        let mut pools = self.pools.lock();
        let Some(ps) = pools.get_mut(pool) else {
            return 0;
        };
        let Some(l) = ps.leases.get_mut(&day) else {
            return 0;
        };
        let x = amount.clamp(0, l.available.max(0));
        l.give_back(x);
        x
    }

    /// Forget leases of days before `today` that hold nothing and reserve nothing.
    pub fn forget_spent_leases(&self, today: i64) {
        for ps in self.pools.lock().values_mut() {
            ps.leases
                .retain(|day, l| *day >= today || l.reserved > 0 || l.available > 0);
        }
    }

    /// Every lease, for the background task.
    pub fn leases(&self) -> Vec<LeaseState> {
        let pools = self.pools.lock();
        let mut out = Vec::new();
        for (pool, ps) in pools.iter() {
            for (day, l) in &ps.leases {
                out.push(LeaseState {
                    pool: pool.clone(),
                    day: *day,
                    first_day: l.first_day,
                    cap: ps.cap,
                    available: l.available,
                    reserved: l.reserved,
                });
            }
        }
        out
    }

    /// Reports of every lease for the next heartbeat; `min_allowance` sizes the allowance
    /// of a pool (given its cap). Their promises apply at once; confirm with
    /// [`Quota::reported`] once stored.
    pub fn pending_reports(&self, min_allowance: impl Fn(i64) -> i64) -> Vec<PendingReport> {
        let mut pools = self.pools.lock();
        let mut out = Vec::new();
        for (pool, ps) in pools.iter_mut() {
            let min = min_allowance(ps.cap);
            for (day, l) in ps.leases.iter_mut() {
                let (available, allowance) = l.begin_report(min);
                out.push(PendingReport {
                    pool: pool.clone(),
                    day: *day,
                    available,
                    allowance,
                });
            }
        }
        out
    }

    /// The reports were stored: their allowances are now in force.
    pub fn reported(&self, reports: &[PendingReport]) {
        let mut pools = self.pools.lock();
        for r in reports {
            if let Some(l) = pools
                .get_mut(&r.pool)
                .and_then(|ps| ps.leases.get_mut(&r.day))
            {
                l.confirm_report(r.available, r.allowance);
            }
        }
    }

    /// Forget per-token counters idle for longer than `idle` (called periodically).
    pub fn forget_idle_tokens(&self, idle: std::time::Duration) {
        let now = Instant::now();
        self.tokens
            .lock()
            .retain(|_, c| c.in_flight > 0 || now.saturating_duration_since(c.last_used) < idle);
    }

    fn settle(&self, a: &Admission, tokens: u64, cost: Usd) {
        if let Some(tc) = self.tokens.lock().get_mut(&a.jti) {
            tc.settle(a.reserved_tokens, tokens);
        }
        if let Some(ps) = self.pools.lock().get_mut(&a.pool) {
            ps.counters.settle(a.reserved_tokens, tokens);
            if let Some(l) = a.lease_day.and_then(|d| ps.leases.get_mut(&d)) {
                l.settle(a.reserved_cost.micros(), cost.micros());
            }
        }
    }
}

/// A request's reservation. Settle it with the actual usage; dropping it unsettled (a client
/// that vanished mid-stream, a panic) charges the reserved worst case, never less.
pub struct Admission {
    quota: Arc<Quota>,
    jti: String,
    pool: String,
    reserved_tokens: u64,
    reserved_cost: Usd,
    lease_day: Option<i64>,
    rate: RateInfo,
    settled: bool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("pool", &self.pool)
            .field("reserved_tokens", &self.reserved_tokens)
            .field("reserved_cost", &self.reserved_cost)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Rate-limit figures at admission, for response headers.
    pub fn rate_info(&self) -> RateInfo {
        self.rate
    }

    /// The reserved worst case.
    pub fn reserved(&self) -> (u64, Usd) {
        (self.reserved_tokens, self.reserved_cost)
    }

    /// Record the actual usage and release the reservation.
    pub fn settle(mut self, tokens: u64, cost: Usd) {
        self.quota.settle(&self, tokens, cost);
        self.settled = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.settled {
            self.quota
                .settle(self, self.reserved_tokens, self.reserved_cost);
        }
    }
}

#[cfg(test)]
mod tests;
