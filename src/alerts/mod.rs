//! Budget threshold alerts: when a pool's spend in its window passes one of its policy
//! thresholds (default 50/80/100 %), one alert goes to every configured webhook — once per
//! threshold per window for the whole fleet (the store decides which replica sends it). 100 %
//! also fires when the pool first refuses a request at its cap, since leases keep the last
//! few cents of a window from ever being spent. The levels it reads also drive a pool's
//! `fallback_at` routing on the hot path ([`Alerts::level`]).

use crate::config::{AlertsConfig, WebhookConfig, WebhookFormat};
use crate::policy::PolicyStore;
use crate::quota::first_day;
use crate::store::{DAY_MS, Store};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Pool.
    pub pool: String,
    /// Threshold crossed, percent.
    pub threshold: u8,
    /// Spent in the window, micro-dollars.
    pub spent: i64,
    /// The cap, micro-dollars.
    pub cap: i64,
    /// The window's first day (unix day).
    pub window_start: i64,
    /// The window, as written in policy.
    pub window: String,
}

impl Alert {
    /// The webhook body.
    pub fn body(&self, format: WebhookFormat) -> Value {
        let usd = |m: i64| m as f64 / 1e6;
        let start = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(self.window_start * DAY_MS).unwrap_or(0)),
        )
        .to_string();
        match format {
            WebhookFormat::Json => json!({
                "type": "budget_threshold",
                "pool": self.pool,
                "threshold_percent": self.threshold,
                "spent_usd": usd(self.spent),
                "cap_usd": usd(self.cap),
                "window": {"kind": self.window, "start": start},
            }),
            WebhookFormat::Slack => json!({
                "text": format!(
                    ":warning: Tollgate: pool *{}* reached {}% of its {} budget (${:.2} of ${:.2}, window from {}).",
                    self.pool, self.threshold, self.window, usd(self.spent), usd(self.cap), start
                )
            }),
        }
    }
}

/// A budgeted pool's spend in its current window, fleet-wide, as of the last check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpend {
    /// Spent in the window, micro-dollars.
    pub spent: i64,
    /// The cap in force (raised by an approved increase), micro-dollars.
    pub cap: i64,
    /// The window, as written in policy.
    pub window: String,
}

impl PoolSpend {
    /// Percent of the cap spent (100 for a zero cap).
    pub fn percent(&self) -> i64 {
        if self.cap > 0 {
            self.spent.saturating_mul(100) / self.cap
        } else {
            100
        }
    }
}

/// The alert checker.
pub struct Alerts {
    store: Store,
    policy: Arc<PolicyStore>,
    http: reqwest::Client,
    webhooks: Vec<WebhookConfig>,
    at_cap: Mutex<HashSet<String>>,
    /// What each budgeted pool has spent of its cap, as of the last check.
    levels: parking_lot::RwLock<std::collections::HashMap<String, PoolSpend>>,
    /// Budget alerts sent by this replica.
    sent: AtomicU64,
    increases: Arc<crate::quota::Increases>,
}

impl Alerts {
    /// A checker sending to `config.webhooks`.
    pub fn new(
        config: &AlertsConfig,
        store: Store,
        policy: Arc<PolicyStore>,
        http: reqwest::Client,
        increases: Arc<crate::quota::Increases>,
    ) -> Arc<Alerts> {
        Arc::new(Alerts {
            store,
            policy,
            http,
            webhooks: config.webhooks.clone(),
            at_cap: Mutex::new(HashSet::new()),
            levels: parking_lot::RwLock::new(std::collections::HashMap::new()),
            sent: AtomicU64::new(0),
            increases,
        })
    }

    /// Percent of its cap `pool` had spent at the last check (0 when unknown).
    pub fn level(&self, pool: &str) -> i64 {
        self.levels.read().get(pool).map_or(0, PoolSpend::percent)
    }

    /// Every budgeted pool's spend as of the last check, by pool name (metrics).
    pub fn budgets(&self) -> Vec<(String, PoolSpend)> {
        let mut v: Vec<_> = self
            .levels
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The pool refused a request at its cap (the 100 % alert fires at the next check).
    pub fn reached_cap(&self, pool: &str) {
        let mut set = self.at_cap.lock();
        if !set.contains(pool) {
            set.insert(pool.to_owned());
        }
    }

    /// Compare every budgeted pool with its thresholds; send what fires. Returns the alerts
    /// this replica sent.
    pub async fn check(&self) -> Vec<Alert> {
        let now = crate::clock::ledger_ms();
        let at_cap: HashSet<String> = std::mem::take(&mut *self.at_cap.lock());
        let mut sent = Vec::new();
        let pools: Vec<_> = self.policy.current().pools().cloned().collect();
        // A pool that lost its budget (or left the policy) stops being reported.
        self.levels
            .write()
            .retain(|name, _| pools.iter().any(|p| p.name == *name && p.budget.is_some()));
        for pool in pools {
            let Some(budget) = &pool.budget else {
                continue;
            };
            let cap = self
                .increases
                .cap(&pool, now)
                .unwrap_or(i64::try_from(budget.limit_micro_usd).unwrap_or(i64::MAX));
            let start = first_day(&budget.window, now);
            let spent = match self.store.spend_since(&pool.name, start * DAY_MS).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "budget alerts: spend not readable; retried at the next check");
                    continue;
                }
            };
            let level = PoolSpend {
                spent,
                cap,
                window: budget.window.name(),
            };
            let pct = level.percent();
            self.levels.write().insert(pool.name.clone(), level);
            for &t in &pool.alerts {
                let crossed =
                    pct >= i64::from(t) || (t == 100 && at_cap.contains(pool.name.as_str()));
                if !crossed {
                    continue;
                }
                match self
                    .store
                    .claim_budget_alert(&pool.name, start, t, spent, cap, now)
                    .await
                {
                    Ok(true) => {
                        let alert = Alert {
                            pool: pool.name.clone(),
                            threshold: t,
                            spent,
                            cap,
                            window_start: start,
                            window: budget.window.name(),
                        };
                        tracing::warn!(pool = %alert.pool, threshold = t, spent_micro_usd = spent, cap_micro_usd = cap, "budget threshold reached");
                        self.deliver(&alert).await;
                        sent.push(alert);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pool = %pool.name, error = %e, "budget alerts: not recorded; retried at the next check");
                    }
                }
            }
        }
        sent
    }

    async fn deliver(&self, alert: &Alert) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let what = format!(
            "budget alert of pool {} at {}%",
            alert.pool, alert.threshold
        );
        self.send(&what, |f| alert.body(f)).await;
    }

    /// POST the body `body(format)` to every webhook, each up to three times with backoff.
    /// `what` names the alert in the log if a webhook never takes it.
    pub async fn send(&self, what: &str, body: impl Fn(WebhookFormat) -> Value) {
        for w in &self.webhooks {
            let body = body(w.format);
            let mut delay = Duration::from_millis(200);
            let mut ok = false;
            for _ in 0..3 {
                match self
                    .http
                    .post(w.url.clone())
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        ok = true;
                        break;
                    }
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            if !ok {
                // The host only: webhook URLs may carry a secret path (Slack's do).
                tracing::error!(
                    webhook_host = w.url.host_str().unwrap_or("-"),
                    alert = what,
                    "alert not delivered after 3 attempts"
                );
            }
        }
    }

    /// Budget alerts this replica has sent since start (metrics).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Check every `every` until cancelled.
    pub fn spawn(self: Arc<Self>, every: Duration, cancel: CancellationToken) -> JoinHandle<()> {
        crate::tasks::every(every, cancel, move || {
            let this = Arc::clone(&self);
            async move {
                this.check().await;
            }
        })
    }
}
