//! The budget lease manager: moves money between this replica's [`Quota`] leases and the
//! store (DESIGN.md "Quotas across replicas"). A background tick every second reports the
//! leases (heartbeat), tops up those running low, hands back surplus and past days' leftovers,
//! and reclaims what dead replicas promised not to use. The hot path calls [`Leases::refill`]
//! only when a lease is short.

use crate::quota::Quota;
use crate::store::{DAY_MS, LeaseReport, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often leases are reported and rebalanced.
pub const TICK: Duration = Duration::from_secs(1);
/// A replica silent for this long is dead: its promised-unused money is reclaimed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// The slice of a pool's cap a replica leases at a time.
pub fn slice(cap: i64) -> i64 {
    (cap / 20).max(1)
}

/// The smallest allowance a replica reports: what it may still reserve if the database
/// becomes unreachable (and what is lost for the window if it dies).
fn allowance_floor(cap: i64) -> i64 {
    slice(cap)
}

/// What the hot path needs from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// At least this much more money in today's lease of the pool.
    Money(i64),
    /// A fresh report (the allowance is used up).
    Report,
}

/// The manager.
pub struct Leases {
    store: Store,
    quota: Arc<Quota>,
    replica: String,
    /// One store conversation at a time per replica (inline refills and the tick).
    busy: tokio::sync::Mutex<()>,
    /// Set by [`Leases::release_all`]: nothing is acquired afterwards. The upkeep task still
    /// runs until the shutdown cancels it, and a top-up then would hold a slice no one
    /// hands back until the lease TTL reclaims it.
    closed: AtomicBool,
}

impl Leases {
    /// A manager for this replica (a fresh id per process).
    pub fn new(store: Store, quota: Arc<Quota>) -> Arc<Leases> {
        Arc::new(Leases {
            store,
            quota,
            replica: uuid::Uuid::new_v4().to_string(),
            busy: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    /// This replica's id in `replicas` and `budget_leases`.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Satisfy `need` for `pool` now. Returns `Ok(false)` when the window is exhausted.
    pub async fn refill(&self, pool: &str, need: Need) -> Result<bool, StoreError> {
        let _busy = self.busy.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        match need {
            Need::Report => {
                self.report().await?;
                Ok(true)
            }
            Need::Money(want) => {
                let now = crate::clock::ledger_ms();
                let day = now.div_euclid(DAY_MS);
                let Some(l) = self
                    .quota
                    .leases()
                    .into_iter()
                    .find(|l| l.pool == pool && l.day == day)
                else {
                    return Ok(false);
                };
                let got = self
                    .store
                    .acquire_budget(
                        &self.replica,
                        pool,
                        l.first_day,
                        day,
                        l.cap,
                        want.max(slice(l.cap)),
                        now,
                    )
                    .await?;
                self.quota.grant(pool, day, got);
                Ok(got >= want)
            }
        }
    }

    async fn report(&self) -> Result<(), StoreError> {
        let pending = self.quota.pending_reports(allowance_floor);
        let reports: Vec<LeaseReport> = pending
            .iter()
            .map(|p| LeaseReport {
                pool: p.pool.clone(),
                day: p.day,
                available: p.available,
                allowance: p.allowance,
                held: p.held,
            })
            .collect();
        let granted = self.store.heartbeat(&self.replica, &reports).await?;
        self.quota.reported(&pending);
        for (pool, day, g) in granted {
            let lost = self.quota.reconcile(&pool, day, g);
            if lost > 0 {
                tracing::warn!(pool = %pool, micro_usd = lost,
                    "budget lease was reclaimed while this replica was alive (its upkeep stalled past the lease TTL); dropped from memory");
            }
        }
        Ok(())
    }

    /// One round of upkeep.
    pub async fn tick(&self) -> Result<(), StoreError> {
        let _busy = self.busy.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = crate::clock::ledger_ms();
        let today = now.div_euclid(DAY_MS);
        for l in self.quota.leases() {
            let s = slice(l.cap);
            if l.day < today {
                // Yesterday's leftovers go back to yesterday's row.
                self.give_back(&l.pool, l.day, l.available).await?;
            } else if l.available > 2 * s {
                self.give_back(&l.pool, l.day, l.available - s).await?;
            } else if l.available < s / 2 && l.cap > 0 {
                let first = if l.first_day > 0 { l.first_day } else { today };
                let got = self
                    .store
                    .acquire_budget(&self.replica, &l.pool, first, l.day, l.cap, s, now)
                    .await?;
                self.quota.grant(&l.pool, l.day, got);
            }
        }
        self.quota.forget_spent_leases(today);
        self.report().await?;
        let ttl = i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
        let reclaimed = self.store.reclaim_expired(ttl).await?;
        if reclaimed > 0 {
            tracing::info!(
                micro_usd = reclaimed,
                "reclaimed budget leases of replicas that stopped reporting"
            );
        }
        Ok(())
    }

    async fn give_back(&self, pool: &str, day: i64, amount: i64) -> Result<(), StoreError> {
        let taken = self.quota.take_back(pool, day, amount);
        if taken > 0 {
            let back = self
                .store
                .return_budget(&self.replica, pool, day, taken)
                .await?;
            // The store holds less than we thought (it should not happen): keep the rest.
            if back < taken {
                self.quota.grant(pool, day, taken - back);
            }
        }
        Ok(())
    }

    /// Hand every unreserved micro-dollar back (shutdown, after the drain).
    pub async fn release_all(&self) {
        let _busy = self.busy.lock().await;
        self.closed.store(true, Ordering::Release);
        for l in self.quota.leases() {
            if let Err(e) = self.give_back(&l.pool, l.day, l.available).await {
                tracing::warn!(pool = %l.pool, error = %e, "budget lease not returned; it is reclaimed after the lease TTL");
            }
        }
        let _ = self.report().await;
    }

    /// Run [`Leases::tick`] every [`TICK`] until cancelled.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        crate::tasks::every(TICK, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                if let Err(e) = this.tick().await {
                    tracing::warn!(error = %e, "budget lease upkeep failed; serving from the leases held");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::Usd;
    use crate::quota::{Ask, BudgetSpec, Denied, Limits};

    async fn sqlite_leases() -> (tempfile::TempDir, Store, Arc<Quota>, Arc<Leases>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let quota = Quota::new();
        let leases = Leases::new(store.clone(), Arc::clone(&quota));
        (dir, store, quota, leases)
    }

    /// A request of pool `p` costing up to 10 µ$, under a daily cap.
    fn ask(cap: i64, now_ms: i64) -> Ask<'static> {
        Ask {
            jti: "t",
            token_limits: Limits::default(),
            pool: "p",
            pool_limits: Limits::default(),
            budget: Some(BudgetSpec {
                cap: Usd(cap),
                window: crate::policy::BudgetWindow::Daily,
            }),
            worst_tokens: 1,
            worst_cost: Usd(10),
            now_ms,
        }
    }

    #[tokio::test]
    async fn nothing_is_acquired_once_the_leases_are_released() {
        let (_dir, store, quota, leases) = sqlite_leases().await;
        let now = crate::clock::ledger_ms();
        let day = now.div_euclid(DAY_MS);
        let ask = ask(1_000, now);
        // The first request finds no lease and fetches one; the tick keeps it topped up.
        let Err(Denied::NeedsBudget { want, .. }) = quota.admit(&ask) else {
            panic!("an empty ledger needs budget");
        };
        assert!(leases.refill("p", Need::Money(want)).await.unwrap());
        let held = store.budget_granted("p", day, day).await.unwrap();
        assert!(held > 0);
        leases.release_all().await;
        assert_eq!(store.budget_granted("p", day, day).await.unwrap(), 0);
        // A lease at zero is one the upkeep would top up: after the release it must not,
        // and neither may a late refill.
        leases.tick().await.unwrap();
        assert!(!leases.refill("p", Need::Money(want)).await.unwrap());
        assert_eq!(
            store.budget_granted("p", day, day).await.unwrap(),
            0,
            "a released replica holds no budget"
        );
    }

    #[tokio::test]
    async fn a_replica_whose_lease_was_reclaimed_while_alive_gives_the_money_up() {
        let (_dir, store, quota, leases) = sqlite_leases().await;
        let now = crate::clock::ledger_ms();
        let day = now.div_euclid(DAY_MS);
        let ask = ask(100_000, now);
        let Err(Denied::NeedsBudget { want, .. }) = quota.admit(&ask) else {
            panic!("an empty ledger needs budget");
        };
        // Far more than the allowance it will promise (a slice of $0.005), so most of it is
        // reclaimable.
        assert!(
            leases
                .refill("p", Need::Money(want.max(50_000)))
                .await
                .unwrap()
        );
        let held = quota.admit(&ask).unwrap();
        leases.report().await.unwrap();
        // Another replica thought this one dead (a negative TTL: every heartbeat is old) and
        // took back what it had promised not to use.
        let taken = store.reclaim_expired(-60_000).await.unwrap();
        assert!(taken > 0);
        leases.report().await.unwrap();
        let granted = store.budget_granted("p", day, day).await.unwrap();
        let l = quota.leases().into_iter().find(|l| l.day == day).unwrap();
        assert_eq!(
            l.available + l.reserved + quota.spent("p").micros(),
            granted,
            "memory holds exactly what the store grants"
        );
        held.settle(1, Usd(5));
    }
}
