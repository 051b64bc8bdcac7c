//! RFC 8693 token exchange: a workload token in, a Tollgate token out.
//!
//! The request is parsed strictly (each parameter at most once, known types only), the
//! workload proven against a trusted issuer, its policy binding found, the requested scope and
//! lifetime narrowed (never widened), revocations honoured, and the token minted.

use super::{Grant, MAX_TTL_SECS, TokenService};
use crate::identity::{IdentityError, IdentityVerifier, Workload};
use crate::policy::{PolicySet, WorkloadRef};
use crate::revocation::{Principal, RevocationSet};
use crate::store::IssuedTokenRecord;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::time::Duration;

/// The only grant type the token endpoint serves.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of subject tokens we accept.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The token type we issue.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Largest form body the endpoint reads.
pub const MAX_FORM_BYTES: usize = 32 * 1024;

/// An RFC 6749 §5.2 error: `code` is the `error` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeError {
    /// `invalid_request`, `invalid_grant`, `invalid_scope`, `invalid_target`,
    /// `unauthorized_client`, `unsupported_grant_type`, `temporarily_unavailable`.
    pub code: &'static str,
    /// Explanation for the caller.
    pub description: String,
}

fn err(code: &'static str, d: impl Into<String>) -> ExchangeError {
    ExchangeError {
        code,
        description: d.into(),
    }
}

/// The successful response body (RFC 8693 §2.2.1).
#[derive(Debug, serde::Serialize)]
pub struct ExchangeResponse {
    /// The Tollgate token.
    pub access_token: String,
    /// Always the access-token type URN.
    pub issued_token_type: &'static str,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: i64,
    /// Space-separated models granted.
    pub scope: String,
}

/// What the exchange needs from the running server.
pub struct ExchangeContext<'a> {
    /// Workload identity verification.
    pub identity: &'a IdentityVerifier,
    /// The current policy.
    pub policy: &'a PolicySet,
    /// Minting.
    pub tokens: &'a TokenService,
    /// Revocations.
    pub revocations: &'a RevocationSet,
}

/// Parse the form: every parameter at most once.
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, ExchangeError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(err(
                "invalid_request",
                format!("parameter {k} appears more than once"),
            ));
        }
    }
    Ok(out)
}

/// Run the exchange. Returns the response and the inventory row to record.
pub async fn exchange(
    ctx: &ExchangeContext<'_>,
    form: &HashMap<String, String>,
) -> Result<(ExchangeResponse, IssuedTokenRecord), ExchangeError> {
    let p = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    match p("grant_type") {
        Some(GRANT_TYPE) => {}
        Some(other) => {
            return Err(err(
                "unsupported_grant_type",
                format!("grant_type {other:.80} is not supported; use {GRANT_TYPE}"),
            ));
        }
        None => return Err(err("invalid_request", "grant_type is required")),
    }
    let subject_token =
        p("subject_token").ok_or_else(|| err("invalid_request", "subject_token is required"))?;
    match p("subject_token_type") {
        Some(JWT_TYPE | ID_TOKEN_TYPE) => {}
        Some(_) => {
            return Err(err(
                "invalid_request",
                format!("subject_token_type must be {JWT_TYPE}"),
            ));
        }
        None => return Err(err("invalid_request", "subject_token_type is required")),
    }
    if let Some(t) = p("requested_token_type")
        && t != ACCESS_TOKEN_TYPE
        && t != JWT_TYPE
    {
        return Err(err(
            "invalid_request",
            format!("requested_token_type must be {ACCESS_TOKEN_TYPE}"),
        ));
    }
    if p("actor_token").is_some() {
        return Err(err(
            "invalid_request",
            "delegation (actor_token) is not supported",
        ));
    }
    for target in ["audience", "resource"] {
        if let Some(t) = p(target) {
            let ours = t == ctx.tokens.audience()
                || t.trim_end_matches('/') == ctx.tokens.issuer().trim_end_matches('/');
            if !ours {
                return Err(err(
                    "invalid_target",
                    format!("{target} {t:.120} is not served by this broker"),
                ));
            }
        }
    }
    let requested_ttl = match p("requested_ttl") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(err(
                    "invalid_request",
                    "requested_ttl must be a positive integer of seconds",
                ));
            }
        },
    };

    let workload = ctx
        .identity
        .verify(subject_token)
        .await
        .map_err(identity_error)?;
    let binding = ctx
        .policy
        .binding_for(&WorkloadRef {
            issuer: &workload.issuer_name,
            subject: &workload.subject,
            namespace: workload.namespace.as_deref(),
            service_account: workload.service_account.as_deref(),
        })
        .ok_or_else(|| {
            err(
                "unauthorized_client",
                format!("no policy binding matches workload {}", workload.subject),
            )
        })?;
    ctx.revocations
        .check(&Principal {
            jti: None,
            subject: &workload.subject,
            team: &binding.team,
            pool: &binding.pool,
            issuer: &workload.issuer_name,
            pod_uid: workload.pod_uid.as_deref(),
            issued_at: i64::MIN,
        })
        .map_err(|r| err("invalid_grant", r.to_string()))?;
    if let Some(reason) = ctx
        .revocations
        .paused(crate::store::PauseKind::Subject, &workload.subject)
    {
        return Err(err(
            "invalid_grant",
            format!(
                "workload {} is paused by the anomaly guard ({reason}); an admin must lift the pause",
                workload.subject
            ),
        ));
    }

    let models = narrow_scope(p("scope"), &binding.models)?;
    let ttl_cap = binding.token_ttl.as_secs().min(MAX_TTL_SECS as u64);
    let ttl = requested_ttl.map_or(ttl_cap, |r| r.min(ttl_cap));
    let grant = Grant {
        team: binding.team.clone(),
        pool: binding.pool.clone(),
        billing_owner: binding.billing_owner.clone(),
        shared_keys: binding.shared_keys,
        binding: binding.name.clone(),
        issuer: workload.issuer_name.clone(),
        pod_uid: workload.pod_uid.clone(),
        models: models.clone(),
        rpm: binding.limits.rpm,
        tpm: binding.limits.tpm,
        concurrency: binding.limits.concurrency,
        max_tokens: binding.max_tokens.max,
        default_max_tokens: binding.max_tokens.default,
        max_request_usd: binding
            .max_request_micro_usd
            .map(|m| crate::pricing::Usd(i64::try_from(m).unwrap_or(i64::MAX)).as_f64_dollars()),
    };
    let minted = ctx
        .tokens
        .mint(&workload.subject, grant, Duration::from_secs(ttl))
        .await
        .map_err(|e| err("temporarily_unavailable", e.to_string()))?;
    let record = inventory_row(&workload, binding, &models, &minted);
    tracing::info!(subject = %workload.subject, jti = %minted.jti, binding = %binding.name, ttl, "token issued");
    Ok((
        ExchangeResponse {
            access_token: minted.token.expose_secret().to_owned(),
            issued_token_type: ACCESS_TOKEN_TYPE,
            token_type: "Bearer",
            expires_in: minted.exp - minted.iat,
            scope: models.join(" "),
        },
        record,
    ))
}

fn inventory_row(
    w: &Workload,
    b: &crate::policy::Binding,
    models: &[String],
    m: &super::Minted,
) -> IssuedTokenRecord {
    IssuedTokenRecord {
        jti: m.jti.clone(),
        subject: w.subject.clone(),
        issuer: w.issuer_name.clone(),
        team: b.team.clone(),
        pool: b.pool.clone(),
        binding: b.name.clone(),
        models: models.to_vec(),
        issued_at: m.iat * 1000,
        expires_at: m.exp * 1000,
        pod_uid: w.pod_uid.clone(),
    }
}

/// `scope` may only narrow: every requested model must be in the binding.
fn narrow_scope(scope: Option<&str>, allowed: &[String]) -> Result<Vec<String>, ExchangeError> {
    let Some(s) = scope else {
        return Ok(allowed.to_vec());
    };
    let mut out: Vec<String> = Vec::new();
    for m in s.split(' ').filter(|m| !m.is_empty()) {
        if !allowed.iter().any(|a| a == m) {
            return Err(err(
                "invalid_scope",
                format!("model {m:.120} is not granted to this workload"),
            ));
        }
        if !out.iter().any(|o| o == m) {
            out.push(m.to_owned());
        }
    }
    if out.is_empty() {
        return Ok(allowed.to_vec());
    }
    Ok(out)
}

fn identity_error(e: IdentityError) -> ExchangeError {
    if matches!(e, IdentityError::IssuerUnavailable(_)) {
        return err("temporarily_unavailable", e.to_string());
    }
    err("invalid_request", format!("subject_token rejected: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_only_narrows_and_dedups() {
        let allowed = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(narrow_scope(None, &allowed).unwrap(), allowed);
        assert_eq!(narrow_scope(Some("b b"), &allowed).unwrap(), vec!["b"]);
        assert_eq!(narrow_scope(Some("  "), &allowed).unwrap(), allowed);
        assert_eq!(
            narrow_scope(Some("a c"), &allowed).unwrap_err().code,
            "invalid_scope"
        );
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_form(b"a=1&b=2").is_ok());
        assert_eq!(parse_form(b"a=1&a=2").unwrap_err().code, "invalid_request");
    }
}
