//! `[admin]`: who may call the admin API.

use crate::identity::IssuerConfig;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The admin API's callers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// OIDC issuers of admin callers: the company IdP for people, a cluster for the security
    /// team's jobs. Same schema as `[[issuers]]`; roles come from policy `roles`. An issuer that
    /// is also a workload issuer must use other audiences (e.g. `tollgate-admin`), so that no
    /// workload token is an admin credential.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// SHA-256 (hex) of the break-glass token (`tollgate admin break-glass-token` makes one).
    /// It carries the `admin` role and every use is logged at WARN and counted.
    pub break_glass_sha256: Option<String>,
    /// A file holding that hash (a mounted secret); re-read at start only.
    pub break_glass_sha256_file: Option<PathBuf>,
    /// A secret of the configured secret store holding that hash, re-read every
    /// `secrets.refresh_interval` (a new hash takes over without a restart): Vault KV v2
    /// `<mount>/<name>` with field `sha256`; AWS Secrets Manager secret `<name>`, a string
    /// (the hex) or `{"sha256": "…"}`. Not available with the `file` backend.
    pub break_glass_sha256_secret: Option<String>,
    /// Budget increases above this many USD may be approved only by `finops` or `admin`
    /// (below it, `security` may approve too). Nobody approves their own request.
    #[serde(default = "default_finops_above")]
    pub increase_finops_above_usd: f64,
    /// How long a budget increase request waits for approval before it expires.
    #[serde(default = "default_increase_ttl", with = "humantime_serde")]
    pub increase_request_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            issuers: Vec::new(),
            break_glass_sha256: None,
            break_glass_sha256_file: None,
            break_glass_sha256_secret: None,
            increase_finops_above_usd: default_finops_above(),
            increase_request_ttl: default_increase_ttl(),
        }
    }
}

fn default_finops_above() -> f64 {
    100.0
}

fn default_increase_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
