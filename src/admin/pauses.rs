//! `/admin/v1/pauses`: what the anomaly guard paused, and lifting a pause.

use super::auth::{Caller, LiftPause, Read};
use super::problem::{Path, Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::clock::{now_ms, to_rfc3339};
use crate::store::{DAY_MS, PauseRecord};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How far back `lifted=true` reaches.
const LIFTED_DAYS: i64 = 7;

/// Filters of the listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PauseQuery {
    /// Also list pauses lifted in the last 7 days.
    #[serde(default)]
    pub lifted: bool,
}

/// A pause.
#[derive(Serialize, ToSchema)]
pub struct Pause {
    /// Its id (what `DELETE` takes).
    pub pause_id: i64,
    /// `subject` or `provider_key`.
    pub kind: String,
    /// The paused subject or key id.
    pub id: String,
    /// Why the guard paused it.
    pub reason: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// When it was lifted.
    pub lifted_at: Option<String>,
    /// Who lifted it.
    pub lifted_by: Option<String>,
}

impl From<PauseRecord> for Pause {
    fn from(p: PauseRecord) -> Self {
        Pause {
            pause_id: p.id,
            kind: p.kind.as_str().to_owned(),
            id: p.value,
            reason: p.reason,
            created_at: to_rfc3339(p.created_at),
            lifted_at: p.lifted_at.map(to_rfc3339),
            lifted_by: p.lifted_by,
        }
    }
}

/// The listing.
#[derive(Serialize, ToSchema)]
pub struct PauseList {
    /// Oldest first.
    pub pauses: Vec<Pause>,
}

/// Pauses in force (and, with `lifted=true`, those lifted in the last 7 days).
#[utoipa::path(
    get,
    path = "/admin/v1/pauses",
    tag = "pauses",
    params(PauseQuery),
    responses(
        (status = 200, description = "Pauses", body = PauseList),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<PauseQuery>,
) -> Result<Response, Problem> {
    let since = q.lifted.then(|| now_ms() - LIFTED_DAYS * DAY_MS);
    let rows = state.store.pauses(since).await.map_err(Problem::store)?;
    let pauses = rows.into_iter().map(Pause::from).collect();
    Ok(reply(StatusCode::OK, &PauseList { pauses }))
}

/// Lift a pause: the workload or key serves again on every replica within a second.
#[utoipa::path(
    delete,
    path = "/admin/v1/pauses/{pause_id}",
    tag = "pauses",
    params(("pause_id" = i64, Path, description = "The pause's id")),
    responses(
        (status = 200, description = "Lifted", body = Pause),
        Refused,
        (status = 404, description = "No such pause", body = ProblemBody),
        (status = 409, description = "Already lifted", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops"]))),
)]
pub async fn lift(
    caller: Caller<LiftPause>,
    State(state): State<AppState>,
    Path(pause_id): Path<i64>,
) -> Result<Response, Problem> {
    let store = &state.store;
    let Some(p) = store.pause_by_id(pause_id).await.map_err(Problem::store)? else {
        return Err(Problem::not_found(format!("there is no pause {pause_id}")));
    };
    if p.lifted_at.is_some()
        || !store
            .lift_pause_by_id(pause_id, &caller.subject, now_ms())
            .await
            .map_err(Problem::store)?
    {
        return Err(Problem::conflict(format!(
            "pause {pause_id} was already lifted"
        )));
    }
    // Apply here at once; the other replicas follow the change feed.
    state.revocations.sync().await.map_err(Problem::store)?;
    tracing::info!(admin = %caller.subject, kind = p.kind.as_str(), id = %p.value, pause_id, "pause lifted");
    caller.audit(
        &state.audit,
        "pause.lifted",
        &pause_id.to_string(),
        serde_json::json!({"kind": p.kind.as_str(), "id": p.value}),
    );
    let lifted = store
        .pause_by_id(pause_id)
        .await
        .map_err(Problem::store)?
        .unwrap_or(p);
    Ok(reply(StatusCode::OK, &Pause::from(lifted)))
}
