//! `[admin]`: who may call the admin API.

use crate::identity::IssuerConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// The admin API's callers.
#[derive(Clone, Debug, Default, Deserialize)]
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
}
