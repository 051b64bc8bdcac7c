//! `/admin/v1/revocations`: cut a token, workload, team, pool, issuer, pod or provider key off
//! on every replica, list what is cut off, and lift a cut.

use super::auth::{Caller, Identity, Read, Restore, Revoke};
use super::problem::{Json, Path, Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::clock::{now_ms, parse_rfc3339, to_rfc3339};
use crate::store::{NewRevocation, RevocationKind, RevocationRecord};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// The longest `id` a revocation names.
const MAX_ID_BYTES: usize = 512;
/// The longest `reason`.
pub(super) const MAX_REASON_BYTES: usize = 1024;

/// A revocation to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    /// What `id` names.
    pub kind: RevocationKind,
    /// The token id, subject, team, pool, workload issuer name, pod uid or provider key id.
    pub id: String,
    /// Why; kept with the record.
    pub reason: String,
    /// When the revocation lapses (RFC 3339); never by default.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A revocation in force.
#[derive(Serialize, ToSchema)]
pub struct Revocation {
    /// Its id (what `DELETE` takes).
    pub revocation_id: i64,
    /// What `id` names.
    pub kind: RevocationKind,
    /// The revoked token id, subject, team, pool, issuer, pod uid or provider key.
    pub id: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339). Tokens of the principal issued at or before it are refused.
    pub created_at: String,
    /// When it lapses, if ever.
    pub expires_at: Option<String>,
    /// The admin caller who made it.
    pub created_by: String,
}

impl From<RevocationRecord> for Revocation {
    fn from(r: RevocationRecord) -> Self {
        Revocation {
            revocation_id: r.id,
            kind: r.kind,
            id: r.value,
            reason: r.reason,
            created_at: to_rfc3339(r.created_at),
            expires_at: r.expires_at.map(to_rfc3339),
            created_by: r.created_by,
        }
    }
}

/// Revocations in force.
#[derive(Serialize, ToSchema)]
pub struct RevocationList {
    /// Oldest first.
    pub revocations: Vec<Revocation>,
}

/// Filters of the listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only revocations of this kind.
    pub kind: Option<RevocationKind>,
}

/// A non-empty, bounded, printable field.
pub(super) fn text(field: &str, value: &str, max: usize) -> Result<String, Problem> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Problem::bad_request(format!("{field} must not be empty")));
    }
    if v.len() > max {
        return Err(Problem::bad_request(format!(
            "{field} must be at most {max} bytes"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(Problem::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}

/// Is `id` a provider key the secret store holds or held?
pub(super) async fn key_known(state: &AppState, id: &str) -> Result<bool, Problem> {
    let (keys, invalid) = state.keys.snapshot();
    if keys.iter().any(|k| k.id == id) || invalid.iter().any(|k| k.id == id) {
        return Ok(true);
    }
    let inventory = state.store.provider_keys().await.map_err(Problem::store)?;
    Ok(inventory.iter().any(|k| k.key.id == id))
}

/// Refuse a revocation of something that does not exist: a typo must not pass for a cut.
async fn check_target(state: &AppState, kind: RevocationKind, id: &str) -> Result<(), Problem> {
    let policy = state.policy.current();
    let known = match kind {
        RevocationKind::Team => policy.bindings().iter().any(|b| b.team == id),
        RevocationKind::Pool => policy.pool(id).is_some(),
        RevocationKind::Issuer => state.identity.issuer_names().iter().any(|n| n == id),
        RevocationKind::ProviderKey => key_known(state, id).await?,
        // Tokens, subjects and pods come and go; revoking one not seen yet is legitimate.
        RevocationKind::Jti | RevocationKind::Subject | RevocationKind::PodUid => true,
    };
    if known {
        Ok(())
    } else {
        Err(Problem::not_found(format!(
            "there is no {} {id:?} to revoke",
            kind.as_str().replace('_', " ")
        )))
    }
}

/// Record a revocation, apply it here at once and answer 201 with it.
pub(super) async fn record(
    state: &AppState,
    caller: &Identity,
    r: NewRevocation,
) -> Result<RevocationRecord, Problem> {
    let rec = state.revocations.revoke(&r).await.map_err(Problem::store)?;
    caller.audit(
        &state.audit,
        "revocation.created",
        &rec.id.to_string(),
        json!({"kind": r.kind.as_str(), "id": r.value, "reason": r.reason, "expires_at": r.expires_at}),
    );
    tracing::info!(
        admin = %r.created_by,
        kind = r.kind.as_str(),
        id = %r.value,
        revocation_id = rec.id,
        "revocation recorded"
    );
    Ok(rec)
}

pub(super) fn created(rec: RevocationRecord) -> Response {
    let location = format!("/admin/v1/revocations/{}", rec.id);
    let mut resp = reply(StatusCode::CREATED, &Revocation::from(rec));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Revoke a token, subject, team, pool, issuer, pod or provider key on every replica.
#[utoipa::path(
    post,
    path = "/admin/v1/revocations",
    tag = "revocations",
    request_body = RevocationRequest,
    responses(
        (status = 201, description = "Recorded and in force on this replica; the others follow within a second", body = Revocation),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such team, pool, issuer or provider key", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder"]))),
)]
pub async fn create(
    caller: Caller<Revoke>,
    State(state): State<AppState>,
    Json(req): Json<RevocationRequest>,
) -> Result<Response, Problem> {
    let id = text("id", &req.id, MAX_ID_BYTES)?;
    let reason = text("reason", &req.reason, MAX_REASON_BYTES)?;
    let now = now_ms();
    let expires_at = match req.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let at = parse_rfc3339(s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "expires_at must be an RFC 3339 time such as 2026-12-31T23:00:00Z, not {s:?}"
                ))
            })?;
            if at <= now {
                return Err(Problem::bad_request("expires_at must be in the future"));
            }
            Some(at)
        }
    };
    check_target(&state, req.kind, &id).await?;
    let rec = record(
        &state,
        &caller,
        NewRevocation {
            kind: req.kind,
            value: id,
            reason,
            created_at: now,
            expires_at,
            created_by: caller.subject.clone(),
        },
    )
    .await?;
    Ok(created(rec))
}

/// The revocations in force.
#[utoipa::path(
    get,
    path = "/admin/v1/revocations",
    tag = "revocations",
    params(ListQuery),
    responses(
        (status = 200, description = "Revocations in force", body = RevocationList),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, Problem> {
    let rows = state
        .store
        .active_revocations(now_ms())
        .await
        .map_err(Problem::store)?;
    let revocations = rows
        .into_iter()
        .filter(|r| q.kind.is_none_or(|k| k == r.kind))
        .map(Revocation::from)
        .collect();
    Ok(reply(StatusCode::OK, &RevocationList { revocations }))
}

/// One revocation.
#[utoipa::path(
    get,
    path = "/admin/v1/revocations/{revocation_id}",
    tag = "revocations",
    params(("revocation_id" = i64, Path, description = "The revocation's id")),
    responses(
        (status = 200, description = "The revocation", body = Revocation),
        Refused,
        (status = 404, description = "No such revocation (or lifted, or purged)", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn get_one(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Path(revocation_id): Path<i64>,
) -> Result<Response, Problem> {
    match state
        .store
        .revocation(revocation_id)
        .await
        .map_err(Problem::store)?
    {
        Some(r) => Ok(reply(StatusCode::OK, &Revocation::from(r))),
        None => Err(no_such(revocation_id)),
    }
}

fn no_such(id: i64) -> Problem {
    Problem::not_found(format!("there is no revocation {id}"))
}

/// Lift a subject, team, pool, issuer, pod or provider-key revocation. A token (`jti`)
/// revocation is final: the workload exchanges a new token instead.
#[utoipa::path(
    delete,
    path = "/admin/v1/revocations/{revocation_id}",
    tag = "revocations",
    params(("revocation_id" = i64, Path, description = "The revocation's id")),
    responses(
        (status = 204, description = "Lifted on this replica; the others follow within a second"),
        Refused,
        (status = 404, description = "No such revocation", body = ProblemBody),
        (status = 409, description = "A token revocation cannot be lifted", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security"]))),
)]
pub async fn lift(
    caller: Caller<Restore>,
    State(state): State<AppState>,
    Path(revocation_id): Path<i64>,
) -> Result<Response, Problem> {
    let Some(rec) = state
        .store
        .revocation(revocation_id)
        .await
        .map_err(Problem::store)?
    else {
        return Err(no_such(revocation_id));
    };
    if rec.kind == RevocationKind::Jti {
        return Err(Problem::conflict(
            "a token revocation cannot be lifted; the workload exchanges a new token",
        ));
    }
    if !state
        .revocations
        .lift(revocation_id)
        .await
        .map_err(Problem::store)?
    {
        return Err(no_such(revocation_id));
    }
    tracing::info!(
        admin = %caller.subject,
        kind = rec.kind.as_str(),
        id = %rec.value,
        revocation_id,
        "revocation lifted"
    );
    caller.audit(
        &state.audit,
        "revocation.lifted",
        &revocation_id.to_string(),
        json!({"kind": rec.kind.as_str(), "id": rec.value}),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
