//! Rate limits, concurrency and budgets on the hot path, all in memory.
//!
//! A request is *admitted* with its worst case (estimated input + `max_tokens`, priced) and
//! *settled* with its actual usage; the difference is returned. Limits apply per token (from
//! its claims) and per pool (from policy).
//!
//! Per-minute limits are fleet-wide too: each is counted in UTC-minute windows whose units a
//! replica leases from the store ([`rate`]); when a window is short, admission says so
//! ([`Denied::NeedsRate`]) and the caller leases more and asks again. Concurrency is counted
//! per replica.
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

pub mod increases;
pub mod lease;
pub mod rate;
mod window;

pub use increases::Increases;
pub use window::{first_day, window_start};

use crate::policy::BudgetWindow;
use crate::pricing::Usd;
use parking_lot::Mutex;
use rate::{Short, Window};
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
#[derive(Debug, Clone)]
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
    /// This replica's share of a per-minute window is used up: lease more and ask again.
    #[error("the {} per-minute window of this {} needs {} more leased", .0.scope.unit.as_str(), .0.scope.kind.as_str(), .0.want)]
    NeedsRate(RateNeed),
    /// This replica must report its lease (heartbeat) before reserving more.
    #[error("budget lease of pool {pool} must be reported before more is reserved")]
    NeedsReport {
        /// Pool name.
        pool: String,
    },
}

/// Whose per-minute limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateKind {
    /// A token's own limit (from its claims), keyed by its `jti`.
    Token,
    /// A pool's limit (from policy).
    Pool,
    /// A deployment's limit (from policy: the provider's own limit of its key), keyed
    /// `model/deployment`.
    Deployment,
}

impl RateKind {
    /// `token` / `pool`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Token => "token",
            RateKind::Pool => "pool",
            RateKind::Deployment => "deployment",
        }
    }
}

/// What a per-minute limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateUnit {
    /// Requests.
    Requests,
    /// Input + output tokens.
    Tokens,
}

impl RateUnit {
    /// `requests` / `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Requests => "requests",
            RateUnit::Tokens => "tokens",
        }
    }
}

/// One per-minute limit of one token or pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateScope {
    /// Token or pool.
    pub kind: RateKind,
    /// The `jti` or the pool name.
    pub name: String,
    /// Requests or tokens.
    pub unit: RateUnit,
}

impl RateScope {
    /// The store's key of this limit's windows (`requests:pool:main`).
    pub fn key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.unit.as_str(),
            self.kind.as_str(),
            self.name
        )
    }
}

/// Units of a per-minute window to lease from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateNeed {
    /// Which limit.
    pub scope: RateScope,
    /// The window (unix minute).
    pub minute: i64,
    /// The limit: what the store may grant the fleet for the window.
    pub limit: u64,
    /// Units wanted.
    pub want: u64,
}

/// Limits and remaining capacity, for `x-ratelimit-*` headers: per unit, the tighter of the
/// token's own window and its pool's.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateInfo {
    /// Until the current windows end (`x-ratelimit-reset-*`).
    pub reset_ms: i64,
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
    rpm: Option<Window>,
    tpm: Option<Window>,
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
    fn sync_limits(&mut self, l: &Limits, now_ms: i64) {
        sync_window(&mut self.rpm, l.rpm.map(u64::from), now_ms);
        sync_window(&mut self.tpm, l.tpm, now_ms);
    }

    fn check(
        &mut self,
        kind: RateKind,
        name: &str,
        l: &Limits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<(), Denied> {
        let scope = kind.as_str();
        if let Some(c) = l.concurrency
            && self.in_flight >= c
        {
            return Err(Denied::Concurrency { scope, limit: c });
        }
        if let Some(w) = &mut self.tpm
            && tokens > w.limit()
        {
            return Err(Denied::TooLarge {
                scope,
                needed: tokens,
                limit: w.limit(),
            });
        }
        for (w, unit, n) in [
            (&mut self.rpm, RateUnit::Requests, 1),
            (&mut self.tpm, RateUnit::Tokens, tokens),
        ] {
            let Some(w) = w else { continue };
            match w.check(n, now_ms) {
                Ok(()) => {}
                Err(Short::Full { retry_after }) => {
                    return Err(Denied::Rate {
                        scope,
                        unit: unit.as_str(),
                        limit: w.limit(),
                        retry_after,
                    });
                }
                Err(Short::Lease { minute, want }) => {
                    return Err(Denied::NeedsRate(RateNeed {
                        scope: RateScope {
                            kind,
                            name: name.to_owned(),
                            unit,
                        },
                        minute,
                        limit: w.limit(),
                        want,
                    }));
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, tokens: u64) {
        self.in_flight += 1;
        self.last_used = Instant::now();
        if let Some(w) = &mut self.rpm {
            w.take(1);
        }
        if let Some(w) = &mut self.tpm {
            w.take(tokens);
        }
    }

    fn settle(&mut self, minute: i64, reserved: u64, actual: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(w) = &mut self.tpm {
            w.settle(minute, reserved, actual);
        }
    }

    fn window(&mut self, unit: RateUnit) -> Option<&mut Window> {
        match unit {
            RateUnit::Requests => self.rpm.as_mut(),
            RateUnit::Tokens => self.tpm.as_mut(),
        }
    }

    /// Leases the upkeep should take for this token's or pool's windows: a top-up when the
    /// current window runs low, and, near the end of a minute, the next minute's first slice
    /// of every window used in the last [`LEASE_AHEAD_IDLE`] minutes — so a token calling
    /// every few minutes finds its window leased, not only one calling every minute.
    fn needs(&self, kind: RateKind, name: &str, now_ms: i64, out: &mut Vec<RateNeed>) {
        let minute = now_ms.div_euclid(rate::MINUTE_MS);
        let ahead = now_ms.rem_euclid(rate::MINUTE_MS) >= LEASE_AHEAD_MS;
        for (w, unit) in [
            (&self.rpm, RateUnit::Requests),
            (&self.tpm, RateUnit::Tokens),
        ] {
            let Some(w) = w else { continue };
            if w.last_active() < minute - LEASE_AHEAD_IDLE {
                continue;
            }
            let slice = rate::slice(w.limit());
            let scope = || RateScope {
                kind,
                name: name.to_owned(),
                unit,
            };
            let current = w.minute() == minute;
            if current && w.used() > 0 && !w.is_full() && w.available() < slice.div_ceil(2) {
                out.push(RateNeed {
                    scope: scope(),
                    minute,
                    limit: w.limit(),
                    want: slice,
                });
            }
            // A window still at an earlier minute has nothing for the next one yet.
            if ahead && !(current && w.leased_ahead() > 0) {
                out.push(RateNeed {
                    scope: scope(),
                    minute: minute + 1,
                    limit: w.limit(),
                    want: slice,
                });
            }
        }
    }
}

/// Minutes a window may go unused and still be leased ahead.
const LEASE_AHEAD_IDLE: i64 = 5;

/// Past this point of a minute the upkeep leases the next minute's first slice of every
/// window in use, so a new minute starts without a store round trip.
const LEASE_AHEAD_MS: i64 = 55_000;

fn sync_window(slot: &mut Option<Window>, limit: Option<u64>, now_ms: i64) {
    match (slot.as_mut(), limit) {
        (Some(w), Some(l)) => w.resize(l),
        (None, Some(l)) => *slot = Some(Window::new(l, now_ms)),
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
    /// The window (its first day) and cap at which the fleet refused this replica money: an
    /// `at_cap: degrade` pool then serves only its cheapest model until the window ends or
    /// the policy changes the cap.
    capped_window: Option<(i64, i64)>,
    /// Requests waiting for capacity (`at_cap: queue`).
    waiting: u32,
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
    /// Held in all (available + reserved + spent).
    pub held: i64,
}

/// The in-memory ledger of one replica.
#[derive(Default)]
pub struct Quota {
    tokens: Mutex<HashMap<String, Counters>>,
    pools: Mutex<HashMap<String, PoolState>>,
    deployments: Mutex<HashMap<String, Counters>>,
    /// Woken (one waiter per settlement) when a reservation is released.
    released: tokio::sync::Notify,
}

/// A place in a pool's queue; dropping it leaves the queue.
pub struct QueueSlot {
    quota: Arc<Quota>,
    pool: String,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if let Some(ps) = self.quota.pools.lock().get_mut(&self.pool) {
            ps.waiting = ps.waiting.saturating_sub(1);
        }
    }
}

impl Quota {
    /// An empty ledger.
    pub fn new() -> Arc<Quota> {
        Arc::new(Quota::default())
    }

    /// Admit a request or say why not. Nothing is taken unless every check passes.
    pub fn admit(self: &Arc<Self>, ask: &Ask<'_>) -> Result<Admission, Denied> {
        let now = ask.now_ms;
        let mut tokens = self.tokens.lock();
        let mut pools = self.pools.lock();
        let tc = tokens.entry(ask.jti.to_owned()).or_default();
        tc.sync_limits(&ask.token_limits, now);
        let ps = pools.entry(ask.pool.to_owned()).or_default();
        ps.counters.sync_limits(&ask.pool_limits, now);
        tc.check(
            RateKind::Token,
            ask.jti,
            &ask.token_limits,
            ask.worst_tokens,
            now,
        )?;
        ps.counters.check(
            RateKind::Pool,
            ask.pool,
            &ask.pool_limits,
            ask.worst_tokens,
            now,
        )?;
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
        // A client paces itself by the tighter of its token's and its pool's windows.
        let tighter = |t: Option<&Window>, p: Option<&Window>| {
            let w = match (t, p) {
                (Some(t), Some(p)) if p.remaining() < t.remaining() => Some(p),
                (Some(t), _) => Some(t),
                (None, p) => p,
            };
            (w.map(Window::limit), w.map(Window::remaining))
        };
        let (limit_requests, remaining_requests) =
            tighter(tc.rpm.as_ref(), ps.counters.rpm.as_ref());
        let (limit_tokens, remaining_tokens) = tighter(tc.tpm.as_ref(), ps.counters.tpm.as_ref());
        let info = RateInfo {
            limit_requests,
            remaining_requests,
            limit_tokens,
            remaining_tokens,
            reset_ms: rate::MINUTE_MS - now.rem_euclid(rate::MINUTE_MS),
        };
        Ok(Admission {
            quota: Arc::clone(self),
            jti: ask.jti.to_owned(),
            pool: ask.pool.to_owned(),
            reserved_tokens: ask.worst_tokens,
            reserved_cost: ask.worst_cost,
            minute: now.div_euclid(rate::MINUTE_MS),
            lease_day,
            rate: info,
            settled: false,
        })
    }

    /// Join `pool`'s queue unless `max` requests already wait in it on this replica.
    pub fn enqueue(self: &Arc<Self>, pool: &str, max: u32) -> Option<QueueSlot> {
        let mut pools = self.pools.lock();
        let ps = pools.entry(pool.to_owned()).or_default();
        if ps.waiting >= max {
            return None;
        }
        ps.waiting += 1;
        Some(QueueSlot {
            quota: Arc::clone(self),
            pool: pool.to_owned(),
        })
    }

    /// Resolves when a reservation is released (at most one waiter per release; waiters
    /// also poll, so a wake-up missed between two checks only delays them).
    pub async fn released(&self) {
        self.released.notified().await;
    }

    /// The fleet refused this replica money for `pool`'s window starting on `first_day`
    /// under `cap`.
    pub fn mark_capped(&self, pool: &str, first_day: i64, cap: Usd) {
        self.pools
            .lock()
            .entry(pool.to_owned())
            .or_default()
            .capped_window = Some((first_day, cap.micros()));
    }

    /// Was `pool` refused money at `cap` in the window starting on `first_day`?
    pub fn is_capped(&self, pool: &str, first_day: i64, cap: Usd) -> bool {
        self.pools
            .lock()
            .get(pool)
            .is_some_and(|p| p.capped_window == Some((first_day, cap.micros())))
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
                    held: l.held(),
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

    /// The store grants only `granted` for `pool`'s lease on `day`: what this replica holds
    /// beyond it was reclaimed while the replica looked dead (a stalled upkeep), and is given
    /// up here. Returns what was given up.
    pub fn reconcile(&self, pool: &str, day: i64, granted: i64) -> i64 {
        let mut pools = self.pools.lock();
        let Some(l) = pools.get_mut(pool).and_then(|ps| ps.leases.get_mut(&day)) else {
            return 0;
        };
        let lost = (l.held() - granted).clamp(0, l.available.max(0));
        if lost > 0 {
            l.give_back(lost);
        }
        lost
    }

    /// Add units the store granted (`got` of `asked`; `fleet` in the window in all) to a
    /// per-minute window.
    pub fn grant_rate(&self, scope: &RateScope, minute: i64, got: u64, asked: u64, fleet: u64) {
        let w = match scope.kind {
            RateKind::Token => self.tokens.lock().get_mut(&scope.name).and_then(|c| {
                c.window(scope.unit)
                    .map(|w| w.grant(minute, got, asked, fleet))
            }),
            RateKind::Pool => self.pools.lock().get_mut(&scope.name).and_then(|p| {
                p.counters
                    .window(scope.unit)
                    .map(|w| w.grant(minute, got, asked, fleet))
            }),
            RateKind::Deployment => self.deployments.lock().get_mut(&scope.name).and_then(|c| {
                c.window(scope.unit)
                    .map(|w| w.grant(minute, got, asked, fleet))
            }),
        };
        if w.is_none() {
            tracing::debug!(
                scope = scope.kind.as_str(),
                "rate lease for a limit no longer in use"
            );
        }
    }

    /// The rate leases the upkeep should take now (see [`LEASE_AHEAD_MS`]).
    pub fn rate_needs(&self, now_ms: i64) -> Vec<RateNeed> {
        let mut out = Vec::new();
        for (jti, c) in self.tokens.lock().iter() {
            c.needs(RateKind::Token, jti, now_ms, &mut out);
        }
        for (pool, p) in self.pools.lock().iter() {
            p.counters.needs(RateKind::Pool, pool, now_ms, &mut out);
        }
        for (name, c) in self.deployments.lock().iter() {
            c.needs(RateKind::Deployment, name, now_ms, &mut out);
        }
        out
    }

    /// Forget per-token counters idle for longer than `idle` (called periodically).
    pub fn forget_idle_tokens(&self, idle: std::time::Duration) {
        let now = Instant::now();
        self.tokens
            .lock()
            .retain(|_, c| c.in_flight > 0 || now.saturating_duration_since(c.last_used) < idle);
    }

    /// Take one request of `tokens` (worst case) from deployment `name`'s limits, or say why
    /// not: [`Denied::Rate`] (its window is full: try another deployment),
    /// [`Denied::NeedsRate`] (lease more and ask again), [`Denied::Concurrency`].
    pub fn take_deployment(
        self: &Arc<Self>,
        name: &str,
        limits: &Limits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<DeploymentSlot, Denied> {
        let mut deployments = self.deployments.lock();
        let c = deployments.entry(name.to_owned()).or_default();
        c.sync_limits(limits, now_ms);
        c.check(RateKind::Deployment, name, limits, tokens, now_ms)?;
        c.take(tokens);
        Ok(DeploymentSlot {
            quota: Arc::clone(self),
            name: name.to_owned(),
            reserved_tokens: tokens,
            minute: now_ms.div_euclid(rate::MINUTE_MS),
            settled: false,
        })
    }

    fn settle_deployment(&self, s: &DeploymentSlot, tokens: u64) {
        if let Some(c) = self.deployments.lock().get_mut(&s.name) {
            c.settle(s.minute, s.reserved_tokens, tokens);
        }
    }

    fn settle(&self, a: &Admission, tokens: u64, cost: Usd) {
        if let Some(tc) = self.tokens.lock().get_mut(&a.jti) {
            tc.settle(a.minute, a.reserved_tokens, tokens);
        }
        if let Some(ps) = self.pools.lock().get_mut(&a.pool) {
            ps.counters.settle(a.minute, a.reserved_tokens, tokens);
            if let Some(l) = a.lease_day.and_then(|d| ps.leases.get_mut(&d)) {
                l.settle(a.reserved_cost.micros(), cost.micros());
            }
        }
        self.released.notify_one();
    }
}

/// One attempt's share of a deployment's limits. Settle it with the tokens the attempt used
/// (0 when the provider did no work); dropped unsettled it keeps the worst case.
pub struct DeploymentSlot {
    quota: Arc<Quota>,
    name: String,
    reserved_tokens: u64,
    minute: i64,
    settled: bool,
}

impl std::fmt::Debug for DeploymentSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentSlot")
            .field("name", &self.name)
            .field("reserved_tokens", &self.reserved_tokens)
            .finish_non_exhaustive()
    }
}

impl DeploymentSlot {
    /// Release the slot, counting `tokens` against the deployment's token window.
    pub fn settle(mut self, tokens: u64) {
        self.quota.settle_deployment(&self, tokens);
        self.settled = true;
    }
}

impl Drop for DeploymentSlot {
    fn drop(&mut self) {
        if !self.settled {
            self.quota.settle_deployment(self, self.reserved_tokens);
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
    /// The rate window the reservation was taken from.
    minute: i64,
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
