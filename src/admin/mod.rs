//! The admin API under `/admin/v1`: revocations, keys, tokens, pauses, spend, budgets and the audit log, for callers with a
//! role (see [`auth`]). JSON in and out, every error an RFC 9457 problem ([`problem`]), every
//! operation documented in the OpenAPI 3.1 document served at `/admin/v1/openapi.json`, which
//! is generated from the same registrations that build the router, so the two cannot drift.
//! Each operation names the roles it needs in `x-tollgate-roles`.

mod audit;
pub mod auth;
pub mod break_glass;
pub mod config;
mod increases;
mod keys;
mod pauses;
pub mod problem;
mod revocations;
mod rotations;
mod spend;
mod tokens;

pub use auth::{AdminAuth, Identity, Via, new_break_glass_token};
pub use config::AdminConfig;

use crate::app::AppState;
use auth::{Caller, Read};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use problem::{Refused, reply};
use serde::Serialize;
use std::sync::OnceLock;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest admin request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Incident response and inventory of a Tollgate fleet. Authenticate with \
                       an OIDC token of an admin issuer or the break-glass token; \
                       `x-tollgate-roles` on each operation names the roles that may call it.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "revocations", description = "Cut access off on every replica"),
        (name = "keys", description = "Provider-key inventory, disable / enable"),
        (name = "tokens", description = "Issued Tollgate tokens"),
        (name = "pauses", description = "Anomaly-guard pauses"),
        (name = "rotations", description = "Staged rotation of provider keys"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "spend", description = "Spend and budgets"),
        (name = "meta", description = "The caller and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An OIDC token of an [[admin.issuers]] issuer, or the break-glass token",
                    ))
                    .build(),
            ),
        );
    }
}

fn build() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(whoami))
        .routes(routes!(openapi))
        .routes(routes!(revocations::create, revocations::list))
        .routes(routes!(revocations::get_one, revocations::lift))
        .routes(routes!(keys::list))
        .routes(routes!(keys::disable))
        .routes(routes!(keys::enable))
        .routes(routes!(rotations::start))
        .routes(routes!(rotations::list))
        .routes(routes!(rotations::get_one))
        .routes(routes!(rotations::abort))
        .routes(routes!(tokens::list))
        .routes(routes!(pauses::list))
        .routes(routes!(pauses::lift))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(spend::spend))
        .routes(routes!(spend::budgets))
        .routes(routes!(increases::request))
        .routes(routes!(increases::list))
        .routes(routes!(increases::approve))
        .routes(routes!(increases::deny))
        .split_for_parts()
}

/// The OpenAPI document of the admin API.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = build().1;
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc
    })
}

/// The admin routes. Responses are never cached: they name who holds what.
pub fn router() -> Router<AppState> {
    build()
        .0
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// The caller as the admin API sees it.
#[derive(Serialize, ToSchema)]
struct WhoAmI {
    /// `sub` of the token (`break-glass` for the break-glass token).
    subject: String,
    /// `oidc` or `break_glass`.
    via: &'static str,
    /// The admin issuer's name (OIDC only).
    issuer: Option<String>,
    /// Groups of the token.
    groups: Vec<String>,
    /// Roles policy grants.
    roles: Vec<&'static str>,
}

/// Who the caller is and which roles it holds.
#[utoipa::path(
    get,
    path = "/admin/v1/whoami",
    tag = "meta",
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
async fn whoami(caller: Caller<Read>) -> Response {
    let id = &caller.identity;
    let (via, issuer) = match &id.via {
        Via::Oidc(name) => ("oidc", Some(name.clone())),
        Via::BreakGlass => ("break_glass", None),
    };
    reply(
        StatusCode::OK,
        &WhoAmI {
            subject: id.subject.clone(),
            via,
            issuer,
            groups: id.groups.clone(),
            roles: id.roles.iter().map(|r| r.as_str()).collect(),
        },
    )
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/admin/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json"),
        Refused,
    ),
    extensions(("x-tollgate-roles" = json!(["admin", "security", "responder", "finops", "viewer"]))),
)]
async fn openapi(_caller: Caller<Read>) -> Response {
    reply(StatusCode::OK, document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path parameter is declared exactly once (the handlers' own `Path` extractor and
    /// the `params(...)` of the document must not both add one), and every operation names
    /// its roles and a summary.
    #[test]
    fn the_document_declares_each_operation_once() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                n += 1;
                let names: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let expected = path.matches('{').count();
                assert_eq!(names.len(), expected, "{method} {path}: {names:?}");
                assert!(op["x-tollgate-roles"].is_array(), "{method} {path}");
                assert!(op["summary"].is_string(), "{method} {path}");
            }
        }
        assert_eq!(n, 24);
    }
}
