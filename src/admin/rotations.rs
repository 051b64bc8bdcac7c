//! `/admin/v1/keys/{id}/rotate` and `/admin/v1/rotations`: start a staged rotation of a
//! provider key, follow it step by step, abort it. The steps themselves are taken by
//! whichever replica leads the rotation ([`crate::rotation`]).

use super::auth::{Caller, Read, Rotate};
use super::problem::{Json, Path, Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::clock::to_rfc3339;
use crate::rotation::StartError;
use crate::store::{RotationEvent, RotationRecord, RotationState, RotationTrigger};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// Starting a rotation.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Skip the canary and drain briefly (`rotation.emergency_drain`): for a key that leaked.
    #[serde(default)]
    pub emergency: bool,
}

/// A rotation.
#[derive(Serialize, ToSchema)]
pub struct Rotation {
    /// Id.
    pub id: i64,
    /// Provider key id.
    pub key_id: String,
    /// Version served before.
    pub from_version: String,
    /// Version it moves to.
    pub to_version: String,
    /// Where it stands.
    pub state: RotationState,
    /// What started it.
    pub trigger: RotationTrigger,
    /// Emergency mode (no canary, short drain).
    pub emergency: bool,
    /// Who asked.
    pub requested_by: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// When the current state was entered.
    pub updated_at: String,
    /// The replica leading it.
    pub leader: Option<String>,
    /// The last step's result, or why it was rolled back.
    pub outcome: Option<String>,
    /// Who asked for an abort, if anyone did.
    pub abort_requested_by: Option<String>,
    /// The provider's id of the new key when a key issuer created it (an OpenAI service
    /// account id; never the key).
    pub issued_ref: Option<String>,
    /// Its steps, oldest first (only on `GET /admin/v1/rotations/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

/// One step of a rotation.
#[derive(Serialize, ToSchema)]
pub struct Event {
    /// 1, 2, …
    pub seq: i32,
    /// When (RFC 3339).
    pub at: String,
    /// State left.
    pub from_state: Option<String>,
    /// State entered.
    pub to_state: String,
    /// Replica or admin.
    pub actor: String,
    /// Inputs and result.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<RotationRecord> for Rotation {
    fn from(r: RotationRecord) -> Self {
        Rotation {
            id: r.id,
            key_id: r.key_id,
            from_version: r.from_version,
            to_version: r.to_version,
            state: r.state,
            trigger: r.trigger,
            emergency: r.emergency,
            requested_by: r.requested_by,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
            leader: r.leader,
            outcome: r.outcome,
            abort_requested_by: r.abort_requested_by,
            issued_ref: r.issued_ref,
            events: None,
        }
    }
}

impl From<RotationEvent> for Event {
    fn from(e: RotationEvent) -> Self {
        Event {
            seq: e.seq,
            at: to_rfc3339(e.at),
            from_state: e.from_state,
            to_state: e.to_state,
            actor: e.actor,
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Rotate a key to the pending version the secret store holds for it. One rotation per key
/// at a time: asking again while one runs returns that one.
#[utoipa::path(
    post,
    path = "/admin/v1/keys/{id}/rotate",
    tag = "rotations",
    params(("id" = String, Path, description = "The key id, percent-encoded")),
    request_body = RotateRequest,
    responses(
        (status = 202, description = "Staged; the leader takes the next steps", body = Rotation),
        (status = 200, description = "A rotation of this key is already running", body = Rotation),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such key", body = ProblemBody),
        (status = 409, description = "No pending version to rotate to (and no key issuer), or an issuer is creating one", body = ProblemBody),
        (status = 503, description = "The key issuer or the secret store failed", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security"]))),
)]
pub async fn start(
    caller: Caller<Rotate>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<RotateRequest>,
) -> Result<Response, Problem> {
    let trigger = if req.emergency {
        RotationTrigger::Emergency
    } else {
        RotationTrigger::Manual
    };
    let (rec, created) = state
        .rotator
        .start(&id, trigger, req.emergency, &caller.subject)
        .await
        .map_err(start_problem)?;
    if !created {
        return Ok(reply(StatusCode::OK, &Rotation::from(rec)));
    }
    caller.audit(
        &state.audit,
        "rotation.requested",
        &rec.key_id,
        json!({"rotation": rec.id, "from_version": rec.from_version, "to_version": rec.to_version,
               "emergency": rec.emergency}),
    );
    Ok(reply(StatusCode::ACCEPTED, &Rotation::from(rec)))
}

/// A rotation that could not start, in the API's shape.
pub(super) fn start_problem(e: StartError) -> Problem {
    match e {
        StartError::UnknownKey(_) => Problem::not_found(e.to_string()),
        StartError::NoPending { .. } | StartError::Issuing(_) => Problem::conflict(e.to_string()),
        StartError::Issue(_) | StartError::Secrets(_) => Problem::unavailable(e.to_string()),
        StartError::Store(e) => Problem::store(e),
    }
}

/// Listing filters.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RotationQuery {
    /// Only this key's rotations.
    pub key: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// The listing.
#[derive(Serialize, ToSchema)]
pub struct RotationList {
    /// Newest first.
    pub rotations: Vec<Rotation>,
}

/// Rotations, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/rotations",
    tag = "rotations",
    params(RotationQuery),
    responses(
        (status = 200, description = "Rotations", body = RotationList),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<RotationQuery>,
) -> Result<Response, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state
        .store
        .rotations(q.key.as_deref(), limit)
        .await
        .map_err(Problem::store)?;
    let rotations = rows.into_iter().map(Rotation::from).collect();
    Ok(reply(StatusCode::OK, &RotationList { rotations }))
}

/// One rotation with its history.
#[utoipa::path(
    get,
    path = "/admin/v1/rotations/{rotation_id}",
    tag = "rotations",
    params(("rotation_id" = i64, Path, description = "The rotation's id")),
    responses(
        (status = 200, description = "The rotation and its steps", body = Rotation),
        Refused,
        (status = 404, description = "No such rotation", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn get_one(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Path(rotation_id): Path<i64>,
) -> Result<Response, Problem> {
    let Some(rec) = state
        .store
        .rotation(rotation_id)
        .await
        .map_err(Problem::store)?
    else {
        return Err(Problem::not_found(format!(
            "there is no rotation {rotation_id}"
        )));
    };
    let events = state
        .store
        .rotation_events(rotation_id)
        .await
        .map_err(Problem::store)?;
    let mut r = Rotation::from(rec);
    r.events = Some(events.into_iter().map(Event::from).collect());
    Ok(reply(StatusCode::OK, &r))
}

/// Abort a rotation: the leader rolls it back at its next step (within `rotation.tick`) —
/// the old version current again, the pending one withdrawn — from any state before
/// `retired`.
#[utoipa::path(
    post,
    path = "/admin/v1/rotations/{rotation_id}/abort",
    tag = "rotations",
    params(("rotation_id" = i64, Path, description = "The rotation's id")),
    responses(
        (status = 202, description = "Abort recorded; the leader rolls back", body = Rotation),
        Refused,
        (status = 404, description = "No such rotation", body = ProblemBody),
        (status = 409, description = "Already finished", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security"]))),
)]
pub async fn abort(
    caller: Caller<Rotate>,
    State(state): State<AppState>,
    Path(rotation_id): Path<i64>,
) -> Result<Response, Problem> {
    let store = &state.store;
    let Some(rec) = store
        .request_rotation_abort(rotation_id, &caller.subject)
        .await
        .map_err(Problem::store)?
    else {
        return match store.rotation(rotation_id).await.map_err(Problem::store)? {
            None => Err(Problem::not_found(format!(
                "there is no rotation {rotation_id}"
            ))),
            Some(r) => Err(Problem::conflict(format!(
                "rotation {rotation_id} is {} already; rotate the key again to undo it",
                r.state.as_str()
            ))),
        };
    };
    caller.audit(
        &state.audit,
        "rotation.abort_requested",
        &rec.key_id,
        json!({"rotation": rec.id, "state": rec.state.as_str()}),
    );
    Ok(reply(StatusCode::ACCEPTED, &Rotation::from(rec)))
}
