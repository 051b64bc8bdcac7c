//! The server configuration: one TOML file plus `TOLLGATE_*` environment overrides
//! (`TOLLGATE_DATABASE_URL`, `TOLLGATE_SIGNING__KEY_ENCRYPTION_KEY`: a double underscore
//! descends into a table), validated once at start with errors that name the field.
//! Defaults are the safe production choice; `tollgate dev` builds its own `Config` in code.

mod secrets;
mod types;

pub use secrets::{AwsConfig, SecretsBackend, VaultAuthConfig, VaultConfig};
pub use types::*;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use std::path::Path;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override does not parse into the schema (figment names the key).
    #[error("configuration: {0}")]
    Parse(String),
    /// A value parses but is not acceptable.
    #[error("configuration: `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `signing.algorithm`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Load `path` (TOML) with `TOLLGATE_*` overrides, then validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::invalid(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        Self::from_figment(Figment::new().merge(Toml::file(path)))
    }

    /// Parse a TOML document (no environment overrides) and validate it.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(flatten_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Build from environment overrides only (containers configured purely by env).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_figment(Figment::new())
    }

    fn from_figment(base: Figment) -> Result<Config, ConfigError> {
        let figment = base.merge(
            Env::prefixed("TOLLGATE_")
                .filter(|k| is_config_key(k.as_str()))
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(flatten_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Check the cross-field rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.public_url.scheme() {
            "https" | "http" => {}
            other => {
                return Err(ConfigError::invalid(
                    "public_url",
                    format!("scheme must be https (or http for local use), not {other}"),
                ));
            }
        }
        let db = secrecy::ExposeSecret::expose_secret(&self.database_url);
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            return Err(ConfigError::invalid(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError::invalid(
                "database_max_connections",
                "must be at least 1",
            ));
        }
        if self.token.audience.trim().is_empty() {
            return Err(ConfigError::invalid("token.audience", "must not be empty"));
        }
        if self.token.leeway > std::time::Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "token.leeway",
                "must be at most 5m: a larger leeway stretches every token's life",
            ));
        }
        self.signing.validate()?;
        for (name, p) in &self.providers {
            p.validate(&format!("providers.{name}"))?;
        }
        self.secrets.validate()?;
        for (i, w) in self.alerts.webhooks.iter().enumerate() {
            if !matches!(w.url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    format!("alerts.webhooks[{i}].url"),
                    "must be an http(s) URL",
                ));
            }
        }
        if self.alerts.check_interval < std::time::Duration::from_millis(50) {
            return Err(ConfigError::invalid(
                "alerts.check_interval",
                "must be at least 50ms",
            ));
        }
        self.anomaly.validate()?;
        self.rotation.validate()?;
        self.telemetry.validate()?;
        if self.limits.header_read_timeout < std::time::Duration::from_millis(100)
            || self.limits.header_read_timeout > std::time::Duration::from_secs(300)
        {
            return Err(ConfigError::invalid(
                "limits.header_read_timeout",
                "must be between 100ms and 5m",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if !(self.admin.increase_finops_above_usd.is_finite()
            && self.admin.increase_finops_above_usd >= 0.0)
        {
            return Err(ConfigError::invalid(
                "admin.increase_finops_above_usd",
                "must be a number of USD, 0 or more",
            ));
        }
        if self.admin.increase_request_ttl < std::time::Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "admin.increase_request_ttl",
                "must be at least 1m",
            ));
        }
        if self.audit.anchor_interval < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "audit.anchor_interval",
                "must be at least 1s",
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.spend.queue_capacity < self.spend.batch_size || self.spend.batch_size == 0 {
            return Err(ConfigError::invalid(
                "spend.batch_size",
                "must be at least 1 and at most spend.queue_capacity",
            ));
        }
        if self.spool.enabled && self.spool.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("spool.dir", "must not be empty"));
        }
        if self.spool.enabled && self.spool.max_bytes < 1 << 20 {
            return Err(ConfigError::invalid(
                "spool.max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        Ok(())
    }
}

/// Top-level fields of [`Config`]. `TOLLGATE_*` variables naming anything else
/// (`TOLLGATE_CONFIG`, the CLI's own; `TOLLGATE_TEST_*` of the test suite) are not config.
const TOP_LEVEL: &[&str] = &[
    "listen",
    "public_url",
    "database_url",
    "database_max_connections",
    "migrate_on_start",
    "policy_dir",
    "policy_reload_interval",
    "log_format",
    "token",
    "signing",
    "issuers",
    "providers",
    "secrets",
    "upstream",
    "limits",
    "spend",
    "spool",
    "drain_timeout",
    "revocation_sync_interval",
    "admin",
    "alerts",
    "anomaly",
    "audit",
    "rotation",
    "telemetry",
];

fn is_config_key(key: &str) -> bool {
    let first = key.split("__").next().unwrap_or(key).to_ascii_lowercase();
    TOP_LEVEL.contains(&first.as_str())
}

/// figment's errors can chain; show them all, each with the key it concerns.
fn flatten_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;

impl AnomalyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        use std::time::Duration;
        let bad = |f: &str, why: &str| Err(ConfigError::invalid(format!("anomaly.{f}"), why));
        if self.check_interval < Duration::from_millis(50) {
            return bad("check_interval", "must be at least 50ms");
        }
        if self.window < Duration::from_secs(1) {
            return bad("window", "must be at least 1s");
        }
        if self.baseline < self.window {
            return bad("baseline", "must be at least anomaly.window");
        }
        if !(self.multiple.is_finite() && self.multiple > 1.0) {
            return bad("multiple", "must be a number greater than 1");
        }
        let usd = [
            ("min_spend_usd", Some(self.min_spend_usd)),
            ("subject_max_spend_usd", self.subject_max_spend_usd),
            ("key_max_spend_usd", self.key_max_spend_usd),
        ];
        for (f, v) in usd {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..=1e9).contains(&v))
            {
                return bad(f, "must be an amount in USD between 0 and 1e9");
            }
        }
        Ok(())
    }
}
