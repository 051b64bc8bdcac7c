//! The validated policy types. Built only by `load`, so holding one means it is valid.

use globset::GlobMatcher;
use std::time::Duration;

/// A model clients may ask for: a name that routes to one or more deployments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Name clients send.
    pub name: String,
    /// Where it is served, in policy order (at least one; names unique).
    pub deployments: Vec<Deployment>,
    /// Prices (a deployment may have its own).
    pub price: Price,
    /// Cheaper model used past a pool's `fallback_at`.
    pub fallback: Option<String>,
    /// Retries, deadline and circuit breaker.
    pub routing: Routing,
}

impl Model {
    /// The first deployment of the first tier (what a one-provider model is).
    pub fn primary(&self) -> &Deployment {
        // `load` never builds a model without deployments.
        let first_tier = self.deployments.iter().map(|d| d.tier).min().unwrap_or(1);
        self.deployments
            .iter()
            .find(|d| d.tier == first_tier)
            .unwrap_or(&self.deployments[0])
    }

    /// Provider ids of its deployments.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.deployments.iter().map(|d| d.provider.as_str())
    }
}

/// One place a model is served: a provider (its base URL and keys live in the config and the
/// secret store), the model name there, whose keys pay, and its share of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Unique within the model (`x-tollgate-deployment`, spend rows, metrics).
    pub name: String,
    /// Provider id.
    pub provider: String,
    /// Name sent upstream.
    pub upstream_model: String,
    /// Keys of this billing owner serve it, whatever the binding's (`None`: the binding's).
    pub billing_owner: Option<String>,
    /// Share of its tier's load (0: only when the others of its tier cannot serve).
    pub weight: u32,
    /// 1 is tried first; a higher tier only when every deployment of the lower ones failed
    /// or cannot serve.
    pub tier: u8,
    /// The provider's own limits of this deployment's key (fleet-wide rpm and tpm; the
    /// concurrency is per replica).
    pub limits: Limits,
    /// Prices here.
    pub price: Price,
    /// The data classes it may receive.
    pub data_classes: crate::guardrails::ClassSet,
}

/// How a model's requests move between its deployments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    /// Rounds over the deployments after the first, with jittered backoff, within the deadline.
    pub retries: u32,
    /// A request is not retried or failed over past this long after its first attempt went
    /// out, and no attempt waits past it (`None`: the config's `upstream.response_timeout`).
    pub deadline: Option<Duration>,
    /// Consecutive failures that open a deployment's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe is let through (doubling, up to
    /// ten times, while probes fail).
    pub breaker_cooldown: Duration,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            retries: 1,
            deadline: None,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// Micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Price {
    /// Uncached input.
    pub input_per_mtok_micro_usd: u64,
    /// Output.
    pub output_per_mtok_micro_usd: u64,
    /// Cached input.
    pub cached_input_per_mtok_micro_usd: u64,
}

/// A budget pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Name.
    pub name: String,
    /// Hard-capped budget, if any.
    pub budget: Option<Budget>,
    /// Alert thresholds in percent, ascending.
    pub alerts: Vec<u8>,
    /// Percent past which requests use the model's fallback.
    pub fallback_at: Option<u8>,
    /// What happens at the cap.
    pub at_cap: AtCap,
    /// Pool-wide limits.
    pub limits: Limits,
}

/// A budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Cap per window, micro-dollars.
    pub limit_micro_usd: u64,
    /// The window.
    pub window: BudgetWindow,
}

/// Budget window (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetWindow {
    /// Calendar day.
    Daily,
    /// A week starting on one weekday.
    Weekly {
        /// 0 = Monday (ISO weeks, the default) … 6 = Sunday.
        start: u8,
    },
    /// A month starting on one day of the month.
    Monthly {
        /// 1 (calendar months, the default) … 28.
        start: u8,
    },
    /// The last N days.
    Rolling {
        /// N.
        days: u16,
    },
}

impl BudgetWindow {
    /// `daily`, `weekly`, `monthly` or `rolling:<days>` (alerts, the admin API).
    pub fn name(&self) -> String {
        match self {
            BudgetWindow::Daily => "daily".into(),
            BudgetWindow::Weekly { .. } => "weekly".into(),
            BudgetWindow::Monthly { .. } => "monthly".into(),
            BudgetWindow::Rolling { days } => format!("rolling:{days}"),
        }
    }
}

/// Action at the cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtCap {
    /// Refuse with `budget_exceeded`.
    Reject,
    /// Hold a refused request until a rate window, a concurrency slot or (outside monthly
    /// windows) budget frees up, up to a timeout.
    Queue {
        /// How long a request may wait.
        timeout: Duration,
        /// How many requests may wait at once per replica; more are refused at once.
        max_waiting: u32,
    },
    /// Past the cap, serve only the cheapest model the token allows, from an overdraft.
    Degrade {
        /// Money past the cap that degraded requests may spend, micro-dollars.
        overdraft_micro_usd: u64,
    },
}

/// Per-minute and concurrency limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// In flight at once.
    pub concurrency: Option<u32>,
}

/// Output-token caps of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxTokens {
    /// Applied when a request sets none.
    pub default: u32,
    /// Larger requests are clamped to this.
    pub max: u32,
}

/// Who a binding applies to.
#[derive(Clone, Debug)]
pub(crate) struct Matcher {
    pub issuer: Option<String>,
    pub namespace: Option<GlobMatcher>,
    pub service_account: Option<GlobMatcher>,
    pub subject: Option<GlobMatcher>,
}

/// A workload as bindings see it.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadRef<'a> {
    /// Trusted issuer *name*.
    pub issuer: &'a str,
    /// Token subject.
    pub subject: &'a str,
    /// Kubernetes namespace.
    pub namespace: Option<&'a str>,
    /// Kubernetes service account.
    pub service_account: Option<&'a str>,
}

impl Matcher {
    pub(crate) fn accepts(&self, w: &WorkloadRef<'_>) -> bool {
        let glob = |g: &Option<GlobMatcher>, v: Option<&str>| match g {
            None => true,
            Some(g) => v.is_some_and(|v| g.is_match(v)),
        };
        self.issuer.as_deref().is_none_or(|i| i == w.issuer)
            && glob(&self.namespace, w.namespace)
            && glob(&self.service_account, w.service_account)
            && glob(&self.subject, Some(w.subject))
    }
}

/// Workloads → team, pool, models and limits.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Unique name.
    pub name: String,
    /// Team.
    pub team: String,
    /// Pool.
    pub pool: String,
    /// Whose provider keys pay.
    pub billing_owner: String,
    /// May shared keys (store `billing_owner: "*"`) serve when `billing_owner` has none?
    pub shared_keys: bool,
    /// Models granted.
    pub models: Vec<String>,
    /// Per-token limits.
    pub limits: Limits,
    /// Token lifetime (≤ 15 min).
    pub token_ttl: Duration,
    /// Output-token caps.
    pub max_tokens: MaxTokens,
    /// Most one request may cost (worst case), micro-dollars.
    pub max_request_micro_usd: Option<u64>,
    /// Log prompt content (secrets redacted first) besides its SHA-256.
    pub log_prompts: bool,
    /// What its prompts may carry out of the building.
    pub guardrails: crate::guardrails::Guardrails,
    pub(crate) matcher: Matcher,
}

/// Admin roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Keys and rotation.
    Security,
    /// Revocations.
    Responder,
    /// Spend and budgets.
    Finops,
    /// Read only.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Security,
        Role::Responder,
        Role::Finops,
        Role::Viewer,
    ];

    /// The policy / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Security => "security",
            Role::Responder => "responder",
            Role::Finops => "finops",
            Role::Viewer => "viewer",
        }
    }
}

/// A role granted to OIDC subjects and groups.
#[derive(Clone, Debug)]
pub struct RoleGrant {
    /// The role.
    pub role: Role,
    pub(crate) subjects: Vec<GlobMatcher>,
    pub(crate) groups: Vec<String>,
}

impl RoleGrant {
    /// Does this grant apply to a caller?
    pub fn applies_to(&self, subject: &str, groups: &[String]) -> bool {
        self.subjects.iter().any(|g| g.is_match(subject))
            || self.groups.iter().any(|g| groups.contains(g))
    }
}

/// When a scheduled rotation falls due.
#[derive(Clone, Debug)]
pub enum RotationWhen {
    /// This long after the key's last rotation started (or since Tollgate first saw it).
    Every(Duration),
    /// At the first time of a five-field cron expression (UTC) after the key's last rotation
    /// started (or since Tollgate first saw it).
    Cron(Box<croner::Cron>),
}

/// A `rotations` entry: which keys are rotated on which schedule.
#[derive(Clone, Debug)]
pub struct RotationSchedule {
    /// Name (recorded as the rotation's requester, `schedule:<name>`).
    pub name: String,
    /// Key ids it applies to (globs over the store's key ids, e.g. `openai/*`).
    pub(crate) keys: Vec<GlobMatcher>,
    /// Only keys of this billing owner.
    pub billing_owner: Option<String>,
    /// The schedule.
    pub when: RotationWhen,
    /// After a rotation of this schedule rolled back, try again this much later.
    pub retry_after: Duration,
}

impl RotationSchedule {
    /// Does this schedule cover key `id` billed to `owner`?
    pub fn covers(&self, id: &str, owner: &str) -> bool {
        self.keys.iter().any(|g| g.is_match(id))
            && self.billing_owner.as_deref().is_none_or(|o| o == owner)
    }

    /// When a rotation falls due (unix ms) for a key whose last rotation started at
    /// `since_ms` (or that Tollgate first saw then). `None`: never (a cron expression with no
    /// future time).
    pub fn due_at(&self, since_ms: i64) -> Option<i64> {
        match &self.when {
            RotationWhen::Every(d) => {
                Some(since_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            }
            RotationWhen::Cron(c) => {
                let from = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(since_ms)?;
                c.find_next_occurrence(&from, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }
}
