//! Workload identity: validate a workload's JWT (a Kubernetes projected service-account token,
//! or any OIDC issuer's token) against the issuers this broker trusts, and turn it into a
//! [`Workload`].
//!
//! Rules, in the order they are applied: size ≤ 16 KiB; header parsed by us first, so `alg:
//! none` (any spelling) and HS* are refused before any key lookup and a `crit` header is
//! refused; `jku`/`x5u`/`jwk`/`x5c` headers are ignored (keys come only from the issuer's
//! configured source); an `at+jwt` `typ` or the broker's own `iss` is a Tollgate token, never a
//! workload identity; the issuer is chosen by the unverified `iss` and the signature checked
//! only with *that* issuer's keys; then `aud`, `exp`, `nbf`, `iat` (with leeway and a maximum
//! age) and, for Kubernetes, the consistency of `sub` with the `kubernetes.io` claims.

mod config;
mod dev;
mod jwks;

pub use config::{IdentityConfigError, IssuerConfig, IssuerKind};

/// Check issuer settings without fetching anything (`serve --check-config`).
pub fn check_issuers(issuers: &[IssuerConfig]) -> Result<(), IdentityConfigError> {
    config::validate(issuers)
}
pub use dev::{DevAlgorithm, DevIssuer, DevIssuerError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use jwks::IssuerKeys;
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A proven workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Name of the trusted issuer (policy `match.issuer`).
    pub issuer_name: String,
    /// The issuer's `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Kubernetes service account.
    pub service_account: Option<String>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// Pod uid.
    pub pod_uid: Option<String>,
    /// `iat` (unix s).
    pub issued_at: i64,
    /// `exp` (unix s).
    pub expires_at: i64,
    /// Groups from the issuer's `groups_claim` (empty when absent).
    pub groups: Vec<String>,
}

/// Why a workload token is refused. Display is safe to show the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a JWT.
    #[error("token is malformed")]
    Malformed,
    /// `none`, HS*, or unknown.
    #[error("algorithm {0} is not accepted (asymmetric algorithms only)")]
    UnsupportedAlgorithm(String),
    /// `iss` is not trusted.
    #[error("issuer is not trusted")]
    UntrustedIssuer,
    /// No key of the issuer has this `kid`.
    #[error("token was signed by a key the issuer does not publish")]
    UnknownKey,
    /// Signature mismatch.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` beyond `max_token_age`.
    #[error("token was issued too long ago")]
    TooOld,
    /// `aud` does not contain an accepted audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A Tollgate access token presented as a workload identity.
    #[error("a Tollgate access token is not a workload identity")]
    WrongTokenType,
    /// The issuer's keys could not be fetched and none are cached.
    #[error("issuer keys are unavailable: {0}")]
    IssuerUnavailable(String),
    /// A claim is missing or wrong.
    #[error("invalid claim: {0}")]
    Invalid(&'static str),
}

/// Verifies workload tokens against the trusted issuers.
pub struct IdentityVerifier {
    by_iss: HashMap<String, Arc<IssuerKeys>>,
    own: Vec<String>,
}

impl IdentityVerifier {
    /// Build from config. `own_issuers` are the broker's own `iss` values, always refused.
    pub fn new(
        issuers: Vec<IssuerConfig>,
        own_issuers: Vec<String>,
        http: reqwest::Client,
    ) -> Result<Self, IdentityConfigError> {
        config::validate(&issuers)?;
        let mut by_iss = HashMap::new();
        for (index, cfg) in issuers.into_iter().enumerate() {
            let client = match &cfg.ca_file {
                None => http.clone(),
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| IdentityConfigError {
                        index,
                        field: "ca_file",
                        reason: e.to_string(),
                    })?;
                    let cert =
                        reqwest::Certificate::from_pem(&pem).map_err(|_| IdentityConfigError {
                            index,
                            field: "ca_file",
                            reason: "not a PEM certificate".into(),
                        })?;
                    reqwest::Client::builder()
                        .add_root_certificate(cert)
                        .build()
                        .map_err(|e| IdentityConfigError {
                            index,
                            field: "ca_file",
                            reason: e.to_string(),
                        })?
                }
            };
            by_iss.insert(
                cfg.issuer.clone(),
                Arc::new(IssuerKeys::new(cfg, client, Duration::from_secs(30))),
            );
        }
        let own = own_issuers
            .into_iter()
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect();
        Ok(IdentityVerifier { by_iss, own })
    }

    /// Minimum time between two unknown-kid refreshes of one issuer (default 30 s).
    pub fn with_refresh_min_interval(mut self, d: Duration) -> Self {
        for k in self.by_iss.values_mut() {
            if let Some(k) = Arc::get_mut(k) {
                k.set_min_interval(d);
            }
        }
        self
    }

    /// Names of the configured issuers.
    pub fn issuer_names(&self) -> Vec<String> {
        self.by_iss.values().map(|k| k.cfg.name.clone()).collect()
    }

    /// Fetch every issuer's keys (start-up); failures are logged, not fatal.
    pub async fn prefetch(&self) {
        for k in self.by_iss.values() {
            match k.refresh().await {
                Ok(n) => tracing::info!(issuer = %k.cfg.name, keys = n, "issuer keys loaded"),
                Err(e) => {
                    tracing::warn!(issuer = %k.cfg.name, error = %e, "issuer keys not loaded yet")
                }
            }
        }
    }

    /// Refresh every issuer's keys every `every` until cancelled.
    pub fn spawn_refresher(
        self: Arc<Self>,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                for k in this.by_iss.values() {
                    if let Err(e) = k.refresh().await {
                        tracing::warn!(issuer = %k.cfg.name, error = %e, "issuer key refresh failed; keeping cached keys");
                    }
                }
            }
        })
    }

    /// Verify a workload token.
    pub async fn verify(&self, token: &str) -> Result<Workload, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Malformed);
        };
        let header = decode_json(h)?;
        let claims = decode_json(p)?;
        let alg_name = header["alg"].as_str().ok_or(IdentityError::Malformed)?;
        let alg = Algorithm::from_str(alg_name)
            .ok()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .ok_or_else(|| {
                IdentityError::UnsupportedAlgorithm(alg_name.chars().take(16).collect())
            })?;
        if header.get("crit").is_some() {
            return Err(IdentityError::Invalid("crit header"));
        }
        if header["typ"].as_str().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(IdentityError::WrongTokenType);
        }
        let iss = claims["iss"]
            .as_str()
            .ok_or(IdentityError::Invalid("iss"))?;
        if self.own.iter().any(|o| o == iss.trim_end_matches('/')) {
            return Err(IdentityError::WrongTokenType);
        }
        let issuer = self.by_iss.get(iss).ok_or(IdentityError::UntrustedIssuer)?;
        let kid = header["kid"].as_str();
        let key = match issuer.find(kid, alg) {
            Some(k) => k,
            None => {
                match issuer.refresh_if_allowed().await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(issuer = %issuer.cfg.name, error = %e, "issuer key refresh failed");
                        return Err(IdentityError::IssuerUnavailable(issuer.cfg.name.clone()));
                    }
                }
                issuer.find(kid, alg).ok_or(IdentityError::UnknownKey)?
            }
        };
        let cfg = &issuer.cfg;
        let mut v = Validation::new(alg);
        v.set_issuer(&[iss]);
        v.set_audience(&cfg.audiences);
        // `exp` and `nbf` are checked in `workload` against the fleet's clock (crate::clock),
        // not this host's: jsonwebtoken would read the host's.
        v.validate_exp = false;
        v.validate_nbf = false;
        let mut required = vec!["exp", "iss", "aud", "sub"];
        if cfg.kind == IssuerKind::Kubernetes {
            required.push("iat");
        }
        v.set_required_spec_claims(&required);
        let verified = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => IdentityError::BadSignature,
                K::ExpiredSignature => IdentityError::Expired,
                K::ImmatureSignature => IdentityError::NotYetValid,
                K::InvalidAudience => IdentityError::WrongAudience,
                K::InvalidIssuer => IdentityError::UntrustedIssuer,
                K::MissingRequiredClaim(_) => IdentityError::Invalid("a required claim is missing"),
                K::InvalidAlgorithm => {
                    IdentityError::UnsupportedAlgorithm(alg_name.chars().take(16).collect())
                }
                _ => IdentityError::Invalid("claims do not parse"),
            }
        })?;
        workload(cfg, verified.claims)
    }
}

fn decode_json(part: &str) -> Result<Value, IdentityError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| IdentityError::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed)?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(IdentityError::Malformed)
    }
}

/// A NumericDate as jsonwebtoken reads one: a whole number of seconds, never negative.
fn seconds(v: &Value) -> Option<i64> {
    v.as_u64().map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn workload(cfg: &IssuerConfig, c: Value) -> Result<Workload, IdentityError> {
    let now = crate::clock::now_secs();
    let leeway = cfg.leeway.as_secs() as i64;
    let exp = seconds(&c["exp"]).ok_or(IdentityError::Invalid("exp"))?;
    if exp < now - leeway {
        return Err(IdentityError::Expired);
    }
    if let Some(nbf) = c.get("nbf")
        && seconds(nbf).ok_or(IdentityError::Invalid("nbf"))? > now + leeway
    {
        return Err(IdentityError::NotYetValid);
    }
    // A present `iat` must be a NumericDate: one that is not (a float, a string, past i64)
    // would otherwise skip the age checks below.
    let iat = match c.get("iat") {
        None => None,
        Some(v) => Some(seconds(v).ok_or(IdentityError::Invalid("iat"))?),
    };
    if let Some(iat) = iat {
        if iat > now + leeway {
            return Err(IdentityError::Invalid("iat is in the future"));
        }
        // Saturating: an `iat` near i64::MIN is very old, not a wrapped-around negative age.
        if now.saturating_sub(iat) > cfg.max_token_age.as_secs() as i64 + leeway {
            return Err(IdentityError::TooOld);
        }
    }
    let subject = c["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or(IdentityError::Invalid("sub"))?
        .to_owned();
    let str_at = |path: &[&str]| {
        let mut v = &c;
        for p in path {
            v = &v[*p];
        }
        v.as_str().map(str::to_owned)
    };
    let (namespace, service_account, pod_name, pod_uid) = match cfg.kind {
        IssuerKind::Kubernetes => {
            let ns = str_at(&["kubernetes.io", "namespace"])
                .ok_or(IdentityError::Invalid("kubernetes.io.namespace"))?;
            let sa = str_at(&["kubernetes.io", "serviceaccount", "name"])
                .ok_or(IdentityError::Invalid("kubernetes.io.serviceaccount.name"))?;
            if subject != format!("system:serviceaccount:{ns}:{sa}") {
                return Err(IdentityError::Invalid(
                    "sub does not match the service account",
                ));
            }
            (
                Some(ns),
                Some(sa),
                str_at(&["kubernetes.io", "pod", "name"]),
                str_at(&["kubernetes.io", "pod", "uid"]),
            )
        }
        IssuerKind::Oidc => (None, None, None, None),
    };
    Ok(Workload {
        issuer_name: cfg.name.clone(),
        issuer: cfg.issuer.clone(),
        subject,
        namespace,
        service_account,
        pod_name,
        pod_uid,
        issued_at: iat.unwrap_or(now),
        expires_at: c["exp"].as_i64().unwrap_or(now),
        groups: groups(&c[cfg.groups_claim.as_str()]),
    })
}

/// A groups claim: a list of strings (others ignored) or a single string; at most 256 kept so
/// a hostile token cannot make role matching expensive.
fn groups(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .take(256)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
