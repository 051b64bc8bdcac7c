//! The rate lease manager: leases units of the fleet-wide per-minute windows from the store
//! for this replica's [`Quota`]. A background tick tops up windows running low and leases the
//! next minute's first slice ahead of time, so the request path rarely waits on the store;
//! the hot path calls [`RateLeases::refill`] only when a window is short.
//!
//! If the store cannot be reached, a window gets one slice of its own once per minute (the
//! outage allowance): limits keep holding within one slice per replica and window, and traffic
//! is not refused only because the database is down.

use crate::quota::rate::{self, MINUTE_MS};
use crate::quota::{Quota, RateNeed};
use crate::store::{RateAsk, Store, StoreError};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often windows are topped up.
pub const TICK: Duration = Duration::from_secs(1);

/// The manager.
pub struct RateLeases {
    store: Store,
    quota: Arc<Quota>,
    /// Windows that took their outage allowance, by (store key, minute).
    outage: Mutex<HashSet<(String, i64)>>,
    /// The minute whose past windows were last deleted from the store.
    forgotten_before: AtomicI64,
}

impl RateLeases {
    /// A manager for this replica's ledger.
    pub fn new(store: Store, quota: Arc<Quota>) -> Arc<RateLeases> {
        Arc::new(RateLeases {
            store,
            quota,
            outage: Mutex::new(HashSet::new()),
            forgotten_before: AtomicI64::new(0),
        })
    }

    /// Lease what `need` asks for (at least a slice). Returns `Ok(false)` when the window
    /// could not be filled: the fleet used it up, or the store is down and the outage
    /// allowance is spent; the next admission then says how long to wait.
    pub async fn refill(&self, need: &RateNeed) -> bool {
        let want = need.want.max(rate::slice(need.limit));
        match self.acquire(need, want).await {
            Ok(got) => got >= need.want,
            Err(e) => {
                let key = (need.scope.key(), need.minute);
                let first = self.outage.lock().insert(key);
                let allowance = if first { rate::slice(need.limit) } else { 0 };
                tracing::warn!(scope = need.scope.kind.as_str(), unit = need.scope.unit.as_str(), error = %e,
                    allowance, "rate window could not be leased from the store; serving from the outage allowance");
                // Recorded as fully granted only when the allowance covers the need, so a
                // second outage in the minute finds the window full rather than asking again.
                self.quota
                    .grant_rate(&need.scope, need.minute, allowance, want, need.limit);
                allowance >= need.want
            }
        }
    }

    async fn acquire(&self, need: &RateNeed, want: u64) -> Result<u64, StoreError> {
        let (got, fleet) = self
            .store
            .acquire_rate(&need.scope.key(), need.minute, need.limit, want)
            .await?;
        self.quota
            .grant_rate(&need.scope, need.minute, got, want, fleet);
        Ok(got)
    }

    /// One upkeep round: top up, lease ahead (every window in one batch of statements), and
    /// forget past windows once a minute.
    pub async fn tick(&self, now_ms: i64) {
        let needs = self.quota.rate_needs(now_ms);
        if !needs.is_empty() {
            let asks: Vec<RateAsk> = needs
                .iter()
                .map(|n| RateAsk {
                    scope: n.scope.key(),
                    minute: n.minute,
                    limit: n.limit,
                    want: n.want,
                })
                .collect();
            match self.store.acquire_rates(&asks).await {
                Ok(granted) => {
                    for (need, (got, fleet)) in needs.iter().zip(granted) {
                        self.quota
                            .grant_rate(&need.scope, need.minute, got, need.want, fleet);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, windows = needs.len(), "rate window upkeep failed; retried next tick");
                }
            }
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        if self.forgotten_before.fetch_max(minute, Ordering::Relaxed) < minute {
            self.outage.lock().retain(|(_, m)| *m >= minute);
            if let Err(e) = self.store.forget_rate_windows(minute - 1).await {
                tracing::debug!(error = %e, "past rate windows not deleted; retried next minute");
            }
        }
    }

    /// Run the upkeep every [`TICK`] until cancelled.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        crate::tasks::every(TICK, cancel, move || {
            let this = Arc::clone(&self);
            async move { this.tick(crate::clock::ledger_ms()).await }
        })
    }
}
