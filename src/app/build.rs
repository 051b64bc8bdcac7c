//! Building the application from its configuration.

use super::state::{AppState, DevIdentity, Inner, ProviderRoute};
use crate::config::{Config, ProviderKindConfig};
use crate::identity::IdentityVerifier;
use crate::policy::PolicyStore;
use crate::providers::ProviderKind;
use crate::quota::Quota;
use crate::revocation::RevocationSet;
use crate::secrets::KeyCache;
use crate::spend::{Overflow, Sink, Spool, Writer, WriterConfig};
use crate::store::{IssuedTokenRecord, SpendRecord, Store};
use crate::token::keys::Kek;
use crate::token::{Keyring, TokenService};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Why the server could not start. Messages name what failed; none contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct StartError {
    context: &'static str,
    message: String,
}

fn fail(context: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> StartError {
    move |e| StartError {
        context,
        message: e.to_string(),
    }
}

macro_rules! tryc {
    ($ctx:literal, $e:expr) => {
        $e.map_err(|e| fail($ctx)(&e))?
    };
}

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    writers: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    connections: super::server::Limits,
}

/// Options that only `tollgate dev` sets.
#[derive(Default)]
pub struct DevOptions {
    /// The dev issuer to serve under `/dev/oidc`.
    pub issuer: Option<DevIdentity>,
    /// A listener bound beforehand (the dev command needs its port to build the config).
    pub listener: Option<TcpListener>,
}

impl Application {
    /// Build everything from `config`.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        Self::build_with(config, DevOptions::default()).await
    }

    /// Build with dev options.
    pub async fn build_with(config: Config, dev: DevOptions) -> Result<Application, StartError> {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let store = tryc!(
            "database",
            Store::connect(
                config.database_url.expose_secret(),
                config.database_max_connections
            )
            .await
        );
        if config.migrate_on_start {
            tryc!("database migrations", store.migrate().await);
        }
        // Before anything is dated: signing keys, tokens, leases.
        super::fleet_clock::sync(&store).await;
        tasks.push(super::fleet_clock::spawn(
            store.clone(),
            cancel.child_token(),
        ));
        let policy = Arc::new(tryc!("policies", PolicyStore::open(&config.policy_dir)));
        warn_about_policy_references(&config, &policy);

        let kek = tryc!("signing.key_encryption_key", load_kek(&config));
        let keyring = tryc!(
            "signing keys",
            Keyring::start(
                store.clone(),
                kek,
                config.signing.algorithm,
                config.signing.rotate_every
            )
            .await
        );
        let issuer = config.public_url.as_str().trim_end_matches('/').to_owned();
        let tokens = Arc::new(TokenService::new(
            Arc::clone(&keyring),
            issuer.clone(),
            config.token.audience.clone(),
            config.token.leeway,
        ));
        let identity_http = tryc!(
            "identity http client",
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
        );
        let own_issuers = vec![issuer.clone(), config.public_url.to_string()];
        let admin = Arc::new(tryc!(
            "admin",
            crate::admin::AdminAuth::new(
                &config.admin,
                &config.issuers,
                own_issuers.clone(),
                identity_http.clone()
            )
        ));
        let identity = Arc::new(tryc!(
            "issuers",
            IdentityVerifier::new(config.issuers.clone(), own_issuers, identity_http)
        ));
        let revocations = tryc!("revocations", RevocationSet::load(store.clone()).await);
        let secret_store = tryc!("secrets", super::keys::open_store(&config.secrets).await);
        if let Some(name) = &config.admin.break_glass_sha256_secret {
            tryc!(
                "admin",
                crate::admin::break_glass::load(&admin, secret_store.as_ref(), name).await
            );
        }
        let break_glass_store = Arc::clone(&secret_store);
        let rotation_store = Arc::clone(&secret_store);
        let keys = Arc::new(tryc!(
            "secrets",
            KeyCache::load(secret_store, config.secrets.max_staleness).await
        ));
        super::keys::sync_inventory(&keys, &store).await;
        let upstream_client = tryc!(
            "upstream http client",
            crate::proxy::UpstreamClient::new(&config.upstream)
        );
        let http = tryc!(
            "webhook http client",
            reqwest::Client::builder()
                .connect_timeout(config.upstream.connect_timeout)
                .tcp_nodelay(true)
                .build()
        );
        let quota = Quota::new();
        let leases = super::budget::Leases::new(store.clone(), Arc::clone(&quota));
        let rates = super::rates::RateLeases::new(store.clone(), Arc::clone(&quota));
        // Register this replica at once, so its first leases are never mistaken for a dead one's.
        if let Err(e) = leases.tick().await {
            tracing::warn!(error = %e, "budget leases: first heartbeat failed; retried every second");
        }

        let wcfg = WriterConfig {
            batch_size: config.spend.batch_size,
            flush_interval: config.spend.flush_interval,
            queue_capacity: config.spend.queue_capacity,
            shutdown_deadline: config.drain_timeout,
        };
        let overflow = |name: &str| -> Result<Option<Overflow>, StartError> {
            if !config.spool.enabled {
                return Ok(None);
            }
            let spool = Spool::open(&config.spool.dir.join(name), config.spool.max_bytes)
                .map_err(|e| fail("spool")(&e))?;
            Ok(Some(Overflow {
                spool,
                on_full: config.spool.on_full,
            }))
        };
        let (spend, spend_task) = Writer::spawn(
            "spend",
            wcfg,
            spend_sink(store.clone()),
            overflow("spend")?,
            cancel.child_token(),
        );
        let (issued, issued_task) = Writer::spawn(
            "issued_tokens",
            wcfg,
            issued_sink(store.clone()),
            overflow("issued_tokens")?,
            cancel.child_token(),
        );
        let (audit, audit_task) = crate::audit::Audit::start(
            store.clone(),
            wcfg,
            overflow("audit")?,
            cancel.child_token(),
        )
        .await;
        tasks.push(audit.spawn_anchoring(
            store.clone(),
            config.audit.anchor_interval,
            cancel.child_token(),
        ));

        if let Some(name) = &config.admin.break_glass_sha256_secret {
            tasks.push(crate::admin::break_glass::spawn_refresher(
                Arc::clone(&admin),
                break_glass_store,
                name.clone(),
                config.secrets.refresh_interval,
                audit.clone(),
                cancel.child_token(),
            ));
        }
        tasks.push(
            Arc::clone(&policy).spawn_watcher(config.policy_reload_interval, cancel.child_token()),
        );
        tasks.push(
            Arc::clone(&keyring).spawn_maintainer(Duration::from_secs(60), cancel.child_token()),
        );
        tasks.push(
            Arc::clone(&revocations)
                .spawn_sync(config.revocation_sync_interval, cancel.child_token()),
        );
        tasks.push(Arc::clone(&revocations).spawn_listener(cancel.child_token()));
        tasks.push(super::keys::spawn_refresher(
            Arc::clone(&keys),
            store.clone(),
            config.secrets.refresh_interval,
            cancel.child_token(),
        ));
        tasks.push(
            Arc::clone(&identity).spawn_refresher(Duration::from_secs(600), cancel.child_token()),
        );
        if let Some(v) = admin.verifier() {
            let prefetch = Arc::clone(v);
            tasks.push(tokio::spawn(async move { prefetch.prefetch().await }));
            tasks.push(
                Arc::clone(v).spawn_refresher(Duration::from_secs(600), cancel.child_token()),
            );
        }
        tasks.push(spawn_token_gc(Arc::clone(&quota), cancel.child_token()));
        tasks.push(Arc::clone(&leases).spawn(cancel.child_token()));
        tasks.push(Arc::clone(&rates).spawn(cancel.child_token()));
        let increases = Arc::new(crate::quota::Increases::default());
        sync_increases(&store, &increases).await;
        tasks.push(spawn_increase_sync(
            store.clone(),
            Arc::clone(&increases),
            config.revocation_sync_interval,
            cancel.child_token(),
        ));
        let alerts = crate::alerts::Alerts::new(
            &config.alerts,
            store.clone(),
            Arc::clone(&policy),
            http.clone(),
            Arc::clone(&increases),
        );
        tasks.push(Arc::clone(&alerts).spawn(config.alerts.check_interval, cancel.child_token()));
        let guard = crate::anomaly::Guard::new(
            config.anomaly.clone(),
            store.clone(),
            Arc::clone(&revocations),
            Arc::clone(&alerts),
            Arc::clone(&audit),
        );
        tasks.push(Arc::clone(&guard).spawn(cancel.child_token()));
        let issuers =
            crate::rotation::issuer::build(&config.rotation.issuers, &rotation_store, &http);
        let rotator = crate::rotation::Rotator::new(crate::rotation::Parts {
            cfg: config.rotation.clone(),
            store: store.clone(),
            secrets: Arc::clone(&rotation_store),
            keys: Arc::clone(&keys),
            revocations: Arc::clone(&revocations),
            providers: provider_routes(&config),
            http: http.clone(),
            alerts: Arc::clone(&alerts),
            audit: Arc::clone(&audit),
            replica: leases.replica().to_owned(),
            policy: Some(Arc::clone(&policy)),
            issuers,
        });
        tasks.extend(Arc::clone(&rotator).spawn(cancel.child_token()));

        let listener = match dev.listener {
            Some(l) => l,
            None => tryc!("listen", TcpListener::bind(config.listen).await),
        };
        let prefetch = Arc::clone(&identity);
        tasks.push(tokio::spawn(async move { prefetch.prefetch().await }));

        let requests =
            crate::telemetry::requests::RequestMetrics::new(config.telemetry.metrics_subject_label);
        let mut metrics = super::metrics::registry(
            Arc::clone(&keys),
            Arc::clone(&revocations),
            Arc::clone(&alerts),
            Arc::clone(&guard),
            Arc::clone(&admin),
        );
        requests.register(metrics.registry_mut());
        let breakers = crate::routing::Breakers::new();
        metrics.register_collector(super::metrics::CircuitCollector(Arc::clone(&breakers)));
        metrics.register_collector(super::metrics::RotationCollector(Arc::clone(&rotator)));
        metrics.register_collector(super::metrics::WriterCollector(vec![
            ("spend", {
                let w = spend.clone();
                Arc::new(move || w.status())
            }),
            ("issued_tokens", {
                let w = issued.clone();
                Arc::new(move || w.status())
            }),
            ("audit", {
                let a = Arc::clone(&audit);
                Arc::new(move || a.writer_status())
            }),
        ]));
        let state = AppState(Arc::new(Inner {
            store,
            policy,
            identity,
            admin,
            tokens,
            revocations,
            keys,
            quota,
            increases,
            alerts,
            guard,
            rotator,
            leases,
            rates,
            breakers,
            providers: provider_routes(&config),
            upstream_client,
            http,
            upstream: config.upstream.clone(),
            limits: config.limits.clone(),
            spend,
            issued,
            audit: Arc::clone(&audit),
            dev: dev.issuer,
            metrics,
            requests,
        }));
        Ok(Application {
            listener,
            state,
            cancel,
            tasks,
            writers: vec![spend_task, issued_task, audit_task],
            drain_timeout: config.drain_timeout,
            connections: super::server::Limits {
                header_read_timeout: config.limits.header_read_timeout,
                max_connections: config.limits.max_connections,
            },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// The shared state (tests inspect it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves, then drain and flush.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let app = super::router(self.state.clone());
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        super::server::serve(
            self.listener,
            app,
            self.connections,
            stop,
            self.drain_timeout,
        )
        .await;
        // In-flight requests are settled: hand the unreserved budget back for the fleet.
        // Bounded: with the store down there is nothing to hand back to, and the leases of a
        // replica that stops heartbeating are reclaimed by the others anyway.
        if tokio::time::timeout(Duration::from_secs(3), self.state.leases.release_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "budget leases not handed back (store unavailable); the fleet reclaims them"
            );
        }
        self.state.audit.close();
        drop(self.state);
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        for w in self.writers {
            let _ = w.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn load_kek(config: &Config) -> Result<Kek, String> {
    let text = match (
        &config.signing.key_encryption_key,
        &config.signing.key_encryption_key_file,
    ) {
        (Some(k), _) => k.expose_secret().to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, None) => return Err("not configured".into()),
    };
    Kek::from_base64(&text).map_err(|e| e.to_string())
}

fn provider_routes(config: &Config) -> HashMap<String, ProviderRoute> {
    let mut out = HashMap::new();
    let defaults = [
        ("openai", ProviderKind::OpenAi, "https://api.openai.com/v1"),
        (
            "anthropic",
            ProviderKind::Anthropic,
            "https://api.anthropic.com/v1",
        ),
    ];
    for (id, kind, url) in defaults {
        out.insert(
            id.to_owned(),
            ProviderRoute::new(id, kind, Url::parse(url).ok()),
        );
    }
    out.insert(
        "mock".to_owned(),
        ProviderRoute::new("mock", ProviderKind::Mock, None),
    );
    for (id, p) in &config.providers {
        let kind = match p.kind {
            ProviderKindConfig::Openai => ProviderKind::OpenAi,
            ProviderKindConfig::Anthropic => ProviderKind::Anthropic,
            ProviderKindConfig::OpenaiCompatible => ProviderKind::OpenAiCompatible,
            ProviderKindConfig::Mock => ProviderKind::Mock,
        };
        let base_url = p
            .base_url
            .clone()
            .or_else(|| out.get(id).and_then(|r| r.base_url.clone()));
        out.insert(id.clone(), ProviderRoute::new(id.clone(), kind, base_url));
    }
    out
}

fn warn_about_policy_references(config: &Config, policy: &PolicyStore) {
    let set = policy.current();
    for issuer in set.issuers_referenced() {
        if !config.issuers.iter().any(|i| i.name == issuer) {
            tracing::warn!(
                issuer,
                "a policy binding names an issuer that is not configured; it will never match"
            );
        }
    }
}

fn spend_sink(store: Store) -> Sink<SpendRecord> {
    Arc::new(move |rows: Vec<SpendRecord>| {
        let store = store.clone();
        Box::pin(async move {
            match store.insert_spend(&rows).await {
                Ok(_) => Ok(()),
                Err(e) => Err((rows, e.to_string())),
            }
        })
    })
}

fn issued_sink(store: Store) -> Sink<IssuedTokenRecord> {
    Arc::new(move |rows: Vec<IssuedTokenRecord>| {
        let store = store.clone();
        Box::pin(async move {
            match store.insert_issued_tokens(&rows).await {
                Ok(_) => Ok(()),
                Err(e) => Err((rows, e.to_string())),
            }
        })
    })
}

/// How far back approved increases are read: past the longest calendar window (a month).
const INCREASE_LOOKBACK_MS: i64 = 32 * 24 * 3600 * 1000;

async fn sync_increases(store: &Store, increases: &crate::quota::Increases) {
    let since = crate::clock::ledger_ms() - INCREASE_LOOKBACK_MS;
    match store.approved_increases(since).await {
        Ok(rows) => increases.replace(rows),
        Err(e) => tracing::warn!(error = %e, "budget increases not readable; retried"),
    }
}

fn spawn_increase_sync(
    store: Store,
    increases: Arc<crate::quota::Increases>,
    every: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    crate::tasks::every(every, cancel, move || {
        let (store, increases) = (store.clone(), Arc::clone(&increases));
        async move { sync_increases(&store, &increases).await }
    })
}

fn spawn_token_gc(quota: Arc<Quota>, cancel: CancellationToken) -> JoinHandle<()> {
    // Per-token counters are forgotten once idle for two minutes: their per-minute windows
    // have ended (the store keeps the fleet's count of the current one), so dropping them
    // changes nothing.
    crate::tasks::every(Duration::from_secs(60), cancel, move || {
        quota.forget_idle_tokens(Duration::from_secs(120));
        std::future::ready(())
    })
}
