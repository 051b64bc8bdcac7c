//! `spawn_app()`: one Tollgate per test, on its own port and its own database, wired to a
//! test issuer and a test upstream. Tests read like a user's session.

use super::db::{TestDb, TestDbKind};
use super::oidc::TestIssuer;
use super::upstream::TestUpstream;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tollgate::app::{AppState, Application};
use tollgate::config::Config;
use tollgate::store::{SpendRecord, Store};

/// The provider keys the test upstream accepts (and Tollgate injects).
pub const OPENAI_KEY: &str = "sk-test-openai-7f3a9c1e5b";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-2d8e4b6a0c";

/// The policy every test app starts with.
pub const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00, cached_input: 0.50 }
  embed-test:
    provider: openai
    price: { input: 0.10, output: 0 }
  claude-test:
    provider: anthropic
    upstream_model: claude-test-upstream
    price: { input: 3.00, output: 15.00 }
  pricey:
    provider: openai
    price: { input: 100000, output: 100000 }
  unbound:
    provider: openai
    price: { input: 1, output: 1 }
  orphan:
    provider: nowhere
    price: { input: 1, output: 1 }
  mocked:
    provider: mock
    price: { input: 1, output: 1 }
pools:
  main:
    limits: { rpm: 100000 }
  tiny:
    budget: { usd: 0.0001, window: daily }
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: main
    billing_owner: team-a
    models: [gpt-test, embed-test, claude-test, pricey, orphan, mocked]
    max_tokens: { default: 64, max: 256 }
    max_request_usd: 0.50
  - name: slow-lane
    match: { namespace: slow-lane }
    team: s
    pool: main
    models: [gpt-test]
    limits: { rpm: 2 }
  - name: broke
    match: { namespace: broke }
    team: b
    pool: tiny
    models: [gpt-test]
    max_tokens: { default: 64, max: 64 }
  - name: no-keys
    match: { namespace: no-keys }
    team: n
    pool: main
    billing_owner: nobody
    models: [claude-test]
"#;

/// A running Tollgate and its peers.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    pub issuer: TestIssuer,
    pub upstream: TestUpstream,
    pub db: TestDb,
    pub kind: TestDbKind,
    pub policy_dir: TempDir,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _keys: TempDir,
}

/// Knobs a test may turn before start.
#[derive(Clone, Default)]
pub struct Options {
    /// Replace the default policy.
    pub policy: Option<String>,
    /// Extra TOML appended to the config (top-level keys must come before any table, so
    /// this is appended as-is after the `[[issuers]]` table: use tables here).
    /// [`UPSTREAM_URL`] in it becomes the test upstream's base URL.
    pub extra_config: String,
    /// Replace the `[secrets]` section (default: a file of keys for team-a and a shared one).
    pub secrets: Option<String>,
    /// Share this database (another replica's) instead of a fresh one.
    pub database_url: Option<String>,
    /// The periodic revocation re-sync (default 100ms).
    pub revocation_sync_interval: Option<String>,
    /// Configure the admin API: the test issuer becomes admin issuer `idp` (kind oidc, audience
    /// `tollgate-admin`), and these lines go into `[admin]` (e.g. a break-glass hash).
    pub admin: Option<String>,
    /// Replace the `[spool]` section (default: a spool beside the key file).
    pub spool: Option<String>,
}

/// Stands for the test upstream's base URL (with `/v1`) in [`Options::extra_config`].
pub const UPSTREAM_URL: &str = "@UPSTREAM_URL@";

/// The audience of admin tokens in tests.
pub const ADMIN_AUDIENCE: &str = "tollgate-admin";

pub async fn spawn_app(kind: TestDbKind) -> TestApp {
    spawn_app_with(kind, Options::default()).await
}

pub async fn spawn_app_with(kind: TestDbKind, opts: Options) -> TestApp {
    let issuer = TestIssuer::start().await;
    let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
    let db = match &opts.database_url {
        Some(url) => TestDb::existing(url),
        None => TestDb::new(kind).await,
    };
    let policy_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        policy_dir.path().join("policy.yaml"),
        opts.policy.as_deref().unwrap_or(POLICY),
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("keys.yaml");
    std::fs::write(
        &keys_file,
        format!(
            "keys:\n  - id: openai-team-a\n    provider: openai\n    api_key: {OPENAI_KEY}\n    billing_owner: team-a\n  - id: openai-shared\n    provider: openai\n    api_key: {OPENAI_KEY}\n    billing_owner: \"*\"\n  - id: anthropic-team-a\n    provider: anthropic\n    api_key: {ANTHROPIC_KEY}\n    billing_owner: team-a\n"
        ),
    )
    .unwrap();
    let config = config_text(
        &db.url,
        &issuer.url,
        &upstream.url,
        policy_dir.path().to_path_buf(),
        &keys_file,
        &opts,
    );
    let config = Config::from_toml_str(&config).unwrap();
    let app = Application::build(config)
        .await
        .expect("application builds");
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        url: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        issuer,
        upstream,
        db,
        kind,
        policy_dir,
        state,
        shutdown: Some(tx),
        handle: Some(handle),
        _keys: keys,
    }
}

/// The configuration a replica of these peers runs with (also written to a file for a
/// replica run as its own process).
pub fn config_text(
    db: &str,
    issuer: &str,
    upstream: &str,
    policy_dir: PathBuf,
    keys: &Path,
    opts: &Options,
) -> String {
    let extra = opts.extra_config.replace(UPSTREAM_URL, upstream);
    let admin = opts.admin.as_deref().map_or_else(String::new, |lines| {
        format!(
            "[admin]\n{lines}\n[[admin.issuers]]\nname = \"idp\"\nissuer = \"{issuer}\"\nkind = \"oidc\"\naudiences = [\"{ADMIN_AUDIENCE}\"]\n"
        )
    });
    let spool = opts.spool.clone().unwrap_or_else(|| {
        let dir = keys.parent().unwrap_or(Path::new(".")).join("spool");
        format!("[spool]\ndir = \"{}\"\n", dir.display())
    });
    let revocation_sync = opts.revocation_sync_interval.as_deref().unwrap_or("100ms");
    let secrets = opts.secrets.as_deref().map_or_else(
        || format!("[secrets]\npath = \"{}\"\n", keys.display()),
        str::to_owned,
    );
    format!(
        r#"
listen = "127.0.0.1:0"
public_url = "http://tollgate.test"
database_url = "{db}"
database_max_connections = 4
policy_dir = "{policy}"
policy_reload_interval = "200ms"
revocation_sync_interval = "{revocation_sync}"
drain_timeout = "5s"

[signing]
key_encryption_key = "3q2+78r+ur7erb7v3q2+78r+ur7erb7v3q2+78r+ur4="

{secrets}
[providers.openai]
kind = "openai"
base_url = "{upstream}"

[providers.anthropic]
kind = "anthropic"
base_url = "{upstream}"

[upstream]
response_timeout = "2s"
idle_timeout = "2s"

[spend]
flush_interval = "50ms"

{spool}

[[issuers]]
name = "cluster"
issuer = "{issuer}"
{extra}
{admin}
"#,
        policy = policy_dir.display(),
    )
}

/// `n` replicas on one database (the first one's), all with `policy`.
pub async fn spawn_fleet(kind: TestDbKind, policy: &str, n: usize) -> Vec<TestApp> {
    spawn_fleet_with(kind, policy, "", n).await
}

/// `n` replicas on one database, all with `policy` and `extra_config`.
pub async fn spawn_fleet_with(
    kind: TestDbKind,
    policy: &str,
    extra_config: &str,
    n: usize,
) -> Vec<TestApp> {
    spawn_fleet_opts(
        kind,
        n,
        Options {
            policy: Some(policy.into()),
            extra_config: extra_config.into(),
            ..Options::default()
        },
    )
    .await
}

/// `n` replicas on one database (the first one's), each started with `opts`.
pub async fn spawn_fleet_opts(kind: TestDbKind, n: usize, opts: Options) -> Vec<TestApp> {
    let first = spawn_app_with(kind, opts.clone()).await;
    let url = first.db.url.clone();
    let mut apps = vec![first];
    for _ in 1..n {
        let opts = Options {
            database_url: Some(url.clone()),
            ..opts.clone()
        };
        apps.push(spawn_app_with(kind, opts).await);
    }
    apps
}

/// A scrape of `/metrics`.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series, named with its labels exactly as exposed
    /// (`tollgate_secret_store_up{backend="vault"}`).
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
    }
}

impl TestApp {
    /// A Kubernetes service-account token for `namespace`/`sa` from the test issuer.
    pub fn workload_token(&self, namespace: &str, sa: &str) -> String {
        self.issuer.service_account_token(namespace, sa)
    }

    /// POST /v1/token with form fields.
    pub async fn exchange_form(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.http
            .post(format!("{}/v1/token", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The standard exchange of a subject token.
    pub async fn exchange(&self, subject_token: &str) -> reqwest::Response {
        self.exchange_form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("subject_token", subject_token),
        ])
        .await
    }

    /// A Tollgate token for a pod in `namespace`.
    pub async fn token_for(&self, namespace: &str) -> String {
        let r = self.exchange(&self.workload_token(namespace, "app")).await;
        assert_eq!(r.status(), 200, "exchange for {namespace} failed");
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// The `/metrics` exposition; fails the test unless it is OpenMetrics text.
    pub async fn metrics(&self) -> Metrics {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let text = r.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        Metrics(text)
    }

    /// An admin OIDC token of the test issuer for `subject` with `groups`.
    pub fn admin_token(&self, subject: &str, groups: &[&str]) -> String {
        let now = tollgate::clock::now_secs();
        self.issuer.sign(&json!({
            "iss": self.issuer.url,
            "sub": subject,
            "aud": [ADMIN_AUDIENCE],
            "iat": now,
            "exp": now + 600,
            "groups": groups,
        }))
    }

    /// An admin API call; `body` is sent as JSON when given.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        r.send().await.unwrap()
    }

    /// POST JSON with a bearer token.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POST /v1/messages the way the Anthropic SDK does.
    pub async fn anthropic(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/messages", self.url))
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A simple chat body.
    pub fn chat(model: &str, text: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": text}]})
    }

    /// A store handle on the app's database.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Wait until the spend row of `request_id` is written (the writer is asynchronous).
    pub async fn spend_row(&self, request_id: &str) -> SpendRecord {
        for _ in 0..100 {
            if let Some(r) = self.store().spend_record(request_id).await.unwrap() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no spend row for {request_id} on {:?}", self.kind);
    }

    /// Replace the policy file (the watcher picks it up within ~200 ms).
    pub fn write_policy(&self, text: &str) {
        std::fs::write(self.policy_dir.path().join("policy.yaml"), text).unwrap();
    }

    /// Graceful shutdown (drain + flush), awaited. Returns the database, still alive.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self.db
    }
}

/// The request id Tollgate put on a response.
pub fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}
