//! The `file` secret store, for `tollgate dev` and tests: a YAML or TOML file of keys, and
//! optionally `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` from the environment. Re-read on every
//! refresh, so editing the file rotates keys without a restart.
//!
//! ```yaml
//! keys:
//!   - id: openai-platform
//!     provider: openai
//!     api_key: sk-...            # or api_key_env: NAME_OF_ENV_VAR
//!     billing_owner: platform    # "*" serves every owner
//!     allowed_models: "gpt-4o-mini gpt-4o"   # or a list, or "*" (default)
//! ```

use super::{AllowedModels, Listing, ProviderKey, SHARED_OWNER, SecretStore, SecretStoreError};
use async_trait::async_trait;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;

/// Environment variables read when `from_env` is on: (variable, provider).
pub const ENV_KEYS: [(&str, &str); 2] = [
    ("OPENAI_API_KEY", "openai"),
    ("ANTHROPIC_API_KEY", "anthropic"),
];

/// Keys from a file and/or the environment.
pub struct FileStore {
    path: Option<PathBuf>,
    from_env: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    provider: String,
    api_key: Option<SecretString>,
    api_key_env: Option<String>,
    #[serde(default = "shared")]
    billing_owner: String,
    #[serde(default)]
    allowed_models: Option<ModelsField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ModelsField {
    Text(String),
    List(Vec<String>),
}

fn shared() -> String {
    SHARED_OWNER.to_owned()
}

impl FileStore {
    /// A store reading `path` (if any) and the environment (if `from_env`).
    pub fn new(path: Option<PathBuf>, from_env: bool) -> FileStore {
        FileStore { path, from_env }
    }

    fn invalid(&self, entry: &str, reason: impl Into<String>) -> SecretStoreError {
        SecretStoreError::Invalid {
            store: "file".into(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn read_file(&self) -> Result<Vec<ProviderKey>, SecretStoreError> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path).map_err(|e| SecretStoreError::Unavailable {
            store: "file".into(),
            reason: format!("{}: {e}", path.display()),
        })?;
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let parsed: KeyFile = if is_toml {
            toml::from_str(&text)
                .map_err(|e| self.invalid(&path.display().to_string(), e.message()))?
        } else {
            serde_saphyr::from_str(&text)
                .map_err(|e| self.invalid(&path.display().to_string(), e.to_string()))?
        };
        let mut out = Vec::with_capacity(parsed.keys.len());
        for e in parsed.keys {
            let secret = match (e.api_key, &e.api_key_env) {
                (Some(k), None) => k,
                (None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => SecretString::from(v.trim().to_owned()),
                    _ => {
                        return Err(
                            self.invalid(&e.id, format!("environment variable {var} is not set"))
                        );
                    }
                },
                _ => return Err(self.invalid(&e.id, "set exactly one of api_key, api_key_env")),
            };
            if e.id.is_empty() || e.provider.is_empty() {
                return Err(self.invalid(&e.id, "id and provider must not be empty"));
            }
            let allowed_models = match e.allowed_models {
                None => AllowedModels::All,
                Some(ModelsField::Text(t)) => AllowedModels::parse(&t),
                Some(ModelsField::List(l)) => AllowedModels::parse(&l.join(" ")),
            };
            let mut k = ProviderKey::new(e.id, e.provider, secret, "1");
            k.billing_owner = e.billing_owner;
            k.allowed_models = allowed_models;
            out.push(k);
        }
        Ok(out)
    }
}

#[async_trait]
impl SecretStore for FileStore {
    fn name(&self) -> &str {
        "file"
    }

    async fn list(&self) -> Result<Listing, SecretStoreError> {
        let mut keys = self.read_file()?;
        if self.from_env {
            for (var, provider) in ENV_KEYS {
                if let Ok(v) = std::env::var(var)
                    && !v.trim().is_empty()
                {
                    keys.push(ProviderKey::new(
                        format!("env/{var}"),
                        provider,
                        SecretString::from(v.trim().to_owned()),
                        "1",
                    ));
                }
            }
        }
        Ok(Listing {
            keys,
            invalid: Vec::new(),
        })
    }
}
