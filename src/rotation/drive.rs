//! The driver: one step at a time for every unfinished rotation this replica leads. A step
//! first does its work in the secret store (idempotent: moving the pin or a label twice is a
//! no-op), then records the transition, conditional on the state it leaves and on the lease.
//! A crash between the two is resumed by redoing the work.

use super::Rotator;
use super::probe::{self, Verdict};
use crate::config::WebhookFormat;
use crate::secrets::SecretStoreError;
use crate::store::{RotationRecord, RotationState, StoreError, Transition, VersionOutcome};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretStoreError),
    #[error(transparent)]
    Issue(#[from] super::IssueError),
}

pub(super) fn spawn(r: Arc<Rotator>, cancel: CancellationToken) -> JoinHandle<()> {
    let tick = r.cfg.tick;
    tokio::spawn(async move {
        let ticker = crate::tasks::every(tick, cancel, {
            let r = Arc::clone(&r);
            move || {
                let r = Arc::clone(&r);
                async move { r.drive_once().await }
            }
        });
        let _ = ticker.await;
        r.release_all().await;
    })
}

impl Rotator {
    /// Take one step of every unfinished rotation whose lease this replica holds or can take.
    pub async fn drive_once(&self) {
        let open = match self.store.open_rotations().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "rotation: rotations not readable; tried again at the next tick");
                return;
            }
        };
        let lease_ms = i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX);
        for rot in open {
            match self
                .store
                .claim_rotation(rot.id, &self.replica, lease_ms)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(rotation = rot.id, error = %e, "rotation: lease not taken");
                    continue;
                }
            }
            if rot.leader.as_deref() != Some(self.replica.as_str()) {
                tracing::info!(rotation = rot.id, key = %rot.key_id, state = rot.state.as_str(),
                    previous_leader = rot.leader.as_deref().unwrap_or("-"), "rotation: leading");
            }
            if let Err(e) = self.step(&rot).await {
                tracing::warn!(rotation = rot.id, key = %rot.key_id, state = rot.state.as_str(), error = %e,
                    "rotation: step failed; retried at the next tick");
            }
        }
    }

    async fn release_all(&self) {
        if let Ok(open) = self.store.open_rotations().await {
            for rot in open
                .iter()
                .filter(|r| r.leader.as_deref() == Some(&self.replica))
            {
                let _ = self.store.release_rotation(rot.id, &self.replica).await;
            }
        }
    }

    async fn step(&self, rot: &RotationRecord) -> Result<(), StepError> {
        if let Some(by) = &rot.abort_requested_by {
            return self
                .roll_back(rot, &format!("aborted by {by}"), json!({"aborted_by": by}))
                .await;
        }
        let now = crate::clock::now_ms();
        let elapsed = now - rot.updated_at;
        match rot.state {
            RotationState::Staged => self.test(rot).await,
            RotationState::Tested if rot.emergency => {
                self.promote(rot, json!({"canary": "skipped (emergency)"}))
                    .await
            }
            RotationState::Tested => {
                let detail = json!({
                    "share": self.cfg.canary_share,
                    "duration_ms": ms(self.cfg.canary_duration),
                });
                self.advance(rot, RotationState::Canary, "canary started", detail)
                    .await
                    .map(|_| ())
            }
            RotationState::Canary => self.judge_canary(rot, elapsed).await,
            RotationState::Promoted | RotationState::Draining
                if let Some((why, detail)) = self.refused_after_promotion(rot).await? =>
            {
                self.roll_back(rot, &why, detail).await
            }
            RotationState::Promoted => {
                let detail = json!({"drain_ms": ms(self.drain_of(rot))});
                self.advance(
                    rot,
                    RotationState::Draining,
                    "draining the old version",
                    detail,
                )
                .await
                .map(|_| ())
            }
            RotationState::Draining => {
                if elapsed < ms(self.drain_of(rot)) {
                    return Ok(());
                }
                self.retire(rot).await
            }
            RotationState::Retired | RotationState::RolledBack => Ok(()),
        }
    }

    async fn test(&self, rot: &RotationRecord) -> Result<(), StepError> {
        let Some(route) = self.route_of(rot) else {
            return self
                .roll_back(
                    rot,
                    "the key's provider is not configured on this replica",
                    json!({}),
                )
                .await;
        };
        let secret = match self
            .secrets
            .read_version(&rot.key_id, &rot.to_version)
            .await
        {
            Ok(s) => s,
            Err(e @ SecretStoreError::Invalid { .. }) => {
                let why = format!("pending version not readable: {e}");
                return self.roll_back(rot, &why, json!({})).await;
            }
            Err(e) => return Err(e.into()),
        };
        match probe::test_key(&self.http, route, &secret).await {
            Verdict::Accepted(status) => {
                self.attempts.lock().remove(&rot.id);
                let detail = json!({"call": "GET /models", "status": status});
                self.advance(rot, RotationState::Tested, "live call accepted", detail)
                    .await
                    .map(|_| ())
            }
            Verdict::Refused(status) => {
                let why = format!("the provider refused the pending key ({status}) on a live call");
                self.roll_back(rot, &why, json!({"call": "GET /models", "status": status}))
                    .await
            }
            Verdict::Inconclusive(why) => {
                let n = {
                    let mut a = self.attempts.lock();
                    let n = a.entry(rot.id).or_default();
                    *n += 1;
                    *n
                };
                tracing::warn!(rotation = rot.id, key = %rot.key_id, attempt = n, reason = %why,
                    "rotation: live test inconclusive");
                if n >= self.cfg.test_attempts {
                    self.attempts.lock().remove(&rot.id);
                    let why = format!("live call failed {n} times: {why}");
                    return self.roll_back(rot, &why, json!({"attempts": n})).await;
                }
                Ok(())
            }
        }
    }

    async fn judge_canary(&self, rot: &RotationRecord, elapsed: i64) -> Result<(), StepError> {
        let since = rot.updated_at;
        let new = self
            .store
            .version_outcome(&rot.key_id, &rot.to_version, since)
            .await?;
        let old = self
            .store
            .version_outcome(&rot.key_id, &rot.from_version, since)
            .await?;
        let detail = json!({
            "pending": outcome_json(&new), "current": outcome_json(&old),
            "elapsed_ms": elapsed,
        });
        if new.refused > 0 {
            let why = format!(
                "the provider refused the pending key during the canary ({} of {} requests)",
                new.refused, new.requests
            );
            return self.roll_back(rot, &why, detail).await;
        }
        let (rn, ro) = (rate(&new), rate(&old));
        if new.requests >= i64::from(self.cfg.canary_min_requests)
            && rn > ro + self.cfg.canary_max_error_rate_increase
        {
            let why = format!(
                "the pending key's error rate {:.1}% ({} of {}) exceeds the current key's {:.1}% by more than {:.1} points",
                rn * 100.0,
                new.errors,
                new.requests,
                ro * 100.0,
                self.cfg.canary_max_error_rate_increase * 100.0
            );
            return self.roll_back(rot, &why, detail).await;
        }
        if elapsed < ms(self.cfg.canary_duration) {
            return Ok(());
        }
        self.promote(rot, detail).await
    }

    /// The provider refusing the new version after promotion (it was revoked at the
    /// provider, say) while the old one is still there: back to the old version rather than
    /// an outage. Not for an emergency rotation: its old key is the leaked one.
    async fn refused_after_promotion(
        &self,
        rot: &RotationRecord,
    ) -> Result<Option<(String, Value)>, StepError> {
        if rot.emergency {
            return Ok(None);
        }
        let new = self
            .store
            .version_outcome(&rot.key_id, &rot.to_version, rot.updated_at)
            .await?;
        if new.refused == 0 {
            return Ok(None);
        }
        let why = format!(
            "the provider refused the new version after promotion ({} of {} requests); the old version is still usable",
            new.refused, new.requests
        );
        Ok(Some((why, json!({"promoted": outcome_json(&new)}))))
    }

    async fn promote(&self, rot: &RotationRecord, detail: Value) -> Result<(), StepError> {
        self.secrets
            .set_current(&rot.key_id, &rot.to_version)
            .await?;
        if self
            .advance(
                rot,
                RotationState::Promoted,
                "pending version is current",
                detail,
            )
            .await?
        {
            // This replica's listing shows it at once; the others follow the route until theirs do.
            let _ = self.keys.refresh().await;
        }
        Ok(())
    }

    async fn retire(&self, rot: &RotationRecord) -> Result<(), StepError> {
        // The old key is deleted at the provider when an issuer created it; otherwise a
        // person must revoke it there.
        let old_ref = self
            .store
            .issued_ref_of(&rot.key_id, &rot.from_version)
            .await?;
        let (msg, detail) = match (old_ref, self.issuer_of(&rot.key_id)) {
            (Some(r), Some(issuer)) => {
                issuer.revoke(&r).await?;
                (
                    format!(
                        "version {} of provider key {} is retired (version {} serves); its key was deleted at the provider by issuer {}",
                        rot.from_version,
                        rot.key_id,
                        rot.to_version,
                        issuer.name()
                    ),
                    json!({"retired_version": rot.from_version, "deleted_at_provider": r, "issuer": issuer.name()}),
                )
            }
            _ => (
                format!(
                    "version {} of provider key {} is retired (version {} serves); revoke the old key at the provider's console",
                    rot.from_version, rot.key_id, rot.to_version
                ),
                json!({"retired_version": rot.from_version, "revoke_at_provider": true}),
            ),
        };
        if self
            .advance(rot, RotationState::Retired, &msg, detail)
            .await?
        {
            self.alert(rot, "rotation_retired", &msg).await;
        }
        Ok(())
    }

    /// Undo whatever the rotation changed: the old version current again, the pending one
    /// withdrawn from the store, then `rolled_back` and an alert.
    async fn roll_back(
        &self,
        rot: &RotationRecord,
        why: &str,
        mut detail: Value,
    ) -> Result<(), StepError> {
        if rot.state.is_promoted() {
            self.secrets
                .set_current(&rot.key_id, &rot.from_version)
                .await?;
        }
        match self
            .secrets
            .reject_pending(&rot.key_id, &rot.to_version)
            .await
        {
            Ok(()) => {}
            // Nothing to withdraw in this store (the file backend cannot rotate at all).
            Err(SecretStoreError::Invalid { reason, .. }) => {
                detail["withdraw"] = json!(reason);
            }
            Err(e) => return Err(e.into()),
        }
        // A key Tollgate created for this rotation is of no use now: delete it at the
        // provider. The rollback does not wait on the provider's admin API.
        if let (Some(r), Some(issuer)) = (&rot.issued_ref, self.issuer_of(&rot.key_id)) {
            match issuer.revoke(r).await {
                Ok(()) => detail["deleted_at_provider"] = json!(r),
                Err(e) => {
                    tracing::error!(rotation = rot.id, key = %rot.key_id, reference = %r, error = %e,
                        "rotation: the rolled-back key could not be deleted at the provider; delete it by hand");
                    detail["delete_at_provider_failed"] =
                        json!({"reference": r, "error": e.to_string()});
                }
            }
        }
        detail["reason"] = json!(why);
        if self
            .advance(rot, RotationState::RolledBack, why, detail)
            .await?
        {
            let _ = self.keys.refresh().await;
            let msg = format!(
                "rotation of provider key {} to version {} rolled back at {}: {why}; version {} keeps serving",
                rot.key_id,
                rot.to_version,
                rot.state.as_str(),
                rot.from_version
            );
            tracing::error!(rotation = rot.id, key = %rot.key_id, state = rot.state.as_str(), reason = %why,
                "rotation rolled back");
            self.alert(rot, "rotation_rolled_back", &msg).await;
        }
        Ok(())
    }

    /// Record a transition (with its audit entry) and apply it on this replica at once.
    /// `false`: another replica took the step, or the lease was lost.
    async fn advance(
        &self,
        rot: &RotationRecord,
        to: RotationState,
        outcome: &str,
        detail: Value,
    ) -> Result<bool, StepError> {
        let done = self
            .store
            .advance_rotation(
                rot.id,
                &Transition {
                    from: rot.state,
                    to,
                    leader: &self.replica,
                    outcome,
                    detail: detail.clone(),
                    now: crate::clock::now_ms(),
                },
            )
            .await?;
        if !done {
            return Ok(false);
        }
        match to {
            RotationState::Retired => {
                self.finished[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
            RotationState::RolledBack => {
                self.finished[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
            _ => 0,
        };
        tracing::info!(rotation = rot.id, key = %rot.key_id, from = rot.state.as_str(), to = to.as_str(),
            outcome, "rotation step");
        self.audit.record(
            crate::audit::SYSTEM,
            &format!("rotation.{}", to.as_str()),
            &rot.key_id,
            json!({
                "rotation": rot.id, "from_state": rot.state.as_str(),
                "from_version": rot.from_version, "to_version": rot.to_version,
                "outcome": outcome, "detail": detail, "replica": self.replica,
            }),
        );
        // On SQLite nothing announces the change: re-read now (the follower wakes up on it).
        if let Err(e) = self.revocations.sync().await {
            tracing::warn!(error = %e, "rotation: local re-read failed; the periodic one follows");
        }
        Ok(true)
    }

    fn route_of(&self, rot: &RotationRecord) -> Option<&crate::app::ProviderRoute> {
        let (keys, _) = self.keys.snapshot();
        let provider = keys
            .iter()
            .find(|k| k.id == rot.key_id)
            .map(|k| k.provider.clone())?;
        self.providers.get(&provider)
    }

    /// How long the old version stays usable after promotion.
    fn drain_of(&self, rot: &RotationRecord) -> std::time::Duration {
        if rot.emergency {
            self.cfg.emergency_drain
        } else {
            self.cfg.drain
        }
    }

    async fn alert(&self, rot: &RotationRecord, kind: &'static str, msg: &str) {
        let what = format!("{kind} of {}", rot.key_id);
        self.alerts
            .send(&what, |f| match f {
                WebhookFormat::Json => json!({
                    "type": kind, "rotation": rot.id, "key": rot.key_id,
                    "from_version": rot.from_version, "to_version": rot.to_version,
                    "message": msg,
                }),
                WebhookFormat::Slack => {
                    json!({"text": format!(":rotating_light: Tollgate: {msg}")})
                }
            })
            .await;
    }
}

fn rate(o: &VersionOutcome) -> f64 {
    if o.requests == 0 {
        0.0
    } else {
        o.errors as f64 / o.requests as f64
    }
}

fn outcome_json(o: &VersionOutcome) -> Value {
    json!({"requests": o.requests, "errors": o.errors, "refused": o.refused})
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
