//! Serving a request from a model's deployments: try them in the order routing gives (tiers,
//! weights), skip the ones whose circuit is open, whose provider asked for a pause or whose
//! own limits are full, fail over while it is safe, retry rounds with jittered backoff within
//! the model's deadline, and answer with the last failure when nothing served.
//!
//! Safe means: nothing has reached the client (an attempt that produced a response head for
//! the client never comes back here) and the provider did no work it bills (no connection, a
//! 5xx, a 429, a rejected key). A timeout or a connection broken after the request went out is
//! final: the provider may be doing the work, so it is charged and not sent a second time.

use super::forward::{self, Attempt, Outbound, Target};
use super::settle::{Charge, Served, Settlement};
use crate::app::{AppState, ProviderRoute};
use crate::error::{ApiError, Code};
use crate::policy::{Deployment, Model};
use crate::quota::{Denied, DeploymentSlot};
use crate::routing::{self, Admit};
use crate::secrets::ProviderKey;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a request waits before a retry round.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// A deployment a request may go to: it speaks the API called and has a usable key.
pub struct Candidate<'s> {
    /// The deployment.
    pub deployment: &'s Deployment,
    /// Its provider.
    pub route: &'s ProviderRoute,
    /// The key it is called with (`None` for the mock provider).
    pub key: Option<Arc<ProviderKey>>,
    /// Whose key that is.
    pub billing_owner: String,
}

impl Candidate<'_> {
    fn served(&self) -> Served<'_> {
        let p = &self.deployment.price;
        Served {
            deployment: &self.deployment.name,
            provider: &self.route.id,
            upstream_model: &self.deployment.upstream_model,
            billing_owner: &self.billing_owner,
            key: self.key.as_deref(),
            prices: crate::pricing::Prices {
                input: p.input_per_mtok_micro_usd,
                output: p.output_per_mtok_micro_usd,
                cached_input: p.cached_input_per_mtok_micro_usd,
            },
        }
    }
}

/// Why a deployment was passed over without an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Its circuit is open (or its half-open probe is out).
    Open,
    /// Its provider asked for a pause, or its own rpm/tpm/concurrency is full.
    Busy,
}

/// Serve `out` from `candidates` (of `model`) under `settle`. `worst_tokens` is what the
/// request may use of a deployment's token window. The deadline runs from here: time spent
/// before (a pool's queue, bounded by its own timeout) is not taken from the provider's.
pub async fn serve(
    state: &AppState,
    model: &Model,
    out: &Outbound<'_>,
    candidates: &[Candidate<'_>],
    worst_tokens: u64,
    mut settle: Settlement,
) -> Result<Response, ApiError> {
    let deadline = Instant::now()
        + model
            .routing
            .deadline
            .unwrap_or(state.upstream.response_timeout);
    let deployments: Vec<&Deployment> = candidates.iter().map(|c| c.deployment).collect();
    // The last failure, and the provider's own 429 to relay if nothing else serves.
    let mut last: Option<(ApiError, Option<Response>)> = None;
    let mut skipped: Option<Skip> = None;
    // The soonest a skipped or throttled deployment may serve again.
    let mut soonest: Option<Duration> = None;
    let mut attempts = 0u32;
    // Deployments this request must not try again (they refused our key, or redirected).
    let mut done_with = vec![false; candidates.len()];
    'rounds: for round in 0..=model.routing.retries {
        if done_with.iter().all(|d| *d) {
            break;
        }
        if round > 0 {
            let backoff = routing::backoff(round, &mut rand::rng());
            let wait = soonest.map_or(backoff, |s| s.max(backoff));
            // A long pause is the client's to wait out (its SDK retries on Retry-After):
            // holding the request that long only ties up its connection.
            if wait > MAX_RETRY_WAIT || Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        soonest = None;
        let order = routing::order(&deployments, &mut rand::rng());
        for i in order {
            if done_with[i] {
                continue;
            }
            let c = &candidates[i];
            let d = c.deployment;
            let now = Instant::now();
            if now >= deadline {
                break 'rounds;
            }
            let name = format!("{}/{}", model.name, d.name);
            let probe = match state.breakers.admit(&name, &model.routing, now) {
                Admit::Go(p) => p,
                Admit::Open(wait) => {
                    state.requests.attempt(&model.name, &d.name, "skipped_open");
                    skipped = skipped.or(Some(Skip::Open));
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    continue;
                }
                Admit::Throttled(wait) => {
                    state
                        .requests
                        .attempt(&model.name, &d.name, "skipped_limit");
                    skipped = Some(Skip::Busy);
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    continue;
                }
            };
            let slot = match deployment_slot(state, &name, d, worst_tokens).await {
                Ok(s) => s,
                Err(wait) => {
                    state
                        .requests
                        .attempt(&model.name, &d.name, "skipped_limit");
                    skipped = Some(Skip::Busy);
                    soonest = wait.map(|w| soonest.map_or(w, |s| s.min(w))).or(soonest);
                    continue;
                }
            };
            settle.attempting(c.served(), slot);
            attempts += 1;
            let target = Target {
                route: c.route,
                key: c.key.clone(),
                upstream_model: &d.upstream_model,
                body: out.request.upstream_body(&d.upstream_model),
                timeout: state
                    .upstream
                    .response_timeout
                    .min(deadline.saturating_duration_since(now)),
                first: attempts == 1,
            };
            match forward::attempt(state, out, target, settle).await {
                Attempt::Done(result, verdict, outcome) => {
                    probe.verdict(verdict);
                    state.requests.attempt(&model.name, &d.name, outcome);
                    return result.map(|mut resp| {
                        served_by(&mut resp, &d.name, attempts);
                        resp
                    });
                }
                Attempt::Failover(f) => {
                    let forward::Failover {
                        settle: back,
                        error,
                        verdict,
                        relay,
                        outcome,
                        again,
                    } = *f;
                    done_with[i] = !again;
                    probe.verdict(verdict);
                    state.requests.attempt(&model.name, &d.name, outcome);
                    settle = back;
                    settle.attempt_failed();
                    if let routing::Verdict::Throttled(wait) = verdict {
                        soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    }
                    tracing::warn!(
                        model = %model.name,
                        deployment = %d.name,
                        error = %error.message,
                        "deployment failed before answering; trying the next one"
                    );
                    last = Some((error, relay));
                }
            }
        }
    }
    // Nothing served; no provider did work for this request.
    let retry_after = soonest.map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
    let (error, relay) = match last {
        Some(l) => l,
        None => (nothing_tried(model, skipped), None),
    };
    settle.finish(error.code.status().as_u16(), Charge::Nothing);
    if let Some(mut resp) = relay {
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return Ok(resp);
    }
    Err(match retry_after {
        Some(secs) if error.retry_after.is_none() => error.retry_after(secs),
        _ => error,
    })
}

/// The error when every deployment was passed over.
fn nothing_tried(model: &Model, skipped: Option<Skip>) -> ApiError {
    match skipped {
        Some(Skip::Busy) => ApiError::new(
            Code::RateLimitExceeded,
            format!(
                "every deployment of model {} is at its provider's rate limit",
                model.name
            ),
        ),
        _ => ApiError::new(
            Code::UpstreamError,
            format!(
                "every deployment of model {} is failing (circuits open)",
                model.name
            ),
        ),
    }
}

/// Take a slot of the deployment's own limits. `Err(Some(wait))`: full for that long;
/// `Err(None)`: this request alone is over its token limit.
async fn deployment_slot(
    state: &AppState,
    name: &str,
    d: &Deployment,
    tokens: u64,
) -> Result<Option<DeploymentSlot>, Option<Duration>> {
    let limits = crate::quota::Limits {
        rpm: d.limits.rpm,
        tpm: d.limits.tpm,
        concurrency: d.limits.concurrency,
    };
    if limits == crate::quota::Limits::default() {
        return Ok(None);
    }
    // A short window is leased from the store (the uncommon path: the upkeep leases ahead).
    for _ in 0..4 {
        match state
            .quota
            .take_deployment(name, &limits, tokens, crate::clock::ledger_ms())
        {
            Ok(slot) => return Ok(Some(slot)),
            Err(Denied::NeedsRate(need)) => {
                state.rates.refill(&need).await;
            }
            Err(Denied::Rate { retry_after, .. }) => {
                return Err(Some(Duration::from_secs(retry_after.max(1))));
            }
            Err(Denied::TooLarge { .. }) => return Err(None),
            Err(_) => return Err(Some(Duration::from_secs(1))),
        }
    }
    Err(Some(Duration::from_secs(1)))
}

/// Say which deployment served and after how many attempts.
fn served_by(resp: &mut Response, deployment: &str, attempts: u32) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(deployment) {
        h.insert(HeaderName::from_static("x-tollgate-deployment"), v);
    }
    h.insert(
        HeaderName::from_static("x-tollgate-attempts"),
        HeaderValue::from(attempts),
    );
}
