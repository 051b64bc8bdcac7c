//! The signing keys every replica shares through the store.
//!
//! Each key has a generation and three instants: it signs from `sign_from` to `sign_until`,
//! and stays in the JWKS until `publish_until` (= `sign_until` + the longest token life +
//! leeway), so no token ever outlives the public key that verifies it. A successor is created
//! `lead` before the current key's `sign_until` and published at once, so every replica (and
//! every relying party caching the JWKS) knows it before it signs anything. Replicas race to
//! create the successor; the store's unique generation makes exactly one win.

use super::claims::MAX_TTL_SECS;
use super::keys::{self, Kek, KeyError};
use crate::clock::now_ms;
use crate::config::SigningAlgorithm;
use crate::store::{SigningKeyRecord, Store, StoreError};
use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Keyring failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Store access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key material problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No key can sign right now (store unreachable at start, or every key expired).
    #[error("no signing key is currently valid")]
    NoSigningKey,
}

/// The key that signs now.
pub(crate) struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: keys::SigningKey,
    sign_until: i64,
}

pub(crate) struct KeySet {
    pub signer: Option<Arc<Signer>>,
    pub verifiers: HashMap<String, (Algorithm, DecodingKey)>,
    pub jwks: Arc<serde_json::Value>,
    records: Vec<SigningKeyRecord>,
}

/// The shared keyring.
pub struct Keyring {
    store: Store,
    kek: Kek,
    alg: SigningAlgorithm,
    rotate_every: Duration,
    pub(crate) set: ArcSwap<KeySet>,
    last_reload: Mutex<Option<Instant>>,
}

impl Keyring {
    /// Load the keys, creating the first one if none can sign.
    pub async fn start(
        store: Store,
        kek: Kek,
        alg: SigningAlgorithm,
        rotate_every: Duration,
    ) -> Result<Arc<Keyring>, KeyringError> {
        let ring = Arc::new(Keyring {
            store,
            kek,
            alg,
            rotate_every,
            set: ArcSwap::from_pointee(KeySet {
                signer: None,
                verifiers: HashMap::new(),
                jwks: Arc::new(serde_json::json!({"keys": []})),
                records: Vec::new(),
            }),
            last_reload: Mutex::new(None),
        });
        ring.maintain().await?;
        if ring.set.load().signer.is_none() {
            return Err(KeyringError::NoSigningKey);
        }
        Ok(ring)
    }

    /// Reload from the store and create a successor key when one is due.
    pub async fn maintain(&self) -> Result<(), KeyringError> {
        self.reload().await?;
        let now = now_ms();
        let rotate_ms = i64::try_from(self.rotate_every.as_millis()).unwrap_or(i64::MAX / 4);
        let lead = (rotate_ms / 4).min(3_600_000);
        let (next_gen, successor_from) = {
            let set = self.set.load();
            let newest = set.records.iter().max_by_key(|r| r.generation);
            match newest {
                None => (1, now),
                Some(r) if r.sign_until - now <= lead => (r.generation + 1, r.sign_until.max(now)),
                Some(_) => return Ok(()),
            }
        };
        self.create(next_gen, successor_from, rotate_ms).await?;
        self.reload().await
    }

    async fn create(
        &self,
        generation: i64,
        sign_from: i64,
        rotate_ms: i64,
    ) -> Result<(), KeyringError> {
        let k = keys::generate(self.alg)?;
        let sealed = self.kek.seal(&k.kid, &k.pkcs8)?;
        let sign_until = sign_from + rotate_ms;
        let rec = SigningKeyRecord {
            kid: k.kid.clone(),
            generation,
            algorithm: k.algorithm.to_owned(),
            public_jwk: k.public_jwk,
            sealed_private_key: sealed,
            created_at: now_ms(),
            sign_from,
            sign_until,
            publish_until: sign_until + (MAX_TTL_SECS + 300) * 1000,
        };
        if self.store.insert_signing_key(&rec).await? {
            tracing::info!(kid = %k.kid, generation, "created signing key");
        } else {
            tracing::debug!(
                generation,
                "another replica created this signing key generation"
            );
        }
        Ok(())
    }

    /// Re-read the published keys.
    pub async fn reload(&self) -> Result<(), KeyringError> {
        let now = now_ms();
        let records = self.store.signing_keys(now).await?;
        let old = self.set.load_full();
        let mut verifiers = HashMap::with_capacity(records.len());
        let mut jwks = Vec::with_capacity(records.len());
        for r in &records {
            let Some(alg) = keys::algorithm_from_name(&r.algorithm) else {
                tracing::warn!(kid = %r.kid, algorithm = %r.algorithm, "skipping signing key with unknown algorithm");
                continue;
            };
            verifiers.insert(
                r.kid.clone(),
                (alg, keys::decoding_key(&r.kid, &r.public_jwk)?),
            );
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.public_jwk) {
                jwks.push(v);
            }
        }
        let current = records
            .iter()
            .filter(|r| r.sign_from <= now && now < r.sign_until)
            .max_by_key(|r| r.generation);
        let signer = match current {
            None => None,
            Some(r) => match &old.signer {
                Some(s) if s.kid == r.kid => Some(Arc::clone(s)),
                _ => {
                    let alg = keys::algorithm_from_name(&r.algorithm)
                        .ok_or(KeyringError::NoSigningKey)?;
                    let der = self.kek.open(&r.kid, &r.sealed_private_key)?;
                    Some(Arc::new(Signer {
                        kid: r.kid.clone(),
                        alg,
                        key: keys::SigningKey::from_pkcs8(alg, &der)?,
                        sign_until: r.sign_until,
                    }))
                }
            },
        };
        self.set.store(Arc::new(KeySet {
            signer,
            verifiers,
            jwks: Arc::new(serde_json::json!({ "keys": jwks })),
            records,
        }));
        *self.last_reload.lock() = Some(Instant::now());
        Ok(())
    }

    /// The key to sign with now; swaps to the successor when the current one's time is up.
    pub(crate) fn signer(&self) -> Option<Arc<Signer>> {
        let s = self.set.load().signer.clone()?;
        (now_ms() < s.sign_until).then_some(s)
    }

    /// Reload if the last reload is older than `min_interval` (an unknown `kid` may be a key
    /// another replica just created). Returns whether a reload happened.
    pub(crate) async fn reload_if_stale(&self, min_interval: Duration) -> bool {
        let due = self
            .last_reload
            .lock()
            .is_none_or(|t| t.elapsed() >= min_interval);
        due && self.reload().await.is_ok()
    }

    /// Is a key able to sign right now?
    pub fn can_sign(&self) -> bool {
        self.signer().is_some()
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Arc<serde_json::Value> {
        Arc::clone(&self.set.load().jwks)
    }

    /// Keep the keyring current until cancelled.
    pub fn spawn_maintainer(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                if let Err(e) = this.maintain().await {
                    tracing::warn!(error = %e, "signing key maintenance failed; keeping current keys");
                }
            }
        })
    }
}
