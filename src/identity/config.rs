//! Trusted issuer configuration (embedded in the server's TOML as `[[issuers]]`).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// How the issuer's claims are read.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// Kubernetes projected service-account tokens (`kubernetes.io` claims).
    #[default]
    Kubernetes,
    /// Any OIDC issuer: the subject is `sub`.
    Oidc,
}

/// One trusted workload issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short id used by policy bindings (`match.issuer`).
    pub name: String,
    /// Exact `iss` value.
    pub issuer: String,
    /// Discovery document URL; default `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// JWKS URL (skips discovery).
    pub jwks_uri: Option<String>,
    /// Static JWKS file (air-gapped clusters), re-read on refresh.
    pub jwks_file: Option<PathBuf>,
    /// Accepted audiences; the token's `aud` must contain one.
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// Refuse tokens issued longer ago than this.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_token_age: Duration,
    /// Clock leeway for `exp`/`nbf`/`iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim layout.
    #[serde(default)]
    pub kind: IssuerKind,
    /// Extra CA certificate (PEM) for the issuer's HTTPS endpoints.
    pub ca_file: Option<PathBuf>,
    /// A token file presented as `Authorization: Bearer` when fetching discovery and JWKS, re-read
    /// on every fetch (the pod's own projected service-account token: a Kubernetes API server
    /// serves its OIDC documents to authenticated callers only, by default). Sent only to the
    /// origins of `issuer`, `discovery_url` and `jwks_uri` as configured, never to a URL a
    /// discovery document names.
    pub bearer_token_file: Option<PathBuf>,
    /// The claim holding the caller's groups (a list of strings, or one string), which admin
    /// roles may be granted to.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_audiences() -> Vec<String> {
    vec!["tollgate".to_owned()]
}
fn default_max_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// An unusable issuer configuration; names the field.
#[derive(Debug, thiserror::Error)]
#[error("issuers[{index}].{field}: {reason}")]
pub struct IdentityConfigError {
    /// Position in `[[issuers]]`.
    pub index: usize,
    /// Field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl IssuerConfig {
    /// Where `bearer_token_file` may be presented: the origins of the configured URLs.
    pub(super) fn bearer_origins(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            Some(&self.issuer),
            self.discovery_url.as_ref(),
            self.jwks_uri.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
        out.dedup();
        out
    }
}

/// https, or http to a loopback address (tests, a local issuer).
fn may_carry_token(origin: &str) -> bool {
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    }
}

pub(super) fn validate(issuers: &[IssuerConfig]) -> Result<(), IdentityConfigError> {
    let err = |index, field, reason: &str| IdentityConfigError {
        index,
        field,
        reason: reason.to_owned(),
    };
    for (i, c) in issuers.iter().enumerate() {
        if c.name.trim().is_empty() {
            return Err(err(i, "name", "must not be empty"));
        }
        if issuers[..i].iter().any(|o| o.name == c.name) {
            return Err(err(i, "name", "is used by another issuer"));
        }
        if issuers[..i].iter().any(|o| o.issuer == c.issuer) {
            return Err(err(i, "issuer", "is configured twice"));
        }
        if c.issuer.trim().is_empty() {
            return Err(err(i, "issuer", "must not be empty"));
        }
        if c.jwks_file.is_some() && (c.jwks_uri.is_some() || c.discovery_url.is_some()) {
            return Err(err(
                i,
                "jwks_file",
                "use either jwks_file or jwks_uri/discovery_url",
            ));
        }
        if c.jwks_uri.is_some() && c.discovery_url.is_some() {
            return Err(err(i, "jwks_uri", "use either jwks_uri or discovery_url"));
        }
        if c.bearer_token_file.is_some() {
            if c.jwks_file.is_some() {
                return Err(err(
                    i,
                    "bearer_token_file",
                    "has nothing to authenticate: keys come from jwks_file",
                ));
            }
            if let Some(bad) = c.bearer_origins().into_iter().find(|o| !may_carry_token(o)) {
                return Err(IdentityConfigError {
                    index: i,
                    field: "bearer_token_file",
                    reason: format!(
                        "a token is only sent over https (or to a loopback address), not to {bad}"
                    ),
                });
            }
        }
        if c.audiences.is_empty() || c.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(err(
                i,
                "audiences",
                "must list at least one non-empty audience",
            ));
        }
        if c.leeway > Duration::from_secs(300) {
            return Err(err(i, "leeway", "must be at most 5m"));
        }
    }
    Ok(())
}
