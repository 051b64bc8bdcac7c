//! The in-memory key list the hot path selects from, refreshed in the background. A failed
//! refresh keeps the last good list serving until it is `max_staleness` old; a key the
//! provider refused is quarantined until the store holds a new version of it.
//!
//! Rotation routes ([`RotationRoute`], installed by [`crate::rotation`]) sit on top of the
//! listing: while a key is in canary a share of its requests goes to the pending version, and
//! once promoted all of them do, on every replica as soon as it hears of the step — before its
//! next listing shows the new current version.

use super::{InvalidKey, ProviderKey, SHARED_OWNER, SecretStore, SecretStoreError};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why no key was selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoKey {
    /// No enabled key matches (provider, model, owner).
    NoMatch,
    /// The store has not answered for longer than `max_staleness`; cached keys are not used.
    Stale {
        /// Time since the last successful listing.
        age: Duration,
    },
}

/// Whose keys may serve a request: the token's billing owner, and whether the shared keys
/// stand in when that owner has none (the binding's `shared_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The billing owner.
    pub name: &'a str,
    /// May shared keys serve?
    pub shared: bool,
}

impl<'a> Owner<'a> {
    /// `name`, falling back to the shared keys.
    pub fn or_shared(name: &'a str) -> Owner<'a> {
        Owner { name, shared: true }
    }

    /// `name` alone.
    pub fn only(name: &'a str) -> Owner<'a> {
        Owner {
            name,
            shared: false,
        }
    }
}

/// How fresh the cached keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysHealth {
    /// Backend name.
    pub store: String,
    /// Time since the last successful listing.
    pub age: Duration,
    /// The last refresh failed (serving from cache).
    pub degraded: bool,
    /// Older than `max_staleness`: keys no longer serve.
    pub stale: bool,
    /// The last refresh error, if the last refresh failed.
    pub error: Option<String>,
}

/// How an unfinished rotation routes one key's requests on this replica.
#[derive(Debug)]
pub struct RotationRoute {
    /// The pending version, with the key's metadata.
    pub candidate: Arc<ProviderKey>,
    /// Requests it serves per million of the key's requests (1,000,000 once promoted).
    pub share_ppm: u64,
    /// After promotion, until the drain ends: the version served before, which stands in
    /// when the provider refuses the new one (none for an emergency rotation: its old key is
    /// the leaked one).
    pub previous: Option<Arc<ProviderKey>>,
    seq: AtomicU64,
}

impl RotationRoute {
    /// Route `share_ppm` of the key's requests to `candidate`.
    pub fn new(candidate: Arc<ProviderKey>, share_ppm: u64) -> RotationRoute {
        RotationRoute {
            candidate,
            share_ppm: share_ppm.min(PPM),
            previous: None,
            seq: AtomicU64::new(0),
        }
    }

    /// The same route with `previous` standing in for a refused new version.
    pub fn with_previous(mut self, previous: Option<Arc<ProviderKey>>) -> RotationRoute {
        self.previous = previous;
        self
    }

    /// What serves instead of `refused` (a version of this key the provider refused): the
    /// previous version, or a candidate that takes every request (a rollback's old version
    /// while this replica's listing still shows the new one). Never `refused`'s own version.
    fn stand_in(&self, refused: &ProviderKey) -> Option<&Arc<ProviderKey>> {
        let usable = |k: &&Arc<ProviderKey>| !k.is_quarantined() && k.version != refused.version;
        self.previous.as_ref().filter(usable).or_else(|| {
            Some(&self.candidate)
                .filter(|_| self.share_ppm >= PPM)
                .filter(usable)
        })
    }

    /// Does the next request go to the candidate? Exactly `share_ppm` of them do (the n-th
    /// request goes when ⌊(n+1)·s⌋ > ⌊n·s⌋), so a small canary share still sees traffic
    /// early instead of by chance.
    fn take(&self) -> bool {
        if self.share_ppm >= PPM {
            return true;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        (n + 1) * self.share_ppm / PPM > n * self.share_ppm / PPM
    }
}

const PPM: u64 = 1_000_000;

/// The cache.
pub struct KeyCache {
    store: Arc<dyn SecretStore>,
    keys: ArcSwap<Vec<Arc<ProviderKey>>>,
    routes: ArcSwap<HashMap<String, Arc<RotationRoute>>>,
    invalid: ArcSwap<Vec<InvalidKey>>,
    next: AtomicUsize,
    last_ok_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    refresh_failures: AtomicU64,
    max_staleness: Duration,
}

impl KeyCache {
    /// Read the store once; a failure here is a start-up error (no key could be served).
    pub async fn load(
        store: Arc<dyn SecretStore>,
        max_staleness: Duration,
    ) -> Result<KeyCache, SecretStoreError> {
        let listing = store.list().await?;
        warn_invalid(store.name(), &listing.invalid);
        Ok(KeyCache {
            keys: ArcSwap::from_pointee(listing.keys.into_iter().map(Arc::new).collect()),
            routes: ArcSwap::from_pointee(HashMap::new()),
            invalid: ArcSwap::from_pointee(listing.invalid),
            store,
            next: AtomicUsize::new(0),
            last_ok_ms: AtomicI64::new(crate::clock::now_ms()),
            last_error: Mutex::new(None),
            refresh_failures: AtomicU64::new(0),
            max_staleness,
        })
    }

    /// Re-list the store. On failure the cached keys keep serving (until `max_staleness`).
    pub async fn refresh(&self) -> Result<usize, SecretStoreError> {
        let listing = match self.store.list().await {
            Ok(l) => l,
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(e.to_string());
                return Err(e);
            }
        };
        let old = self.keys.load();
        let keys: Vec<Arc<ProviderKey>> = listing
            .keys
            .into_iter()
            .map(|k| {
                // A quarantine holds until the store has a new version of the key.
                if old
                    .iter()
                    .any(|o| o.id == k.id && o.version == k.version && o.is_quarantined())
                {
                    k.quarantined.store(true, Ordering::Relaxed);
                }
                Arc::new(k)
            })
            .collect();
        let n = keys.len();
        let new_invalid: Vec<&InvalidKey> = {
            let before = self.invalid.load();
            listing
                .invalid
                .iter()
                .filter(|i| !before.contains(i))
                .collect()
        };
        if !new_invalid.is_empty() {
            warn_invalid(
                self.store.name(),
                &new_invalid.into_iter().cloned().collect::<Vec<_>>(),
            );
        }
        self.keys.store(Arc::new(keys));
        self.invalid.store(Arc::new(listing.invalid));
        self.last_ok_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        if self.last_error.lock().take().is_some() {
            tracing::info!(
                store = self.store.name(),
                keys = n,
                "secret store reachable again; provider keys refreshed"
            );
        }
        Ok(n)
    }

    /// Does any key exist for this provider (whatever its owner)?
    pub fn has_provider(&self, provider: &str) -> bool {
        self.keys.load().iter().any(|k| k.provider == provider)
    }

    /// Pick a key for (provider, model, billing owner) among those `usable` accepts,
    /// spreading load round-robin over the equal candidates. Keys of the owner itself are
    /// preferred over shared keys, which serve only when `owner` allows them; quarantined keys
    /// never serve.
    pub fn select(
        &self,
        provider: &str,
        model: &str,
        owner: Owner<'_>,
        usable: impl Fn(&ProviderKey) -> bool,
    ) -> Result<Arc<ProviderKey>, NoKey> {
        let age = self.age();
        if age > self.max_staleness {
            return Err(NoKey::Stale { age });
        }
        let keys = self.keys.load();
        let routes = self.routes.load();
        // A refused key still fits while a rotation's previous version can stand in for it.
        let fits = |k: &&Arc<ProviderKey>| {
            k.provider == provider
                && k.allowed_models.allows(model)
                && (!k.is_quarantined()
                    || routes.get(&k.id).is_some_and(|r| r.stand_in(k).is_some()))
                && usable(k)
        };
        let pick = |wanted: &str| -> Option<Arc<ProviderKey>> {
            let n = keys
                .iter()
                .filter(fits)
                .filter(|k| k.billing_owner == wanted)
                .count();
            if n == 0 {
                return None;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            keys.iter()
                .filter(fits)
                .filter(|k| k.billing_owner == wanted)
                .nth(i)
                .map(Arc::clone)
        };
        let key = pick(owner.name)
            .or_else(|| owner.shared.then(|| pick(SHARED_OWNER)).flatten())
            .ok_or(NoKey::NoMatch)?;
        Ok(self.route(key))
    }

    /// The version a rotation sends this request to: the listing's, or the candidate's. A
    /// refused candidate never serves; the listing's version stands in for it.
    fn route(&self, key: Arc<ProviderKey>) -> Arc<ProviderKey> {
        let routes = self.routes.load();
        if key.is_quarantined()
            && let Some(p) = routes.get(&key.id).and_then(|r| r.stand_in(&key))
        {
            return Arc::clone(p);
        }
        match routes.get(&key.id) {
            Some(r)
                if r.candidate.version != key.version
                    && !r.candidate.is_quarantined()
                    && r.take() =>
            {
                Arc::clone(&r.candidate)
            }
            _ => key,
        }
    }

    /// When `key` is a rotation candidate, the other version of the same key, which serves a
    /// request the candidate failed: the listed one during the canary, the previous one after
    /// promotion until the drain ends (the old version still serves retried requests).
    pub fn fallback_for(&self, key: &ProviderKey) -> Option<Arc<ProviderKey>> {
        let routes = self.routes.load();
        let route = routes.get(&key.id)?;
        if route.candidate.version != key.version {
            return None;
        }
        self.keys
            .load()
            .iter()
            .find(|k| k.id == key.id && k.version != key.version && !k.is_quarantined())
            .or_else(|| {
                route
                    .previous
                    .as_ref()
                    .filter(|p| !p.is_quarantined() && p.version != key.version)
            })
            .map(Arc::clone)
    }

    /// Install the rotation routes (key id → route), replacing the previous ones at once.
    pub fn set_routes(&self, routes: HashMap<String, Arc<RotationRoute>>) {
        self.routes.store(Arc::new(routes));
    }

    /// The routes in force.
    pub fn routes(&self) -> Arc<HashMap<String, Arc<RotationRoute>>> {
        self.routes.load_full()
    }

    /// Take a key out of service because the provider refused it. Returns `true` the first
    /// time (the caller alerts once).
    pub fn quarantine(&self, key: &ProviderKey) -> bool {
        let first = !key.quarantined.swap(true, Ordering::Relaxed);
        // The listing may have been refreshed since `key` was selected: flag its twin too.
        for k in self
            .keys
            .load()
            .iter()
            .filter(|k| k.id == key.id && k.version == key.version)
        {
            k.quarantined.store(true, Ordering::Relaxed);
        }
        first
    }

    /// The keys and the invalid entries of the last good listing (inventory).
    pub fn snapshot(&self) -> (Arc<Vec<Arc<ProviderKey>>>, Arc<Vec<InvalidKey>>) {
        (self.keys.load_full(), self.invalid.load_full())
    }

    /// Time since the last successful listing.
    pub fn age(&self) -> Duration {
        let ms = crate::clock::now_ms() - self.last_ok_ms.load(Ordering::Relaxed);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Refreshes that failed since start (metrics).
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures.load(Ordering::Relaxed)
    }

    /// The configured bound past which cached keys stop serving.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Freshness, for `/readyz`.
    pub fn health(&self) -> KeysHealth {
        let error = self.last_error.lock().clone();
        let age = self.age();
        KeysHealth {
            store: self.store.name().to_owned(),
            age,
            degraded: error.is_some(),
            stale: age > self.max_staleness,
            error,
        }
    }

    /// Refresh every `every` until cancelled, then call `after` with the outcome (the
    /// inventory is written there). Failures are logged and the cache kept.
    pub fn spawn_refresher<F, Fut>(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
        after: F,
    ) -> JoinHandle<()>
    where
        F: Fn(Arc<KeyCache>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let after = Arc::new(after);
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            let after = Arc::clone(&after);
            async move {
                if let Err(e) = this.refresh().await {
                    let age = this.age();
                    if age > this.max_staleness {
                        tracing::error!(store = this.store.name(), error = %e, age_s = age.as_secs(),
                            "secret store unreachable past secrets.max_staleness; provider keys no longer serve");
                    } else {
                        tracing::warn!(store = this.store.name(), error = %e, age_s = age.as_secs(),
                            "provider key refresh failed; serving cached keys");
                    }
                    return;
                }
                after(this).await;
            }
        })
    }
}

fn warn_invalid(store: &str, invalid: &[InvalidKey]) {
    for i in invalid {
        tracing::warn!(
            store,
            key = %i.id,
            provider = %i.provider,
            reason = %i.reason,
            "secret store entry is not a usable provider key; it is ignored"
        );
    }
}
