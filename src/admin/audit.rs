//! `/admin/v1/audit`: the hash-chained audit log, page by page, and its verification.

use super::auth::{Caller, Read};
use super::problem::{Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::audit::Report;
use crate::clock::parse_rfc3339;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Which entries.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// From this time (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// At most this many (1..=1000, default 100).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// A page of entries.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// In time order; `detail` is an object, `at` the unix milliseconds the hash covers.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next: Option<String>,
}

fn cursor(s: &str) -> Option<(i64, &str, i64)> {
    let (at, rest) = s.split_once('_')?;
    let (chain, seq) = rest.rsplit_once('_')?;
    Some((at.parse().ok()?, chain, seq.parse().ok()?))
}

/// Audit entries in time order.
#[utoipa::path(
    get,
    path = "/admin/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries", body = AuditPage),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Problem> {
    let time = |field: &str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(s) => parse_rfc3339(s)
            .ok_or_else(|| Problem::bad_request(format!("{field} must be an RFC 3339 time"))),
    };
    let since = time("since", &q.since, i64::MIN)?;
    let until = time("until", &q.until, i64::MAX)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after =
        match &q.after {
            None => None,
            Some(s) => Some(cursor(s).ok_or_else(|| {
                Problem::bad_request("after must be the `next` of a previous page")
            })?),
        };
    let rows = state
        .store
        .audit_entries(since, until, after, limit)
        .await
        .map_err(Problem::store)?;
    let next = (rows.len() == limit as usize)
        .then(|| {
            rows.last()
                .map(|r| format!("{}_{}_{}", r.at, r.chain_id, r.seq))
        })
        .flatten();
    let entries = rows.iter().map(crate::audit::export_json).collect();
    Ok(reply(StatusCode::OK, &AuditPage { entries, next }))
}

/// Walk every chain and report the first broken link of each (`ok` is false when any).
#[utoipa::path(
    get,
    path = "/admin/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The report", body = Report),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn verify(
    _caller: Caller<Read>,
    State(state): State<AppState>,
) -> Result<Response, Problem> {
    let report = crate::audit::verify(&state.store)
        .await
        .map_err(Problem::store)?;
    Ok(reply(StatusCode::OK, &report))
}
