//! The scheduler: starts the rotations the policy's `rotations:` schedules call for.
//!
//! A schedule counts from the key's last rotation (whatever started it), or, for a key never
//! rotated, from when a replica first saw the schedule cover it (persisted, so a restart never
//! moves a due time); a rolled-back rotation is tried again `retry_after` later. When a key
//! falls due the scheduler rotates it to its pending version; with no pending version it asks
//! the key's issuer for a new key, and with no issuer it alerts once that security must write
//! one. Every replica runs it: the store's one-open-rotation-per-key rule and the issue lease
//! make two replicas starting the same rotation harmless.

use super::Rotator;
use crate::config::WebhookFormat;
use crate::policy::RotationSchedule;
use crate::secrets::ProviderKey;
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

impl Rotator {
    /// Start every rotation a schedule calls for now.
    pub async fn schedule_once(&self) {
        let Some(policy) = &self.policy else { return };
        let set = policy.current();
        if set.rotation_schedules().is_empty() {
            return;
        }
        let (keys, _) = self.keys.snapshot();
        for key in keys.iter() {
            let Some(s) = set.rotation_schedule_for(&key.id, &key.billing_owner) else {
                continue;
            };
            if let Err(e) = self.schedule_key(key, s).await {
                tracing::warn!(key = %key.id, schedule = %s.name, error = %e,
                    "rotation schedule: key not rotated this round; retrying");
            }
        }
    }

    async fn schedule_key(
        &self,
        key: &ProviderKey,
        s: &RotationSchedule,
    ) -> Result<(), super::StartError> {
        let now = crate::clock::now_ms();
        let first_seen = self.store.schedule_first_seen(&key.id, now).await?;
        let last = self
            .store
            .rotations(Some(&key.id), 1)
            .await?
            .into_iter()
            .next();
        let due = match &last {
            Some(r) if !r.state.is_final() => return Ok(()),
            Some(r) if r.state == RotationState::RolledBack => Some(
                r.updated_at
                    .saturating_add(i64::try_from(s.retry_after.as_millis()).unwrap_or(i64::MAX)),
            ),
            Some(r) => s.due_at(r.created_at),
            None => s.due_at(first_seen),
        };
        let Some(due) = due.filter(|d| *d <= now) else {
            return Ok(());
        };
        let by = format!("schedule:{}", s.name);
        // `start` lists the store again when the last listing shows no pending version, so a
        // version security just wrote is rotated to on this round.
        match self
            .start(&key.id, RotationTrigger::Schedule, false, &by)
            .await
        {
            Err(super::StartError::NoPending { .. }) => {}
            other => return other.map(|_| ()),
        }
        if self.due_alerted.lock().insert((key.id.clone(), due)) {
            let msg = format!(
                "provider key {} is due for rotation (schedule {}) but has no pending version and no key issuer: write the new key into the secret store (Vault: a new KV version; AWS: a version labelled AWSPENDING) and Tollgate rotates to it",
                key.id, s.name
            );
            tracing::warn!(key = %key.id, schedule = %s.name, "rotation due; waiting for a pending version");
            let what = format!("rotation_due of {}", key.id);
            self.alerts
                .send(&what, |f| match f {
                    WebhookFormat::Json => json!({
                        "type": "rotation_due", "key": key.id, "schedule": s.name,
                        "due_at": due, "message": msg,
                    }),
                    WebhookFormat::Slack => json!({"text": format!(":key: Tollgate: {msg}")}),
                })
                .await;
        }
        Ok(())
    }
}
