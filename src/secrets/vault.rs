//! HashiCorp Vault / OpenBao, KV version 2. One secret per key at
//! `<mount>/<prefix>/<provider>/<key-name>`, data `{"api_key": "…"}`, `custom_metadata`
//! read by [`super::meta`].
//!
//! Versions are stages: the served version is the one pinned in the `tollgate_version`
//! custom metadata (rotation writes it), or the latest when there is no pin; versions written
//! after the served one are `pending`, earlier live ones `previous`. A secret is read only
//! when its served version changes, so a refresh of an unchanged store costs one `LIST` per
//! folder and one metadata read per key.
//!
//! Logging in: a static token (dev), AppRole, or the pod's service-account token through
//! Kubernetes auth (Vault asks the API server) or JWT auth (Vault checks the token against the
//! cluster's OIDC issuer). Login tokens are renewed at half their lease and replaced by a new
//! login when renewal fails or the lease nears its end; a `403` triggers one re-login.

use super::meta::{self, KeyMeta};
use super::{InvalidKey, KeyVersion, Listing, SecretStore, SecretStoreError, Stage};
use crate::config::{VaultAuthConfig, VaultConfig};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// Custom-metadata field naming the version Tollgate serves.
pub const PIN_FIELD: &str = "tollgate_version";
/// Custom-metadata field listing versions a rolled-back rotation withdrew (space separated):
/// they never serve and are not pending.
pub const REJECTED_FIELD: &str = "tollgate_rejected";

fn rejected(custom: &HashMap<String, String>) -> Vec<u64> {
    custom
        .get(REJECTED_FIELD)
        .map(|r| {
            r.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The Vault backend.
pub struct VaultStore {
    config: VaultConfig,
    state: Mutex<State>,
}

struct State {
    client: VaultClient,
    /// When the current login token should be renewed / replaced (`None`: static token).
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
    renewable: bool,
    /// Secrets already read, by (path, version): an unchanged key is never re-read.
    secrets: HashMap<String, (u64, SecretString)>,
}

impl VaultStore {
    /// A store for `config`; logs in at once so a bad address or credential fails start-up
    /// with a clear message.
    pub async fn connect(config: VaultConfig) -> Result<VaultStore, SecretStoreError> {
        let client = build_client(&config, None)?;
        let store = VaultStore {
            config,
            state: Mutex::new(State {
                client,
                renew_at: None,
                expires_at: None,
                renewable: false,
                secrets: HashMap::new(),
            }),
        };
        {
            let mut st = store.state.lock().await;
            store.login(&mut st).await?;
        }
        Ok(store)
    }

    /// Read-modify-write of a key's custom metadata (Vault replaces the whole map on write;
    /// other fields are kept as read). `edit` sees the map and the live versions.
    async fn edit_custom(
        &self,
        id: &str,
        edit: impl FnOnce(&mut HashMap<String, String>, &[u64]) -> Result<(), String>,
    ) -> Result<(), SecretStoreError> {
        let mut st = self.state.lock().await;
        self.keep_token_fresh(&mut st).await?;
        let md = match vaultrs::kv2::read_metadata(&st.client, self.mount(), id).await {
            Ok(md) => md,
            Err(ClientError::APIError { code: 404, .. }) => {
                return Err(invalid(id, "no such key".into()));
            }
            Err(e) => return Err(self.unavailable(describe("read metadata", &e))),
        };
        let live: Vec<u64> = md
            .versions
            .iter()
            .filter(|(_, m)| !m.destroyed && m.deletion_time.is_empty())
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        let mut custom = md.custom_metadata.unwrap_or_default();
        edit(&mut custom, &live).map_err(|reason| invalid(id, reason))?;
        let mut req = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
        req.custom_metadata(custom);
        vaultrs::kv2::set_metadata(&st.client, self.mount(), id, Some(&mut req))
            .await
            .map_err(|e| self.unavailable(describe("write metadata", &e)))
    }

    fn unavailable(&self, reason: impl Into<String>) -> SecretStoreError {
        SecretStoreError::Unavailable {
            store: "vault".into(),
            reason: reason.into(),
        }
    }

    fn base(&self) -> String {
        self.config.prefix.trim_matches('/').to_owned()
    }

    fn mount(&self) -> &str {
        self.config.mount.trim_matches('/')
    }

    async fn login(&self, st: &mut State) -> Result<(), SecretStoreError> {
        let mount;
        let info = match &self.config.auth {
            VaultAuthConfig::Token { token, token_file } => {
                let t = match (token, token_file) {
                    (Some(t), _) => t.expose_secret().to_owned(),
                    (None, Some(path)) => read_trimmed(path)
                        .map_err(|e| self.unavailable(format!("token_file: {e}")))?,
                    (None, None) => std::env::var("VAULT_TOKEN")
                        .ok()
                        .filter(|t| !t.trim().is_empty())
                        .ok_or_else(|| {
                            self.unavailable(
                                "auth method token needs token, token_file or VAULT_TOKEN",
                            )
                        })?,
                };
                st.client.set_token(t.trim());
                // Check the token now: a typo should fail start-up, not the first refresh.
                let look = vaultrs::token::lookup_self(&st.client)
                    .await
                    .map_err(|e| self.unavailable(describe("token lookup", &e)))?;
                st.renewable = look.renewable.unwrap_or(false);
                let ttl = Duration::from_secs(look.ttl);
                if look.ttl > 0 {
                    st.renew_at = Some(Instant::now() + ttl / 2);
                    st.expires_at = Some(Instant::now() + ttl);
                }
                return Ok(());
            }
            VaultAuthConfig::Approle {
                mount: m,
                role_id,
                secret_id,
                secret_id_file,
            } => {
                mount = m;
                let sid = match (secret_id, secret_id_file) {
                    (Some(s), _) => s.expose_secret().to_owned(),
                    (None, Some(path)) => read_trimmed(path)
                        .map_err(|e| self.unavailable(format!("secret_id_file: {e}")))?,
                    (None, None) => {
                        return Err(self.unavailable("approle needs secret_id or secret_id_file"));
                    }
                };
                vaultrs::auth::approle::login(&st.client, mount, role_id, &sid).await
            }
            VaultAuthConfig::Kubernetes {
                mount: m,
                role,
                jwt_path,
            } => {
                mount = m;
                let jwt = read_trimmed(jwt_path).map_err(|e| {
                    self.unavailable(format!("service-account token {}: {e}", jwt_path.display()))
                })?;
                vaultrs::auth::kubernetes::login(&st.client, mount, role, &jwt).await
            }
            VaultAuthConfig::Jwt {
                mount: m,
                role,
                jwt_path,
            } => {
                mount = m;
                let jwt = read_trimmed(jwt_path).map_err(|e| {
                    self.unavailable(format!("service-account token {}: {e}", jwt_path.display()))
                })?;
                vaultrs::auth::oidc::login(&st.client, mount, &jwt, Some(role.clone())).await
            }
        };
        let info =
            info.map_err(|e| self.unavailable(describe(&format!("login at auth/{mount}"), &e)))?;
        st.client.set_token(&info.client_token);
        st.renewable = info.renewable;
        let lease = Duration::from_secs(info.lease_duration);
        if info.lease_duration > 0 {
            st.renew_at = Some(Instant::now() + lease / 2);
            st.expires_at = Some(Instant::now() + lease);
        } else {
            st.renew_at = None;
            st.expires_at = None;
        }
        tracing::info!(mount = %mount, lease_s = info.lease_duration, "logged in to Vault");
        Ok(())
    }

    /// Renew the token at half its lease; log in again when renewal is impossible or fails.
    async fn keep_token_fresh(&self, st: &mut State) -> Result<(), SecretStoreError> {
        let Some(renew_at) = st.renew_at else {
            return Ok(());
        };
        let now = Instant::now();
        if now < renew_at {
            return Ok(());
        }
        let near_end = st
            .expires_at
            .is_some_and(|e| e.saturating_duration_since(now) < Duration::from_secs(10));
        if st.renewable && !near_end {
            match vaultrs::token::renew_self(&st.client, None).await {
                Ok(info) if info.lease_duration > 0 => {
                    let lease = Duration::from_secs(info.lease_duration);
                    st.renew_at = Some(now + lease / 2);
                    st.expires_at = Some(now + lease);
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(error = %describe("token renewal", &e), "Vault token renewal failed; logging in again")
                }
            }
        }
        if matches!(self.config.auth, VaultAuthConfig::Token { .. }) {
            // A static token cannot be replaced by Tollgate; keep using it until Vault says no.
            st.renew_at = None;
            return Ok(());
        }
        self.login(st).await
    }

    async fn list_once(&self, st: &mut State) -> Result<Listing, ClientError> {
        let mount = self.mount().to_owned();
        let base = self.base();
        let mut out = Listing::default();
        let providers = match vaultrs::kv2::list(&st.client, &mount, &base).await {
            Ok(p) => p,
            // An empty prefix: nothing stored yet.
            Err(ClientError::APIError { code: 404, .. }) => return Ok(out),
            Err(e) => return Err(e),
        };
        let mut seen = Vec::new();
        for dir in providers {
            let Some(provider) = dir.strip_suffix('/') else {
                out.invalid.push(InvalidKey {
                    id: join(&base, &dir),
                    provider: String::new(),
                    reason: format!(
                        "a key must live at {base}/<provider>/<key-name>, not directly under the prefix"
                    ),
                });
                continue;
            };
            let folder = join(&base, provider);
            let names = match vaultrs::kv2::list(&st.client, &mount, &folder).await {
                Ok(n) => n,
                Err(ClientError::APIError { code: 404, .. }) => continue,
                Err(e) => return Err(e),
            };
            for name in names {
                let path = join(&folder, &name);
                if name.ends_with('/') {
                    out.invalid.push(InvalidKey {
                        id: path,
                        provider: provider.to_owned(),
                        reason: "nested folders under a provider are not read".into(),
                    });
                    continue;
                }
                match self.read_key(st, &mount, provider, &path).await? {
                    None => {}
                    Some(Ok(key)) => {
                        seen.push(path);
                        out.keys.push(key);
                    }
                    Some(Err(reason)) => out.invalid.push(InvalidKey {
                        id: path,
                        provider: provider.to_owned(),
                        reason,
                    }),
                }
            }
        }
        // Forget secrets of keys that are gone, so a deleted key leaves memory too.
        st.secrets.retain(|p, _| seen.contains(p));
        Ok(out)
    }
}

impl VaultStore {
    /// One key: `None` when it vanished meanwhile, `Some(Err(reason))` when it is unusable.
    async fn read_key(
        &self,
        st: &mut State,
        mount: &str,
        provider: &str,
        path: &str,
    ) -> Result<Option<Result<super::ProviderKey, String>>, ClientError> {
        let md = match vaultrs::kv2::read_metadata(&st.client, mount, path).await {
            Ok(md) => md,
            // Deleted between the LIST and the read.
            Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let custom = md.custom_metadata.clone().unwrap_or_default();
        let meta = match meta::parse(&custom, Some(provider)) {
            Ok(m) => m,
            Err(reason) => return Ok(Some(Err(reason))),
        };
        let mut live: Vec<u64> = md
            .versions
            .iter()
            .filter(|(_, m)| !m.destroyed && m.deletion_time.is_empty())
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        let withdrawn = rejected(&custom);
        live.retain(|v| !withdrawn.contains(v));
        live.sort_unstable();
        let served = match served_version(&custom, md.current_version, &live) {
            Ok(v) => v,
            Err(reason) => return Ok(Some(Err(reason))),
        };
        let secret = match st.secrets.get(path) {
            Some((v, s)) if *v == served => s.clone(),
            _ => {
                let data: serde_json::Value =
                    match vaultrs::kv2::read_version(&st.client, mount, path, served).await {
                        Ok(d) => d,
                        Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                let Some(k) = data
                    .get("api_key")
                    .and_then(|k| k.as_str())
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                else {
                    return Ok(Some(Err(format!("version {served} has no api_key string"))));
                };
                let s = SecretString::from(k.to_owned());
                st.secrets.insert(path.to_owned(), (served, s.clone()));
                s
            }
        };
        Ok(Some(Ok(build_key(
            path.to_owned(),
            meta,
            secret,
            served,
            &live,
        ))))
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    fn name(&self) -> &str {
        "vault"
    }

    async fn list(&self) -> Result<Listing, SecretStoreError> {
        let mut st = self.state.lock().await;
        self.keep_token_fresh(&mut st).await?;
        match self.list_once(&mut st).await {
            Ok(l) => Ok(l),
            // The token expired or was revoked: log in once more and retry.
            Err(ClientError::APIError { code: 403, .. })
                if !matches!(self.config.auth, VaultAuthConfig::Token { .. }) =>
            {
                self.login(&mut st).await?;
                self.list_once(&mut st)
                    .await
                    .map_err(|e| self.unavailable(describe("list", &e)))
            }
            Err(e) => Err(self.unavailable(describe("list", &e))),
        }
    }

    async fn read_version(
        &self,
        id: &str,
        version: &str,
    ) -> Result<SecretString, SecretStoreError> {
        let v = parse_version(id, version)?;
        let mut st = self.state.lock().await;
        self.keep_token_fresh(&mut st).await?;
        let data: serde_json::Value =
            match vaultrs::kv2::read_version(&st.client, self.mount(), id, v).await {
                Ok(d) => d,
                Err(ClientError::APIError { code: 404, .. }) => {
                    return Err(invalid(
                        id,
                        format!("version {v} does not exist or is deleted"),
                    ));
                }
                Err(e) => return Err(self.unavailable(describe("read", &e))),
            };
        super::string_field(&data, "api_key")
            .ok_or_else(|| invalid(id, format!("version {v} has no api_key string")))
    }

    async fn set_current(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let v = parse_version(id, version)?;
        self.edit_custom(id, |custom, live| {
            if !live.contains(&v) {
                return Err(format!("version {v} is not a live version"));
            }
            if rejected(custom).contains(&v) {
                return Err(format!(
                    "version {v} was rejected by a rolled-back rotation"
                ));
            }
            custom.insert(PIN_FIELD.to_owned(), v.to_string());
            Ok(())
        })
        .await
    }

    async fn write_pending(
        &self,
        id: &str,
        secret: &SecretString,
    ) -> Result<String, SecretStoreError> {
        // Pin the version served before writing, or the new one would serve at once.
        let mut pinned = None;
        self.edit_custom(id, |custom, live| {
            if let Some(v) = custom
                .get(PIN_FIELD)
                .and_then(|p| p.trim().parse::<u64>().ok())
            {
                pinned = Some(v);
                return Ok(());
            }
            let withdrawn = rejected(custom);
            let served = live
                .iter()
                .copied()
                .filter(|v| !withdrawn.contains(v))
                .max()
                .ok_or_else(|| "every version is deleted or destroyed".to_owned())?;
            custom.insert(PIN_FIELD.to_owned(), served.to_string());
            pinned = Some(served);
            Ok(())
        })
        .await?;
        let mut st = self.state.lock().await;
        self.keep_token_fresh(&mut st).await?;
        let data = serde_json::json!({"api_key": secret.expose_secret()});
        let md = vaultrs::kv2::set(&st.client, self.mount(), id, &data)
            .await
            .map_err(|e| self.unavailable(describe("write", &e)))?;
        tracing::info!(key = %id, version = md.version, pinned = ?pinned, "vault: pending version written");
        Ok(md.version.to_string())
    }

    async fn reject_pending(&self, id: &str, version: &str) -> Result<(), SecretStoreError> {
        let v = parse_version(id, version)?;
        self.edit_custom(id, |custom, _| {
            if custom.get(PIN_FIELD).and_then(|p| p.trim().parse().ok()) == Some(v) {
                return Err(format!(
                    "version {v} is the one served; it cannot be rejected"
                ));
            }
            let mut list = rejected(custom);
            if !list.contains(&v) {
                list.push(v);
                let text: Vec<String> = list.iter().map(u64::to_string).collect();
                custom.insert(REJECTED_FIELD.to_owned(), text.join(" "));
            }
            Ok(())
        })
        .await
    }

    async fn read_secret(&self, name: &str, field: &str) -> Result<SecretString, SecretStoreError> {
        let path = name.trim_matches('/');
        let mut st = self.state.lock().await;
        self.keep_token_fresh(&mut st).await?;
        let mut got = vaultrs::kv2::read::<serde_json::Value>(&st.client, self.mount(), path).await;
        if matches!(got, Err(ClientError::APIError { code: 403, .. }))
            && !matches!(self.config.auth, VaultAuthConfig::Token { .. })
        {
            self.login(&mut st).await?;
            got = vaultrs::kv2::read(&st.client, self.mount(), path).await;
        }
        let invalid = |reason: String| SecretStoreError::Invalid {
            store: "vault".into(),
            entry: format!("{}/{path}", self.mount()),
            reason,
        };
        let data = match got {
            Ok(d) => d,
            Err(ClientError::APIError { code: 404, .. }) => {
                return Err(invalid(
                    "no such secret (or its latest version is deleted)".into(),
                ));
            }
            Err(e) => return Err(self.unavailable(describe("read", &e))),
        };
        super::string_field(&data, field)
            .ok_or_else(|| invalid(format!("the latest version has no {field:?} string")))
    }
}

fn build_client(
    config: &VaultConfig,
    token: Option<&str>,
) -> Result<VaultClient, SecretStoreError> {
    let mut b = VaultClientSettingsBuilder::default();
    b.address(config.address.as_str().trim_end_matches('/'))
        .timeout(Some(config.timeout))
        .token(token.unwrap_or(""));
    if let Some(ns) = &config.namespace {
        b.namespace(Some(ns.clone()));
    }
    if let Some(ca) = &config.ca_cert {
        b.ca_certs(vec![ca.display().to_string()]);
    }
    let settings = b.build().map_err(|e| SecretStoreError::Unavailable {
        store: "vault".into(),
        reason: format!("client settings: {e}"),
    })?;
    VaultClient::new(settings).map_err(|e| SecretStoreError::Unavailable {
        store: "vault".into(),
        reason: describe("client", &e),
    })
}

/// The served version: the pin when present (it must be live), else the latest live one.
fn served_version(
    custom: &HashMap<String, String>,
    current: u64,
    live: &[u64],
) -> Result<u64, String> {
    if let Some(pin) = custom.get(PIN_FIELD) {
        let v: u64 = pin
            .trim()
            .parse()
            .map_err(|_| format!("{PIN_FIELD} {pin:.20?} is not a version number"))?;
        return if live.contains(&v) {
            Ok(v)
        } else {
            Err(format!("pinned version {v} is deleted or destroyed"))
        };
    }
    if live.contains(&current) {
        Ok(current)
    } else {
        live.last()
            .copied()
            .ok_or_else(|| "every version is deleted or destroyed".to_owned())
    }
}

fn invalid(id: &str, reason: String) -> SecretStoreError {
    SecretStoreError::Invalid {
        store: "vault".into(),
        entry: id.to_owned(),
        reason,
    }
}

fn parse_version(id: &str, version: &str) -> Result<u64, SecretStoreError> {
    version
        .trim()
        .parse()
        .map_err(|_| invalid(id, format!("{version:.20?} is not a KV version number")))
}

fn build_key(
    path: String,
    meta: KeyMeta,
    secret: SecretString,
    served: u64,
    live: &[u64],
) -> super::ProviderKey {
    let mut k = meta::key(path, meta, secret, served.to_string());
    k.versions = live
        .iter()
        .map(|&v| KeyVersion {
            id: v.to_string(),
            stage: match v.cmp(&served) {
                std::cmp::Ordering::Equal => Stage::Current,
                std::cmp::Ordering::Greater => Stage::Pending,
                std::cmp::Ordering::Less => Stage::Previous,
            },
        })
        .collect();
    k
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.trim_matches('/').to_owned()
    } else {
        format!("{a}/{}", b.trim_matches('/'))
    }
}

fn read_trimmed(path: &std::path::Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let t = t.trim();
    if t.is_empty() {
        Err("file is empty".into())
    } else {
        Ok(t.to_owned())
    }
}

/// Vault's own error messages ("permission denied", "invalid role or secret ID") never
/// contain credentials; transport errors are reduced to their kind.
fn describe(what: &str, e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => {
            let msg = errors.join("; ");
            if msg.is_empty() {
                format!("{what}: Vault answered {code}")
            } else {
                format!("{what}: Vault answered {code}: {msg:.200}")
            }
        }
        ClientError::RestClientError { .. } => format!("{what}: cannot reach Vault"),
        _ => format!("{what}: unexpected response from Vault"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_wins_and_must_be_live() {
        let none = HashMap::new();
        assert_eq!(served_version(&none, 3, &[1, 2, 3]), Ok(3));
        assert_eq!(served_version(&none, 3, &[1, 2]), Ok(2));
        assert!(served_version(&none, 3, &[]).is_err());
        let pinned: HashMap<String, String> = [(PIN_FIELD.to_owned(), "2".to_owned())].into();
        assert_eq!(served_version(&pinned, 3, &[1, 2, 3]), Ok(2));
        assert!(served_version(&pinned, 3, &[1, 3]).is_err());
        let bad: HashMap<String, String> = [(PIN_FIELD.to_owned(), "two".to_owned())].into();
        assert!(served_version(&bad, 3, &[1, 2, 3]).is_err());
    }

    #[test]
    fn stages_follow_the_served_version() {
        let meta = meta::parse(
            &[("billing_owner".to_owned(), "a".to_owned())].into(),
            Some("openai"),
        )
        .unwrap();
        let k = build_key(
            "p/openai/k".into(),
            meta,
            SecretString::from("sk".to_owned()),
            2,
            &[1, 2, 3],
        );
        let stages: Vec<(&str, Stage)> = k
            .versions
            .iter()
            .map(|v| (v.id.as_str(), v.stage))
            .collect();
        assert_eq!(
            stages,
            [
                ("1", Stage::Previous),
                ("2", Stage::Current),
                ("3", Stage::Pending)
            ]
        );
        assert_eq!(k.version, "2");
    }
}
