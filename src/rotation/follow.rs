//! The follower: this replica's routes, rebuilt from the store's rotations on every change
//! notification (and every `rotation.tick`). A route's candidate is read from the secret store
//! once per rotation; a store outage keeps the routes in force.

use super::Rotator;
use crate::secrets::{ProviderKey, RotationRoute};
use crate::store::{RotationRecord, RotationState};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a retired rotation keeps its route when this replica's listing still shows the
/// old version (a listing that never catches up is the store's problem, not a routing one).
const RETAIN_MS: i64 = 10 * 60_000;
const PPM: u64 = 1_000_000;

pub(super) fn spawn(r: Arc<Rotator>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = r.revocations.subscribe();
        loop {
            r.follow_once().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(r.cfg.tick) => {}
            }
        }
    })
}

impl Rotator {
    /// Re-read the rotations and install the routes they call for.
    pub async fn follow_once(&self) {
        let rows = match self
            .store
            .rotations_for_routing(crate::clock::now_ms() - RETAIN_MS)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "rotation: rotations not readable; routes kept");
                return;
            }
        };
        // The newest rotation of each key decides.
        let mut latest: HashMap<&str, &RotationRecord> = HashMap::new();
        for r in &rows {
            latest.insert(&r.key_id, r);
        }
        let mut stale_listing = false;
        let mut routes = HashMap::new();
        let before = self.keys.routes();
        let (keys, _) = self.keys.snapshot();
        for rot in latest.values() {
            let Some(base) = keys.iter().find(|k| k.id == rot.key_id) else {
                continue;
            };
            let listed_new = base.version == rot.to_version;
            // Which version the route sends requests to, and what share of them.
            let (target, share) = match rot.state {
                RotationState::Canary => (&rot.to_version, self.cfg.share_ppm()),
                RotationState::Promoted | RotationState::Draining => (&rot.to_version, PPM),
                RotationState::Retired if !listed_new => (&rot.to_version, PPM),
                // Rolled back after promotion, listed here before the rollback: the old version
                // until the listing catches up.
                RotationState::RolledBack if listed_new => (&rot.from_version, PPM),
                _ => continue,
            };
            stale_listing |= share == PPM && base.version != *target;
            let Some(candidate) = self.version_of(rot, base, target).await else {
                continue;
            };
            let previous = match rot.state {
                RotationState::Promoted | RotationState::Draining if !rot.emergency => {
                    self.version_of(rot, base, &rot.from_version).await
                }
                _ => None,
            };
            // An unchanged route is kept as it is: its canary counter keeps the share exact.
            let same = |r: &RotationRoute| {
                Arc::ptr_eq(&r.candidate, &candidate)
                    && r.share_ppm == share
                    && r.previous.as_ref().map(|p| &p.version)
                        == previous.as_ref().map(|p| &p.version)
            };
            let route = match before.get(&rot.key_id) {
                Some(r) if same(r) => Arc::clone(r),
                _ => Arc::new(RotationRoute::new(candidate, share).with_previous(previous)),
            };
            routes.insert(rot.key_id.clone(), route);
        }
        *self.open.lock() = latest
            .values()
            .filter(|r| !r.state.is_final())
            .map(|r| (r.key_id.clone(), r.state))
            .collect();
        let live: Vec<i64> = latest.values().map(|r| r.id).collect();
        self.candidates
            .lock()
            .retain(|(id, _), _| live.contains(id));
        self.keys.set_routes(routes);
        if stale_listing {
            // Promoted elsewhere: pick up the new current version rather than wait for the
            // next periodic listing (the route serves it meanwhile).
            let _ = self.keys.refresh().await;
        }
    }

    /// One version of `rot`'s key (its pending or its previous one), read from the store
    /// once per rotation; the listed key itself when it is that version and not the pending one.
    async fn version_of(
        &self,
        rot: &RotationRecord,
        base: &Arc<ProviderKey>,
        version: &str,
    ) -> Option<Arc<ProviderKey>> {
        if version == rot.from_version && base.version == version {
            return Some(Arc::clone(base));
        }
        let slot = (rot.id, version.to_owned());
        if let Some(c) = self.candidates.lock().get(&slot) {
            return Some(Arc::clone(c));
        }
        match self.secrets.read_version(&rot.key_id, version).await {
            Ok(secret) => {
                let c = Arc::new(base.with_version(secret, version.to_owned()));
                self.candidates.lock().insert(slot, Arc::clone(&c));
                Some(c)
            }
            Err(e) => {
                tracing::warn!(rotation = rot.id, key = %rot.key_id, version = %version, error = %e,
                    "rotation: a version of the key is not readable; the listed version keeps serving here");
                None
            }
        }
    }
}
