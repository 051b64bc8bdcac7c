//! Settling a request exactly once: release the quota reservation with the actual cost and
//! queue the spend record. A [`Settlement`] dropped before it was settled (the client went
//! away mid-stream, the handler was cancelled) charges the reserved worst case: when usage is
//! unknown, Tollgate never assumes the provider did not bill.

use crate::pricing::{self, Prices, Tokens, Usd};
use crate::providers::Usage;
use crate::quota::{Admission, DeploymentSlot};
use crate::spend::Writer;
use crate::store::SpendRecord;
use crate::telemetry::requests::{RequestMetrics, Settled};
use std::time::Instant;

/// What to charge.
#[derive(Debug, Clone, Copy)]
pub enum Charge {
    /// The provider reported this usage.
    Usage(Usage),
    /// The provider did not process the request (refused before any work).
    Nothing,
    /// Unknown (interrupted): charge the reservation.
    WorstCase,
    /// A stream cut off at its output limit: the output it produced, and the input the
    /// provider reported (else the estimate reserved for it).
    Cut {
        /// Usage reported before the cut, if any.
        reported: Option<Usage>,
        /// Output tokens counted up to the cut.
        output: u64,
    },
}

/// Where an attempt goes, as the spend row records it.
pub struct Served<'a> {
    /// Deployment name.
    pub deployment: &'a str,
    /// Provider id.
    pub provider: &'a str,
    /// Model sent upstream.
    pub upstream_model: &'a str,
    /// Whose key pays.
    pub billing_owner: &'a str,
    /// The key (`None`: the mock provider).
    pub key: Option<&'a crate::secrets::ProviderKey>,
    /// The deployment's prices.
    pub prices: Prices,
}

/// A request on its way to being settled.
pub struct Settlement {
    admission: Option<Admission>,
    /// The share of the serving deployment's own limits, settled with the request.
    slot: Option<DeploymentSlot>,
    record: Option<SpendRecord>,
    prices: Prices,
    reserved_input: u64,
    writer: Writer<SpendRecord>,
    started: Instant,
    metrics: RequestMetrics,
}

impl Settlement {
    /// Prepare; `record` holds every field but tokens, cost, status and latency.
    pub fn new(
        admission: Admission,
        record: SpendRecord,
        prices: Prices,
        reserved_input: u64,
        writer: Writer<SpendRecord>,
        started: Instant,
        metrics: RequestMetrics,
    ) -> Self {
        Settlement {
            admission: Some(admission),
            slot: None,
            record: Some(record),
            prices,
            reserved_input,
            writer,
            started,
            metrics,
        }
    }

    /// The next attempt goes to this deployment: the row names it, its key and upstream
    /// model, and it is charged at its prices (never above the reservation, which priced the
    /// dearest deployment the request could reach).
    pub fn attempting(&mut self, at: Served<'_>, slot: Option<DeploymentSlot>) {
        self.slot = slot;
        self.prices = at.prices;
        if let Some(rec) = self.record.as_mut() {
            rec.deployment = Some(at.deployment.to_owned());
            rec.provider = at.provider.to_owned();
            rec.upstream_model = at.upstream_model.to_owned();
            rec.billing_owner = at.billing_owner.to_owned();
            rec.provider_key_id = at.key.map_or_else(|| "mock".to_owned(), |k| k.id.clone());
            rec.provider_key_version = at.key.map(|k| k.version.clone());
        }
    }

    /// The attempt failed without work done at the provider: its deployment slot is released
    /// having used no tokens (its request still counts against the deployment's rpm: the
    /// provider counted it too).
    pub fn attempt_failed(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.settle(0);
        }
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Record an attempt the provider failed before the request was served by another key
    /// version (a rotation candidate's failure, retried on the current version): a zero-cost
    /// row of its own (request id suffixed `.canary`), so the canary judges it, and the
    /// request's own row names the version that finally served.
    pub fn failed_attempt(&mut self, status: u16, version: &str, next_version: &str) {
        let Some(rec) = self.record.as_mut() else {
            return;
        };
        let mut attempt = rec.clone();
        attempt.request_id = format!("{}.canary", rec.request_id);
        attempt.status = i32::from(status);
        attempt.provider_key_version = Some(version.to_owned());
        attempt.latency_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        rec.provider_key_version = Some(next_version.to_owned());
        self.writer.record(attempt);
    }

    /// Settle now (later calls do nothing).
    pub fn finish(&mut self, status: u16, charge: Charge) {
        let (Some(admission), Some(mut rec)) = (self.admission.take(), self.record.take()) else {
            return;
        };
        let (reserved_tokens, reserved_cost) = admission.reserved();
        let (tokens, cost) = match charge {
            Charge::Usage(u) => {
                let t = Tokens {
                    input: u.input_tokens,
                    output: u.output_tokens,
                    cached_input: u.cached_input_tokens,
                };
                (t, pricing::cost(&self.prices, &t))
            }
            Charge::Nothing => (Tokens::default(), Usd::ZERO),
            Charge::Cut { reported, output } => {
                // Never past the reservation: a cut stream is charged at most what it held.
                let reserved_output = reserved_tokens.saturating_sub(self.reserved_input);
                let t = Tokens {
                    input: reported.map_or(self.reserved_input, |u| u.input_tokens),
                    output: output
                        .max(reported.map_or(0, |u| u.output_tokens))
                        .min(reserved_output),
                    cached_input: reported.map_or(0, |u| u.cached_input_tokens),
                };
                (t, pricing::cost(&self.prices, &t))
            }
            Charge::WorstCase => (
                Tokens {
                    input: self.reserved_input,
                    output: reserved_tokens.saturating_sub(self.reserved_input),
                    cached_input: 0,
                },
                reserved_cost,
            ),
        };
        admission.settle(tokens.input + tokens.output, cost);
        if let Some(slot) = self.slot.take() {
            slot.settle(tokens.input + tokens.output);
        }
        rec.input_tokens = i64::try_from(tokens.input).unwrap_or(i64::MAX);
        rec.output_tokens = i64::try_from(tokens.output).unwrap_or(i64::MAX);
        rec.cached_input_tokens = i64::try_from(tokens.cached_input).unwrap_or(i64::MAX);
        rec.cost_micro_usd = cost.micros();
        rec.status = i32::from(status);
        rec.latency_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        tracing::info!(
            request_id = %rec.request_id,
            subject = %rec.subject,
            model = %rec.model,
            deployment = rec.deployment.as_deref().unwrap_or(""),
            provider_key = %rec.provider_key_id,
            status,
            input_tokens = rec.input_tokens,
            output_tokens = rec.output_tokens,
            cost_micro_usd = rec.cost_micro_usd,
            latency_ms = rec.latency_ms,
            prompt_sha256 = rec.prompt_sha256.as_deref().unwrap_or(""),
            decision = if (200..300).contains(&status) { "served" } else { "failed" },
            "request settled"
        );
        self.metrics.settled(&Settled {
            subject: &rec.subject,
            team: &rec.team,
            pool: &rec.pool,
            model: &rec.model,
            status,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cached_input_tokens: tokens.cached_input,
            cost_micro_usd: u64::try_from(rec.cost_micro_usd).unwrap_or(0),
        });
        self.writer.record(rec);
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        // 499: the client closed the request (nginx's convention).
        self.finish(499, Charge::WorstCase);
    }
}
