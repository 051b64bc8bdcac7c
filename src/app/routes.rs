//! Thin handlers of the non-LLM endpoints: token exchange, JWKS, metadata, health, the dev
//! issuer's discovery documents, and the fallbacks.

use super::AppState;
use crate::error::{ApiError, Code, OAuthError, Shape};
use crate::token::exchange::{self, ExchangeContext, MAX_FORM_BYTES};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::time::Duration;

/// Routes other than the LLM endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/token", post(token))
        .route("/v1/token/revoke", post(token_revoke))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/dev/oidc/.well-known/openid-configuration",
            get(dev_discovery),
        )
        .route("/dev/oidc/jwks.json", get(dev_jwks))
}

/// The form of an OAuth request: `application/x-www-form-urlencoded`, bounded, each
/// parameter at most once.
async fn read_form(
    headers: &HeaderMap,
    body: Body,
) -> Result<std::collections::HashMap<String, String>, OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(OAuthError::new(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return Err(OAuthError::new(
            "invalid_request",
            format!("request body must be at most {MAX_FORM_BYTES} bytes"),
        ));
    };
    exchange::parse_form(&bytes).map_err(|e| OAuthError::new(e.code, e.description))
}

/// RFC 7009: a workload revokes its own Tollgate token (the token is the credential). A token
/// that does not verify — expired, forged, not ours — is answered 200 like a revoked one, as
/// the RFC asks: there is nothing left to revoke and nothing to learn.
async fn token_revoke(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let form = match read_form(&headers, body).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return OAuthError::new("invalid_request", "token is required").into_response();
    };
    // `token_type_hint` is only a hint (RFC 7009 2.1): Tollgate has one kind of token.
    let Ok(claims) = state.tokens.verify(token).await else {
        // RFC 7009 2.2: an invalid or unknown token is answered 200 all the same.
        return revoked_ok();
    };
    if let Err(e) = state.revocations.revoke_token(&claims).await {
        tracing::warn!(error = %e, "token revocation could not be recorded");
        let mut r = OAuthError::new(
            "temporarily_unavailable",
            "the revocation could not be recorded; retry shortly",
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    state.audit.record(
        &claims.sub,
        "token.revoked",
        &claims.jti,
        serde_json::json!({"via": "rfc7009", "team": claims.tollgate.team, "pool": claims.tollgate.pool}),
    );
    revoked_ok()
}

fn revoked_ok() -> Response {
    let mut r = StatusCode::OK.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let form = match read_form(&headers, body).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if let Some(writer) = state.undurable_writer() {
        tracing::warn!(
            writer,
            "token exchange refused: its records cannot be made durable"
        );
        return OAuthError::new(
            "temporarily_unavailable",
            "the store is unavailable and this replica's local spool is full: no token is issued that cannot be recorded; retry shortly or on another replica",
        )
        .into_response();
    }
    let policy = state.policy.current();
    let ctx = ExchangeContext {
        identity: &state.identity,
        policy: &policy,
        tokens: &state.tokens,
        revocations: &state.revocations,
    };
    match exchange::exchange(&ctx, &form).await {
        Ok((resp, record)) => {
            // What was granted, never the token: its jti identifies it.
            state.audit.record(
                &record.subject,
                "token.issued",
                &record.jti,
                serde_json::json!({
                    "issuer": record.issuer,
                    "team": record.team,
                    "pool": record.pool,
                    "binding": record.binding,
                    "models": record.models,
                    "expires_at": record.expires_at,
                    "pod_uid": record.pod_uid,
                }),
            );
            state.issued.record(record);
            let mut r = (StatusCode::OK, axum::Json(resp)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => {
            tracing::info!(error = e.code, reason = %e.description, "token exchange refused");
            OAuthError::new(e.code, e.description).into_response()
        }
    }
}

async fn jwks(State(state): State<AppState>) -> Response {
    let doc = state.tokens.keyring().jwks();
    let mut r = axum::Json(doc.as_ref().clone()).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn metadata(State(state): State<AppState>) -> Response {
    axum::Json(state.tokens.metadata()).into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready when a signing key is available, the store answers (or an outage is shorter than
/// the revocation freshness bound: we serve from memory), the provider keys are within
/// `secrets.max_staleness` and every writer can make its rows durable. Serving from cache or
/// spooling rows during a store outage is `degraded`: still ready (200), so load balancers
/// keep sending traffic, but visible. A writer that holds rows in memory with
/// `spool.on_full = "refuse"` makes the replica not ready: traffic should go elsewhere.
async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await,
        Ok(Ok(()))
    );
    let fresh = state.revocations.last_sync_age() < Duration::from_secs(60);
    let signing = state.tokens.keyring().can_sign();
    let keys = state.keys.health();
    let writers = [
        ("spend", state.spend.status()),
        ("issued_tokens", state.issued.status()),
        ("audit", state.audit.writer_status()),
    ];
    let durable = writers.iter().all(|(_, w)| w.accepting);
    let spooling = writers
        .iter()
        .any(|(_, w)| w.state != crate::spend::WriterState::Direct);
    let ready = signing && (store_ok || fresh) && !keys.stale && durable;
    let degraded = !store_ok || keys.degraded || spooling;
    let body = json!({
        "status": match (ready, degraded) {
            (false, _) => "not_ready",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        "store": if store_ok { "ok" } else { "unreachable" },
        "revocations_fresh": fresh,
        "writers": writers.iter().map(|(name, w)| (name.to_string(), json!({
            "state": w.state.as_str(),
            "accepting": w.accepting,
            "queued": w.queued,
            "held": w.held,
            "spool_bytes": w.spool_bytes,
            "spool_batches": w.spool_batches,
        }))).collect::<serde_json::Map<_, _>>(),
        "signing_key": signing,
        "secret_store": {
            "backend": keys.store,
            "status": if keys.stale { "stale" } else if keys.degraded { "serving_from_cache" } else { "ok" },
            "age_s": keys.age.as_secs(),
            "error": keys.error,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Prometheus scrape. Unauthenticated like `/healthz`: it holds counts and ages, never a key,
/// a token or a subject; restrict it at the network layer if even those are sensitive.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn dev_discovery(State(state): State<AppState>) -> Response {
    match &state.dev {
        Some(d) => axum::Json(
            d.issuer
                .discovery_document(&d.issuer_url, &format!("{}/jwks.json", d.issuer_url)),
        )
        .into_response(),
        None => not_found().await,
    }
}

async fn dev_jwks(State(state): State<AppState>) -> Response {
    match &state.dev {
        Some(d) => axum::Json(d.issuer.jwks()).into_response(),
        None => not_found().await,
    }
}

/// Unknown routes: RFC 9457 problem details.
pub async fn not_found() -> Response {
    ApiError::new(Code::NotFound, "no such endpoint")
        .shaped(Shape::Problem)
        .into_response()
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> Response {
    ApiError::new(
        Code::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
    .shaped(Shape::Problem)
    .into_response()
}
