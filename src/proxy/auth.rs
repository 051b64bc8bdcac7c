//! Who is calling: the Tollgate token from the request headers, verified locally, checked
//! against the revocation set. No I/O in the common case.

use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::providers::Family;
use crate::revocation::Principal;
use crate::store::PauseKind;
use crate::token::Claims;
use axum::http::HeaderMap;
use std::sync::Arc;

/// The bearer credential, from `Authorization: Bearer` (both families) or `x-api-key`
/// (Anthropic SDKs send their key there).
pub fn presented_token(headers: &HeaderMap, family: Family) -> Option<&str> {
    if family == Family::Anthropic
        && let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v);
        }
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Verify the caller's token and check revocations.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    family: Family,
) -> Result<Arc<Claims>, ApiError> {
    let token = presented_token(headers, family).ok_or_else(|| {
        let how = match family {
            Family::OpenAi => "Authorization: Bearer <tollgate token>",
            Family::Anthropic => "x-api-key: <tollgate token> (or Authorization: Bearer)",
        };
        ApiError::new(
            Code::InvalidToken,
            format!("missing Tollgate token: send {how}"),
        )
    })?;
    let claims = state
        .tokens
        .verify(token)
        .await
        .map_err(|e| ApiError::new(Code::InvalidToken, e.to_string()))?;
    state
        .revocations
        .check(&Principal {
            jti: Some(&claims.jti),
            subject: &claims.sub,
            team: &claims.tollgate.team,
            pool: &claims.tollgate.pool,
            issuer: &claims.tollgate.issuer,
            pod_uid: claims.tollgate.pod_uid.as_deref(),
            issued_at: claims.iat,
        })
        .map_err(|r| ApiError::new(Code::TokenRevoked, r.to_string()))?;
    if let Some(reason) = state.revocations.paused(PauseKind::Subject, &claims.sub) {
        return Err(ApiError::new(
            Code::WorkloadPaused,
            format!(
                "this workload is paused by the anomaly guard ({reason}); an admin must lift the pause"
            ),
        ));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_and_x_api_key_are_read_per_family() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(presented_token(&h, Family::OpenAi), Some("abc"));
        h.insert("x-api-key", HeaderValue::from_static("xyz"));
        assert_eq!(presented_token(&h, Family::Anthropic), Some("xyz"));
        assert_eq!(presented_token(&h, Family::OpenAi), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_token(&h, Family::OpenAi), None);
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(presented_token(&h, Family::OpenAi), None);
    }
}
