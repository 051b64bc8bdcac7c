//! Provider keys: where they live (`SecretStore` backends) and the in-memory cache the hot
//! path selects from. Only this module knows a secret store's API.
//!
//! Invariants: a key's secret is held in a `SecretString` from the moment it is read; it is
//! never formatted (no `Debug` shows it); the cache is replaced atomically, so a request sees
//! either the old or the new key list, never a mix; a failed refresh keeps the last good list.

mod file;

pub use file::{ENV_KEYS, FileStore};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use secrecy::SecretString;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The `billing_owner` value that lets a key serve every owner.
pub const SHARED_OWNER: &str = "*";

/// Which models a key may serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedModels {
    /// Every model of its provider.
    All,
    /// Only these (policy model names).
    Only(Vec<String>),
}

impl AllowedModels {
    /// Parse the store's metadata: `*`, or names separated by commas and/or whitespace.
    pub fn parse(text: &str) -> AllowedModels {
        let names: Vec<String> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() || names.iter().any(|n| n == "*") {
            AllowedModels::All
        } else {
            AllowedModels::Only(names)
        }
    }

    fn allows(&self, model: &str) -> bool {
        match self {
            AllowedModels::All => true,
            AllowedModels::Only(v) => v.iter().any(|m| m == model),
        }
    }
}

/// One provider key with its metadata.
pub struct ProviderKey {
    /// Stable id (the store path / secret name), safe to log and to record in spend rows.
    pub id: String,
    /// Provider id (`openai`, `anthropic`, …) as in policy models.
    pub provider: String,
    /// Who pays for traffic on this key ([`SHARED_OWNER`] serves everyone).
    pub billing_owner: String,
    /// Models this key may serve.
    pub allowed_models: AllowedModels,
    /// The key itself.
    pub secret: SecretString,
    /// Store version of the secret (KV version, AWS version id); rotation builds on it.
    pub version: String,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("billing_owner", &self.billing_owner)
            .field("allowed_models", &self.allowed_models)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A secret-store failure. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    /// The store could not be read.
    #[error("secret store {store} unavailable: {reason}")]
    Unavailable {
        /// Store name.
        store: String,
        /// Why.
        reason: String,
    },
    /// The store answered with something unusable.
    #[error("secret store {store}: invalid entry {entry}: {reason}")]
    Invalid {
        /// Store name.
        store: String,
        /// Entry id (never the secret).
        entry: String,
        /// Why.
        reason: String,
    },
}

/// A place provider keys are read from. Backends list everything under their prefix; the
/// cache does the selection. Vault and AWS Secrets Manager implement this in their own issue,
/// reporting versions/stages through [`ProviderKey::version`].
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Short name for logs (`file`, `vault`, `aws`).
    fn name(&self) -> &str;
    /// Every enabled key under the configured prefix, with metadata.
    async fn list(&self) -> Result<Vec<ProviderKey>, SecretStoreError>;
}

/// The in-memory key list the hot path selects from.
pub struct KeyCache {
    store: Arc<dyn SecretStore>,
    keys: ArcSwap<Vec<Arc<ProviderKey>>>,
    next: AtomicUsize,
}

impl KeyCache {
    /// Read the store once; a failure here is a start-up error.
    pub async fn load(store: Arc<dyn SecretStore>) -> Result<KeyCache, SecretStoreError> {
        let keys = store.list().await?;
        Ok(KeyCache {
            store,
            keys: ArcSwap::from_pointee(keys.into_iter().map(Arc::new).collect()),
            next: AtomicUsize::new(0),
        })
    }

    /// Re-list the store; on failure keep serving the cached keys.
    pub async fn refresh(&self) -> Result<usize, SecretStoreError> {
        let keys = self.store.list().await?;
        let n = keys.len();
        self.keys
            .store(Arc::new(keys.into_iter().map(Arc::new).collect()));
        Ok(n)
    }

    /// Does any key exist for this provider (whatever its owner)?
    pub fn has_provider(&self, provider: &str) -> bool {
        self.keys.load().iter().any(|k| k.provider == provider)
    }

    /// Pick a key for (provider, model, billing owner), spreading load round-robin over the
    /// equal candidates. Keys of the owner itself are preferred over shared keys.
    pub fn select(&self, provider: &str, model: &str, owner: &str) -> Option<Arc<ProviderKey>> {
        let keys = self.keys.load();
        let usable =
            |k: &&Arc<ProviderKey>| k.provider == provider && k.allowed_models.allows(model);
        let own: Vec<&Arc<ProviderKey>> = keys
            .iter()
            .filter(usable)
            .filter(|k| k.billing_owner == owner)
            .collect();
        let candidates = if own.is_empty() {
            keys.iter()
                .filter(usable)
                .filter(|k| k.billing_owner == SHARED_OWNER)
                .collect()
        } else {
            own
        };
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(Arc::clone(candidates[i]))
    }

    /// Refresh every `every` until cancelled; failures are logged and the cache kept.
    pub fn spawn_refresher(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "provider key refresh failed; serving cached keys");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
