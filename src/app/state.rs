//! The shared state every handler sees, built once at start-up.

use crate::config::{LimitsConfig, UpstreamConfig};
use crate::identity::{DevIssuer, IdentityVerifier};
use crate::policy::PolicyStore;
use crate::providers::{Api, ProviderKind};
use crate::quota::Quota;
use crate::revocation::RevocationSet;
use crate::secrets::KeyCache;
use crate::spend::Writer;
use crate::store::{IssuedTokenRecord, SpendRecord, Store};
use crate::token::TokenService;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use url::Url;

/// One upstream provider as the proxy routes to it.
#[derive(Clone, Debug)]
pub struct ProviderRoute {
    /// Provider id (policy `provider`).
    pub id: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL (none for the mock).
    pub base_url: Option<Url>,
    /// The upstream URL of every API, joined and parsed once here rather than on every
    /// request.
    endpoints: Vec<(Api, http::Uri)>,
}

impl ProviderRoute {
    /// A route to `base_url` (none for the mock).
    pub fn new(id: impl Into<String>, kind: ProviderKind, base_url: Option<Url>) -> Self {
        let endpoints = base_url
            .as_ref()
            .map(|b| {
                Api::ALL
                    .iter()
                    .filter_map(|&api| {
                        // A `Url` always parses as a `Uri`; a route without one is refused at
                        // request time as having no base URL.
                        let u = crate::providers::upstream_url(b, api);
                        u.as_str().parse::<http::Uri>().ok().map(|u| (api, u))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: id.into(),
            kind,
            base_url,
            endpoints,
        }
    }

    /// Where `api` is served upstream.
    pub fn endpoint(&self, api: Api) -> Option<&http::Uri> {
        self.endpoints
            .iter()
            .find_map(|(a, u)| (*a == api).then_some(u))
    }
}

/// The development issuer, when running `tollgate dev`.
pub struct DevIdentity {
    /// Signing key of the dev issuer.
    pub issuer: DevIssuer,
    /// Its issuer URL (`http://<listen>/dev/oidc`).
    pub issuer_url: String,
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

/// The fields of [`AppState`].
pub struct Inner {
    /// The store.
    pub store: Store,
    /// Live policy.
    pub policy: Arc<PolicyStore>,
    /// Workload identity verification.
    pub identity: Arc<IdentityVerifier>,
    /// Admin API callers.
    pub admin: Arc<crate::admin::AdminAuth>,
    /// Tollgate tokens.
    pub tokens: Arc<TokenService>,
    /// Revocations.
    pub revocations: Arc<RevocationSet>,
    /// Provider keys.
    pub keys: Arc<KeyCache>,
    /// Limits and budgets.
    pub quota: Arc<Quota>,
    /// Approved budget increases (added to pools' caps).
    pub increases: Arc<crate::quota::Increases>,
    /// Budget threshold alerts.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The anomaly guard (pauses runaway subjects and keys).
    pub guard: Arc<crate::anomaly::Guard>,
    /// Provider-key rotations (driver and follower).
    pub rotator: Arc<crate::rotation::Rotator>,
    /// This replica's budget leases in the store.
    pub leases: Arc<super::budget::Leases>,
    /// This replica's leases of the fleet-wide per-minute windows.
    pub rates: Arc<super::rates::RateLeases>,
    /// Each deployment's health as this replica sees it.
    pub breakers: Arc<crate::routing::Breakers>,
    /// Providers by id.
    pub providers: HashMap<String, ProviderRoute>,
    /// Pooled client of the provider calls (the hot path).
    pub upstream_client: crate::proxy::UpstreamClient,
    /// Client of the alert webhooks.
    pub http: reqwest::Client,
    /// Upstream timeouts.
    pub upstream: UpstreamConfig,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Spend rows.
    pub spend: Writer<SpendRecord>,
    /// Issued-token inventory rows.
    pub issued: Writer<IssuedTokenRecord>,
    /// This replica's chain of the audit log.
    pub audit: Arc<crate::audit::Audit>,
    /// Dev issuer (only in `tollgate dev`).
    pub dev: Option<DevIdentity>,
    /// What `GET /metrics` exposes.
    pub metrics: crate::telemetry::metrics::Metrics,
    /// The request-path series in it.
    pub requests: crate::telemetry::requests::RequestMetrics,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    /// The writer that cannot make new rows durable right now (store down and spool full,
    /// with `spool.on_full = "refuse"`), if any. Model calls and token exchanges are refused
    /// while one is: they would produce spend rows, audit entries or token records with
    /// nowhere safe to go. Three atomic loads.
    pub fn undurable_writer(&self) -> Option<&'static str> {
        if !self.spend.accepting() {
            Some(self.spend.name())
        } else if !self.issued.accepting() {
            Some(self.issued.name())
        } else if !self.audit.accepting() {
            Some("audit")
        } else {
            None
        }
    }
}
