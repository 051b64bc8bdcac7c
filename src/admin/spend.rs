//! `/admin/v1/spend` and `/admin/v1/budgets`: what the fleet spent, grouped, as JSON or CSV,
//! and where each pool stands in its budget window.

use super::auth::{Caller, Read};
use super::problem::{Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::clock::{now_ms, parse_rfc3339, to_rfc3339};
use crate::policy::{AtCap, BudgetWindow};
use crate::quota::{first_day, window_start};
use crate::store::{DAY_MS, SpendGroup, SpendGroupBy};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which spend.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SpendQuery {
    /// `team` (default), `pool`, `subject`, `key`, `model`, `deployment` (`model/deployment`) or `day` (UTC).
    pub group_by: Option<String>,
    /// From this time (RFC 3339); the start of the current UTC month by default.
    pub since: Option<String>,
    /// Before this time (RFC 3339); now by default.
    pub until: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    pub format: Option<String>,
}

/// Spend of one group.
#[derive(Serialize, ToSchema)]
pub struct SpendRow {
    /// The team, pool, subject, key id, model, or day (`YYYY-MM-DD`).
    pub key: String,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Cost in USD (rounded to the micro-dollar).
    pub cost_usd: f64,
    /// Cost in micro-dollars (exact).
    pub cost_micro_usd: i64,
}

/// The report.
#[derive(Serialize, ToSchema)]
pub struct SpendReport {
    /// The grouping.
    pub group_by: String,
    /// From (RFC 3339).
    pub since: String,
    /// Until (RFC 3339, exclusive).
    pub until: String,
    /// Largest cost first (`day`: oldest first).
    pub groups: Vec<SpendRow>,
    /// Sum over the groups (`key` is `total`).
    pub total: SpendRow,
}

fn row(g: SpendGroup, by: SpendGroupBy) -> SpendRow {
    let key = match by {
        SpendGroupBy::Day => g
            .key
            .parse::<i64>()
            .map(|d| to_rfc3339(d * DAY_MS)[..10].to_owned())
            .unwrap_or(g.key),
        _ => g.key,
    };
    SpendRow {
        key,
        requests: g.requests,
        input_tokens: g.input_tokens,
        output_tokens: g.output_tokens,
        cached_input_tokens: g.cached_input_tokens,
        cost_usd: usd(g.cost_micro_usd),
        cost_micro_usd: g.cost_micro_usd,
    }
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// One CSV field: quoted when it must be, and never read as a formula by a spreadsheet.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(report: &SpendReport) -> String {
    let mut out = format!(
        "{},requests,input_tokens,output_tokens,cached_input_tokens,cost_usd\n",
        report.group_by
    );
    for r in report.groups.iter().chain(std::iter::once(&report.total)) {
        out.push_str(&format!(
            "{},{},{},{},{},{:.6}\n",
            csv_field(&r.key),
            r.requests,
            r.input_tokens,
            r.output_tokens,
            r.cached_input_tokens,
            r.cost_usd
        ));
    }
    out
}

/// What the fleet spent in a time range, per team, pool, subject, key, model, deployment or day.
#[utoipa::path(
    get,
    path = "/admin/v1/spend",
    tag = "spend",
    params(SpendQuery),
    responses(
        (status = 200, description = "The report (JSON, or CSV with format=csv)", content(
            (SpendReport = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn spend(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SpendQuery>,
) -> Result<Response, Problem> {
    let by = match q.group_by.as_deref() {
        None => SpendGroupBy::Team,
        Some(s) => SpendGroupBy::parse(s).ok_or_else(|| {
            Problem::bad_request(
                "group_by must be team, pool, subject, key, model, deployment or day",
            )
        })?,
    };
    let now = now_ms();
    let time = |field: &str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(s) => parse_rfc3339(s)
            .ok_or_else(|| Problem::bad_request(format!("{field} must be an RFC 3339 time"))),
    };
    let since = time(
        "since",
        &q.since,
        window_start(&BudgetWindow::Monthly { start: 1 }, now),
    )?;
    let until = time("until", &q.until, now)?;
    if until < since {
        return Err(Problem::bad_request("until must not be before since"));
    }
    let wants_csv = match q.format.as_deref() {
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
        Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(Problem::bad_request("format must be json or csv")),
    };
    let mut groups = state
        .store
        .spend_grouped(by, since, until)
        .await
        .map_err(Problem::store)?;
    if by == SpendGroupBy::Day {
        groups.sort_by_key(|g| g.key.parse::<i64>().ok());
    }
    let total = groups.iter().fold(
        SpendGroup {
            key: "total".into(),
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cost_micro_usd: 0,
        },
        |mut t, g| {
            t.requests += g.requests;
            t.input_tokens += g.input_tokens;
            t.output_tokens += g.output_tokens;
            t.cached_input_tokens += g.cached_input_tokens;
            t.cost_micro_usd += g.cost_micro_usd;
            t
        },
    );
    let report = SpendReport {
        group_by: by.as_str().to_owned(),
        since: to_rfc3339(since.max(0)),
        until: to_rfc3339(until),
        groups: groups.into_iter().map(|g| row(g, by)).collect(),
        total: row(total, SpendGroupBy::Team),
    };
    if wants_csv {
        let mut r = (StatusCode::OK, csv(&report)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(r);
    }
    Ok(reply(StatusCode::OK, &report))
}

/// A pool's budget and where it stands.
#[derive(Serialize, ToSchema)]
pub struct BudgetState {
    /// The pool.
    pub pool: String,
    /// `daily`, `weekly`, `monthly` or `rolling:<days>`; absent without a budget.
    pub window: Option<String>,
    /// The current window's start (RFC 3339).
    pub window_start: Option<String>,
    /// The cap of the current window, USD: the policy's plus approved increases.
    pub cap_usd: Option<f64>,
    /// What approved increases add to this window's cap, USD.
    pub increase_usd: Option<f64>,
    /// Settled spend in the window (for a pool without a budget: this UTC month), USD.
    pub spent_usd: f64,
    /// Leased to replicas in the window (spent + reserved + held for requests to come): what
    /// the fleet can still spend is the cap minus this.
    pub committed_usd: Option<f64>,
    /// `cap - committed`, never below 0.
    pub remaining_usd: Option<f64>,
    /// Spent as a percentage of the cap.
    pub percent: Option<f64>,
    /// The highest alert threshold crossed this window (percent; 0 for none).
    pub alert_level: i64,
    /// Past this percentage, models with a fallback are served by it.
    pub fallback_at: Option<u8>,
    /// What happens at the cap: `reject`, `queue` or `degrade`.
    pub at_cap: String,
}

/// The listing.
#[derive(Serialize, ToSchema)]
pub struct BudgetList {
    /// By pool name.
    pub budgets: Vec<BudgetState>,
}

/// Every pool of the policy with its budget window, spend and alert level.
#[utoipa::path(
    get,
    path = "/admin/v1/budgets",
    tag = "spend",
    responses(
        (status = 200, description = "Budgets", body = BudgetList),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn budgets(
    _caller: Caller<Read>,
    State(state): State<AppState>,
) -> Result<Response, Problem> {
    let policy = state.policy.current();
    let now = now_ms();
    let today = now.div_euclid(DAY_MS);
    let mut pools: Vec<_> = policy.pools().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let mut budgets = Vec::with_capacity(pools.len());
    for pool in pools {
        let at_cap = match pool.at_cap {
            AtCap::Reject => "reject",
            AtCap::Queue { .. } => "queue",
            AtCap::Degrade { .. } => "degrade",
        };
        let (start, budget) = match &pool.budget {
            Some(b) => (window_start(&b.window, now), Some(b)),
            None => (window_start(&BudgetWindow::Monthly { start: 1 }, now), None),
        };
        let spent = state
            .store
            .spend_since(&pool.name, start)
            .await
            .map_err(Problem::store)?;
        let mut s = BudgetState {
            pool: pool.name.clone(),
            window: None,
            window_start: Some(to_rfc3339(start)),
            cap_usd: None,
            increase_usd: None,
            spent_usd: usd(spent),
            committed_usd: None,
            remaining_usd: None,
            percent: None,
            alert_level: state.alerts.level(&pool.name),
            fallback_at: pool.fallback_at,
            at_cap: at_cap.to_owned(),
        };
        if let Some(b) = budget {
            let extra = state.increases.extra(&pool.name, &b.window, now);
            let cap = state.increases.cap(pool, now).unwrap_or(0);
            s.increase_usd = Some(usd(extra));
            let committed = state
                .store
                .budget_granted(&pool.name, first_day(&b.window, now), today)
                .await
                .map_err(Problem::store)?;
            s.window = Some(b.window.name());
            s.cap_usd = Some(usd(cap));
            s.committed_usd = Some(usd(committed));
            s.remaining_usd = Some(usd((cap - committed).max(0)));
            s.percent = (cap > 0).then(|| (spent as f64 * 10_000.0 / cap as f64).round() / 100.0);
        }
        budgets.push(s);
    }
    Ok(reply(StatusCode::OK, &BudgetList { budgets }))
}
