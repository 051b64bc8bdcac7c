//! Wiring of the provider keys: the configured secret store, the cache the proxy selects
//! from, and the inventory written after every listing.

use crate::config::{SecretsBackend, SecretsConfig};
use crate::secrets::{
    AllowedModels, AwsStore, FileStore, KeyCache, ProviderKey, SecretStore, SecretStoreError,
    VaultStore,
};
use crate::store::{ProviderKeyRecord, Store};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Connect the configured backend.
pub async fn open_store(config: &SecretsConfig) -> Result<Arc<dyn SecretStore>, SecretStoreError> {
    Ok(match config.backend {
        SecretsBackend::File => Arc::new(FileStore::new(config.path.clone(), config.from_env)),
        SecretsBackend::Vault => {
            let v = config
                .vault
                .clone()
                .ok_or_else(|| missing("secrets.vault"))?;
            Arc::new(VaultStore::connect(v).await?)
        }
        SecretsBackend::Aws => {
            let a = config.aws.clone().ok_or_else(|| missing("secrets.aws"))?;
            Arc::new(AwsStore::connect(a).await?)
        }
    })
}

fn missing(section: &str) -> SecretStoreError {
    SecretStoreError::Unavailable {
        store: section.into(),
        reason: "section missing".into(),
    }
}

/// Write the inventory of the cache's last listing. Failures are logged: the inventory is
/// informational and the next refresh writes it again.
pub async fn sync_inventory(cache: &KeyCache, store: &Store) {
    let (keys, invalid) = cache.snapshot();
    let backend = cache.health().store;
    let mut rows: Vec<ProviderKeyRecord> = keys.iter().map(|k| record(&backend, k)).collect();
    rows.extend(invalid.iter().map(|i| ProviderKeyRecord {
        id: i.id.clone(),
        store: backend.clone(),
        provider: i.provider.clone(),
        billing_owner: String::new(),
        allowed_models: String::new(),
        purpose: None,
        version: String::new(),
        versions: "[]".into(),
        state: "invalid".into(),
        reason: Some(i.reason.clone()),
    }));
    if let Err(e) = store
        .sync_provider_keys(&backend, &rows, crate::clock::now_ms())
        .await
    {
        tracing::warn!(error = %e, "provider key inventory not written; retried at the next refresh");
    }
}

fn record(backend: &str, k: &ProviderKey) -> ProviderKeyRecord {
    let versions: Vec<serde_json::Value> = k
        .versions
        .iter()
        .map(|v| serde_json::json!({"id": v.id, "stage": v.stage.as_str()}))
        .collect();
    ProviderKeyRecord {
        id: k.id.clone(),
        store: backend.to_owned(),
        provider: k.provider.clone(),
        billing_owner: k.billing_owner.clone(),
        allowed_models: match &k.allowed_models {
            AllowedModels::All => "*".into(),
            AllowedModels::Only(m) => m.join(" "),
        },
        purpose: k.purpose.clone(),
        version: k.version.clone(),
        versions: serde_json::Value::Array(versions).to_string(),
        state: if k.is_quarantined() {
            "quarantined".into()
        } else {
            "active".into()
        },
        reason: None,
    }
}

/// Refresh the cache every `every` and write the inventory after each good listing.
pub fn spawn_refresher(
    cache: Arc<KeyCache>,
    store: Store,
    every: std::time::Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    cache.spawn_refresher(every, cancel, move |c| {
        let store = store.clone();
        async move { sync_inventory(&c, &store).await }
    })
}
