//! `[secrets]`: where provider keys come from. README's "Provider keys" section mirrors this.

use super::ConfigError;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Which secret store holds the provider keys.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretsBackend {
    /// A YAML/TOML file and/or environment variables (`tollgate dev`, tests).
    #[default]
    File,
    /// HashiCorp Vault or OpenBao, KV version 2.
    Vault,
    /// AWS Secrets Manager.
    Aws,
}

/// Secret-store backend selection and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// `file` (default), `vault` or `aws`.
    #[serde(default)]
    pub backend: SecretsBackend,
    /// For `file`: a YAML or TOML file of provider keys.
    pub path: Option<PathBuf>,
    /// For `file`: also take `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` from the environment.
    #[serde(default)]
    pub from_env: bool,
    /// How often the store is re-listed (new, changed and deleted keys are picked up).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How long cached keys keep serving while the store cannot be read. Past it, requests
    /// get `no_provider_key` and `/readyz` fails until the store answers again.
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
    /// `backend = "vault"`.
    pub vault: Option<VaultConfig>,
    /// `backend = "aws"`.
    pub aws: Option<AwsConfig>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            backend: SecretsBackend::File,
            path: None,
            from_env: false,
            refresh_interval: default_refresh(),
            max_staleness: default_max_staleness(),
            vault: None,
            aws: None,
        }
    }
}

/// `[secrets.vault]`: Vault or OpenBao, KV v2. Keys live at
/// `<mount>/<prefix>/<provider>/<key-name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example.internal:8200`.
    pub address: Url,
    /// KV v2 mount.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Folder under the mount holding `<provider>/<key-name>` secrets.
    #[serde(default = "default_vault_prefix")]
    pub prefix: String,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
    /// PEM file of the CA that signed Vault's certificate (default: the system roots).
    pub ca_cert: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How Tollgate logs in.
    pub auth: VaultAuthConfig,
}

/// `[secrets.vault.auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaultAuthConfig {
    /// A Vault token: `token`, or `token_file`, or else the `VAULT_TOKEN` environment
    /// variable. Meant for development; production uses `approle` or `kubernetes`.
    Token {
        /// The token itself.
        token: Option<SecretString>,
        /// A file holding it (re-read at every login).
        token_file: Option<PathBuf>,
    },
    /// AppRole: `role_id` and a `secret_id` (inline or from a file).
    Approle {
        /// Auth mount.
        #[serde(default = "default_approle_mount")]
        mount: String,
        /// The role id.
        role_id: String,
        /// The secret id.
        secret_id: Option<SecretString>,
        /// A file holding the secret id.
        secret_id_file: Option<PathBuf>,
    },
    /// JWT auth with the pod's projected service-account token, verified by Vault against the
    /// cluster's OIDC issuer (no TokenReview call to the Kubernetes API).
    Jwt {
        /// Auth mount.
        #[serde(default = "default_jwt_mount")]
        mount: String,
        /// The Vault role bound to Tollgate's service account.
        role: String,
        /// The token file (re-read at every login: kubelet rotates it).
        #[serde(default = "default_sa_token_path")]
        jwt_path: PathBuf,
    },
    /// Kubernetes auth with the pod's service-account token.
    Kubernetes {
        /// Auth mount.
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
        /// The Vault role bound to Tollgate's service account.
        role: String,
        /// The projected service-account token (re-read at every login: kubelet rotates it).
        #[serde(default = "default_sa_token_path")]
        jwt_path: PathBuf,
    },
}

/// `[secrets.aws]`: AWS Secrets Manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region (default: the standard AWS chain: `AWS_REGION`, profile, …).
    pub region: Option<String>,
    /// Secrets whose name starts with this are provider keys.
    #[serde(default = "default_aws_prefix")]
    pub prefix: String,
    /// Endpoint override (a VPC endpoint; a local emulator in tests).
    pub endpoint_url: Option<Url>,
    /// Per-call timeout.
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per call, throttling and transient errors retried with exponential backoff.
    #[serde(default = "default_aws_attempts")]
    pub max_attempts: u32,
}

impl SecretsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "secrets.refresh_interval",
                "must be at least 1s",
            ));
        }
        if self.max_staleness < self.refresh_interval {
            return Err(ConfigError::invalid(
                "secrets.max_staleness",
                "must be at least secrets.refresh_interval",
            ));
        }
        match self.backend {
            SecretsBackend::File => {
                if self.path.is_none() && !self.from_env {
                    return Err(ConfigError::invalid(
                        "secrets.path",
                        "the file backend needs a path (or from_env = true)",
                    ));
                }
            }
            SecretsBackend::Vault => {
                let Some(v) = &self.vault else {
                    return Err(ConfigError::invalid(
                        "secrets.vault",
                        "backend = \"vault\" needs a [secrets.vault] section with address and auth",
                    ));
                };
                v.validate()?;
            }
            SecretsBackend::Aws => {
                let Some(a) = &self.aws else {
                    return Err(ConfigError::invalid(
                        "secrets.aws",
                        "backend = \"aws\" needs a [secrets.aws] section (prefix, region)",
                    ));
                };
                if a.max_attempts == 0 {
                    return Err(ConfigError::invalid(
                        "secrets.aws.max_attempts",
                        "must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl VaultConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.address.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "secrets.vault.address",
                "must be an http(s) URL",
            ));
        }
        if self.mount.trim_matches('/').is_empty() {
            return Err(ConfigError::invalid(
                "secrets.vault.mount",
                "must not be empty",
            ));
        }
        match &self.auth {
            VaultAuthConfig::Token { token, token_file }
                if token.is_some() && token_file.is_some() =>
            {
                Err(ConfigError::invalid(
                    "secrets.vault.auth",
                    "set token or token_file, not both",
                ))
            }
            VaultAuthConfig::Approle {
                secret_id,
                secret_id_file,
                ..
            } if secret_id.is_some() == secret_id_file.is_some() => Err(ConfigError::invalid(
                "secrets.vault.auth.secret_id",
                "approle needs exactly one of secret_id, secret_id_file",
            )),
            _ => Ok(()),
        }
    }
}

fn default_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(3600)
}
fn default_mount() -> String {
    "secret".to_owned()
}
fn default_vault_prefix() -> String {
    "tollgate/providers".to_owned()
}
fn default_store_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_approle_mount() -> String {
    "approle".to_owned()
}
fn default_jwt_mount() -> String {
    "jwt".to_owned()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}
fn default_sa_token_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_aws_prefix() -> String {
    "tollgate/providers/".to_owned()
}
fn default_aws_attempts() -> u32 {
    5
}
