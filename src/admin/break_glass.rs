//! The break-glass hash kept in the secret store (`[admin] break_glass_sha256_secret`).
//!
//! Read once at start (a configured but unreadable hash fails start-up: an operator who set
//! it expects the bootstrap credential to work), then every `secrets.refresh_interval`, so
//! replacing the hash after a use retires the old token on every replica without a restart.
//! While the store is unreachable the last hash read stays in force: the break-glass token is
//! the credential of outages.

use super::AdminAuth;
use super::auth::parse_hash;
use crate::audit::Audit;
use crate::secrets::SecretStore;
use secrecy::ExposeSecret;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The field of the secret that holds the hex hash.
pub const FIELD: &str = "sha256";

/// Read the hash and install it; `Ok(true)` when it replaced a different one.
pub async fn load(auth: &AdminAuth, store: &dyn SecretStore, name: &str) -> Result<bool, String> {
    let value = store
        .read_secret(name, FIELD)
        .await
        .map_err(|e| format!("break_glass_sha256_secret: {e}"))?;
    let hash = parse_hash(value.expose_secret())
        .map_err(|e| format!("break_glass_sha256_secret: {name}: {e}"))?;
    Ok(auth.set_break_glass_hash(hash))
}

/// Re-read the hash every `every`; a replacement is logged and audited.
pub fn spawn_refresher(
    auth: Arc<AdminAuth>,
    store: Arc<dyn SecretStore>,
    name: String,
    every: Duration,
    audit: Arc<Audit>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match load(&auth, store.as_ref(), &name).await {
                Ok(true) => {
                    tracing::warn!(secret = %name, "break-glass hash replaced from the secret store; the previous token no longer works");
                    audit.record(
                        "tollgate",
                        "admin.break_glass.replaced",
                        &name,
                        json!({"source": store.name()}),
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "break-glass hash not re-read; the last one read stays in force")
                }
            }
        }
    })
}
