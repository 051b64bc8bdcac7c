//! Key issuers: where Tollgate creates a provider key itself instead of waiting for security to
//! write one. A scheduled rotation of a key an issuer covers asks it for a new key, writes the
//! key into the secret store as the pending version and rotates to it; retiring that version
//! later deletes the key at the provider (a rollback deletes it at once).
//!
//! The first issuer is OpenAI's organization admin API: each key is a project service account
//! (`POST /organization/projects/{project}/service_accounts` returns the account with its
//! unredacted API key; deleting the account deletes the key). The admin key is read from the
//! secret store for every call, so rotating it needs no restart, and is never logged.

use crate::config::ConfigError;
use crate::secrets::SecretStore;
use async_trait::async_trait;
use globset::{Glob, GlobSet, GlobSetBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A new key created at the provider.
pub struct IssuedKey {
    /// The key itself.
    pub secret: SecretString,
    /// The provider's id for it (what [`KeyIssuer::revoke`] takes), safe to store and log.
    pub reference: String,
}

/// Why an issuer call failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[error("key issuer {issuer}: {reason}")]
pub struct IssueError {
    /// Issuer name.
    pub issuer: String,
    /// Why.
    pub reason: String,
}

/// Creates and deletes provider keys through a provider's admin API.
#[async_trait]
pub trait KeyIssuer: Send + Sync {
    /// Configured name (logs, rotation history).
    fn name(&self) -> &str;
    /// Does it create keys for Tollgate key `key_id`?
    fn covers(&self, key_id: &str) -> bool;
    /// Create a new key for `key_id`.
    async fn issue(&self, key_id: &str) -> Result<IssuedKey, IssueError>;
    /// Delete the key `reference` at the provider. A key already gone is not an error.
    async fn revoke(&self, reference: &str) -> Result<(), IssueError>;
}

/// What kind of admin API an issuer speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IssuerKind {
    /// OpenAI's organization admin API (project service accounts).
    Openai,
}

/// One `[[rotation.issuers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Name.
    pub name: String,
    /// Admin API.
    pub kind: IssuerKind,
    /// Tollgate key ids it creates keys for (globs, e.g. `openai/*`).
    pub keys: Vec<String>,
    /// The admin API's base URL.
    #[serde(default = "default_openai_base")]
    pub base_url: String,
    /// OpenAI project the service accounts are created in (`proj_…`).
    pub project_id: String,
    /// Secret-store entry holding the admin key in its `api_key` field (Vault: a KV path
    /// under the mount; AWS: a secret name).
    pub admin_key_secret: String,
    /// Timeout of one admin API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_openai_base() -> String {
    "https://api.openai.com/v1".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl IssuerConfig {
    /// Check one entry; the error names the field.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let bad = |f: &str, why: String| {
            Err(ConfigError::invalid(
                format!("rotation.issuers[{i}].{f}"),
                why,
            ))
        };
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        if self.keys.is_empty() {
            return bad(
                "keys",
                "name the key ids it issues for (globs such as openai/*)".into(),
            );
        }
        for k in &self.keys {
            if let Err(e) = Glob::new(k) {
                return bad("keys", format!("{k:?}: {e}"));
            }
        }
        match reqwest::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return bad(
                    "base_url",
                    format!("{:?} is not an http(s) URL", self.base_url),
                );
            }
        }
        if self.project_id.trim().is_empty() || self.project_id.contains('/') {
            return bad("project_id", "must be a project id such as proj_abc".into());
        }
        if self.admin_key_secret.trim().is_empty() {
            return bad("admin_key_secret", "must name a secret-store entry".into());
        }
        if self.timeout < Duration::from_secs(1) {
            return bad("timeout", "must be at least 1s".into());
        }
        Ok(())
    }
}

/// Build the configured issuers.
pub fn build(
    configs: &[IssuerConfig],
    secrets: &Arc<dyn SecretStore>,
    http: &reqwest::Client,
) -> Vec<Arc<dyn KeyIssuer>> {
    configs
        .iter()
        .map(|c| match c.kind {
            IssuerKind::Openai => Arc::new(OpenAiIssuer::new(
                c.clone(),
                Arc::clone(secrets),
                http.clone(),
            )) as Arc<dyn KeyIssuer>,
        })
        .collect()
}

/// OpenAI project service accounts.
pub struct OpenAiIssuer {
    cfg: IssuerConfig,
    keys: GlobSet,
    secrets: Arc<dyn SecretStore>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ServiceAccount {
    id: String,
    api_key: Option<ServiceAccountKey>,
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    value: String,
}

impl OpenAiIssuer {
    /// An issuer for a validated `cfg`.
    pub fn new(cfg: IssuerConfig, secrets: Arc<dyn SecretStore>, http: reqwest::Client) -> Self {
        let mut b = GlobSetBuilder::new();
        for k in &cfg.keys {
            // Validated with the configuration.
            if let Ok(g) = Glob::new(k) {
                b.add(g);
            }
        }
        OpenAiIssuer {
            keys: b.build().unwrap_or_else(|_| GlobSet::empty()),
            cfg,
            secrets,
            http,
        }
    }

    fn fail(&self, reason: impl Into<String>) -> IssueError {
        IssueError {
            issuer: self.cfg.name.clone(),
            reason: reason.into(),
        }
    }

    fn accounts_url(&self) -> String {
        format!(
            "{}/organization/projects/{}/service_accounts",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.project_id
        )
    }

    async fn admin_key(&self) -> Result<SecretString, IssueError> {
        self.secrets
            .read_secret(&self.cfg.admin_key_secret, "api_key")
            .await
            .map_err(|e| self.fail(format!("admin key: {e}")))
    }

    /// The provider's answer to a failed call: the status, and OpenAI's `error.message` (at
    /// most 200 characters) except on 401/403, whose message may echo part of the admin key.
    async fn refusal(&self, call: &str, resp: reqwest::Response) -> IssueError {
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) {
            return self.fail(format!(
                "{call}: OpenAI answered {status}: the admin key in {} was refused",
                self.cfg.admin_key_secret
            ));
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let msg = body["error"]["message"].as_str().unwrap_or("");
        self.fail(format!("{call}: OpenAI answered {status}: {msg:.200}"))
    }
}

#[async_trait]
impl KeyIssuer for OpenAiIssuer {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn covers(&self, key_id: &str) -> bool {
        self.keys.is_match(key_id)
    }

    async fn issue(&self, key_id: &str) -> Result<IssuedKey, IssueError> {
        let admin = self.admin_key().await?;
        // The account's name says what it is for in OpenAI's console.
        let name = format!("tollgate {key_id} {}", crate::clock::now_ms() / 1000);
        let resp = self
            .http
            .post(self.accounts_url())
            .bearer_auth(admin.expose_secret())
            .timeout(self.cfg.timeout)
            .json(&serde_json::json!({"name": name}))
            .send()
            .await
            .map_err(|e| self.fail(format!("create service account: {}", transport(e))))?;
        if !resp.status().is_success() {
            return Err(self.refusal("create service account", resp).await);
        }
        let account: ServiceAccount = resp.json().await.map_err(|_| {
            self.fail("create service account: the answer is not a service account")
        })?;
        let Some(key) = account.api_key.filter(|k| !k.value.trim().is_empty()) else {
            // An account without a key is useless and would linger: take it away again.
            let _ = self.revoke(&account.id).await;
            return Err(self.fail("create service account: the answer holds no api_key"));
        };
        tracing::info!(issuer = %self.cfg.name, key = %key_id, service_account = %account.id,
            "key issuer: new provider key created");
        Ok(IssuedKey {
            secret: SecretString::from(key.value),
            reference: account.id,
        })
    }

    async fn revoke(&self, reference: &str) -> Result<(), IssueError> {
        if reference.is_empty() || reference.contains(['/', '?', '#']) {
            return Err(self.fail(format!("{reference:.60?} is not a service account id")));
        }
        let admin = self.admin_key().await?;
        let resp = self
            .http
            .delete(format!("{}/{reference}", self.accounts_url()))
            .bearer_auth(admin.expose_secret())
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| self.fail(format!("delete service account: {}", transport(e))))?;
        if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND {
            tracing::info!(issuer = %self.cfg.name, service_account = %reference,
                "key issuer: provider key deleted");
            return Ok(());
        }
        Err(self.refusal("delete service account", resp).await)
    }
}

/// A transport failure in words: the kind, never a header.
fn transport(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.without_url().to_string()
    }
}
