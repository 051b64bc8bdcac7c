//! Who is calling the admin API, and may they do this?
//!
//! A caller presents `Authorization: Bearer <token>`: an OIDC token of an `[[admin.issuers]]`
//! entry (roles from policy `roles`, by subject glob or group), or the break-glass token
//! (`tgbg_…`, stored only as its SHA-256; the `admin` role; every use logged at WARN and
//! counted). Handlers take a [`Caller<R>`], whose requirement `R` names the roles that may
//! call them: the extractor answers 401 (no or bad credential) or 403 (no such role) before
//! anything else of the request is looked at.

use super::config::AdminConfig;
use super::problem::Problem;
use crate::app::AppState;
use crate::identity::{IdentityError, IdentityVerifier, IssuerConfig};
use crate::policy::{PolicySet, Role};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix of a break-glass token: it tells the verifier (and secret scanners) what it is.
pub const BREAK_GLASS_PREFIX: &str = "tgbg_";
/// The subject an audit line names for the break-glass token.
pub const BREAK_GLASS_SUBJECT: &str = "break-glass";

/// An unusable `[admin]` section; names the field.
#[derive(Debug, thiserror::Error)]
#[error("admin.{0}")]
pub struct AdminConfigError(String);

/// Verifies admin callers.
pub struct AdminAuth {
    verifier: Option<Arc<IdentityVerifier>>,
    /// Behind a lock: the secret-store source replaces it without a restart.
    break_glass: parking_lot::RwLock<Option<[u8; 32]>>,
    break_glass_uses: AtomicU64,
    finops_above_micro_usd: i64,
    increase_ttl: std::time::Duration,
}

/// How a caller authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// An OIDC token of this admin issuer (its configured name).
    Oidc(String),
    /// The break-glass token.
    BreakGlass,
}

/// An authenticated admin caller.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `sub` of the token (`break-glass` for the break-glass token).
    pub subject: String,
    /// Groups from the token.
    pub groups: Vec<String>,
    /// Roles policy grants this caller.
    pub roles: Vec<Role>,
    /// How it authenticated.
    pub via: Via,
}

impl Identity {
    /// Append an admin action to the audit log, with how the caller authenticated and the
    /// roles it acted with.
    pub fn audit(
        &self,
        audit: &crate::audit::Audit,
        action: &str,
        target: &str,
        mut detail: Value,
    ) {
        let via = match &self.via {
            Via::Oidc(issuer) => format!("oidc:{issuer}"),
            Via::BreakGlass => "break_glass".to_owned(),
        };
        if let Value::Object(m) = &mut detail {
            m.insert("via".into(), Value::String(via));
            m.insert(
                "roles".into(),
                Value::Array(
                    self.roles
                        .iter()
                        .map(|r| Value::String(r.as_str().into()))
                        .collect(),
                ),
            );
        }
        audit.record(&self.subject, action, target, detail);
    }
}

impl AdminAuth {
    /// Build from `[admin]`. `workload_issuers` are `[[issuers]]`: an admin issuer with the same
    /// `iss` must not share an audience with it. `own_issuers` (the broker's `iss`) are refused.
    pub fn new(
        cfg: &AdminConfig,
        workload_issuers: &[IssuerConfig],
        own_issuers: Vec<String>,
        http: reqwest::Client,
    ) -> Result<AdminAuth, AdminConfigError> {
        for (i, a) in cfg.issuers.iter().enumerate() {
            let same_iss = |w: &&IssuerConfig| {
                w.issuer.trim_end_matches('/') == a.issuer.trim_end_matches('/')
            };
            for w in workload_issuers.iter().filter(same_iss) {
                if let Some(aud) = a.audiences.iter().find(|x| w.audiences.contains(x)) {
                    return Err(AdminConfigError(format!(
                        "issuers[{i}].audiences: {aud:?} is also an audience of workload issuer \
                         {:?}, so its workload tokens would be admin credentials; give the admin \
                         issuer its own audience (e.g. \"tollgate-admin\")",
                        w.name
                    )));
                }
            }
        }
        let verifier = if cfg.issuers.is_empty() {
            None
        } else {
            Some(Arc::new(
                IdentityVerifier::new(cfg.issuers.clone(), own_issuers, http)
                    .map_err(|e| AdminConfigError(e.to_string()))?,
            ))
        };
        let sources = [
            cfg.break_glass_sha256.is_some(),
            cfg.break_glass_sha256_file.is_some(),
            cfg.break_glass_sha256_secret.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(AdminConfigError(
                "break_glass_sha256: use one of break_glass_sha256, break_glass_sha256_file and \
                 break_glass_sha256_secret"
                    .into(),
            ));
        }
        if cfg
            .break_glass_sha256_secret
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(AdminConfigError(
                "break_glass_sha256_secret: must name a secret of the secret store".into(),
            ));
        }
        let hex_hash = match (&cfg.break_glass_sha256, &cfg.break_glass_sha256_file) {
            (Some(h), _) => Some(h.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        AdminConfigError(format!(
                            "break_glass_sha256_file: {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let break_glass = match hex_hash {
            None => None,
            Some(h) => Some(parse_hash(&h).map_err(|e| {
                AdminConfigError(format!(
                    "{}: {e}",
                    if cfg.break_glass_sha256.is_some() {
                        "break_glass_sha256"
                    } else {
                        "break_glass_sha256_file"
                    }
                ))
            })?),
        };
        Ok(AdminAuth {
            verifier,
            break_glass: parking_lot::RwLock::new(break_glass),
            break_glass_uses: AtomicU64::new(0),
            finops_above_micro_usd: (cfg.increase_finops_above_usd * 1e6).round() as i64,
            increase_ttl: cfg.increase_request_ttl,
        })
    }

    /// Budget increases above this (micro-dollars) need `finops` or `admin`.
    pub fn increase_finops_above_micro_usd(&self) -> i64 {
        self.finops_above_micro_usd
    }

    /// How long an increase request can be approved.
    pub fn increase_request_ttl(&self) -> std::time::Duration {
        self.increase_ttl
    }

    /// The admin issuers' verifier (refreshed in the background like the workload one).
    pub fn verifier(&self) -> Option<&Arc<IdentityVerifier>> {
        self.verifier.as_ref()
    }

    /// Install the break-glass hash read from the secret store (`[admin]
    /// break_glass_sha256_secret`); `true` when it differs from the one in force.
    pub fn set_break_glass_hash(&self, hash: [u8; 32]) -> bool {
        let mut cur = self.break_glass.write();
        let changed = cur.as_ref() != Some(&hash);
        *cur = Some(hash);
        changed
    }

    /// Break-glass token uses since start (metrics).
    pub fn break_glass_uses(&self) -> u64 {
        self.break_glass_uses.load(Ordering::Relaxed)
    }

    /// Authenticate a request's `Authorization` header and resolve its roles.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        policy: &PolicySet,
    ) -> Result<Identity, Problem> {
        let Some(value) = authorization else {
            return Err(Problem::unauthenticated(
                "the admin API needs Authorization: Bearer <token>: an OIDC token of an admin \
                 issuer, or the break-glass token",
            ));
        };
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::invalid_token("the Authorization header must be Bearer <token>")
            })?;
        if token.starts_with(BREAK_GLASS_PREFIX) {
            return self.break_glass(token);
        }
        let Some(verifier) = &self.verifier else {
            return Err(Problem::invalid_token(
                "no admin issuer is configured ([[admin.issuers]]); only the break-glass token \
                 is accepted",
            ));
        };
        let who = verifier.verify(token).await.map_err(|e| match e {
            IdentityError::IssuerUnavailable(_) => Problem::unavailable(e.to_string()),
            e => Problem::invalid_token(e.to_string()),
        })?;
        let roles = Role::ALL
            .into_iter()
            .filter(|r| {
                policy
                    .roles()
                    .iter()
                    .any(|g| g.role == *r && g.applies_to(&who.subject, &who.groups))
            })
            .collect();
        Ok(Identity {
            subject: who.subject,
            groups: who.groups,
            roles,
            via: Via::Oidc(who.issuer_name),
        })
    }

    fn break_glass(&self, token: &str) -> Result<Identity, Problem> {
        let Some(expected) = *self.break_glass.read() else {
            tracing::warn!("a break-glass token was presented but none is configured");
            return Err(Problem::invalid_token("no break-glass token is configured"));
        };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if aws_lc_rs::constant_time::verify_slices_are_equal(&got, &expected).is_err() {
            tracing::warn!("a wrong break-glass token was presented");
            return Err(Problem::invalid_token(
                "the break-glass token does not match",
            ));
        }
        self.break_glass_uses.fetch_add(1, Ordering::Relaxed);
        Ok(Identity {
            subject: BREAK_GLASS_SUBJECT.to_owned(),
            groups: Vec::new(),
            roles: vec![Role::Admin],
            via: Via::BreakGlass,
        })
    }
}

/// The configured form of a break-glass hash: 64 hex digits.
pub fn parse_hash(hex_text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut out).map_err(|_| {
        "must be 64 hex digits, the SHA-256 of the token (tollgate admin break-glass-token \
         prints both)"
            .to_owned()
    })?;
    Ok(out)
}

/// A new break-glass token and the hash to configure: `(token, sha256_hex)`.
pub fn new_break_glass_token() -> (String, String) {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = format!(
        "{BREAK_GLASS_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// The roles that may call an endpoint.
pub trait Requirement: Send + Sync + 'static {
    /// Any one of these suffices.
    const ROLES: &'static [Role];
}

/// Reads: every role.
pub struct Read;
impl Requirement for Read {
    const ROLES: &'static [Role] = &Role::ALL;
}

/// Cutting access off (revocations, disabling a key): responders and up.
pub struct Revoke;
impl Requirement for Revoke {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Security, Role::Responder];
}

/// Giving access back (lifting a revocation, enabling a key): security and admin only, so a
/// responder's cut stays until someone with key authority restores it.
pub struct Restore;
impl Requirement for Restore {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Security];
}

/// Rotating provider keys (starting and aborting rotations): key authority only.
pub struct Rotate;
impl Requirement for Rotate {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Security];
}

/// Lifting an anomaly-guard pause: whoever may judge the spend was legitimate.
pub struct LiftPause;
impl Requirement for LiftPause {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Security, Role::Responder, Role::Finops];
}

/// Approving or denying a budget increase (above `admin.increase_finops_above_usd`, only
/// `admin` and `finops`; never the requester).
pub struct Approve;
impl Requirement for Approve {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Finops, Role::Security];
}

/// An authenticated caller holding one of `R`'s roles.
pub struct Caller<R> {
    /// Who.
    pub identity: Identity,
    _requirement: PhantomData<R>,
}

impl<R> std::ops::Deref for Caller<R> {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.identity
    }
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl<R: Requirement> FromRequestParts<AppState> for Caller<R> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                Problem::invalid_token("the Authorization header must be Bearer <token>")
            })?),
        };
        let policy = state.policy.current();
        let identity = state.admin.authenticate(authorization, &policy).await?;
        if identity.via == Via::BreakGlass {
            tracing::warn!(
                method = %parts.method,
                path = parts.uri.path(),
                "BREAK-GLASS token used for the admin API"
            );
            identity.audit(
                &state.audit,
                "admin.break_glass",
                parts.uri.path(),
                serde_json::json!({"method": parts.method.as_str()}),
            );
        }
        if !identity.roles.iter().any(|r| R::ROLES.contains(r)) {
            let have = if identity.roles.is_empty() {
                "none".to_owned()
            } else {
                names(&identity.roles)
            };
            return Err(Problem::forbidden(format!(
                "this needs one of the roles {}; {} has {have} (policy roles)",
                names(R::ROLES),
                identity.subject
            )));
        }
        Ok(Caller {
            identity,
            _requirement: PhantomData,
        })
    }
}
