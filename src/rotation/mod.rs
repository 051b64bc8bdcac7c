//! Staged rotation of provider keys: `staged → tested → canary → promoted → draining →
//! retired`, or `rolled_back` (see DESIGN.md "Rotation" and the README's "Rotate a key").
//!
//! Two tasks per replica:
//! - the **driver** ([`drive`]) takes the lease of each unfinished rotation in the store and
//!   takes its next step. Every step is idempotent and is persisted with its inputs and result
//!   before the next one starts, so a replica killed at any point leaves a rotation another
//!   replica resumes once the lease lapses (`rotation.lease`);
//! - the **follower** ([`follow`]) routes this replica's traffic by the rotations' states: a
//!   share of a key's requests to the pending version in canary, all of them once promoted.
//!   It re-reads on every change notification (the revocation channel), so every replica
//!   switches within the revocation propagation bound.
//!
//! Invariants: the listing's current version keeps serving until promotion, and stands in
//! whenever the candidate is refused; the old version serves until the new one is promoted
//! and drained; a rolled-back candidate is withdrawn from the store and from every route.

mod config;
mod drive;
mod follow;
pub mod issuer;
mod probe;
mod schedule;

pub use config::RotationConfig;
pub use issuer::{IssueError, IssuedKey, IssuerConfig, KeyIssuer};

use crate::alerts::Alerts;
use crate::app::ProviderRoute;
use crate::audit::Audit;
use crate::policy::PolicyStore;
use crate::revocation::RevocationSet;
use crate::secrets::{KeyCache, ProviderKey, SecretStore, Stage};
use crate::store::{NewRotation, RotationRecord, RotationTrigger, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a rotation could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No such key in the last listing.
    #[error("no provider key {0} in the secret store's last listing")]
    UnknownKey(String),
    /// Nothing to rotate to.
    #[error(
        "provider key {key} has no pending version to rotate to: write the new key first \
         (Vault/OpenBao: a new KV version of {key} while tollgate_version pins the current one; \
         AWS: a version labelled AWSPENDING), then rotate again"
    )]
    NoPending {
        /// Key id.
        key: String,
    },
    /// Another replica is creating a new key for it through its issuer right now.
    #[error(
        "another replica is creating a new key for {0} through its key issuer; try again in a moment"
    )]
    Issuing(String),
    /// The key issuer failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The secret store refused the new key.
    #[error("the new key could not be written to the secret store: {0}")]
    Secrets(#[from] crate::secrets::SecretStoreError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rotation engine of one replica.
pub struct Rotator {
    cfg: RotationConfig,
    store: Store,
    secrets: Arc<dyn SecretStore>,
    keys: Arc<KeyCache>,
    revocations: Arc<RevocationSet>,
    providers: HashMap<String, ProviderRoute>,
    http: reqwest::Client,
    alerts: Arc<Alerts>,
    audit: Arc<Audit>,
    replica: String,
    /// Failed live tests per rotation (transient failures are retried `test_attempts` times).
    attempts: parking_lot::Mutex<HashMap<i64, u32>>,
    /// Versions read from the store, by rotation id and version (kept so a refusal stays
    /// recorded).
    candidates: parking_lot::Mutex<HashMap<(i64, String), Arc<ProviderKey>>>,
    /// The policy the scheduler reads (`None`: no scheduling).
    policy: Option<Arc<PolicyStore>>,
    /// Key issuers, in configuration order.
    issuers: Vec<Arc<dyn KeyIssuer>>,
    /// (key, due time) pairs already alerted as due without a pending version.
    due_alerted: parking_lot::Mutex<HashSet<(String, i64)>>,
    /// When schedules first covered each key (immutable once recorded in the store).
    first_seen: parking_lot::Mutex<HashMap<String, i64>>,
    /// The unfinished rotations as the follower last read them (key, state), for metrics.
    open: parking_lot::Mutex<Vec<(String, crate::store::RotationState)>>,
    /// Rotations this replica led to `retired` and to `rolled_back`.
    finished: [std::sync::atomic::AtomicU64; 2],
}

/// What the engine needs.
pub struct Parts {
    /// Settings.
    pub cfg: RotationConfig,
    /// The store.
    pub store: Store,
    /// The secret store keys are read from and promoted in.
    pub secrets: Arc<dyn SecretStore>,
    /// The key cache the proxy selects from.
    pub keys: Arc<KeyCache>,
    /// Change notifications ride on its channel.
    pub revocations: Arc<RevocationSet>,
    /// Providers by id (the live test calls them).
    pub providers: HashMap<String, ProviderRoute>,
    /// Client of the live tests.
    pub http: reqwest::Client,
    /// Webhooks.
    pub alerts: Arc<Alerts>,
    /// The audit log.
    pub audit: Arc<Audit>,
    /// This replica's id (the lease holder's name).
    pub replica: String,
    /// The policy holding rotation schedules (`None`: no scheduling).
    pub policy: Option<Arc<PolicyStore>>,
    /// Key issuers.
    pub issuers: Vec<Arc<dyn KeyIssuer>>,
}

impl Rotator {
    /// Assemble.
    pub fn new(p: Parts) -> Arc<Rotator> {
        Arc::new(Rotator {
            cfg: p.cfg,
            store: p.store,
            secrets: p.secrets,
            keys: p.keys,
            revocations: p.revocations,
            providers: p.providers,
            http: p.http,
            alerts: p.alerts,
            audit: p.audit,
            replica: p.replica,
            attempts: parking_lot::Mutex::new(HashMap::new()),
            candidates: parking_lot::Mutex::new(HashMap::new()),
            policy: p.policy,
            issuers: p.issuers,
            due_alerted: parking_lot::Mutex::new(HashSet::new()),
            first_seen: parking_lot::Mutex::new(HashMap::new()),
            open: parking_lot::Mutex::new(Vec::new()),
            finished: Default::default(),
        })
    }

    /// Start rotating `key_id` to its pending version, unless it is being rotated already
    /// (then that rotation is returned with `false`). With no pending version, a key issuer
    /// covering the key creates one.
    pub async fn start(
        &self,
        key_id: &str,
        trigger: RotationTrigger,
        emergency: bool,
        by: &str,
    ) -> Result<(RotationRecord, bool), StartError> {
        if let Some(open) = self.store.open_rotation_of(key_id).await? {
            return Ok((open, false));
        }
        let (from, to) = match self.pending_of(key_id) {
            Ok(v) => v,
            Err(_) => {
                // Written since the last listing? Look again before refusing.
                if let Err(e) = self.keys.refresh().await {
                    tracing::warn!(error = %e, "rotation: secret store not listed; judging by the last listing");
                }
                match self.pending_of(key_id) {
                    Ok(v) => v,
                    Err(StartError::NoPending { .. }) if self.issuer_of(key_id).is_some() => {
                        return self.issue_and_start(key_id, trigger, emergency, by).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.record_start(key_id, from, to, None, trigger, emergency, by)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_start(
        &self,
        key_id: &str,
        from: String,
        to: String,
        issued_ref: Option<String>,
        trigger: RotationTrigger,
        emergency: bool,
        by: &str,
    ) -> Result<(RotationRecord, bool), StartError> {
        let (rec, created) = self
            .store
            .start_rotation(&NewRotation {
                key_id: key_id.to_owned(),
                from_version: from,
                to_version: to,
                trigger,
                emergency,
                requested_by: by.to_owned(),
                issued_ref,
                now: crate::clock::now_ms(),
            })
            .await?;
        if created {
            tracing::info!(rotation = rec.id, key = %rec.key_id, from = %rec.from_version, to = %rec.to_version,
                trigger = trigger.as_str(), emergency, "rotation staged");
        }
        Ok((rec, created))
    }

    /// The first issuer covering `key_id`.
    fn issuer_of(&self, key_id: &str) -> Option<&Arc<dyn KeyIssuer>> {
        self.issuers.iter().find(|i| i.covers(key_id))
    }

    /// Create a new key through the key's issuer, write it as the pending version and start
    /// the rotation to it, under the key's issue lease (two replicas never create two keys).
    async fn issue_and_start(
        &self,
        key_id: &str,
        trigger: RotationTrigger,
        emergency: bool,
        by: &str,
    ) -> Result<(RotationRecord, bool), StartError> {
        let issuer = self
            .issuer_of(key_id)
            .cloned()
            .ok_or_else(|| StartError::NoPending {
                key: key_id.to_owned(),
            })?;
        self.store
            .schedule_first_seen(key_id, crate::clock::now_ms())
            .await?;
        let lease = i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX);
        if !self.store.claim_issue(key_id, &self.replica, lease).await? {
            return Err(StartError::Issuing(key_id.to_owned()));
        }
        let out = self
            .issue_under_lease(issuer.as_ref(), key_id, trigger, emergency, by)
            .await;
        if let Err(e) = self.store.release_issue(key_id, &self.replica).await {
            tracing::warn!(key = %key_id, error = %e, "rotation: issue lease not released; it lapses");
        }
        out
    }

    async fn issue_under_lease(
        &self,
        issuer: &dyn KeyIssuer,
        key_id: &str,
        trigger: RotationTrigger,
        emergency: bool,
        by: &str,
    ) -> Result<(RotationRecord, bool), StartError> {
        // Another replica may have issued (and started) just before the lease was ours.
        if let Some(open) = self.store.open_rotation_of(key_id).await? {
            return Ok((open, false));
        }
        let _ = self.keys.refresh().await;
        let from = match self.pending_of(key_id) {
            Ok((from, to)) => {
                return self
                    .record_start(key_id, from, to, None, trigger, emergency, by)
                    .await;
            }
            Err(StartError::NoPending { .. }) => {
                let (keys, _) = self.keys.snapshot();
                keys.iter()
                    .find(|k| k.id == key_id)
                    .map(|k| k.version.clone())
                    .ok_or_else(|| StartError::UnknownKey(key_id.to_owned()))?
            }
            Err(e) => return Err(e),
        };
        let issued = issuer.issue(key_id).await?;
        let to = match self.secrets.write_pending(key_id, &issued.secret).await {
            Ok(v) => v,
            Err(e) => {
                // Nothing refers to the new key: take it away at the provider again.
                if let Err(r) = issuer.revoke(&issued.reference).await {
                    tracing::error!(key = %key_id, reference = %issued.reference, error = %r,
                        "rotation: a key created at the provider could not be written nor deleted; delete it by hand");
                }
                return Err(e.into());
            }
        };
        if let Err(e) = self.keys.refresh().await {
            tracing::warn!(error = %e, "rotation: secret store not listed after writing the new key");
        }
        self.record_start(
            key_id,
            from,
            to,
            Some(issued.reference),
            trigger,
            emergency,
            by,
        )
        .await
    }

    /// The served and the newest pending version of `key_id` in the last listing.
    fn pending_of(&self, key_id: &str) -> Result<(String, String), StartError> {
        let (keys, _) = self.keys.snapshot();
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| StartError::UnknownKey(key_id.to_owned()))?;
        let pending = key
            .versions
            .iter()
            .rev()
            .find(|v| v.stage == Stage::Pending)
            .ok_or_else(|| StartError::NoPending {
                key: key_id.to_owned(),
            })?;
        Ok((key.version.clone(), pending.id.clone()))
    }

    /// Run the driver and the follower until cancelled. On the way out the driver gives up
    /// its leases, so another replica takes over at once rather than after `rotation.lease`.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        vec![
            drive::spawn(Arc::clone(&self), cancel.clone()),
            schedule::spawn(Arc::clone(&self), cancel.clone()),
            follow::spawn(self, cancel),
        ]
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The unfinished rotations (key, state) as last read.
    pub fn open_states(&self) -> Vec<(String, crate::store::RotationState)> {
        self.open.lock().clone()
    }

    /// Rotations this replica led to `retired`, and to `rolled_back`.
    pub fn finished(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.finished[0].load(Relaxed),
            self.finished[1].load(Relaxed),
        )
    }
}
