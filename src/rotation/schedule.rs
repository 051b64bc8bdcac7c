//! The scheduler: starts the rotations the policy's `rotations:` schedules call for.
//!
//! A schedule counts from the key's last rotation (whatever started it), or, for a key never
//! rotated, from when a replica first saw the schedule cover it (persisted, so a restart never
//! moves a due time); a rolled-back rotation is tried again `retry_after` later. When a key
//! falls due the scheduler rotates it to its pending version; with no pending version it asks
//! the key's issuer for a new key, and with no issuer it alerts once that security must write
//! one, then rotates as soon as the version appears. Every replica runs it: the store's
//! one-open-rotation-per-key rule and the issue lease make two replicas starting the same
//! rotation harmless. A round costs two small queries per covered key and at most one listing
//! of the secret store (only while a due key waits for its pending version).

use super::{Rotator, StartError};
use crate::config::WebhookFormat;
use crate::policy::RotationSchedule;
use crate::secrets::{ProviderKey, Stage};
use crate::store::{RotationState, RotationTrigger};
use serde_json::json;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) fn spawn(r: Arc<Rotator>, cancel: CancellationToken) -> JoinHandle<()> {
    let every = r.cfg.schedule_tick;
    crate::tasks::every(every, cancel, move || {
        let r = Arc::clone(&r);
        async move { r.schedule_once().await }
    })
}

/// A key that is due, and the schedule that made it so.
struct Due {
    key: String,
    schedule: String,
    at: i64,
}

impl Rotator {
    /// Start every rotation a schedule calls for now.
    pub async fn schedule_once(&self) {
        let Some(policy) = &self.policy else { return };
        let set = policy.current();
        if set.rotation_schedules().is_empty() {
            return;
        }
        let (keys, _) = self.keys.snapshot();
        let mut waiting = Vec::new();
        for key in keys.iter() {
            let Some(s) = set.rotation_schedule_for(&key.id, &key.billing_owner) else {
                continue;
            };
            match self.due(key, s).await {
                Ok(Some(due)) => {
                    let has_pending = key.versions.iter().any(|v| v.stage == Stage::Pending);
                    if has_pending || self.issuer_of(&key.id).is_some() {
                        self.start_due(&due).await;
                    } else {
                        waiting.push(due);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(key = %key.id, schedule = %s.name, error = %e,
                    "rotation schedule: key not checked this round; retrying"),
            }
        }
        if waiting.is_empty() {
            return;
        }
        // Security may have written the new versions since the last listing.
        if let Err(e) = self.keys.refresh().await {
            tracing::warn!(error = %e, "rotation schedule: secret store not listed; judging by the last listing");
        }
        for due in waiting {
            match self.pending_of(&due.key) {
                Ok(_) => self.start_due(&due).await,
                Err(StartError::NoPending { .. }) => self.alert_due(&due).await,
                Err(_) => {}
            }
        }
    }

    /// When `key` is due under `s` and that time has come; `None` otherwise.
    async fn due(
        &self,
        key: &ProviderKey,
        s: &RotationSchedule,
    ) -> Result<Option<Due>, StartError> {
        let now = crate::clock::now_ms();
        let cached = self.first_seen.lock().get(&key.id).copied();
        let first_seen = match cached {
            Some(t) => t,
            None => {
                let t = self.store.schedule_first_seen(&key.id, now).await?;
                self.first_seen.lock().insert(key.id.clone(), t);
                t
            }
        };
        let last = self
            .store
            .rotations(Some(&key.id), 1)
            .await?
            .into_iter()
            .next();
        let at = match &last {
            Some(r) if !r.state.is_final() => return Ok(None),
            Some(r) if r.state == RotationState::RolledBack => Some(
                r.updated_at
                    .saturating_add(i64::try_from(s.retry_after.as_millis()).unwrap_or(i64::MAX)),
            ),
            Some(r) => s.due_at(r.created_at),
            None => s.due_at(first_seen),
        };
        Ok(at.filter(|at| *at <= now).map(|at| Due {
            key: key.id.clone(),
            schedule: s.name.clone(),
            at,
        }))
    }

    async fn start_due(&self, due: &Due) {
        let by = format!("schedule:{}", due.schedule);
        match self
            .start(&due.key, RotationTrigger::Schedule, false, &by)
            .await
        {
            Ok(_) => {}
            Err(StartError::NoPending { .. }) => self.alert_due(due).await,
            Err(e) => tracing::warn!(key = %due.key, schedule = %due.schedule, error = %e,
                "rotation schedule: rotation not started this round; retrying"),
        }
    }

    /// Once per due time: security must write the new key.
    async fn alert_due(&self, due: &Due) {
        if !self.due_alerted.lock().insert((due.key.clone(), due.at)) {
            return;
        }
        let msg = format!(
            "provider key {} is due for rotation (schedule {}) but has no pending version and no key issuer: write the new key into the secret store (Vault: a new KV version; AWS: a version labelled AWSPENDING) and Tollgate rotates to it",
            due.key, due.schedule
        );
        tracing::warn!(key = %due.key, schedule = %due.schedule, "rotation due; waiting for a pending version");
        let what = format!("rotation_due of {}", due.key);
        self.alerts
            .send(&what, |f| match f {
                WebhookFormat::Json => json!({
                    "type": "rotation_due", "key": due.key, "schedule": due.schedule,
                    "due_at": due.at, "message": msg,
                }),
                WebhookFormat::Slack => json!({"text": format!(":key: Tollgate: {msg}")}),
            })
            .await;
    }
}
