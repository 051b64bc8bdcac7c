//! Rate limits, concurrency and budgets on the hot path, all in memory.
//!
//! A request is *admitted* with its worst case (estimated input + `max_tokens`, priced) and
//! *settled* with its actual usage; the difference is returned. Limits apply per token (from
//! its claims) and per pool (from policy). This is the single-replica ledger: the fleet-wide
//! lease protocol of DESIGN.md "Quotas across replicas" replaces the budget part in its own
//! issue; until then each replica enforces its pools' budgets from the spend it has seen
//! (seeded from the store at start).
//!
//! Invariant: on one replica, a pool's `spent + reserved` never exceeds its cap at admission,
//! so the cap holds under any concurrency as long as actual cost ≤ reserved worst case.

mod rate;
mod window;

pub use window::window_start;

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
        "budget of pool {pool} exhausted: {spent} spent of {cap} this window, request may cost up to {worst}"
    )]
    Budget {
        /// Pool name.
        pool: String,
        /// Spent + reserved.
        spent: Usd,
        /// The cap.
        cap: Usd,
        /// The request's worst case.
        worst: Usd,
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
struct BudgetState {
    window_start: i64,
    spent: i64,
    reserved: i64,
}

#[derive(Default)]
struct PoolState {
    counters: Counters,
    budget: BudgetState,
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

    /// Seed a pool's spend in the current window (from the store, at start).
    pub fn seed_spend(&self, pool: &str, window_start: i64, spent: Usd) {
        let mut pools = self.pools.lock();
        let st = pools.entry(pool.to_owned()).or_default();
        st.budget.window_start = window_start;
        st.budget.spent = spent.micros();
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
        if let Some(b) = &ask.budget {
            let start = window::window_start(&b.window, ask.now_ms);
            if window::is_calendar(&b.window) && start > ps.budget.window_start {
                // A new calendar window starts clean, exactly once: later requests see the
                // same start and do not reset again.
                ps.budget.window_start = start;
                ps.budget.spent = 0;
            }
            let committed = ps.budget.spent + ps.budget.reserved;
            if committed.saturating_add(ask.worst_cost.micros()) > b.cap.micros() {
                return Err(Denied::Budget {
                    pool: ask.pool.to_owned(),
                    spent: Usd(committed),
                    cap: b.cap,
                    worst: ask.worst_cost,
                });
            }
        }
        tc.take(ask.worst_tokens);
        ps.counters.take(ask.worst_tokens);
        ps.budget.reserved += ask.worst_cost.micros();
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
            rate: info,
            settled: false,
        })
    }

    /// Remaining budget of a pool in its current window (for tests and the admin API).
    pub fn spent(&self, pool: &str) -> Usd {
        self.pools
            .lock()
            .get(pool)
            .map_or(Usd::ZERO, |p| Usd(p.budget.spent))
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
            ps.budget.reserved -= a.reserved_cost.micros();
            ps.budget.spent += cost.micros();
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
