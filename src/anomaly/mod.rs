//! The anomaly guard: a workload stuck in a prompt loop or a leaked provider key spends far
//! faster than it ever has. Every `anomaly.check_interval` each replica reads the fleet's
//! recorded spend (the store's `spend` rows, so the judgement is fleet-wide) and compares every
//! subject's and every provider key's spend and tokens in the last `anomaly.window` with its own
//! busiest window in the `anomaly.baseline` before it — the peak rather than the average, so a
//! job that runs hard once a day is judged against yesterday's run, not against the quiet hours
//! around it. Past `anomaly.multiple` times that peak (and at least `min_spend_usd` /
//! `min_tokens`), or past an absolute
//! `*_max_spend_usd`, it is paused: recorded once for the fleet (the store decides), alerted to
//! the webhooks, enforced by every replica from its revocation set, until an admin lifts it.
//!
//! Nothing here is on the request path: the hot path only looks the pause up in memory.

use crate::alerts::Alerts;
use crate::config::{AnomalyConfig, WebhookFormat};
use crate::revocation::RevocationSet;
use crate::store::{PauseKind, PauseRecord, Store, StoreError, Velocity};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The guard of one replica.
pub struct Guard {
    cfg: AnomalyConfig,
    store: Store,
    revocations: Arc<RevocationSet>,
    alerts: Arc<Alerts>,
    audit: Arc<crate::audit::Audit>,
    /// Pauses this replica recorded, by [`PauseKind`] (metrics).
    paused: [AtomicU64; 2],
}

impl Guard {
    /// A guard judging by `cfg`.
    pub fn new(
        cfg: AnomalyConfig,
        store: Store,
        revocations: Arc<RevocationSet>,
        alerts: Arc<Alerts>,
        audit: Arc<crate::audit::Audit>,
    ) -> Arc<Guard> {
        Arc::new(Guard {
            cfg,
            store,
            revocations,
            alerts,
            audit,
            paused: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// Pauses this replica recorded since start.
    pub fn pauses_recorded(&self, kind: PauseKind) -> u64 {
        self.paused[kind as usize].load(Ordering::Relaxed)
    }

    /// Judge the recent spend once; returns the pauses this replica recorded.
    pub async fn check(&self) -> Result<Vec<PauseRecord>, StoreError> {
        if !self.cfg.enabled {
            return Ok(Vec::new());
        }
        let now = crate::clock::ledger_ms();
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let recent_from = now - ms(self.cfg.window);
        let baseline_from = recent_from.saturating_sub(ms(self.cfg.baseline));
        // Active pauses need no second look; a lifted one is left alone for `lift_grace`, so
        // the spend an admin just accepted does not pause it again at once.
        let known: HashSet<(PauseKind, String)> = self
            .store
            .pauses(Some(now.saturating_sub(ms(self.cfg.lift_grace))))
            .await?
            .into_iter()
            .map(|p| (p.kind, p.value))
            .collect();
        let micros = |usd: f64| (usd * 1e6) as i64;
        let mut recorded = Vec::new();
        for kind in PauseKind::ALL {
            let floor = limit_of(&self.cfg, kind)
                .map_or(self.cfg.min_spend_usd, |m| m.min(self.cfg.min_spend_usd));
            let rows = self
                .store
                .spend_velocity(
                    kind,
                    baseline_from,
                    recent_from,
                    ms(self.cfg.window),
                    micros(floor),
                    i64::try_from(self.cfg.min_tokens).unwrap_or(i64::MAX),
                )
                .await?;
            for v in rows {
                if known.contains(&(kind, v.id.clone())) {
                    continue;
                }
                let Some(reason) = judge(&self.cfg, kind, &v) else {
                    continue;
                };
                if let Some(p) = self.store.pause(kind, &v.id, &reason, now).await? {
                    self.paused[kind as usize].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(kind = kind.as_str(), id = %p.value, reason = %p.reason, "anomaly guard: paused");
                    self.audit.record(
                        crate::audit::SYSTEM,
                        "pause.created",
                        &p.id.to_string(),
                        serde_json::json!({"kind": kind.as_str(), "id": p.value, "reason": p.reason}),
                    );
                    let what = format!("anomaly pause of {} {}", kind.as_str(), p.value);
                    self.alerts.send(&what, |f| body(&p, f)).await;
                    recorded.push(p);
                }
            }
        }
        if !recorded.is_empty() {
            // Enforced here at once; the other replicas see it at their next re-sync.
            self.revocations.sync().await?;
        }
        Ok(recorded)
    }

    /// Run [`Guard::check`] every `anomaly.check_interval` until cancelled.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        let every = self.cfg.check_interval;
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                if let Err(e) = this.check().await {
                    tracing::warn!(error = %e, "anomaly guard: spend not readable; judged again at the next check");
                }
            }
        })
    }
}

fn limit_of(cfg: &AnomalyConfig, kind: PauseKind) -> Option<f64> {
    match kind {
        PauseKind::Subject => cfg.subject_max_spend_usd,
        PauseKind::ProviderKey => cfg.key_max_spend_usd,
    }
}

/// Dollars as people read them; amounts under a cent keep their micro-dollars.
fn money(usd: f64) -> String {
    if usd >= 0.01 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.6}")
    }
}

/// Why `v` should be paused, if it should. The velocity rule needs a baseline: a subject or key
/// with no spend before the window (a new workload, a new key) is held only to the absolute
/// limit, so a fresh deployment is not paused for having no history.
pub fn judge(cfg: &AnomalyConfig, kind: PauseKind, v: &Velocity) -> Option<String> {
    let usd = |m: i64| m as f64 / 1e6;
    let window = humantime::format_duration(cfg.window);
    let recent = usd(v.recent_cost);
    if let Some(max) = limit_of(cfg, kind)
        && recent > max
    {
        return Some(format!(
            "spent {} in the last {window}, over the limit of {} per {window}",
            money(recent),
            money(max)
        ));
    }
    let baseline = humantime::format_duration(cfg.baseline);
    if v.peak_cost > 0
        && recent >= cfg.min_spend_usd
        && v.recent_cost as f64 > cfg.multiple * v.peak_cost as f64
    {
        return Some(format!(
            "spent {} in the last {window}, {:.0}x its busiest {window} of the {baseline} before ({})",
            money(recent),
            v.recent_cost as f64 / v.peak_cost as f64,
            money(usd(v.peak_cost))
        ));
    }
    if v.peak_tokens > 0
        && u64::try_from(v.recent_tokens).unwrap_or(0) >= cfg.min_tokens
        && v.recent_tokens as f64 > cfg.multiple * v.peak_tokens as f64
    {
        return Some(format!(
            "used {} tokens in the last {window}, {:.0}x its busiest {window} of the {baseline} before ({} tokens)",
            v.recent_tokens,
            v.recent_tokens as f64 / v.peak_tokens as f64,
            v.peak_tokens
        ));
    }
    None
}

/// The webhook body of a pause.
pub fn body(p: &PauseRecord, format: WebhookFormat) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "type": "anomaly_pause",
            "kind": p.kind.as_str(),
            "id": p.value,
            "reason": p.reason,
            "paused_at_ms": p.created_at,
        }),
        WebhookFormat::Slack => json!({
            "text": format!(
                ":rotating_light: Tollgate paused {} *{}*: {}. Lift it with `tollgate admin unpause --{} {}` once it is understood.",
                p.kind.as_str().replace('_', " "),
                p.value,
                p.reason,
                match p.kind { PauseKind::Subject => "subject", PauseKind::ProviderKey => "key" },
                p.value
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(recent_cost: i64, recent_tokens: i64, peak_cost: i64, peak_tokens: i64) -> Velocity {
        Velocity {
            id: "x".into(),
            recent_cost,
            recent_tokens,
            peak_cost,
            peak_tokens,
        }
    }

    #[test]
    fn velocity_pauses_past_the_multiple_of_its_own_busiest_window_only() {
        let cfg = AnomalyConfig::default(); // 5m window, 24h baseline, 10x, $5
        let subject = |v: Velocity| judge(&cfg, PauseKind::Subject, &v);
        let peak = 1_000_000; // its busiest 5 minutes of the day before: $1
        assert_eq!(subject(v(9_000_000, 0, peak, 0)), None);
        let r = subject(v(11_000_000, 0, peak, 0)).unwrap();
        assert!(
            r.contains("$11.00") && r.contains("11x") && r.contains("($1.00)"),
            "{r}"
        );
        // Below the floor nobody is paused, whatever the multiple.
        assert_eq!(subject(v(4_000_000, 0, 1, 0)), None);
        // No history: only the absolute limit applies.
        assert_eq!(subject(v(50_000_000, 0, 0, 0)), None);
        let cfg = AnomalyConfig {
            key_max_spend_usd: Some(20.0),
            ..AnomalyConfig::default()
        };
        assert_eq!(
            judge(&cfg, PauseKind::Subject, &v(50_000_000, 0, 0, 0)),
            None
        );
        let r = judge(&cfg, PauseKind::ProviderKey, &v(50_000_000, 0, 0, 0)).unwrap();
        assert!(r.contains("over the limit of $20.00"), "{r}");
    }

    #[test]
    fn token_velocity_counts_on_its_own() {
        let cfg = AnomalyConfig::default();
        let subject = |v: Velocity| judge(&cfg, PauseKind::Subject, &v);
        assert!(subject(v(0, 2_000_000, 0, 100_000)).is_some());
        assert!(subject(v(0, 2_000_000, 0, 300_000)).is_none());
        assert!(subject(v(0, 90_000, 0, 10)).is_none(), "under min_tokens");
    }

    #[test]
    fn small_amounts_keep_their_digits() {
        assert_eq!(money(0.000_016), "$0.000016");
        assert_eq!(money(41.2), "$41.20");
    }
}
