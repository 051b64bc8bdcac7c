//! Budget and quota decisions that are not a plain allow, on the audit log: a request
//! throttled (rate or concurrency), rejected at a budget cap, routed to a cheaper model
//! (`fallback_at`, `at_cap: degrade`) or admitted after waiting in a pool's queue. A plain
//! allow is on the spend record already.

use crate::app::AppState;
use crate::error::{ApiError, Code};
use serde_json::json;
use std::time::Duration;

/// A refusal by the limits or the budget (other refusals are not budget decisions).
pub(super) fn refused(state: &AppState, subject: &str, pool: &str, model: &str, e: &ApiError) {
    let action = match e.code {
        Code::RateLimitExceeded => "quota.throttle",
        Code::BudgetExceeded => "budget.reject",
        _ => return,
    };
    state.audit.record(
        subject,
        action,
        pool,
        json!({"model": model, "reason": e.message, "retry_after": e.retry_after}),
    );
}

/// A request served by another model than it asked for.
pub(super) fn rerouted(
    state: &AppState,
    subject: &str,
    pool: &str,
    action: &str,
    from: &str,
    to: &str,
) {
    state.audit.record(
        subject,
        action,
        pool,
        json!({"model": from, "served_by": to}),
    );
}

/// A request admitted after waiting in the pool's queue.
pub(super) fn queued(state: &AppState, subject: &str, pool: &str, waited: Duration) {
    state.audit.record(
        subject,
        "budget.queue",
        pool,
        json!({"waited_ms": u64::try_from(waited.as_millis()).unwrap_or(u64::MAX)}),
    );
}
