//! RFC 9457 problem details, the admin API's only error shape, and the extractors that turn
//! every rejection (body, query, path) into one.

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// Where the problem types are documented (`type` is `{BASE}{code}`).
const TYPE_BASE: &str = "https://tollgate.dev/problems/";
/// The realm of the `WWW-Authenticate` challenge.
const REALM: &str = "tollgate-admin";

/// An admin API error on its way to the caller.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// RFC 6750 error of a 401 (`invalid_token`); none when no credential was sent.
    bearer_error: Option<&'static str>,
    retry_after: Option<u64>,
}

/// The answers of every operation to a caller it refuses before looking at the request: no
/// or a bad credential (401), or no role the operation names in `x-tollgate-roles` (403).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: its variants describe responses, none is built
pub enum Refused {
    /// No or bad credential.
    #[response(
        status = 401,
        description = "No or bad credential",
        content_type = "application/problem+json"
    )]
    Unauthenticated(ProblemBody),
    /// No role that may call it.
    #[response(
        status = 403,
        description = "No role that may call it (see x-tollgate-roles)",
        content_type = "application/problem+json"
    )]
    Forbidden(ProblemBody),
}

/// The documented shape of a problem (OpenAPI).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// `https://tollgate.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stable code, e.g. `forbidden`.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for a person; never holds a credential.
    pub detail: String,
}

impl Problem {
    /// A problem of `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            bearer_error: None,
            retry_after: None,
        }
    }

    /// 401 without a credential.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    /// 401 for a credential that does not verify.
    pub fn invalid_token(detail: impl Into<String>) -> Self {
        Problem {
            bearer_error: Some("invalid_token"),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_token", detail)
        }
    }

    /// 403: authenticated, but no role that may do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    /// A store failure: logged here with its cause, answered 503 without it.
    pub fn store(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "admin request: the store failed");
        Self::unavailable("the store is unavailable; retry shortly")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("{TYPE_BASE}{}", self.code),
            "title": self.code,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = match self.bearer_error {
                Some(e) => format!("Bearer realm=\"{REALM}\", error=\"{e}\""),
                None => format!("Bearer realm=\"{REALM}\""),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the body must be at most {} bytes", super::MAX_BODY_BYTES),
            ),
            _ => Self::bad_request(r.body_text()),
        }
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

/// A JSON body; a bad one is a 400/415/413 problem.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

/// Query parameters; bad ones are a 400 problem.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

/// Path parameters; bad ones are a 400 problem.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// A JSON response with a status (the admin API answers `Json` bodies through this).
pub fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
