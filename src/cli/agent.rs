//! `tollgate agent`: the sidecar / local helper of a workload. It swaps the pod's projected
//! service-account token for a Tollgate token (re-reading the file each time, as the kubelet
//! rotates it), refreshes it at about 2/3 of its lifetime (jittered, with backoff while
//! Tollgate is unreachable), and either writes it atomically to a file or serves a loopback
//! proxy that adds it to every request, so an app only points its SDK's `base_url` at the
//! agent and holds no key at all.
//!
//! A refused identity (the exchange answers 400) is fatal: the agent exits non-zero with
//! Tollgate's reason. Everything else (Tollgate restarting, a network blip) is retried while
//! the token in hand is still valid. Tokens are never logged.

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use parking_lot::RwLock;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Largest request body the proxy buffers (it replays a request Tollgate never received).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// How long a request waits for Tollgate to come back (connection refused) or for the first
/// token.
const WAIT: Duration = Duration::from_secs(15);
/// Longest pause between failed exchanges.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `tollgate agent` options.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Tollgate's base URL.
    #[arg(long, env = "TOLLGATE_URL")]
    url: reqwest::Url,
    /// The projected service-account token (re-read before every exchange).
    #[arg(
        long,
        env = "TOLLGATE_AGENT_TOKEN_FILE",
        default_value = "/var/run/secrets/tollgate/token"
    )]
    token_file: PathBuf,
    /// Serve a proxy on this loopback address that adds the Tollgate token to every request
    /// (apps set their SDK's base URL to `http://<addr>/v1`).
    #[arg(long, env = "TOLLGATE_AGENT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Write the Tollgate token to this file (atomically, mode 0600) for apps that read a key
    /// from a file.
    #[arg(long, env = "TOLLGATE_AGENT_WRITE_TOKEN")]
    write_token: Option<PathBuf>,
    /// Ask for fewer models than the binding grants (space separated).
    #[arg(long)]
    scope: Option<String>,
    /// Refresh at least this often (default: at 2/3 of the token's lifetime).
    #[arg(long, value_parser = humantime::parse_duration)]
    refresh_after: Option<Duration>,
}

/// The token in hand.
struct Held {
    token: SecretString,
    expires: Instant,
}

struct Agent {
    args: AgentArgs,
    http: reqwest::Client,
    held: RwLock<Option<Held>>,
    /// Bumped on every new token (waiters and the refresh loop watch it).
    fresh: watch::Sender<u64>,
    /// Ask the refresh loop for a new token now (Tollgate refused the one in hand).
    renew: tokio::sync::Notify,
}

/// Why an exchange failed.
enum ExchangeError {
    /// Tollgate refused the identity (400): retrying cannot help.
    Refused(String),
    /// Anything else: try again later.
    Transient(String),
}

/// Run the agent until it is stopped or its identity is refused.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.listen.is_none() && args.write_token.is_none() {
        bail!(
            "tollgate agent needs --listen (a local proxy), --write-token (a token file), or both"
        );
    }
    if let Some(addr) = args.listen
        && !addr.ip().is_loopback()
    {
        bail!(
            "--listen {addr}: the agent's proxy adds a credential to every request, so it listens on loopback only (127.0.0.1 or ::1)"
        );
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("HTTP client")?;
    let agent = Arc::new(Agent {
        args,
        http,
        held: RwLock::new(None),
        fresh: watch::channel(0).0,
        renew: tokio::sync::Notify::new(),
    });
    let refresher = tokio::spawn(Arc::clone(&agent).refresh_loop());
    let server = match agent.args.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            tracing::info!(listen = %addr, tollgate = %agent.args.url, "agent proxy listening");
            let app = axum::Router::new()
                .route("/agent/healthz", axum::routing::get(healthz))
                .fallback(proxy)
                .with_state(Arc::clone(&agent));
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown())
                    .await
            }))
        }
        None => None,
    };
    tokio::select! {
        r = refresher => {
            // The refresh loop only ends on a refused identity.
            r.context("refresh task")??;
            Ok(ExitCode::FAILURE)
        }
        r = async { match server { Some(s) => s.await, None => { shutdown().await; Ok(Ok(())) } } } => {
            r.context("proxy task")?.context("proxy")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

impl Agent {
    /// Exchange, then sleep until the refresh point; retry with backoff on a transient
    /// failure. Returns only when the identity is refused.
    async fn refresh_loop(self: Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.exchange().await {
                Ok((token, ttl)) => {
                    backoff = Duration::from_secs(1);
                    if let Some(path) = &self.args.write_token
                        && let Err(e) = write_atomically(path, &token)
                    {
                        tracing::error!(path = %path.display(), error = %e, "agent: token file not written; retrying");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    *self.held.write() = Some(Held {
                        token,
                        expires: Instant::now() + ttl,
                    });
                    self.fresh.send_modify(|n| *n += 1);
                    let wait = self.refresh_in(ttl);
                    tracing::info!(
                        expires_in_s = ttl.as_secs(),
                        refresh_in_ms = wait.as_millis() as u64,
                        "agent: Tollgate token obtained"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.renew.notified() => {}
                    }
                }
                Err(ExchangeError::Refused(why)) => {
                    bail!("Tollgate refused this workload's identity: {why}");
                }
                Err(ExchangeError::Transient(why)) => {
                    let valid = self
                        .held
                        .read()
                        .as_ref()
                        .map(|h| h.expires.saturating_duration_since(Instant::now()));
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64,
                        token_valid_for_s = valid.map(|v| v.as_secs()), "agent: exchange failed; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// About 2/3 of the lifetime (±10 %), or `--refresh-after` if sooner.
    fn refresh_in(&self, ttl: Duration) -> Duration {
        let two_thirds = jitter(ttl * 2 / 3);
        self.args
            .refresh_after
            .map_or(two_thirds, |r| r.min(two_thirds))
            .max(Duration::from_millis(100))
    }

    async fn exchange(&self) -> Result<(SecretString, Duration), ExchangeError> {
        let subject = read_token_file(&self.args.token_file).map_err(ExchangeError::Refused)?;
        let mut form = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("subject_token", subject.expose_secret()),
        ];
        if let Some(scope) = &self.args.scope {
            form.push(("scope", scope));
        }
        let url = self
            .args
            .url
            .join("v1/token")
            .map_err(|e| ExchangeError::Refused(format!("--url: {e}")))?;
        let resp = self
            .http
            .post(url)
            .timeout(Duration::from_secs(10))
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                ExchangeError::Transient(format!("Tollgate unreachable: {}", e.without_url()))
            })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED {
            return Err(ExchangeError::Refused(format!(
                "{} ({})",
                body["error_description"]
                    .as_str()
                    .unwrap_or("no description"),
                body["error"].as_str().unwrap_or("error")
            )));
        }
        if !status.is_success() {
            return Err(ExchangeError::Transient(format!(
                "Tollgate answered {status}"
            )));
        }
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ExchangeError::Transient("the answer has no access_token".into()))?;
        let ttl = body["expires_in"].as_u64().unwrap_or(60);
        Ok((
            SecretString::from(token.to_owned()),
            Duration::from_secs(ttl),
        ))
    }

    /// The token in hand if still valid, waiting up to [`WAIT`] for the first one.
    async fn token(&self) -> Option<SecretString> {
        let mut fresh = self.fresh.subscribe();
        let end = Instant::now() + WAIT;
        loop {
            if let Some(h) = self.held.read().as_ref()
                && h.expires > Instant::now()
            {
                return Some(h.token.clone());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, fresh.changed()).await.is_err() {
                return None;
            }
        }
    }
}

fn read_token_file(path: &Path) -> Result<SecretString, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(SecretString::from(t.to_owned()))
}

/// Write next to the target and rename over it, so a reader never sees half a token.
fn write_atomically(path: &Path, token: &SecretString) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.expose_secret().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// ±10 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

async fn healthz(State(agent): State<Arc<Agent>>) -> Response {
    let ok = agent
        .held
        .read()
        .as_ref()
        .is_some_and(|h| h.expires > Instant::now());
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no Tollgate token yet\n").into_response()
    }
}

/// Headers that belong to one connection, or that the agent sets itself.
fn dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "authorization"
            | "x-api-key"
    )
}

fn agent_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": "tollgate_agent_error", "code": "unavailable"}});
    (status, axum::Json(body)).into_response()
}

/// Relay one request to Tollgate with the token added.
async fn proxy(State(agent): State<Arc<Agent>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return agent_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large for the agent (32 MiB)",
        );
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(url) = agent.args.url.join(path.trim_start_matches('/')) else {
        return agent_error(StatusCode::BAD_REQUEST, "bad request path");
    };
    // Anthropic's SDKs send the key as x-api-key; everyone else as a bearer token.
    let anthropic = parts.headers.contains_key("x-api-key");
    let end = Instant::now() + WAIT;
    let mut renewed = false;
    loop {
        let Some(token) = agent.token().await else {
            return agent_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent holds no valid Tollgate token (see its log)",
            );
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if !dropped(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let Ok(credential) = HeaderValue::from_str(&if anthropic {
            token.expose_secret().to_owned()
        } else {
            format!("Bearer {}", token.expose_secret())
        }) else {
            return agent_error(StatusCode::BAD_GATEWAY, "Tollgate issued an unusable token");
        };
        headers.insert(
            if anthropic {
                HeaderName::from_static("x-api-key")
            } else {
                header::AUTHORIZATION
            },
            credential,
        );
        let sent = agent
            .http
            .request(parts.method.clone(), url.clone())
            .headers(headers)
            .body(body.clone())
            .send()
            .await;
        match sent {
            // Tollgate is restarting: the request never reached it, so it is safe to send again.
            Err(e) if e.is_connect() && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return agent_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("Tollgate unreachable: {}", e.without_url()),
                );
            }
            // The token in hand was revoked or expired early: get a new one, once.
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !renewed => {
                renewed = true;
                let mut fresh = agent.fresh.subscribe();
                fresh.mark_unchanged();
                agent.renew.notify_one();
                let _ = tokio::time::timeout(WAIT, fresh.changed()).await;
            }
            Ok(r) => {
                let mut out = Response::builder().status(r.status());
                for (name, value) in r.headers() {
                    if !dropped(name) {
                        out = out.header(name, value);
                    }
                }
                return out
                    .body(Body::from_stream(r.bytes_stream()))
                    .unwrap_or_else(|_| agent_error(StatusCode::BAD_GATEWAY, "bad response"));
            }
        }
    }
}
