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
use tokio::sync::oneshot;
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
    /// Inline leases waiting for the next statement, and whether a task is sending them.
    inline: Mutex<Inline>,
}

/// Requests that found their window short, batched like a group commit: while one statement
/// is in flight the next ones queue, and the next statement leases them all — so a burst of
/// new tokens (each one's first request leases its windows) costs a few statements, not one
/// per request.
#[derive(Default)]
struct Inline {
    queue: Vec<(RateNeed, oneshot::Sender<bool>)>,
    sending: bool,
}

impl RateLeases {
    /// A manager for this replica's ledger.
    pub fn new(store: Store, quota: Arc<Quota>) -> Arc<RateLeases> {
        Arc::new(RateLeases {
            store,
            quota,
            outage: Mutex::new(HashSet::new()),
            forgotten_before: AtomicI64::new(0),
            inline: Mutex::new(Inline::default()),
        })
    }

    /// Lease what `need` asks for (at least a slice). Returns `false` when the window could
    /// not be filled: the fleet used it up, or the store is down and the outage allowance is
    /// spent; the next admission then says how long to wait. The statement runs in a task of
    /// its own, so a caller that goes away never strands the requests batched with it.
    pub async fn refill(self: &Arc<Self>, need: &RateNeed) -> bool {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut inline = self.inline.lock();
            inline.queue.push((need.clone(), tx));
            !std::mem::replace(&mut inline.sending, true)
        };
        if start {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut inline = this.inline.lock();
                        if inline.queue.is_empty() {
                            inline.sending = false;
                            break;
                        }
                        std::mem::take(&mut inline.queue)
                    };
                    this.lease_batch(batch).await;
                }
            });
        }
        rx.await.unwrap_or(false)
    }

    /// One statement for every window in `batch` (a window asked twice is leased once, for
    /// the larger want); each waiter learns whether its own need was met.
    async fn lease_batch(&self, batch: Vec<(RateNeed, oneshot::Sender<bool>)>) {
        let mut groups: Vec<(RateNeed, u64)> = Vec::new();
        let mut of: Vec<usize> = Vec::with_capacity(batch.len());
        for (need, _) in &batch {
            let want = need.want.max(rate::slice(need.limit));
            match groups
                .iter()
                .position(|(g, _)| g.minute == need.minute && g.scope == need.scope)
            {
                Some(i) => {
                    groups[i].1 = groups[i].1.max(want);
                    of.push(i);
                }
                None => {
                    of.push(groups.len());
                    groups.push((need.clone(), want));
                }
            }
        }
        let asks: Vec<RateAsk> = groups
            .iter()
            .map(|(n, want)| RateAsk {
                scope: n.scope.key(),
                minute: n.minute,
                limit: n.limit,
                want: *want,
            })
            .collect();
        let got: Vec<u64> = match self.store.acquire_rates(&asks).await {
            Ok(granted) => groups
                .iter()
                .zip(granted)
                .map(|((n, want), (got, fleet))| {
                    self.quota.grant_rate(&n.scope, n.minute, got, *want, fleet);
                    got
                })
                .collect(),
            Err(e) => groups
                .iter()
                .map(|(n, want)| self.outage_allowance(n, *want, &e))
                .collect(),
        };
        for ((need, tx), g) in batch.into_iter().zip(of) {
            let _ = tx.send(got[g] >= need.want);
        }
    }

    /// The store could not lease `need`'s window: grant one slice of it once per minute.
    fn outage_allowance(&self, need: &RateNeed, want: u64, e: &StoreError) -> u64 {
        let key = (need.scope.key(), need.minute);
        let first = self.outage.lock().insert(key);
        let allowance = if first { rate::slice(need.limit) } else { 0 };
        tracing::warn!(scope = need.scope.kind.as_str(), unit = need.scope.unit.as_str(), error = %e,
            allowance, "rate window could not be leased from the store; serving from the outage allowance");
        // Recorded as fully granted only when the allowance covers the need, so a second
        // outage in the minute finds the window full rather than asking again.
        self.quota
            .grant_rate(&need.scope, need.minute, allowance, want, need.limit);
        allowance
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::Usd;
    use crate::quota::{Ask, Denied, Limits};

    fn ask(jti: &str, now_ms: i64) -> Ask<'_> {
        Ask {
            jti,
            token_limits: Limits {
                rpm: Some(100), // slices of 5
                ..Limits::default()
            },
            pool: "p",
            pool_limits: Limits::default(),
            budget: None,
            worst_tokens: 1,
            worst_cost: Usd(1),
            now_ms,
        }
    }

    fn need(quota: &Arc<Quota>, a: &Ask<'_>) -> RateNeed {
        match quota.admit(a) {
            Err(Denied::NeedsRate(n)) => n,
            other => panic!("expected a lease to be needed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_inline_leases_share_statements_and_each_gets_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let quota = Quota::new();
        let rates = RateLeases::new(store.clone(), Arc::clone(&quota));
        let now = crate::clock::ledger_ms();
        let jtis: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let mut needs: Vec<RateNeed> = jtis.iter().map(|j| need(&quota, &ask(j, now))).collect();
        // The same window asked twice at once is leased once.
        needs.push(needs[0].clone());
        let met = futures_util::future::join_all(needs.iter().map(|n| rates.refill(n))).await;
        assert!(met.iter().all(|m| *m), "{met:?}");
        for j in &jtis {
            for _ in 0..5 {
                quota.admit(&ask(j, now)).unwrap().settle(1, Usd::ZERO);
            }
        }
        assert!(
            matches!(quota.admit(&ask("t0", now)), Err(Denied::NeedsRate(_))),
            "one slice of 5, not two"
        );
        let minute = now.div_euclid(MINUTE_MS);
        assert_eq!(
            store
                .acquire_rate("requests:token:t0", minute, 100, 0)
                .await
                .unwrap(),
            (0, 5)
        );

        // The store goes away: a window gets one slice of its own per minute, then is full.
        store.close().await;
        let n = need(&quota, &ask("fresh", now));
        assert!(rates.refill(&n).await, "the outage allowance covers it");
        for _ in 0..5 {
            quota
                .admit(&ask("fresh", now))
                .unwrap()
                .settle(1, Usd::ZERO);
        }
        let n = need(&quota, &ask("fresh", now));
        assert!(
            !rates.refill(&n).await,
            "one allowance per window and minute"
        );
        assert!(matches!(
            quota.admit(&ask("fresh", now)),
            Err(Denied::Rate { .. })
        ));
    }
}
