//! The one place where a Tollgate error becomes an HTTP response.
//!
//! Every error carries a stable `code` from DESIGN.md's table and is rendered in the wire
//! shape of the API the caller used: OpenAI (`{"error": {message, type, code, param}}`),
//! Anthropic (`{"type": "error", "error": {type, message}}`, plus our `code`), RFC 6749 for the
//! token endpoint, RFC 9457 problem details elsewhere. Messages are written for the caller and
//! never contain a credential.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The wire shape an error is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI-compatible endpoints.
    OpenAi,
    /// Anthropic-compatible endpoints.
    Anthropic,
    /// RFC 9457 problem details (health, admin, anything else).
    Problem,
}

/// Stable error codes (DESIGN.md "LLM endpoints" table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidToken,
    TokenRevoked,
    ModelNotAllowed,
    /// None of the model's deployments is cleared for the data classes the request carries.
    DataClassNotAllowed,
    /// A guardrail of the workload's binding refused the prompt (a secret, an injection).
    ContentBlocked,
    RequestTooExpensive,
    RequestTooLarge,
    RateLimitExceeded,
    BudgetExceeded,
    /// The anomaly guard paused this workload until an admin lifts the pause.
    WorkloadPaused,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    NoProviderKey,
    /// A malformed request body or parameter.
    InvalidRequest,
    /// A route that does not exist.
    NotFound,
    /// A method the route does not accept.
    MethodNotAllowed,
    /// A bug or an unexpected failure inside Tollgate (never a caller's fault).
    Internal,
    /// The server is shutting down or not ready.
    Unavailable,
}

impl Code {
    /// The string clients see in `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidToken => "invalid_token",
            Code::TokenRevoked => "token_revoked",
            Code::ModelNotAllowed => "model_not_allowed",
            Code::DataClassNotAllowed => "data_class_not_allowed",
            Code::ContentBlocked => "content_blocked",
            Code::RequestTooExpensive => "request_too_expensive",
            Code::RequestTooLarge => "request_too_large",
            Code::RateLimitExceeded => "rate_limit_exceeded",
            Code::BudgetExceeded => "budget_exceeded",
            Code::WorkloadPaused => "workload_paused",
            Code::ModelNotFound => "model_not_found",
            Code::UpstreamError => "upstream_error",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::NoProviderKey => "no_provider_key",
            Code::InvalidRequest => "invalid_request",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Internal => "internal_error",
            Code::Unavailable => "unavailable",
        }
    }

    /// HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidToken | Code::TokenRevoked => StatusCode::UNAUTHORIZED,
            Code::ModelNotAllowed | Code::WorkloadPaused | Code::DataClassNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Code::RequestTooExpensive | Code::InvalidRequest | Code::ContentBlocked => {
                StatusCode::BAD_REQUEST
            }
            Code::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimitExceeded | Code::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
            Code::ModelNotFound | Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::UpstreamError => StatusCode::BAD_GATEWAY,
            Code::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::NoProviderKey | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn openai_type(self) -> &'static str {
        match self {
            Code::InvalidToken | Code::TokenRevoked => "authentication_error",
            Code::ModelNotAllowed | Code::WorkloadPaused | Code::DataClassNotAllowed => {
                "permission_error"
            }
            Code::RateLimitExceeded => "rate_limit_error",
            Code::BudgetExceeded => "insufficient_quota",
            Code::UpstreamError
            | Code::UpstreamTimeout
            | Code::NoProviderKey
            | Code::Internal
            | Code::Unavailable => "api_error",
            _ => "invalid_request_error",
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            Code::InvalidToken | Code::TokenRevoked => "authentication_error",
            Code::ModelNotAllowed | Code::WorkloadPaused | Code::DataClassNotAllowed => {
                "permission_error"
            }
            Code::ModelNotFound | Code::NotFound => "not_found_error",
            Code::RequestTooLarge => "request_too_large",
            Code::RateLimitExceeded | Code::BudgetExceeded => "rate_limit_error",
            Code::NoProviderKey | Code::Unavailable => "overloaded_error",
            Code::UpstreamError | Code::UpstreamTimeout | Code::Internal => "api_error",
            _ => "invalid_request_error",
        }
    }
}

/// An error on its way to the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code.
    pub code: Code,
    /// Human-readable explanation, safe to show the caller.
    pub message: String,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u64>,
    /// The request field at fault, when there is one (OpenAI's `param`).
    pub param: Option<String>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            param: None,
        }
    }

    /// Attach a `Retry-After` in seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Name the offending request field.
    pub fn param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    /// Render in a wire shape.
    pub fn shaped(self, shape: Shape) -> Shaped {
        Shaped(shape, self)
    }

    fn body(&self, shape: Shape) -> serde_json::Value {
        match shape {
            Shape::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.code.openai_type(),
                "code": self.code.as_str(),
                "param": self.param,
            }}),
            Shape::Anthropic => json!({"type": "error", "error": {
                "type": self.code.anthropic_type(),
                "message": self.message,
                "code": self.code.as_str(),
            }}),
            Shape::Problem => json!({
                "type": format!("https://tollgate.dev/problems/{}", self.code.as_str()),
                "title": self.code.as_str(),
                "status": self.code.status().as_u16(),
                "detail": self.message,
            }),
        }
    }
}

/// An [`ApiError`] with the shape it is rendered in.
#[derive(Debug)]
pub struct Shaped(pub Shape, pub ApiError);

/// Set on a refused response (an extension, never sent) when the caller's token was valid:
/// the refusal's log line names who asked.
#[derive(Clone, Debug)]
pub struct RefusedSubject(pub String);

/// The header naming Tollgate's error code on every error it answers (metrics count by it).
pub const ERROR_CODE_HEADER: &str = "x-tollgate-error-code";

impl IntoResponse for Shaped {
    fn into_response(self) -> Response {
        let Shaped(shape, err) = self;
        let mut resp = (err.code.status(), axum::Json(err.body(shape))).into_response();
        let headers = resp.headers_mut();
        if shape == Shape::Problem {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
        }
        if let Some(secs) = err.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(
            header::HeaderName::from_static(ERROR_CODE_HEADER),
            HeaderValue::from_static(err.code.as_str()),
        );
        resp
    }
}

/// RFC 6749 §5.2 error of the token endpoint (always 400, `Cache-Control: no-store`).
#[derive(Debug, Clone)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_target`, `invalid_scope`, `unsupported_grant_type`, …
    pub error: &'static str,
    /// Explanation for the caller.
    pub description: String,
}

impl OAuthError {
    /// A token-endpoint error.
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = if self.error == "server_error" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if self.error == "temporarily_unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut resp = (
            status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        h.insert(
            header::HeaderName::from_static(ERROR_CODE_HEADER),
            HeaderValue::from_static(self.error),
        );
        resp
    }
}
