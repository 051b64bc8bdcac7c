//! `GET /admin/v1/tokens`: the Tollgate tokens issued, by subject, with expiry and whether
//! they are refused now (an incident's first question: what does this workload hold?).

use super::auth::{Caller, Read};
use super::problem::{Problem, ProblemBody, Query, Refused, reply};
use crate::app::AppState;
use crate::clock::{now_ms, to_rfc3339};
use crate::revocation::Principal;
use crate::store::IssuedTokenRecord;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Listing size when `limit` is not given, and the most one may ask for.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Filters of the listing.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Only tokens of this workload subject.
    pub subject: Option<String>,
    /// Include expired tokens (default: only those still valid).
    #[serde(default)]
    pub include_expired: bool,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// One issued token (never the token itself).
#[derive(Serialize, ToSchema)]
pub struct Token {
    /// `jti`: what a `jti` revocation names.
    pub jti: String,
    /// Workload subject.
    pub subject: String,
    /// Workload issuer name.
    pub issuer: String,
    /// Team.
    pub team: String,
    /// Pool.
    pub pool: String,
    /// Policy binding.
    pub binding: String,
    /// Models granted.
    pub models: Vec<String>,
    /// Pod uid, when the workload token carried one.
    pub pod_uid: Option<String>,
    /// Issued (RFC 3339).
    pub issued_at: String,
    /// Expires (RFC 3339).
    pub expires_at: String,
    /// Expired by now.
    pub expired: bool,
    /// Refused now by a revocation, and by which kind.
    pub revoked: Option<crate::store::RevocationKind>,
}

/// The listing.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// Newest first.
    pub tokens: Vec<Token>,
}

fn token(state: &AppState, t: IssuedTokenRecord, now: i64) -> Token {
    let revoked = state
        .revocations
        .check(&Principal {
            jti: Some(&t.jti),
            subject: &t.subject,
            team: &t.team,
            pool: &t.pool,
            issuer: &t.issuer,
            pod_uid: t.pod_uid.as_deref(),
            // The inventory keeps milliseconds; tokens carry `iat` in seconds.
            issued_at: t.issued_at.div_euclid(1000),
        })
        .err()
        .map(|r| r.kind);
    Token {
        expired: t.expires_at <= now,
        revoked,
        issued_at: to_rfc3339(t.issued_at),
        expires_at: to_rfc3339(t.expires_at),
        jti: t.jti,
        subject: t.subject,
        issuer: t.issuer,
        team: t.team,
        pool: t.pool,
        binding: t.binding,
        models: t.models,
        pod_uid: t.pod_uid,
    }
}

/// Tokens issued, newest first. The inventory is written asynchronously: a token minted in
/// the last moment may appear a fraction of a second later.
#[utoipa::path(
    get,
    path = "/admin/v1/tokens",
    tag = "tokens",
    params(TokenQuery),
    responses(
        (status = 200, description = "Issued tokens", body = TokenList),
        (status = 400, description = "Bad query", body = ProblemBody),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
pub async fn list(
    _caller: Caller<Read>,
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, Problem> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let now = now_ms();
    let rows = state
        .store
        .issued_tokens(
            q.subject.as_deref(),
            (!q.include_expired).then_some(now),
            limit,
        )
        .await
        .map_err(Problem::store)?;
    let tokens = rows.into_iter().map(|t| token(&state, t, now)).collect();
    Ok(reply(StatusCode::OK, &TokenList { tokens }))
}
