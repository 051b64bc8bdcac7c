//! The revocation set every request is checked against, in memory (O(1), no I/O).
//!
//! Propagation: on PostgreSQL every change to `revocations` or `pauses` is announced by a
//! trigger (`NOTIFY tollgate_revocations`) and every replica that `LISTEN`s re-reads the set at
//! once (tens of milliseconds across a fleet, see `tests/revocation_propagation.rs`). The
//! periodic re-sync (`revocation_sync_interval`) covers notifications lost while a listener
//! reconnects, and is the only path on SQLite (one node, which applies its own writes at once).
//! Once a minute, entries that can no longer refuse anything (expired, or `jti` ones older than
//! the longest token lifetime) are deleted.
//!
//! The set also holds the anomaly guard's pauses (`pauses`, see [`crate::anomaly`]): a paused
//! subject is refused until an admin lifts the pause, a paused provider key serves nothing.
//!
//! Semantics: a `jti` revocation refuses that token; a `subject`, `team`, `pool`, `issuer` or
//! `pod_uid` revocation refuses every token of that principal issued at or before the
//! revocation, and the token endpoint refuses to mint for it while it is active.

use crate::store::{
    NewRevocation, PauseKind, PauseRecord, RevocationKind, RevocationRecord, Store, StoreError,
};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The largest clock leeway a verifier may be configured with (`token.leeway`, issuers').
const MAX_LEEWAY_SECS: i64 = 5 * 60;
/// How often revocations past their use are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// What is checked about a token or a workload.
#[derive(Debug, Default)]
pub struct Principal<'a> {
    /// Token id (absent at mint time).
    pub jti: Option<&'a str>,
    /// Workload subject.
    pub subject: &'a str,
    /// Team.
    pub team: &'a str,
    /// Pool.
    pub pool: &'a str,
    /// Workload issuer name.
    pub issuer: &'a str,
    /// Pod uid when the workload token carried one.
    pub pod_uid: Option<&'a str>,
    /// Token `iat` in unix seconds (`i64::MIN` at mint time: every active revocation applies).
    pub issued_at: i64,
}

/// Why a principal is refused (safe to show the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// What matched.
    pub kind: RevocationKind,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has been revoked",
            self.kind.as_str().replace('_', " ")
        )
    }
}

#[derive(Default)]
struct Snapshot {
    jtis: HashSet<String>,
    /// kind -> value -> latest revocation time in unix seconds (looked up by `&str`: no
    /// allocation per request).
    cutoffs: HashMap<RevocationKind, HashMap<String, i64>>,
    provider_keys: HashSet<String>,
    /// Active pauses: kind -> value -> reason (looked up by `&str`, like `cutoffs`).
    paused: HashMap<PauseKind, HashMap<String, String>>,
}

/// The live revocation set.
pub struct RevocationSet {
    store: Store,
    snap: ArcSwap<Snapshot>,
    synced_at: parking_lot::Mutex<std::time::Instant>,
    /// One re-read at a time: two racing ones could otherwise publish the older read last.
    syncing: tokio::sync::Mutex<()>,
    notified: std::sync::atomic::AtomicU64,
    /// Bumped after every re-read: followers of other fleet-wide state announced on the same
    /// channel (rotations) re-read theirs.
    synced: tokio::sync::watch::Sender<u64>,
    /// Ids of the revocations in the last read: one not seen before is new to this replica.
    seen: parking_lot::Mutex<Option<HashSet<i64>>>,
    /// Time from a revocation being recorded to this replica enforcing it.
    lag: prometheus_client::metrics::histogram::Histogram,
}

impl RevocationSet {
    /// Load the active revocations (a start-up failure is fatal: we would serve revoked tokens).
    pub async fn load(store: Store) -> Result<Arc<RevocationSet>, StoreError> {
        let set = Arc::new(RevocationSet {
            store,
            snap: ArcSwap::from_pointee(Snapshot::default()),
            synced_at: parking_lot::Mutex::new(std::time::Instant::now()),
            syncing: tokio::sync::Mutex::new(()),
            notified: std::sync::atomic::AtomicU64::new(0),
            synced: tokio::sync::watch::Sender::new(0),
            seen: parking_lot::Mutex::new(None),
            lag: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14),
            ),
        });
        set.sync().await?;
        Ok(set)
    }

    /// Re-read the store.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        let _one = self.syncing.lock().await;
        let rows = self.store.active_revocations(now_ms()).await?;
        let pauses = self.store.pauses(None).await?;
        let n = rows.len() + pauses.len();
        self.observe_new(&rows);
        self.snap.store(Arc::new(build(rows, pauses)));
        *self.synced_at.lock() = std::time::Instant::now();
        self.synced.send_modify(|g| *g += 1);
        Ok(n)
    }

    /// Measure the propagation lag of every revocation this read is the first to bring. The
    /// first read (start-up) measures none: those were recorded before this replica ran.
    fn observe_new(&self, rows: &[RevocationRecord]) {
        let ids: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let mut seen = self.seen.lock();
        if let Some(old) = seen.as_ref() {
            let now = now_ms();
            for r in rows.iter().filter(|r| !old.contains(&r.id)) {
                // Clocks of two replicas may disagree by a little: a negative lag counts as 0.
                self.lag
                    .observe((now.saturating_sub(r.created_at)).max(0) as f64 / 1000.0);
            }
        }
        *seen = Some(ids);
    }

    /// The propagation-lag histogram (registered in the application's metrics).
    pub fn lag_histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.lag.clone()
    }

    /// Changes with every re-read (after a change notification, a reconnect or the periodic
    /// re-sync).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.synced.subscribe()
    }

    /// Time since the last successful sync (readiness: how stale the set may be).
    pub fn last_sync_age(&self) -> Duration {
        self.synced_at.lock().elapsed()
    }

    /// Record a revocation and apply it locally at once.
    pub async fn revoke(&self, r: &NewRevocation) -> Result<RevocationRecord, StoreError> {
        let rec = self.store.insert_revocation(r).await?;
        self.sync().await?;
        Ok(rec)
    }

    /// Lift a revocation and apply it locally at once; `false` when it did not exist.
    pub async fn lift(&self, id: i64) -> Result<bool, StoreError> {
        let lifted = self.store.delete_revocation(id).await?;
        if lifted {
            self.sync().await?;
        }
        Ok(lifted)
    }

    /// Re-enable a provider key: lift every revocation of it. Returns how many there were.
    pub async fn enable_key(&self, key_id: &str) -> Result<u64, StoreError> {
        let n = self
            .store
            .delete_revocations_of(RevocationKind::ProviderKey, key_id)
            .await?;
        if n > 0 {
            self.sync().await?;
        }
        Ok(n)
    }

    /// Is this provider key revoked (disabled by an admin; pauses not counted)?
    pub fn key_revoked(&self, key_id: &str) -> bool {
        self.snap.load().provider_keys.contains(key_id)
    }

    /// Revoke one Tollgate token (RFC 7009, by its holder) until it would have expired
    /// anyway; a token already revoked is left as it is.
    pub async fn revoke_token(&self, claims: &crate::token::Claims) -> Result<(), StoreError> {
        if self.snap.load().jtis.contains(&claims.jti) {
            return Ok(());
        }
        let now = now_ms();
        self.revoke(&NewRevocation {
            kind: RevocationKind::Jti,
            value: claims.jti.clone(),
            reason: "revoked by its holder (RFC 7009)".into(),
            created_at: now,
            // Past its expiry (and any leeway) the token is refused anyway.
            expires_at: Some(claims.exp.saturating_mul(1000).saturating_add(10 * 60_000)),
            created_by: format!("self:{}", claims.sub),
        })
        .await?;
        Ok(())
    }

    /// Is this principal refused?
    pub fn check(&self, p: &Principal<'_>) -> Result<(), Revoked> {
        let snap = self.snap.load();
        if let Some(j) = p.jti
            && snap.jtis.contains(j)
        {
            return Err(Revoked {
                kind: RevocationKind::Jti,
            });
        }
        if snap.cutoffs.is_empty() {
            return Ok(());
        }
        let probes = [
            (RevocationKind::Subject, Some(p.subject)),
            (RevocationKind::Team, Some(p.team)),
            (RevocationKind::Pool, Some(p.pool)),
            (RevocationKind::Issuer, Some(p.issuer)),
            (RevocationKind::PodUid, p.pod_uid),
        ];
        for (kind, value) in probes {
            let Some(v) = value else { continue };
            if let Some(&cut) = snap.cutoffs.get(&kind).and_then(|m| m.get(v))
                && p.issued_at <= cut
            {
                return Err(Revoked { kind });
            }
        }
        Ok(())
    }

    /// Why `value` is paused, if it is.
    pub fn paused(&self, kind: PauseKind, value: &str) -> Option<String> {
        self.snap.load().paused.get(&kind)?.get(value).cloned()
    }

    /// Active pauses by kind (metrics).
    pub fn pause_counts(&self) -> [(PauseKind, usize); 2] {
        let snap = self.snap.load();
        PauseKind::ALL.map(|k| (k, snap.paused.get(&k).map_or(0, HashMap::len)))
    }

    /// Is this provider key disabled (revoked, or paused by the anomaly guard)?
    pub fn key_disabled(&self, key_id: &str) -> bool {
        let snap = self.snap.load();
        snap.provider_keys.contains(key_id)
            || snap
                .paused
                .get(&PauseKind::ProviderKey)
                .is_some_and(|m| m.contains_key(key_id))
    }

    /// Delete what can no longer refuse anything (see [`Store::purge_revocations`]): a `jti`
    /// revocation outlives every token it could match after the longest token lifetime plus
    /// the largest leeway.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let horizon = (crate::token::MAX_TTL_SECS + MAX_LEEWAY_SECS) * 1000;
        self.store.purge_revocations(now, now - horizon).await
    }

    /// Revocations in force on this replica, by kind (metrics).
    pub fn sizes(&self) -> Vec<(&'static str, usize)> {
        let snap = self.snap.load();
        let mut out = vec![
            ("jti", snap.jtis.len()),
            ("provider_key", snap.provider_keys.len()),
        ];
        for (kind, values) in &snap.cutoffs {
            out.push((kind.as_str(), values.len()));
        }
        out.sort_unstable();
        out
    }

    /// Change notifications received from the store (metrics).
    pub fn notifications(&self) -> u64 {
        self.notified.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Follow the store's change feed until cancelled: re-read the set on every notification
    /// and after every reconnect. Nothing to follow on SQLite (the task ends at once).
    pub fn spawn_listener(self: Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let feed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    f = self.store.revocation_feed() => f,
                };
                let mut feed = match feed {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation feed: cannot listen; the periodic re-sync still runs");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                // Whatever changed before the LISTEN took effect.
                self.sync_or_warn().await;
                backoff = Duration::from_millis(100);
                if !self.follow(&mut feed, &cancel).await {
                    return;
                }
            }
        })
    }

    /// Re-read on every change of `feed` until it fails (`true`: listen again) or `cancel`
    /// fires (`false`).
    async fn follow(
        &self,
        feed: &mut crate::store::ChangeFeed,
        cancel: &CancellationToken,
    ) -> bool {
        loop {
            let change = tokio::select! {
                _ = cancel.cancelled() => return false,
                c = feed.wait() => c,
            };
            match change {
                Ok(crate::store::Change::Notified) => {
                    self.notified
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(crate::store::Change::Reconnected) => {
                    tracing::info!("revocation feed reconnected; re-reading the set");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation feed lost; listening again");
                    return true;
                }
            }
            self.sync_or_warn().await;
        }
    }

    async fn sync_or_warn(&self) {
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "revocation re-sync failed; enforcing the last known set");
        }
    }

    /// Re-sync every `every` until cancelled, purging once a minute; failures keep the last
    /// set and are logged.
    pub fn spawn_sync(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let last_purge = Arc::new(parking_lot::Mutex::new(std::time::Instant::now()));
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            let last_purge = Arc::clone(&last_purge);
            async move {
                let due = {
                    let mut at = last_purge.lock();
                    let due = at.elapsed() >= PURGE_EVERY;
                    if due {
                        *at = std::time::Instant::now();
                    }
                    due
                };
                if due {
                    match this.purge().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(purged = n, "revocations past their use deleted"),
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation purge failed; retried later")
                        }
                    }
                }
                this.sync_or_warn().await;
            }
        })
    }
}

fn build(rows: Vec<RevocationRecord>, pauses: Vec<PauseRecord>) -> Snapshot {
    let mut s = Snapshot::default();
    for p in pauses {
        s.paused
            .entry(p.kind)
            .or_default()
            .insert(p.value, p.reason);
    }
    for r in rows {
        match r.kind {
            RevocationKind::Jti => {
                s.jtis.insert(r.value);
            }
            RevocationKind::ProviderKey => {
                s.provider_keys.insert(r.value);
            }
            kind => {
                let at = r.created_at.div_euclid(1000);
                let e = s
                    .cutoffs
                    .entry(kind)
                    .or_default()
                    .entry(r.value)
                    .or_insert(at);
                *e = (*e).max(at);
            }
        }
    }
    s
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}
