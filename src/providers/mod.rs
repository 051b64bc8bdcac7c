//! The provider wire formats — the only module that knows what OpenAI and Anthropic requests,
//! responses and streams look like. The proxy parses a client body once with
//! [`parse_request`], asks for the upstream body, injects the key with [`apply_auth`], and lets
//! a [`StreamObserver`] read usage from a stream while it passes through.

mod meter;
pub mod mock;
mod request;
mod tokens;
mod usage;

pub use mock::MockReply;
pub use request::{InboundRequest, RequestError, Shape, parse_request};
pub use usage::{StreamObserver, Usage, usage_from_body};

use http::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// The LLM endpoints Tollgate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

/// A wire family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// OpenAI and compatible servers.
    OpenAi,
    /// Anthropic.
    Anthropic,
}

impl Api {
    /// Every endpoint.
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];

    /// The family whose wire format this endpoint speaks.
    pub fn family(self) -> Family {
        match self {
            Api::Messages => Family::Anthropic,
            _ => Family::OpenAi,
        }
    }

    /// Path on Tollgate.
    pub fn path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    /// Path below a provider's versioned base URL.
    pub fn upstream_suffix(self) -> &'static str {
        &self.path()[4..]
    }
}

/// How to talk to one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// api.openai.com.
    OpenAi,
    /// api.anthropic.com.
    Anthropic,
    /// An OpenAI-compatible server.
    OpenAiCompatible,
    /// The built-in mock (speaks both families).
    Mock,
}

impl ProviderKind {
    /// The family it speaks (`None`: both).
    pub fn family(self) -> Option<Family> {
        match self {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => Some(Family::OpenAi),
            ProviderKind::Anthropic => Some(Family::Anthropic),
            ProviderKind::Mock => None,
        }
    }
}

/// The upstream URL of `api` under `base_url` (e.g. `https://api.openai.com/v1`).
pub fn upstream_url(base_url: &url::Url, api: Api) -> url::Url {
    let mut u = base_url.clone();
    let path = format!(
        "{}/{}",
        base_url.path().trim_end_matches('/'),
        api.upstream_suffix()
    );
    u.set_path(&path);
    u
}

/// The Anthropic API version sent when the client names none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Set the provider's authentication header(s).
pub fn apply_auth(kind: ProviderKind, headers: &mut HeaderMap, key: &SecretString) {
    match kind {
        ProviderKind::Anthropic => {
            if let Ok(mut v) = HeaderValue::from_str(key.expose_secret()) {
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-api-key"), v);
            }
            headers
                .entry(HeaderName::from_static("anthropic-version"))
                .or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
        }
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())) {
                v.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, v);
            }
        }
        ProviderKind::Mock => {}
    }
}

/// Client headers forwarded upstream. Credentials, cookies, hop-by-hop and routing headers
/// never are.
pub fn forwardable_headers(family: Family) -> &'static [HeaderName] {
    static OPENAI: [HeaderName; 2] = [HeaderName::from_static("openai-beta"), http::header::ACCEPT];
    static ANTHROPIC: [HeaderName; 3] = [
        HeaderName::from_static("anthropic-version"),
        HeaderName::from_static("anthropic-beta"),
        http::header::ACCEPT,
    ];
    match family {
        Family::OpenAi => &OPENAI,
        Family::Anthropic => &ANTHROPIC,
    }
}

/// OpenAI `GET /v1/models` body for these ids.
pub fn models_list(models: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "object": "list",
        "data": models.iter().map(|m| serde_json::json!({
            "id": m, "object": "model", "created": 0, "owned_by": "tollgate"
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;
