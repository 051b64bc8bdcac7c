//! The configuration schema. Every field has a doc comment; README's configuration section
//! mirrors this file.

use super::ConfigError;
pub use super::secrets::SecretsConfig;
use crate::identity::IssuerConfig;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// The whole server configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The broker's external URL: the `iss` of every Tollgate token.
    pub public_url: Url,
    /// `postgres://…` (fleet) or `sqlite://path` (single node).
    pub database_url: SecretString,
    /// Connection pool size.
    #[serde(default = "default_db_conns")]
    pub database_max_connections: u32,
    /// Apply migrations on start (`tollgate migrate` does it explicitly).
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Directory of `policies/*.yaml`.
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    /// How often the policy directory is checked for changes.
    #[serde(default = "default_policy_reload", with = "humantime_serde")]
    pub policy_reload_interval: Duration,
    /// `json` (default) or `pretty`.
    #[serde(default)]
    pub log_format: LogFormatConfig,
    /// Tollgate tokens.
    #[serde(default)]
    pub token: TokenConfig,
    /// Signing keys of Tollgate tokens.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Trusted workload identity issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Who may call the admin API.
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    /// Upstream providers by id (the `provider` of policy models). `openai` and `anthropic`
    /// exist by default with their public URLs.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Where provider keys come from.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// Upstream HTTP client.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The asynchronous spend writer.
    #[serde(default)]
    pub spend: SpendConfig,
    /// The local spool that keeps spend rows, issued tokens and audit entries through a
    /// store outage and a restart.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Budget threshold alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The anomaly guard: pauses a workload or a provider key whose spend runs away.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
    /// The hash-chained audit log.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Staged rotation of provider keys.
    #[serde(default)]
    pub rotation: crate::rotation::RotationConfig,
    /// Graceful shutdown.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often the in-memory revocation set is re-read from the store.
    #[serde(default = "default_revocation_sync", with = "humantime_serde")]
    pub revocation_sync_interval: Duration,
    /// Subject-labelled metrics and trace export.
    #[serde(default)]
    pub telemetry: crate::telemetry::config::TelemetryConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatConfig {
    /// JSON lines.
    #[default]
    Json,
    /// Human-readable.
    Pretty,
}

/// Tollgate token settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `aud` of Tollgate tokens.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Clock leeway when verifying `exp`/`nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            audience: default_audience(),
            leeway: default_leeway(),
        }
    }
}

/// Signing algorithm of Tollgate tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// Ed25519.
    #[default]
    EdDSA,
    /// ECDSA P-256 SHA-256.
    ES256,
}

/// Signing key settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Algorithm of newly created keys.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// Key-encryption key (32 bytes, base64) sealing private keys at rest in the store.
    pub key_encryption_key: Option<SecretString>,
    /// File holding the key-encryption key (e.g. a mounted Kubernetes Secret).
    pub key_encryption_key_file: Option<PathBuf>,
    /// How long one key signs before the next one takes over.
    #[serde(default = "default_rotate_every", with = "humantime_serde")]
    pub rotate_every: Duration,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            algorithm: SigningAlgorithm::default(),
            key_encryption_key: None,
            key_encryption_key_file: None,
            rotate_every: default_rotate_every(),
        }
    }
}

impl SigningConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.key_encryption_key, &self.key_encryption_key_file) {
            (None, None) => Err(ConfigError::invalid(
                "signing.key_encryption_key",
                "set it (base64 of 32 random bytes; env TOLLGATE_SIGNING__KEY_ENCRYPTION_KEY) \
                 or signing.key_encryption_key_file",
            )),
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "signing.key_encryption_key_file",
                "set either key_encryption_key or key_encryption_key_file, not both",
            )),
            _ if self.rotate_every < Duration::from_secs(3600) => Err(ConfigError::invalid(
                "signing.rotate_every",
                "must be at least 1h",
            )),
            _ => Ok(()),
        }
    }
}

/// What kind of upstream a provider is.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKindConfig {
    /// api.openai.com or the same API elsewhere.
    Openai,
    /// api.anthropic.com.
    Anthropic,
    /// An OpenAI-compatible server (vLLM, Ollama, an on-prem gateway).
    OpenaiCompatible,
    /// The built-in deterministic mock (development, demos).
    Mock,
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire protocol.
    pub kind: ProviderKindConfig,
    /// Base URL including the version segment, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<Url>,
}

impl ProviderConfig {
    pub(super) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.kind == ProviderKindConfig::OpenaiCompatible && self.base_url.is_none() {
            return Err(ConfigError::invalid(
                format!("{field}.base_url"),
                "required for kind openai-compatible",
            ));
        }
        if let Some(u) = &self.base_url
            && !matches!(u.scheme(), "http" | "https")
        {
            return Err(ConfigError::invalid(
                format!("{field}.base_url"),
                "must be an http(s) URL",
            ));
        }
        Ok(())
    }
}

/// Upstream HTTP client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP + TLS connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time until the upstream's response headers arrive.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest silence between two chunks of a stream (or of a plain body).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per upstream host.
    #[serde(default = "default_pool_idle")]
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: default_connect_timeout(),
            response_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            pool_max_idle_per_host: default_pool_idle(),
        }
    }
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream response Tollgate will hold to read its usage.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// A client must send a request's headers within this long of connecting or of its previous
    /// response (so also the idle keep-alive limit); slower connections are closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open client connections at most; one past it is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body(),
            max_response_bytes: default_max_response(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}

/// The spend writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendConfig {
    /// Rows per insert.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest a row waits before it is written.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows held in memory while the store is slow or down.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            batch_size: default_batch(),
            flush_interval: default_flush(),
            queue_capacity: default_queue(),
        }
    }
}

/// The writers' durable overflow on local disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Spool rows to disk while the store fails (off: rows wait in memory only, up to
    /// `spend.queue_capacity`, and are lost on a crash).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// This replica's spool directory (one subdirectory per writer). Give every replica its
    /// own: a second live process cannot open a spool in use. On Kubernetes, a volume that
    /// outlives the container (the chart mounts one).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Bytes the spool may hold, per writer.
    #[serde(default = "default_spool_max")]
    pub max_bytes: u64,
    /// When the store is down and the spool can take no more (`max_bytes`, or a full disk):
    /// `refuse` new model calls and token exchanges (503 `unavailable`), or `serve` and keep
    /// rows in memory until `spend.queue_capacity`, then drop them.
    #[serde(default)]
    pub on_full: crate::spend::OnFull,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            enabled: true,
            dir: default_spool_dir(),
            max_bytes: default_spool_max(),
            on_full: crate::spend::OnFull::default(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("tollgate-spool")
}
fn default_spool_max() -> u64 {
    1 << 30
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_db_conns() -> u32 {
    16
}
fn default_true() -> bool {
    true
}
fn default_policy_dir() -> PathBuf {
    PathBuf::from("policies")
}
fn default_policy_reload() -> Duration {
    Duration::from_secs(5)
}
fn default_audience() -> String {
    "tollgate".to_owned()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_rotate_every() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_pool_idle() -> usize {
    64
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_max_response() -> usize {
    32 * 1024 * 1024
}
fn default_batch() -> usize {
    500
}
fn default_flush() -> Duration {
    Duration::from_millis(500)
}
fn default_queue() -> usize {
    100_000
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_revocation_sync() -> Duration {
    Duration::from_secs(1)
}

/// `[alerts]`: where budget threshold alerts go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Webhooks that receive every alert.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// How often pools' spend is compared with their thresholds.
    #[serde(default = "default_alert_check", with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            check_interval: default_alert_check(),
        }
    }
}

/// `[anomaly]`: when a subject's or a provider key's spend (or token) velocity runs far past
/// its own baseline, pause it until an admin lifts the pause.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Off: nothing is ever paused.
    pub enabled: bool,
    /// How often recent spend is judged.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// The recent window velocity is measured over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How far back before the window the baseline reaches.
    #[serde(with = "humantime_serde")]
    pub baseline: Duration,
    /// Pause when the window's spend or tokens pass this multiple of the baseline's average
    /// per window.
    pub multiple: f64,
    /// ... and the window's spend is at least this (USD): pennies never pause anyone.
    pub min_spend_usd: f64,
    /// ... or, for token velocity, the window's tokens are at least this.
    pub min_tokens: u64,
    /// Pause a subject spending more than this (USD) in one window, whatever its baseline.
    pub subject_max_spend_usd: Option<f64>,
    /// Pause a provider key spending more than this (USD) in one window.
    pub key_max_spend_usd: Option<f64>,
    /// After an admin lifts a pause, the same subject or key is not paused again for this long.
    #[serde(with = "humantime_serde")]
    pub lift_grace: Duration,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            check_interval: Duration::from_secs(30),
            window: Duration::from_secs(5 * 60),
            baseline: Duration::from_secs(24 * 3600),
            multiple: 10.0,
            min_spend_usd: 5.0,
            min_tokens: 1_000_000,
            subject_max_spend_usd: None,
            key_max_spend_usd: None,
            lift_grace: Duration::from_secs(3600),
        }
    }
}

/// One webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: Url,
    /// `json` (Tollgate's own body, default) or `slack` (an incoming-webhook `text` body).
    #[serde(default)]
    pub format: WebhookFormat,
}

/// A webhook body format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"type": "budget_threshold", …}`.
    #[default]
    Json,
    /// `{"text": "…"}` (Slack and compatible).
    Slack,
}

fn default_alert_check() -> Duration {
    Duration::from_secs(5)
}
