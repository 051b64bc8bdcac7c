//! Request-path metrics: counters and histograms updated as requests end, lock-free
//! (`prometheus-client` families are sharded atomics behind a read-mostly map).
//!
//! Label sets are bounded by construction: routes are the router's matched paths (or
//! `unmatched`), statuses are HTTP codes, error codes are Tollgate's fixed set, and team, pool
//! and model come from the policy; never a token id, a key or a request id, and a subject only
//! in the `subject_*` series an operator turned on (`telemetry.metrics_subject_label`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    team: String,
    pool: String,
    model: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    team: String,
    pool: String,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    team: String,
    pool: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
    team: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectTokenLabels {
    subject: String,
    team: String,
    model: String,
    kind: &'static str,
}

/// Per-subject series (`telemetry.metrics_subject_label`): one series per workload, so off
/// unless asked for.
#[derive(Clone, Debug, Default)]
struct SubjectSeries {
    requests: Family<SubjectLabels, Counter>,
    tokens: Family<SubjectTokenLabels, Counter>,
    spend: Family<SubjectLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardrailLabels {
    binding: String,
    rule: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model: String,
    deployment: String,
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 100 µs to about 100 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Tollgate's own time: 10 µs to about 80 ms.
fn overhead() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 14))
}

/// What one request settled as, for the metrics.
pub struct Settled<'a> {
    /// The workload subject (a label only with `telemetry.metrics_subject_label`).
    pub subject: &'a str,
    /// Team, pool and policy model of the token.
    pub team: &'a str,
    /// Pool.
    pub pool: &'a str,
    /// Model.
    pub model: &'a str,
    /// Status answered.
    pub status: u16,
    /// Tokens charged.
    pub input_tokens: u64,
    /// Output tokens charged.
    pub output_tokens: u64,
    /// Cached input tokens charged.
    pub cached_input_tokens: u64,
    /// Cost charged.
    pub cost_micro_usd: u64,
}

impl Settled<'_> {
    /// Each kind of token charged, with its count (kinds with none are left out).
    fn charged_tokens(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("input", self.input_tokens),
            ("output", self.output_tokens),
            ("cached_input", self.cached_input_tokens),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
    }
}

/// The request-path series of one application.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    http: Family<HttpLabels, Counter>,
    http_duration: Histograms<RouteLabel>,
    rejections: Family<CodeLabels, Counter>,
    llm: Family<ModelLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    spend: Family<SpendLabels, Counter>,
    overhead: Histograms<RouteLabel>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    guardrails: Family<GuardrailLabels, Counter>,
    subjects: Option<SubjectSeries>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            http: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            rejections: Family::default(),
            llm: Family::default(),
            tokens: Family::default(),
            spend: Family::default(),
            overhead: Family::new_with_constructor(overhead),
            upstream_errors: Family::default(),
            attempts: Family::default(),
            guardrails: Family::default(),
            subjects: None,
        }
    }
}

impl RequestMetrics {
    /// The series, with the per-subject ones when `subject_label` is set.
    pub fn new(subject_label: bool) -> RequestMetrics {
        RequestMetrics {
            subjects: subject_label.then(SubjectSeries::default),
            ..RequestMetrics::default()
        }
    }

    /// Register every series in `registry` (they share their storage with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests by matched route and status",
            self.http.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response headers, by matched route (a stream's body is not included)",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        registry.register(
            "rejections",
            "Requests Tollgate refused or failed itself, by route and error code (limits, budgets, auth, no key, …)",
            self.rejections.clone(),
        );
        registry.register(
            "llm_requests",
            "Model calls settled, by team, pool, policy model and status",
            self.llm.clone(),
        );
        registry.register(
            "tokens",
            "Tokens charged, by team, pool, model and kind (input, output, cached_input)",
            self.tokens.clone(),
        );
        registry.register(
            "spend_micro_usd",
            "Money charged in micro-dollars, by team, pool and model",
            self.spend.clone(),
        );
        registry.register_with_unit(
            "overhead",
            "Tollgate's own time before the provider's answer: request time to the upstream's response headers minus the upstream call",
            Unit::Seconds,
            self.overhead.clone(),
        );
        registry.register(
            "upstream_errors",
            "Provider answers that were not a success (or no answer: 502/504), by provider and status",
            self.upstream_errors.clone(),
        );
        registry.register(
            "deployment_attempts",
            "What routing did with each deployment a request considered, by policy model, deployment and outcome: served, client_error (the provider's verdict on the request, relayed), failed (failed over), throttled (429, failed over), timeout (not failed over: the provider may have done the work), skipped_open (circuit open), skipped_limit (its rpm/tpm/concurrency full)",
            self.attempts.clone(),
        );
        registry.register(
            "guardrail_decisions",
            "Guardrail decisions, by binding, rule (a secret pattern, an injection rule, a size cap, pii, a data class) and action (redact, block, log, flag, classify)",
            self.guardrails.clone(),
        );
        if let Some(sub) = &self.subjects {
            registry.register(
                "subject_requests",
                "Model calls settled, by workload subject, team and model (telemetry.metrics_subject_label)",
                sub.requests.clone(),
            );
            registry.register(
                "subject_tokens",
                "Tokens charged, by workload subject, team, model and kind (telemetry.metrics_subject_label)",
                sub.tokens.clone(),
            );
            registry.register(
                "subject_spend_micro_usd",
                "Money charged in micro-dollars, by workload subject, team and model (telemetry.metrics_subject_label)",
                sub.spend.clone(),
            );
        }
    }

    /// An HTTP request answered (`code`: Tollgate's error code when it refused it).
    pub fn http(&self, route: &str, status: u16, elapsed: Duration, code: Option<&str>) {
        self.http
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = code {
            self.rejections
                .get_or_create(&CodeLabels {
                    route: route.to_owned(),
                    code: code.to_owned(),
                })
                .inc();
        }
    }

    /// A model call settled.
    pub fn settled(&self, s: &Settled<'_>) {
        self.llm
            .get_or_create(&ModelLabels {
                team: s.team.to_owned(),
                pool: s.pool.to_owned(),
                model: s.model.to_owned(),
                status: s.status,
            })
            .inc();
        for (kind, n) in s.charged_tokens() {
            self.tokens
                .get_or_create(&TokenLabels {
                    team: s.team.to_owned(),
                    pool: s.pool.to_owned(),
                    model: s.model.to_owned(),
                    kind,
                })
                .inc_by(n);
        }
        if s.cost_micro_usd > 0 {
            self.spend
                .get_or_create(&SpendLabels {
                    team: s.team.to_owned(),
                    pool: s.pool.to_owned(),
                    model: s.model.to_owned(),
                })
                .inc_by(s.cost_micro_usd);
        }
        if let Some(sub) = &self.subjects {
            sub.settled(s);
        }
    }

    /// Tollgate's own time on a request that reached the provider.
    pub fn overhead(&self, route: &str, d: Duration) {
        self.overhead
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(d.as_secs_f64());
    }

    /// Routing considered `deployment` of `model` for a request, with this outcome.
    pub fn attempt(&self, model: &str, deployment: &str, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                model: model.to_owned(),
                deployment: deployment.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A guardrail of `binding` acted on `rule`.
    pub fn guardrail(&self, binding: &str, rule: &str, action: &'static str) {
        self.guardrails
            .get_or_create(&GuardrailLabels {
                binding: binding.to_owned(),
                rule: rule.to_owned(),
                action,
            })
            .inc();
    }

    /// A provider answered `status` (not a success).
    pub fn upstream_error(&self, provider: &str, status: u16) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                provider: provider.to_owned(),
                status,
            })
            .inc();
    }
}

impl SubjectSeries {
    fn settled(&self, s: &Settled<'_>) {
        let labels = SubjectLabels {
            subject: s.subject.to_owned(),
            team: s.team.to_owned(),
            model: s.model.to_owned(),
        };
        self.requests.get_or_create(&labels).inc();
        for (kind, n) in s.charged_tokens() {
            self.tokens
                .get_or_create(&SubjectTokenLabels {
                    subject: labels.subject.clone(),
                    team: labels.team.clone(),
                    model: labels.model.clone(),
                    kind,
                })
                .inc_by(n);
        }
        if s.cost_micro_usd > 0 {
            self.spend.get_or_create(&labels).inc_by(s.cost_micro_usd);
        }
    }
}
