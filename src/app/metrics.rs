//! The metrics this application exposes that are read from its state at scrape time: the
//! secret store's and the revocation list's freshness, alerts and pauses, rotations, the
//! writers' queues. Request-path series (requests, latency, tokens, spend) are counted as
//! requests end, in `telemetry::requests`.

use crate::admin::AdminAuth;
use crate::alerts::Alerts;
use crate::anomaly::Guard;
use crate::revocation::RevocationSet;
use crate::secrets::KeyCache;
use crate::telemetry::metrics::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The registry of one application.
pub fn registry(
    keys: Arc<KeyCache>,
    revocations: Arc<RevocationSet>,
    alerts: Arc<Alerts>,
    guard: Arc<Guard>,
    admin: Arc<AdminAuth>,
) -> Metrics {
    let mut m = Metrics::new();
    m.registry_mut().register_with_unit(
        "revocation_propagation",
        "Time from a revocation being recorded (on any replica) to this replica enforcing it",
        Unit::Seconds,
        revocations.lag_histogram(),
    );
    m.register_collector(AdminCollector(admin));
    m.register_collector(ClockCollector);
    m.register_collector(SecretStoreCollector(keys));
    m.register_collector(RevocationCollector(Arc::clone(&revocations)));
    m.register_collector(GuardCollector {
        revocations,
        alerts,
        guard,
    });
    m
}

/// Freshness of the provider keys and what the last listing found.
struct SecretStoreCollector(Arc<KeyCache>);

impl std::fmt::Debug for SecretStoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStoreCollector")
    }
}

impl Collector for SecretStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache = &self.0;
        let health = cache.health();
        let backend = [("backend", health.store.as_str())];

        gauge(
            &mut encoder,
            "secret_store_up",
            "1 when the last listing of the secret store succeeded, 0 while serving from cache",
            None,
            &backend,
            i64::from(!health.degraded),
        )?;
        gauge(
            &mut encoder,
            "secret_store_age",
            "Time since the last successful listing of the secret store",
            Some(Unit::Seconds),
            &backend,
            health.age.as_secs_f64(),
        )?;
        gauge(
            &mut encoder,
            "secret_store_max_staleness",
            "Age past which cached provider keys stop serving (secrets.max_staleness)",
            Some(Unit::Seconds),
            &backend,
            cache.max_staleness().as_secs_f64(),
        )?;
        let failures = ConstCounter::new(cache.refresh_failures());
        let mut family = encoder.encode_descriptor(
            "secret_store_refresh_failures",
            "Listings of the secret store that failed since start",
            None,
            failures.metric_type(),
        )?;
        failures.encode(family.encode_family(&backend)?)?;

        // Every (provider, state) the listing holds, so a quarantine or an invalid entry shows
        // as a series of its own. Bounded by providers x three states.
        let (keys, invalid) = cache.snapshot();
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for k in keys.iter() {
            let state = if k.is_quarantined() {
                "quarantined"
            } else {
                "active"
            };
            *counts.entry((k.provider.as_str(), state)).or_default() += 1;
        }
        for i in invalid.iter() {
            *counts.entry((i.provider.as_str(), "invalid")).or_default() += 1;
        }
        let mut family = encoder.encode_descriptor(
            "provider_keys",
            "Provider keys of the last good listing, by provider and state",
            None,
            MetricType::Gauge,
        )?;
        for ((provider, state), n) in counts {
            let labels = [
                ("backend", health.store.as_str()),
                ("provider", provider),
                ("state", state),
            ];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// How current this replica's copy of the revocation list is.
struct RevocationCollector(Arc<RevocationSet>);

impl std::fmt::Debug for RevocationCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevocationCollector")
    }
}

impl Collector for RevocationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let age = ConstGauge::new(self.0.last_sync_age().as_secs_f64());
        let family = encoder.encode_descriptor(
            "revocations_sync_age",
            "Time since this replica last read the revocation list from the store",
            Some(&Unit::Seconds),
            age.metric_type(),
        )?;
        age.encode(family)?;
        let mut family = encoder.encode_descriptor(
            "revocations_active",
            "Revocations in force on this replica, by kind (jti, subject, team, pool, issuer, pod_uid, provider_key)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in self.0.sizes() {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&[("kind", kind)])?)?;
        }
        let notified = ConstCounter::new(self.0.notifications());
        let family = encoder.encode_descriptor(
            "revocation_notifications",
            "Change notifications (PostgreSQL NOTIFY) that made this replica re-read the revocation list",
            None,
            notified.metric_type(),
        )?;
        notified.encode(family)
    }
}

/// How far the store's clock is from this host's: the correction this replica dates by.
#[derive(Debug)]
struct ClockCollector;

impl Collector for ClockCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "clock_store_offset",
            "How far the store's clock is ahead of this host's (negative: behind); the replica dates tokens, revocations and limits by the store's",
            Some(Unit::Seconds),
            &[],
            crate::clock::store_offset_ms() as f64 / 1000.0,
        )
    }
}

/// Each deployment's circuit on this replica (deployments no request has tried yet have no
/// series).
pub(super) struct CircuitCollector(pub(super) Arc<crate::routing::Breakers>);

impl std::fmt::Debug for CircuitCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CircuitCollector")
    }
}

impl Collector for CircuitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "deployment_circuit_state",
            "Each deployment's circuit breaker on this replica: 0 closed (serving), 1 open (skipped until its cool-down ends), 2 half-open (the next request probes it)",
            None,
            MetricType::Gauge,
        )?;
        for (key, state) in self.0.states(std::time::Instant::now()) {
            // Keys are `model/deployment`; model names may hold '/', deployment names may not.
            let (model, deployment) = key.rsplit_once('/').unwrap_or((key.as_str(), ""));
            let g = ConstGauge::new(i64::from(state.code()));
            g.encode(family.encode_family(&[("model", model), ("deployment", deployment)])?)?;
        }
        Ok(())
    }
}

/// Uses of the break-glass token: any non-zero rate outside a drill deserves a page.
struct AdminCollector(Arc<AdminAuth>);

impl std::fmt::Debug for AdminCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCollector")
    }
}

impl Collector for AdminCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let uses = ConstCounter::new(self.0.break_glass_uses());
        let family = encoder.encode_descriptor(
            "admin_break_glass_uses",
            "Admin API requests authenticated with the break-glass token",
            None,
            uses.metric_type(),
        )?;
        uses.encode(family)
    }
}

/// Budget alerts sent and the anomaly guard's pauses.
struct GuardCollector {
    revocations: Arc<RevocationSet>,
    alerts: Arc<Alerts>,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for GuardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardCollector")
    }
}

impl Collector for GuardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sent = ConstCounter::new(self.alerts.sent());
        let family = encoder.encode_descriptor(
            "budget_alerts_sent",
            "Budget threshold alerts this replica sent to the webhooks",
            None,
            sent.metric_type(),
        )?;
        sent.encode(family)?;
        let mut family = encoder.encode_descriptor(
            "anomaly_pauses",
            "Subjects and provider keys paused by the anomaly guard now, fleet-wide",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in self.revocations.pause_counts() {
            let g = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            g.encode(family.encode_family(&[("kind", kind.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "anomaly_pauses_recorded",
            "Pauses this replica's anomaly guard recorded",
            None,
            MetricType::Counter,
        )?;
        for kind in crate::store::PauseKind::ALL {
            let c = ConstCounter::new(self.guard.pauses_recorded(kind));
            c.encode(family.encode_family(&[("kind", kind.as_str())])?)?;
        }
        self.encode_budgets(&mut encoder)
    }
}

/// One budget gauge's value, from a pool's spend.
type BudgetValue = fn(&crate::alerts::PoolSpend) -> f64;

impl GuardCollector {
    /// Each budgeted pool's fleet-wide spend in its window, as the alert checker last read it
    /// from the store (every `alerts.check_interval`): the hot path never counts it.
    fn encode_budgets(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let budgets = self.alerts.budgets();
        let series: [(&str, &str, BudgetValue); 3] = [
            (
                "budget_spent_micro_usd",
                "Spent in the pool's current budget window, fleet-wide, as of the last alert check",
                |b| b.spent as f64,
            ),
            (
                "budget_cap_micro_usd",
                "The pool's budget cap in force for its current window (approved increases included)",
                |b| b.cap as f64,
            ),
            (
                "budget_utilization_ratio",
                "Spent over cap in the pool's current budget window (1 = at the cap)",
                |b| {
                    if b.cap > 0 {
                        b.spent as f64 / b.cap as f64
                    } else {
                        1.0
                    }
                },
            ),
        ];
        for (name, help, value) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, b) in &budgets {
                let labels = [("pool", pool.as_str()), ("window", b.window.as_str())];
                ConstGauge::new(value(b)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    labels: &[(&str, &str)],
    value: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(value);
    let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
    g.encode(family.encode_family(&labels)?)
}

/// Rotations: which keys are being rotated and in what state, and how this replica's ended.
pub(super) struct RotationCollector(pub Arc<crate::rotation::Rotator>);

impl std::fmt::Debug for RotationCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RotationCollector")
    }
}

impl Collector for RotationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "rotation_state",
            "1 per provider key being rotated, labelled with its rotation's state (keys not being rotated are absent)",
            None,
            MetricType::Gauge,
        )?;
        for (key, state) in self.0.open_states() {
            let labels = [("key", key.as_str()), ("state", state.as_str())];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        let (retired, rolled_back) = self.0.finished();
        let mut family = encoder.encode_descriptor(
            "rotations_finished",
            "Rotations this replica led to their end, by outcome (a rolled_back one has alerted)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("retired", retired), ("rolled_back", rolled_back)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        Ok(())
    }
}

/// A gauge of the writers: name, help, and how to read it off a status.
type Series = (
    &'static str,
    &'static str,
    fn(&crate::spend::WriterStatus) -> u64,
);

/// A writer's status, read at scrape time.
pub(super) type StatusFn = Arc<dyn Fn() -> crate::spend::WriterStatus + Send + Sync>;

/// The background writers: rows wait in their queues, spools and memory while the store is
/// slow or down.
pub(super) struct WriterCollector(pub Vec<(&'static str, StatusFn)>);

impl std::fmt::Debug for WriterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterCollector")
    }
}

impl Collector for WriterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all: Vec<_> = self.0.iter().map(|(n, f)| (*n, f())).collect();
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        let series: [Series; 4] = [
            (
                "writer_queue_depth",
                "Rows waiting in a writer's in-memory queue, by writer",
                |s| s.queued as u64,
            ),
            (
                "spool_bytes",
                "Bytes in a writer's local spool (rows the store has not taken yet), by writer",
                |s| s.spool_bytes,
            ),
            (
                "spool_batches",
                "Batches in a writer's local spool, by writer",
                |s| s.spool_batches,
            ),
            (
                "writer_held_rows",
                "Rows held in memory because neither the store nor the spool took them, by writer",
                |s| s.held,
            ),
        ];
        for (name, help, get) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (w, st) in &all {
                gauge(get(st)).encode(family.encode_family(&[("writer", *w)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "writer_accepting",
            "1 while a writer can make new rows durable; 0 while it holds rows in memory with spool.on_full = refuse (new calls are refused)",
            None,
            MetricType::Gauge,
        )?;
        for (w, st) in &all {
            gauge(u64::from(st.accepting)).encode(family.encode_family(&[("writer", *w)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "writer_dropped",
            "Rows dropped because a writer had nowhere to keep them, by writer",
            None,
            MetricType::Counter,
        )?;
        for (w, st) in &all {
            ConstCounter::new(st.dropped).encode(family.encode_family(&[("writer", *w)])?)?;
        }
        Ok(())
    }
}
