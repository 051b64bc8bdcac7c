//! The live test of a pending key: `GET <base>/models` with the key, which both OpenAI and
//! Anthropic answer cheaply (no tokens billed) and refuse with 401/403 for a bad key.

use crate::app::ProviderRoute;
use crate::providers::{ProviderKind, apply_auth};
use secrecy::SecretString;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the provider said of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answer.
    Accepted(u16),
    /// 401/403: the key itself is refused.
    Refused(u16),
    /// Anything else (5xx, 429, no answer): try again later.
    Inconclusive(String),
}

/// Call the provider with `key`.
pub async fn test_key(
    http: &reqwest::Client,
    route: &ProviderRoute,
    key: &SecretString,
) -> Verdict {
    if route.kind == ProviderKind::Mock {
        return Verdict::Accepted(200);
    }
    let Some(base) = &route.base_url else {
        return Verdict::Inconclusive(format!("provider {} has no base_url", route.id));
    };
    let url = format!("{}/models", base.as_str().trim_end_matches('/'));
    let mut headers = http::HeaderMap::new();
    apply_auth(route.kind, &mut headers, key);
    match http
        .get(&url)
        .headers(headers)
        .timeout(TIMEOUT)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            match s {
                200..=299 => Verdict::Accepted(s),
                401 | 403 => Verdict::Refused(s),
                _ => Verdict::Inconclusive(format!("provider {} answered {s}", route.id)),
            }
        }
        // The error's text holds the URL at most, never a header.
        Err(e) => Verdict::Inconclusive(format!(
            "provider {} unreachable: {}",
            route.id,
            if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.without_url().to_string()
            }
        )),
    }
}
