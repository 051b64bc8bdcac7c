//! Budget increase requests with two-person approval: anyone who may act on spend asks for
//! more money for a pool's current window; someone else approves it (above
//! `admin.increase_finops_above_usd`, only `finops` or `admin`), before the request expires.
//! An approved increase raises the cap on this replica at once and on the others within
//! `revocation_sync_interval`.

use super::auth::{Approve, Caller, Identity, LiftPause, Read, Requirement};
use super::problem::{Json, Path, Problem, ProblemBody, Query, Refused, reply};
use super::revocations::{MAX_REASON_BYTES, text};
use crate::app::AppState;
use crate::clock::{now_ms, to_rfc3339};
use crate::policy::{BudgetWindow, Role};
use crate::quota::window_start;
use crate::store::{DAY_MS, IncreaseRecord, IncreaseState, NewIncrease};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// The largest single increase, USD (a typo of three zeros must not pass).
const MAX_INCREASE_USD: f64 = 1_000_000.0;
/// How far back `all=true` lists.
const HISTORY_DAYS: i64 = 31;

/// A request for more budget.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncreaseRequest {
    /// How much to add to the current window's cap, USD.
    pub amount_usd: f64,
    /// Why (kept with the request, shown to the approver).
    pub reason: String,
}

/// An approval or a denial.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why (required to deny).
    pub reason: Option<String>,
}

/// A budget increase request.
#[derive(Serialize, ToSchema)]
pub struct Increase {
    /// Its id.
    pub increase_id: i64,
    /// The pool.
    pub pool: String,
    /// The window it raises (its start, RFC 3339).
    pub window_start: String,
    /// USD.
    pub amount_usd: f64,
    /// Micro-dollars (exact).
    pub amount_micro_usd: i64,
    /// Why it was asked for.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: String,
    /// Approvable until.
    pub expires_at: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    /// The roles that may approve it.
    pub approvable_by: Vec<String>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<String>,
    /// The decider's reason.
    pub decision_reason: Option<String>,
}

/// The listing.
#[derive(Serialize, ToSchema)]
pub struct IncreaseList {
    /// Newest first.
    pub increases: Vec<Increase>,
}

/// Which requests.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncreaseQuery {
    /// Also decided and expired ones of the last 31 days (default: pending only).
    #[serde(default)]
    pub all: bool,
}

fn approvers(state: &AppState, amount_micro_usd: i64) -> &'static [Role] {
    let threshold = state.admin.increase_finops_above_micro_usd();
    if amount_micro_usd > threshold {
        &[Role::Admin, Role::Finops]
    } else {
        Approve::ROLES
    }
}

fn view(state: &AppState, r: IncreaseRecord, now: i64) -> Increase {
    let st = match r.state {
        IncreaseState::Pending if r.expires_at <= now => "expired",
        s => s.as_str(),
    };
    Increase {
        increase_id: r.id,
        approvable_by: approvers(state, r.amount_micro_usd)
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        pool: r.pool,
        window_start: to_rfc3339(r.window_start),
        amount_usd: r.amount_micro_usd as f64 / 1e6,
        amount_micro_usd: r.amount_micro_usd,
        reason: r.reason,
        requested_by: r.requested_by,
        requested_at: to_rfc3339(r.requested_at),
        expires_at: to_rfc3339(r.expires_at),
        state: st.to_owned(),
        decided_by: r.decided_by,
        decided_at: r.decided_at.map(to_rfc3339),
        decision_reason: r.decision_reason,
    }
}

/// Ask for more budget for a pool's current window; someone else must approve it.
#[utoipa::path(
    post,
    path = "/admin/v1/budgets/{pool}/increases",
    tag = "spend",
    params(("pool" = String, Path, description = "The pool")),
    request_body = IncreaseRequest,
    responses(
        (status = 201, description = "Requested (pending)", body = Increase),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such pool", body = ProblemBody),
        (status = 409, description = "The pool has no budget, or a rolling one", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops"]))),
)]
pub async fn request(
    caller: Caller<LiftPause>,
    State(state): State<AppState>,
    Path(pool): Path<String>,
    Json(req): Json<IncreaseRequest>,
) -> Result<Response, Problem> {
    let reason = text("reason", &req.reason, MAX_REASON_BYTES)?;
    if !(req.amount_usd.is_finite() && req.amount_usd > 0.0 && req.amount_usd <= MAX_INCREASE_USD) {
        return Err(Problem::bad_request(format!(
            "amount_usd must be more than 0 and at most {MAX_INCREASE_USD}"
        )));
    }
    let amount = (req.amount_usd * 1e6).round() as i64;
    if amount == 0 {
        return Err(Problem::bad_request("amount_usd must be at least 0.000001"));
    }
    let policy = state.policy.current();
    let Some(p) = policy.pool(&pool) else {
        return Err(Problem::not_found(format!("there is no pool {pool:?}")));
    };
    let Some(budget) = &p.budget else {
        return Err(Problem::conflict(format!(
            "pool {pool} has no budget to increase"
        )));
    };
    if matches!(budget.window, BudgetWindow::Rolling { .. }) {
        return Err(Problem::conflict(format!(
            "pool {pool} has a rolling window; increases apply to daily, weekly and monthly windows"
        )));
    }
    let now = now_ms();
    let ttl = i64::try_from(state.admin.increase_request_ttl().as_millis()).unwrap_or(DAY_MS);
    let rec = state
        .store
        .insert_increase(&NewIncrease {
            pool: pool.clone(),
            window_start: window_start(&budget.window, now),
            amount_micro_usd: amount,
            reason,
            requested_by: caller.subject.clone(),
            requested_at: now,
            expires_at: now.saturating_add(ttl),
        })
        .await
        .map_err(Problem::store)?;
    caller.audit(
        &state.audit,
        "budget.increase_requested",
        &rec.id.to_string(),
        json!({"pool": pool, "amount_micro_usd": amount, "reason": rec.reason}),
    );
    let location = format!("/admin/v1/budgets/increases/{}", rec.id);
    let mut resp = reply(StatusCode::CREATED, &view(&state, rec, now));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Budget increase requests: pending ones, or (`all=true`) those of the last 31 days.
#[utoipa::path(
    get,
    path = "/admin/v1/budgets/increases",
    tag = "spend",
    params(IncreaseQuery),
    responses(
        (status = 200, description = "Requests", body = IncreaseList),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<IncreaseQuery>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let rows = state
        .store
        .increases(now - HISTORY_DAYS * DAY_MS)
        .await
        .map_err(Problem::store)?;
    let increases = rows
        .into_iter()
        .map(|r| view(&state, r, now))
        .filter(|i| q.all || i.state == "pending")
        .collect();
    Ok(reply(StatusCode::OK, &IncreaseList { increases }))
}

/// Why `caller` may not decide `rec` now, if they may not.
fn refusal(state: &AppState, caller: &Identity, rec: &IncreaseRecord, now: i64) -> Option<Problem> {
    if rec.requested_by == caller.subject {
        return Some(Problem::forbidden(
            "two-person rule: the requester of a budget increase cannot decide it; ask someone else",
        ));
    }
    let roles = approvers(state, rec.amount_micro_usd);
    if !caller.roles.iter().any(|r| roles.contains(r)) {
        return Some(Problem::forbidden(format!(
            "an increase of ${:.2} is above ${:.2}: only {} may decide it",
            rec.amount_micro_usd as f64 / 1e6,
            state.admin.increase_finops_above_micro_usd() as f64 / 1e6,
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    if rec.state != IncreaseState::Pending {
        return Some(Problem::conflict(format!(
            "this request was already {} by {}",
            rec.state.as_str(),
            rec.decided_by.as_deref().unwrap_or("someone")
        )));
    }
    if rec.expires_at <= now {
        return Some(Problem::conflict(format!(
            "this request expired at {}; ask again",
            to_rfc3339(rec.expires_at)
        )));
    }
    None
}

async fn decide(
    state: &AppState,
    caller: &Identity,
    id: i64,
    outcome: IncreaseState,
    reason: Option<String>,
) -> Result<Response, Problem> {
    let now = now_ms();
    let load = || async {
        state
            .store
            .increase(id)
            .await
            .map_err(Problem::store)?
            .ok_or_else(|| Problem::not_found(format!("there is no budget increase request {id}")))
    };
    let rec = load().await?;
    if let Some(p) = refusal(state, caller, &rec, now) {
        return Err(p);
    }
    let decided = state
        .store
        .decide_increase(id, outcome, &caller.subject, now, reason.as_deref())
        .await
        .map_err(Problem::store)?;
    let after = load().await?;
    if !decided {
        // Someone else decided it in between (or it expired this instant).
        return Err(refusal(state, caller, &after, now_ms())
            .unwrap_or_else(|| Problem::conflict("this request can no longer be decided")));
    }
    if outcome == IncreaseState::Approved {
        state
            .increases
            .add(&after.pool, after.window_start, after.amount_micro_usd);
    }
    let action = match outcome {
        IncreaseState::Approved => "budget.increase_approved",
        _ => "budget.increase_denied",
    };
    caller.audit(
        &state.audit,
        action,
        &id.to_string(),
        json!({"pool": after.pool, "amount_micro_usd": after.amount_micro_usd,
               "requested_by": after.requested_by, "reason": reason}),
    );
    Ok(reply(StatusCode::OK, &view(state, after, now)))
}

fn decision_reason(d: Option<Decision>, required: bool) -> Result<Option<String>, Problem> {
    match d.and_then(|d| d.reason) {
        Some(r) => Ok(Some(text("reason", &r, MAX_REASON_BYTES)?)),
        None if required => Err(Problem::bad_request("reason is required to deny")),
        None => Ok(None),
    }
}

/// Approve a budget increase: its pool's cap for that window rises by its amount on every
/// replica. Not by its requester; above the threshold only by `finops` or `admin`.
#[utoipa::path(
    post,
    path = "/admin/v1/budgets/increases/{increase_id}/approve",
    tag = "spend",
    params(("increase_id" = i64, Path, description = "The request's id")),
    request_body(content = Decision, description = "`{}` or `{\"reason\": …}`"),
    responses(
        (status = 200, description = "Approved", body = Increase),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such request", body = ProblemBody),
        (status = 409, description = "Already decided, or expired", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "finops", "security"]))),
)]
pub async fn approve(
    caller: Caller<Approve>,
    State(state): State<AppState>,
    Path(increase_id): Path<i64>,
    Json(d): Json<Decision>,
) -> Result<Response, Problem> {
    let reason = decision_reason(Some(d), false)?;
    decide(
        &state,
        &caller,
        increase_id,
        IncreaseState::Approved,
        reason,
    )
    .await
}

/// Deny a budget increase (a reason is required). Same deciders as approval.
#[utoipa::path(
    post,
    path = "/admin/v1/budgets/increases/{increase_id}/deny",
    tag = "spend",
    params(("increase_id" = i64, Path, description = "The request's id")),
    request_body = Decision,
    responses(
        (status = 200, description = "Denied", body = Increase),
        (status = 400, description = "Bad request", body = ProblemBody),
        Refused,
        (status = 404, description = "No such request", body = ProblemBody),
        (status = 409, description = "Already decided, or expired", body = ProblemBody),
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "finops", "security"]))),
)]
pub async fn deny(
    caller: Caller<Approve>,
    State(state): State<AppState>,
    Path(increase_id): Path<i64>,
    Json(d): Json<Decision>,
) -> Result<Response, Problem> {
    let reason = decision_reason(Some(d), true)?;
    decide(&state, &caller, increase_id, IncreaseState::Denied, reason).await
}
