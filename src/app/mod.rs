//! Start-up and shutdown: build the [`AppState`] from a [`Config`], bind the listener (port 0
//! in tests), own every background task, and drain on shutdown (stop accepting, let in-flight
//! requests and streams finish up to the drain timeout, flush the writers).

pub mod budget;
mod build;
mod fleet_clock;
mod keys;
mod metrics;
pub mod rates;
mod routes;
mod server;
mod state;

pub use build::{Application, DevOptions, StartError};
pub use keys::{open_store, sync_inventory};
pub use state::{AppState, DevIdentity, Inner, ProviderRoute};

use axum::Router;

/// The full router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(routes::router())
        .merge(crate::admin::router())
        .merge(crate::proxy::router())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Every request into `http_requests` / `http_request_duration`, and Tollgate's own refusals
/// (the `x-tollgate-error-code` they carry) into `rejections`.
async fn count(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = std::time::Instant::now();
    let span = crate::telemetry::trace::server_span(req.method(), &route, req.headers());
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status().as_u16();
    let code = resp
        .headers()
        .get(crate::error::ERROR_CODE_HEADER)
        .and_then(|v| v.to_str().ok());
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    state.requests.http(&route, status, started.elapsed(), code);
    // A served model call logs its own line at settlement; a refusal logs this one.
    if let Some(code) = code {
        let subject = resp
            .extensions()
            .get::<crate::error::RefusedSubject>()
            .map_or("-", |s| s.0.as_str());
        tracing::info!(request_id = request_id.unwrap_or("-"), route = %route, subject, status, code,
            decision = "refused", "request refused");
    }
    if span.is_none() {
        return resp;
    }
    crate::telemetry::trace::finish_server(&span, status, request_id, code);
    // The span ends with the response body (the last event of a stream), not its headers.
    resp.map(|body| {
        axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            let _span = &span;
            frame
        }))
    })
}
