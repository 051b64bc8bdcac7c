//! `/admin/v1/keys`: the provider-key inventory (never a secret), and disabling / enabling a
//! key on every replica. Key ids may contain `/` (Vault paths): percent-encode them
//! (`openai%2Fteam-a`).

use super::auth::{Caller, Read, Restore, Revoke};
use super::problem::{Json, Path, Problem, ProblemBody, Refused, reply};
use super::revocations::{MAX_REASON_BYTES, Revocation, created, key_known, record, text};
use crate::app::AppState;
use crate::clock::{now_ms, to_rfc3339};
use crate::store::{
    NewRevocation, PauseKind, ProviderKeyInventory, RevocationKind, RotationTrigger,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// One provider key as the inventory knows it.
#[derive(Serialize, ToSchema)]
pub struct Key {
    /// Path / secret name.
    pub id: String,
    /// `vault`, `aws` or `file`.
    pub store: String,
    /// Provider id.
    pub provider: String,
    /// Whose traffic it serves (`*`: shared).
    pub billing_owner: String,
    /// Models it may serve (`*`: any).
    pub allowed_models: Vec<String>,
    /// Metadata `purpose`.
    pub purpose: Option<String>,
    /// The version served.
    pub version: String,
    /// Versions and their stages, as the store lists them.
    #[schema(value_type = Object)]
    pub versions: serde_json::Value,
    /// `active`, `quarantined`, `invalid` or `missing` in the last listing.
    pub state: String,
    /// Why it is invalid.
    pub reason: Option<String>,
    /// Disabled by an admin (a `provider_key` revocation).
    pub disabled: bool,
    /// Paused by the anomaly guard.
    pub paused: bool,
    /// First listed (RFC 3339).
    pub first_seen: String,
    /// Last listed.
    pub last_seen: String,
    /// Last request served with it.
    pub last_used: Option<String>,
    /// Requests served with it.
    pub requests: i64,
    /// Spend to date, micro-dollars.
    pub spend_micro_usd: i64,
}

/// The inventory.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// By provider, then id.
    pub keys: Vec<Key>,
}

/// Why a key is disabled.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Why; kept with the revocation.
    pub reason: String,
    /// Instead of cutting the key at once, start an emergency rotation: the pending version
    /// (or one the key issuer creates) is tested and promoted without a canary, and the old
    /// one is retired after `rotation.emergency_drain`. No moment without a usable key.
    #[serde(default)]
    pub rotate: bool,
}

/// A key after enabling.
#[derive(Serialize, ToSchema)]
pub struct Enabled {
    /// The key.
    pub id: String,
    /// How many revocations of it were lifted (0: it was not disabled).
    pub lifted: u64,
}

fn key(state: &AppState, k: ProviderKeyInventory) -> Key {
    let id = k.key.id;
    Key {
        disabled: state.revocations.key_revoked(&id),
        paused: state
            .revocations
            .paused(PauseKind::ProviderKey, &id)
            .is_some(),
        allowed_models: k
            .key
            .allowed_models
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        versions: serde_json::from_str(&k.key.versions).unwrap_or(serde_json::Value::Null),
        id,
        store: k.key.store,
        provider: k.key.provider,
        billing_owner: k.key.billing_owner,
        purpose: k.key.purpose,
        version: k.key.version,
        state: k.key.state,
        reason: k.key.reason,
        first_seen: to_rfc3339(k.first_seen),
        last_seen: to_rfc3339(k.last_seen),
        last_used: k.last_used.map(to_rfc3339),
        requests: k.requests,
        spend_micro_usd: k.spend_micro_usd,
    }
}

/// The provider-key inventory: every key the secret store holds or held, never a secret.
#[utoipa::path(
    get,
    path = "/admin/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "The inventory", body = KeyList),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
) -> Result<Response, Problem> {
    let rows = state.store.provider_keys().await.map_err(Problem::store)?;
    let keys = rows.into_iter().map(|k| key(&state, k)).collect();
    Ok(reply(StatusCode::OK, &KeyList { keys }))
}

/// Disable a provider key on every replica: no request uses it until it is enabled.
#[utoipa::path(
    post,
    path = "/admin/v1/keys/{id}/disable",
    tag = "keys",
    params(("id" = String, Path, description = "The key id, percent-encoded")),
    request_body = DisableRequest,
    responses(
        (status = 201, description = "Disabled (a provider_key revocation)", body = Revocation),
        (status = 200, description = "It already was: the revocation in force (or, with rotate, the rotation already running)", body = Revocation),
        (status = 202, description = "With rotate: an emergency rotation is staged", body = super::rotations::Rotation),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such key", body = ProblemBody),
        (status = 409, description = "With rotate: nothing to rotate to (no pending version, no key issuer)", body = ProblemBody),
        (status = 503, description = "With rotate: the key issuer or the secret store failed", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder"]))),
)]
pub async fn disable(
    caller: Caller<Revoke>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<DisableRequest>,
) -> Result<Response, Problem> {
    let reason = text("reason", &req.reason, MAX_REASON_BYTES)?;
    if !key_known(&state, &id).await? {
        return Err(Problem::not_found(format!(
            "there is no provider key {id:?}"
        )));
    }
    if req.rotate {
        return rotate_instead(&state, &caller, &id, &reason).await;
    }
    let now = now_ms();
    let active = state
        .store
        .active_revocations(now)
        .await
        .map_err(Problem::store)?;
    if let Some(r) = active
        .into_iter()
        .find(|r| r.kind == RevocationKind::ProviderKey && r.value == id)
    {
        return Ok(reply(StatusCode::OK, &Revocation::from(r)));
    }
    let rec = record(
        &state,
        &caller,
        NewRevocation {
            kind: RevocationKind::ProviderKey,
            value: id,
            reason,
            created_at: now,
            expires_at: None,
            created_by: caller.subject.clone(),
        },
    )
    .await?;
    Ok(created(rec))
}

/// `disable` with `rotate`: an emergency rotation replaces the key instead of a revocation.
async fn rotate_instead(
    state: &AppState,
    caller: &Caller<Revoke>,
    id: &str,
    reason: &str,
) -> Result<Response, Problem> {
    let (rec, created) = state
        .rotator
        .start(id, RotationTrigger::Emergency, true, &caller.subject)
        .await
        .map_err(|e| match e {
            crate::rotation::StartError::NoPending { .. } => Problem::conflict(format!(
                "{e}; or disable it without rotate to cut it at once"
            )),
            e => super::rotations::start_problem(e),
        })?;
    if !created {
        return Ok(reply(
            StatusCode::OK,
            &super::rotations::Rotation::from(rec),
        ));
    }
    tracing::warn!(admin = %caller.subject, key = %id, rotation = rec.id, "provider key disabled by an emergency rotation");
    caller.audit(
        &state.audit,
        "key.disabled_by_rotation",
        id,
        json!({"rotation": rec.id, "reason": reason, "from_version": rec.from_version,
               "to_version": rec.to_version}),
    );
    Ok(reply(
        StatusCode::ACCEPTED,
        &super::rotations::Rotation::from(rec),
    ))
}

/// Enable a disabled provider key again on every replica (lifts its revocations; a pause of
/// the anomaly guard is lifted under `pauses`).
#[utoipa::path(
    post,
    path = "/admin/v1/keys/{id}/enable",
    tag = "keys",
    params(("id" = String, Path, description = "The key id, percent-encoded")),
    responses(
        (status = 200, description = "Enabled", body = Enabled),
        Refused,
        (status = 404, description = "No such key", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security"]))),
)]
pub async fn enable(
    caller: Caller<Restore>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if !key_known(&state, &id).await? && !state.revocations.key_revoked(&id) {
        return Err(Problem::not_found(format!(
            "there is no provider key {id:?}"
        )));
    }
    let lifted = state
        .revocations
        .enable_key(&id)
        .await
        .map_err(Problem::store)?;
    if lifted > 0 {
        tracing::info!(admin = %caller.subject, key = %id, "provider key enabled");
        caller.audit(&state.audit, "key.enabled", &id, json!({"lifted": lifted}));
    }
    Ok(reply(StatusCode::OK, &Enabled { id, lifted }))
}
