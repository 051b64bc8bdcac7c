//! The claims of a Tollgate token (RFC 9068 access token JWT) — DESIGN.md "Tollgate token".

use serde::{Deserialize, Serialize};

/// Longest lifetime of any Tollgate token. A security invariant, not a default: nothing
/// (policy, request, config) can mint a longer one.
pub const MAX_TTL_SECS: i64 = 15 * 60;

/// The `typ` header of Tollgate tokens; workload tokens never carry it.
pub const TOKEN_TYPE: &str = "at+jwt";

/// Registered + Tollgate claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The broker's URL.
    pub iss: String,
    /// Workload subject.
    pub sub: String,
    /// Audience (`tollgate` by default).
    pub aud: String,
    /// Issued at (unix s).
    pub iat: i64,
    /// Not before (unix s).
    pub nbf: i64,
    /// Expiry (unix s), at most [`MAX_TTL_SECS`] after `iat`.
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// The quota and scope the token carries.
    pub tollgate: Grant,
}

/// What the token allows: the quota carried by the token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Grant {
    /// Team accountable for the spend.
    pub team: String,
    /// Budget pool.
    pub pool: String,
    /// Owner whose provider keys serve the traffic.
    pub billing_owner: String,
    /// May keys of the shared owner (`billing_owner: "*"` in the store) serve when the owner
    /// has none? Written only when `false`, so the common token stays small.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub shared_keys: bool,
    /// Policy binding that granted the token.
    pub binding: String,
    /// Name of the trusted issuer that vouched for the workload.
    pub issuer: String,
    /// Pod uid from the workload token, when present (revocation by pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Models the token may call.
    pub models: Vec<String>,
    /// Requests per minute for this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute for this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight for this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Largest `max_tokens` a request may ask for (larger ones are clamped).
    pub max_tokens: u32,
    /// `max_tokens` applied when the request has none.
    pub default_max_tokens: u32,
    /// Most a single request may cost (worst case), in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_usd: Option<f64>,
}

fn yes() -> bool {
    true
}

fn is_yes(v: &bool) -> bool {
    *v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(shared_keys: bool) -> Grant {
        Grant {
            team: "t".into(),
            pool: "p".into(),
            billing_owner: "o".into(),
            shared_keys,
            binding: "b".into(),
            issuer: "k8s".into(),
            pod_uid: None,
            models: vec!["m".into()],
            rpm: None,
            tpm: None,
            concurrency: None,
            max_tokens: 10,
            default_max_tokens: 5,
            max_request_usd: None,
        }
    }

    #[test]
    fn shared_keys_is_written_only_when_refused() {
        let allowed = serde_json::to_value(grant(true)).unwrap();
        assert!(allowed.get("shared_keys").is_none(), "{allowed}");
        let refused = serde_json::to_value(grant(false)).unwrap();
        assert_eq!(refused["shared_keys"], false);
        let back: Grant = serde_json::from_value(refused).unwrap();
        assert!(!back.shared_keys);
        // A token minted before the claim existed still allows shared keys.
        let old: Grant = serde_json::from_value(allowed).unwrap();
        assert!(old.shared_keys);
    }
}
