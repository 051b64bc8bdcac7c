//! Provider keys: where they live (`SecretStore` backends: Vault/OpenBao KV v2, AWS Secrets
//! Manager, a file for development) and the in-memory cache the hot path selects from. Only
//! this module knows a secret store's API.
//!
//! Invariants: a key's secret is held in a `SecretString` from the moment it is read; it is
//! never formatted (no `Debug` shows it); the cache is replaced atomically, so a request sees
//! either the old or the new key list, never a mix; a failed refresh keeps the last good list
//! serving for at most `max_staleness`.

mod aws;
mod cache;
mod file;
mod meta;
mod vault;

pub use aws::AwsStore;
pub use cache::{KeyCache, KeysHealth, NoKey, Owner, RotationRoute};
pub use file::{ENV_KEYS, FileStore};
pub use vault::VaultStore;

use async_trait::async_trait;
use secrecy::SecretString;
use std::sync::atomic::AtomicBool;

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

/// Where a version of a key stands in its rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The version Tollgate serves.
    Current,
    /// Written after the current one and not yet promoted (rotation will canary it).
    Pending,
    /// Served before the current one.
    Previous,
}

impl Stage {
    /// Lower-case name (inventory, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Current => "current",
            Stage::Pending => "pending",
            Stage::Previous => "previous",
        }
    }
}

/// One version of a key as the store reports it (KV v2 version number, AWS version id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    /// The store's version id.
    pub id: String,
    /// Its stage.
    pub stage: Stage,
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
    /// Store version of the secret served (KV version, AWS version id); rotation builds on it.
    pub version: String,
    /// Every live version the store reports, with its stage (the served one is `Current`).
    pub versions: Vec<KeyVersion>,
    /// What the key is for (store metadata `purpose`; informational).
    pub purpose: Option<String>,
    /// `max_tokens` applied to requests served by this key that name none, when smaller than
    /// the token's default (store metadata `max_tokens_default`).
    pub max_tokens_default: Option<u32>,
    /// Set when the provider refused this key (401/403): it no longer serves until the store
    /// has a new version of it.
    quarantined: AtomicBool,
}

impl ProviderKey {
    /// A key serving `version`, with every other field at its default (shared owner, all
    /// models, no other versions).
    pub fn new(
        id: impl Into<String>,
        provider: impl Into<String>,
        secret: SecretString,
        version: impl Into<String>,
    ) -> ProviderKey {
        let version = version.into();
        ProviderKey {
            id: id.into(),
            provider: provider.into(),
            billing_owner: SHARED_OWNER.to_owned(),
            allowed_models: AllowedModels::All,
            secret,
            versions: vec![KeyVersion {
                id: version.clone(),
                stage: Stage::Current,
            }],
            version,
            purpose: None,
            max_tokens_default: None,
            quarantined: AtomicBool::new(false),
        }
    }

    /// The same key serving another `version` with `secret` (a rotation's candidate): same
    /// id, provider, owner and metadata, so spend and budgets are untouched by rotation.
    pub fn with_version(&self, secret: SecretString, version: impl Into<String>) -> ProviderKey {
        ProviderKey {
            id: self.id.clone(),
            provider: self.provider.clone(),
            billing_owner: self.billing_owner.clone(),
            allowed_models: self.allowed_models.clone(),
            secret,
            version: version.into(),
            versions: self.versions.clone(),
            purpose: self.purpose.clone(),
            max_tokens_default: self.max_tokens_default,
            quarantined: AtomicBool::new(false),
        }
    }

    /// Has the provider refused this key?
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("billing_owner", &self.billing_owner)
            .field("allowed_models", &self.allowed_models)
            .field("version", &self.version)
            .field("versions", &self.versions)
            .field("quarantined", &self.is_quarantined())
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

/// An entry of the store that is not a usable key (bad metadata, no readable version). It
/// is reported in the inventory so operators see why a key does not serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidKey {
    /// Entry id (path / secret name).
    pub id: String,
    /// Provider, when it could be told.
    pub provider: String,
    /// Why it is not used.
    pub reason: String,
}

/// What one listing of the store found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Usable keys.
    pub keys: Vec<ProviderKey>,
    /// Entries skipped, with the reason.
    pub invalid: Vec<InvalidKey>,
}

/// A non-empty string field of a secret's JSON, trimmed.
pub(crate) fn string_field(data: &serde_json::Value, field: &str) -> Option<SecretString> {
    data.get(field)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| SecretString::from(v.to_owned()))
}

/// A place provider keys are read from. Backends list everything under their prefix and
/// report versions and stages; the cache does the selection. A listing either succeeds as a
/// whole (entries it cannot use land in [`Listing::invalid`]) or fails as a whole (the store
/// is unreachable), so a partial outage never looks like deleted keys.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Short name for logs (`file`, `vault`, `aws`).
    fn name(&self) -> &str;
    /// Every key under the configured prefix, with metadata.
    async fn list(&self) -> Result<Listing, SecretStoreError>;
    /// One named secret that is not a provider key (the break-glass hash): its `field`. Vault
    /// reads the latest version of `<mount>/<name>`; AWS the `AWSCURRENT` value of `name`, a
    /// JSON object's `field` or else the bare string. A missing secret or field is
    /// [`SecretStoreError::Invalid`].
    async fn read_secret(&self, name: &str, field: &str) -> Result<SecretString, SecretStoreError> {
        let _ = field;
        Err(SecretStoreError::Invalid {
            store: self.name().to_owned(),
            entry: name.to_owned(),
            reason: "this backend holds provider keys only; use the vault or aws backend, or a \
                     file or inline value"
                .into(),
        })
    }
    /// The secret of one version of key `id` (rotation tests a pending version before it
    /// serves).
    async fn read_version(
        &self,
        id: &str,
        version: &str,
    ) -> Result<SecretString, SecretStoreError> {
        let _ = version;
        Err(no_rotation(self.name(), id))
    }
    /// Make `version` the one served: Vault pins it (`tollgate_version`), AWS moves
    /// `AWSCURRENT` to it (the version it leaves becomes `AWSPREVIOUS`). Idempotent.
    async fn set_current(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let _ = version;
        Err(no_rotation(self.name(), id))
    }
    /// Write `secret` as a new pending version of key `id` (a key issuer created it) and
    /// return the version id. The version served does not change: Vault pins it first when
    /// no pin exists, AWS labels the new version `AWSPENDING` only.
    async fn write_pending(
        &self,
        id: &str,
        secret: &SecretString,
    ) -> Result<String, SecretStoreError> {
        let _ = secret;
        Err(no_rotation(self.name(), id))
    }
    /// Withdraw a pending `version` after a rolled-back rotation, so that it is no longer
    /// listed as pending: Vault records it in `tollgate_rejected`, AWS removes `AWSPENDING`.
    /// Idempotent.
    async fn reject_pending(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let _ = version;
        Err(no_rotation(self.name(), id))
    }
}

fn no_rotation(store: &str, id: &str) -> SecretStoreError {
    SecretStoreError::Invalid {
        store: store.to_owned(),
        entry: id.to_owned(),
        reason: "this backend has no versions to rotate between; keep keys in Vault/OpenBao or \
                 AWS Secrets Manager to rotate them"
            .into(),
    }
}

#[cfg(test)]
mod tests;
