//! The LLM endpoints (OpenAI- and Anthropic-compatible) and the hot path that serves them:
//! authenticate → parse once → model allowlist → clamp `max_tokens` → price the worst case →
//! admit (limits, budget) → pick the provider key → forward → settle. Nothing here waits on
//! the store, the secret store or an identity provider.

mod auth;
mod client;
mod decisions;
mod forward;
mod guard;
pub mod hygiene;
mod route;
mod settle;

pub use client::{SendError, UpstreamClient};

use crate::app::AppState;
use crate::error::{ApiError, Code, Shape};
use crate::guardrails::ClassSet;
use crate::policy::{AtCap, BudgetWindow, Model, Pool};
use crate::pricing::{self, Prices, Tokens, Usd};
use crate::providers::{self, Api, Family, ProviderKind};
use crate::quota::{Ask, BudgetSpec, Denied, Limits, RateInfo};
use crate::secrets::{NoKey, Owner};
use crate::store::SpendRecord;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use forward::Outbound;
use route::Candidate;
use settle::Settlement;
use std::time::{Duration, Instant};

/// Routes of the LLM endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
}

async fn chat(State(s): State<AppState>, h: HeaderMap, b: Body) -> Response {
    serve(s, Api::ChatCompletions, h, b).await
}
async fn completions(State(s): State<AppState>, h: HeaderMap, b: Body) -> Response {
    serve(s, Api::Completions, h, b).await
}
async fn embeddings(State(s): State<AppState>, h: HeaderMap, b: Body) -> Response {
    serve(s, Api::Embeddings, h, b).await
}
async fn responses(State(s): State<AppState>, h: HeaderMap, b: Body) -> Response {
    serve(s, Api::Responses, h, b).await
}
async fn messages(State(s): State<AppState>, h: HeaderMap, b: Body) -> Response {
    serve(s, Api::Messages, h, b).await
}

/// The shape errors of a family are rendered in.
pub fn shape(f: Family) -> Shape {
    match f {
        Family::OpenAi => Shape::OpenAi,
        Family::Anthropic => Shape::Anthropic,
    }
}

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut resp = match auth::authenticate(&state, &headers, Family::OpenAi).await {
        Ok(claims) => {
            let policy = state.policy.current();
            let names: Vec<&str> = claims
                .tollgate
                .models
                .iter()
                .map(String::as_str)
                .filter(|m| policy.model(m).is_some())
                .collect();
            axum::Json(providers::models_list(&names)).into_response()
        }
        Err(e) => e.shaped(Shape::OpenAi).into_response(),
    };
    set_request_id(&mut resp, &request_id);
    resp
}

async fn serve(state: AppState, api: Api, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut subject = None;
    let mut resp = match pipeline(
        &state,
        api,
        &headers,
        body,
        &request_id,
        started,
        &mut subject,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            // The refusal's log line is written by the request middleware; it names the
            // subject when the token was good enough to say who asked.
            let mut resp = e.shaped(shape(api.family())).into_response();
            if let Some(s) = subject {
                resp.extensions_mut()
                    .insert(crate::error::RefusedSubject(s));
            }
            resp
        }
    };
    set_request_id(&mut resp, &request_id);
    resp
}

fn set_request_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
}

async fn pipeline(
    state: &AppState,
    api: Api,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
    subject: &mut Option<String>,
) -> Result<Response, ApiError> {
    let claims = auth::authenticate(state, headers, api.family()).await?;
    *subject = Some(claims.sub.clone());
    if let Some(writer) = state.undurable_writer() {
        return Err(ApiError::new(
            Code::Unavailable,
            format!("the store is unavailable and this replica's local spool is full: no call is served whose {writer} record could be lost; retry shortly"),
        )
        .retry_after(5));
    }
    let bytes = read_body(body, headers, state.limits.max_body_bytes).await?;
    let mut req = providers::parse_request(api, bytes)
        .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;

    let policy = state.policy.current();
    let model = policy.model(req.model()).ok_or_else(|| {
        ApiError::new(
            Code::ModelNotFound,
            format!("model {:.120} does not exist", req.model()),
        )
        .param("model")
    })?;
    if !claims.tollgate.models.contains(&model.name) {
        return Err(ApiError::new(
            Code::ModelNotAllowed,
            format!("this token may not use model {}", model.name),
        )
        .param("model"));
    }
    let pool = policy.pool(&claims.tollgate.pool).ok_or_else(|| {
        ApiError::new(
            Code::InvalidToken,
            format!(
                "pool {} no longer exists; exchange a new token",
                claims.tollgate.pool
            ),
        )
    })?;
    let prompt_sha256 = req.prompt_sha256();
    let binding = policy.binding(&claims.tollgate.binding);
    if binding.is_some_and(|b| b.log_prompts) {
        tracing::info!(
            request_id,
            subject = %claims.sub,
            prompt_sha256 = %prompt_sha256,
            prompt = %hygiene::loggable(&req.prompt_text()),
            "prompt (binding logs prompts; secrets redacted)"
        );
    }
    // The binding's guardrails (a binding renamed since the token was minted: the defaults).
    let guarded = guard::apply(
        state,
        &guard::Subject {
            subject: &claims.sub,
            binding: &claims.tollgate.binding,
            request_id,
            model: &model.name,
        },
        binding.map_or(&DEFAULT_GUARDRAILS, |b| &b.guardrails),
        api,
        &mut req,
    )?;
    let classes = guarded.classes;
    let stops = binding.map_or(&[][..], |b| &b.guardrails.stop[..]);
    if !stops.is_empty() {
        req.add_stop(stops);
    }
    // Past the pool's `fallback_at`, the policy routes the model to its cheaper fallback (one
    // step; policy check guarantees it exists and shares the provider).
    let requested = model.name.clone();
    let rerouted = |action: &str, to: &str| {
        decisions::rerouted(state, &claims.sub, &pool.name, action, &requested, to);
    };
    let model = match (pool.fallback_at, &model.fallback) {
        (Some(at), Some(fb)) if state.alerts.level(&pool.name) >= i64::from(at) => {
            match policy.model(fb) {
                Some(cheaper) => {
                    rerouted("budget.fallback", &cheaper.name);
                    cheaper
                }
                None => model,
            }
        }
        _ => model,
    };
    // The policy's cap plus approved increases of this window.
    let cap = state
        .increases
        .cap(pool, crate::clock::ledger_ms())
        .map(Usd);
    // `at_cap: degrade`: once the fleet refused this replica money at the cap, the window is
    // served by the cheapest model the token allows, from the overdraft.
    let degrade = match (&pool.at_cap, &pool.budget, cap) {
        (
            AtCap::Degrade {
                overdraft_micro_usd,
            },
            Some(b),
            Some(cap),
        ) => Some(Degrade {
            overdraft: Usd(i64::try_from(*overdraft_micro_usd).unwrap_or(0)),
            first_day: crate::quota::first_day(&b.window, crate::clock::ledger_ms()),
            cap,
        }),
        _ => None,
    };
    let mut degraded = degrade
        .as_ref()
        .is_some_and(|d| state.quota.is_capped(&pool.name, d.first_day, d.cap));
    let model = if degraded {
        let cheapest = cheapest(state, &policy, &claims.tollgate.models, api).unwrap_or(model);
        rerouted("budget.degrade", &cheapest.name);
        cheapest
    } else {
        model
    };
    let not_cleared = |e: ApiError| {
        if e.code == Code::DataClassNotAllowed {
            state
                .requests
                .guardrail(&claims.tollgate.binding, "data_class", "block");
            state.audit.record(
                &claims.sub,
                "guardrail.block",
                &claims.tollgate.binding,
                serde_json::json!({"request_id": request_id, "model": model.name,
                    "rules": ["data_class"], "classes": classes.to_string(), "reason": e.message}),
            );
        }
        e
    };
    let mut plan = plan(state, api, &claims, model, classes, &mut req).map_err(not_cleared)?;
    let ask = |plan: &Plan<'_>, over_cap: bool| Ask {
        jti: &claims.jti,
        token_limits: Limits {
            rpm: claims.tollgate.rpm,
            tpm: claims.tollgate.tpm,
            concurrency: claims.tollgate.concurrency,
        },
        pool: &pool.name,
        pool_limits: Limits {
            rpm: pool.limits.rpm,
            tpm: pool.limits.tpm,
            concurrency: pool.limits.concurrency,
        },
        budget: pool.budget.as_ref().zip(cap).map(|(b, cap)| BudgetSpec {
            cap: match &degrade {
                Some(d) if over_cap => Usd(cap.micros().saturating_add(d.overdraft.micros())),
                _ => cap,
            },
            window: b.window.clone(),
        }),
        worst_tokens: plan.input_estimate + plan.reserved_out,
        worst_cost: plan.worst_cost,
        now_ms: crate::clock::ledger_ms(),
    };
    let over_overdraft = |mut e: ApiError, d: &Degrade| {
        if e.code == Code::BudgetExceeded {
            e.message = format!(
                "budget of pool {} exhausted: its cap of {} and its overdraft of {} for the cheapest model are spent this window",
                pool.name, d.cap, d.overdraft
            );
        }
        e
    };
    let refused = |e: ApiError, model: &str| {
        decisions::refused(state, &claims.sub, &pool.name, model, &e);
        e
    };
    let first = admit(state, &ask(&plan, degraded), pool, &claims.sub).await;
    let admission = match (first, &degrade) {
        (Ok(a), _) => a,
        (Err(e), Some(d)) if degraded => {
            return Err(refused(over_overdraft(e, d), &plan.model.name));
        }
        (Err(e), Some(d)) if e.code == Code::BudgetExceeded => {
            state.quota.mark_capped(&pool.name, d.first_day, d.cap);
            let Some(m) = cheapest(state, &policy, &claims.tollgate.models, api) else {
                return Err(refused(e, &plan.model.name));
            };
            tracing::info!(pool = %pool.name, model = %m.name, "pool at its cap: serving the cheapest model from the overdraft");
            rerouted("budget.degrade", &m.name);
            plan = self::plan(state, api, &claims, m, classes, &mut req).map_err(not_cleared)?;
            degraded = true;
            admit(state, &ask(&plan, true), pool, &claims.sub)
                .await
                .map_err(|e| refused(over_overdraft(e, d), &plan.model.name))?
        }
        (Err(e), _) => return Err(refused(e, &plan.model.name)),
    };
    let Plan {
        model,
        candidates,
        input_estimate,
        output_limit,
        reserved_out,
        prices,
        ..
    } = plan;
    let rate = admission.rate_info();
    // The row names the first candidate until an attempt names the one it went to.
    let first = &candidates[0];

    let record = SpendRecord {
        request_id: request_id.to_owned(),
        at: crate::clock::ledger_ms(),
        jti: claims.jti.clone(),
        subject: claims.sub.clone(),
        team: claims.tollgate.team.clone(),
        pool: claims.tollgate.pool.clone(),
        billing_owner: first.billing_owner.clone(),
        provider: first.route.id.clone(),
        provider_key_id: first
            .key
            .as_ref()
            .map_or_else(|| "mock".to_owned(), |k| k.id.clone()),
        model: model.name.clone(),
        upstream_model: first.deployment.upstream_model.clone(),
        requested_model: Some(requested.clone()),
        deployment: Some(first.deployment.name.clone()),
        endpoint: api.path().to_owned(),
        stream: req.stream(),
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        cost_micro_usd: 0,
        status: 0,
        latency_ms: 0,
        prompt_sha256: Some(prompt_sha256),
        provider_key_version: first.key.as_ref().map(|k| k.version.clone()),
    };
    let settle = Settlement::new(
        admission,
        record,
        prices,
        input_estimate,
        state.spend.clone(),
        started,
        state.requests.clone(),
    );
    let out = Outbound {
        api,
        request: &req,
        client_headers: headers,
        output_limit,
        stops,
    };
    let mut resp = route::serve(
        state,
        model,
        &out,
        &candidates,
        input_estimate + reserved_out,
        settle,
    )
    .await?;
    set_rate_headers(resp.headers_mut(), &rate);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&model.name) {
        h.insert(HeaderName::from_static("x-tollgate-model"), v);
    }
    if model.name != requested
        && let Ok(v) = HeaderValue::from_str(&requested)
    {
        h.insert(HeaderName::from_static("x-tollgate-fallback-from"), v);
    }
    for (name, list) in [
        ("x-tollgate-flagged", &guarded.flagged),
        ("x-tollgate-redacted", &guarded.redacted),
    ] {
        if !list.is_empty()
            && let Ok(v) = HeaderValue::from_str(&list.join(","))
        {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    if degraded {
        // Served from the overdraft of an `at_cap: degrade` pool.
        h.insert(
            HeaderName::from_static("x-tollgate-degraded"),
            HeaderValue::from_static("budget"),
        );
    }
    Ok(resp)
}

/// The guardrails of a token whose binding no longer exists.
static DEFAULT_GUARDRAILS: std::sync::LazyLock<crate::guardrails::Guardrails> =
    std::sync::LazyLock::new(crate::guardrails::Guardrails::default);

/// An `at_cap: degrade` pool's terms for the current window.
struct Degrade {
    overdraft: Usd,
    first_day: i64,
    cap: Usd,
}

/// What a request is admitted and forwarded with once its model is chosen.
struct Plan<'s> {
    model: &'s Model,
    /// The deployments that can serve it (at least one).
    candidates: Vec<Candidate<'s>>,
    input_estimate: u64,
    /// A stream is cut off past this many output tokens.
    output_limit: Option<u64>,
    /// Output tokens reserved.
    reserved_out: u64,
    prices: Prices,
    worst_cost: Usd,
}

/// Deployments, keys, `max_tokens` and worst case of serving `req` with `model`.
fn plan<'s>(
    state: &'s AppState,
    api: Api,
    claims: &crate::token::Claims,
    model: &'s Model,
    classes: ClassSet,
    req: &mut providers::InboundRequest,
) -> Result<Plan<'s>, ApiError> {
    let candidates = candidates(state, api, claims, model, classes)?;
    let max_out = if api == Api::Embeddings {
        0
    } else {
        // A key's own `max_tokens_default` lowers the default (the lowest of the keys the
        // request may be served with: the answer must not depend on the deployment drawn).
        let default = candidates
            .iter()
            .filter_map(|c| c.key.as_ref().and_then(|k| k.max_tokens_default))
            .min()
            .map_or(claims.tollgate.default_max_tokens, |d| {
                d.min(claims.tollgate.default_max_tokens)
            });
        let effective = req
            .max_tokens()
            .map_or(default, |n| n.min(claims.tollgate.max_tokens));
        if req.max_tokens() != Some(effective) {
            req.set_max_tokens(effective);
        }
        effective
    };
    let input_estimate = req.estimate_input_tokens();
    // A stream is metered as it runs and cut off past this many output tokens; the margin
    // over max_tokens absorbs the meter's conservative counting, so a provider that honours
    // max_tokens is never cut, and it is reserved, so a cut stream stays within the budget.
    let output_limit = (req.stream() && api != Api::Embeddings)
        .then(|| u64::from(max_out) + (u64::from(max_out) / 10).max(16));
    let reserved_out = output_limit.unwrap_or(u64::from(max_out));
    // Reserved at the dearest deployment it may reach (failover may end there); charged at
    // the prices of the one that serves.
    let prices = candidates.iter().fold(Prices::default(), |p, c| {
        let d = &c.deployment.price;
        Prices {
            input: p.input.max(d.input_per_mtok_micro_usd),
            output: p.output.max(d.output_per_mtok_micro_usd),
            cached_input: p.cached_input.max(d.cached_input_per_mtok_micro_usd),
        }
    });
    let worst_cost = pricing::cost(
        &prices,
        &Tokens {
            input: input_estimate,
            output: reserved_out,
            cached_input: 0,
        },
    );
    if let Some(cap) = claims
        .tollgate
        .max_request_usd
        .and_then(Usd::from_f64_dollars)
        && worst_cost > cap
    {
        return Err(ApiError::new(
            Code::RequestTooExpensive,
            format!(
                "this request may cost up to {worst_cost}, over the token's limit of {cap} per request; lower max_tokens or shorten the prompt"
            ),
        ));
    }

    Ok(Plan {
        model,
        candidates,
        input_estimate,
        output_limit,
        reserved_out,
        prices,
        worst_cost,
    })
}

/// The deployments of `model` that can serve `api` for this token, each with its key. None:
/// the most telling reason (a missing key, then a provider that speaks another API, then a
/// provider that is not configured).
fn candidates<'s>(
    state: &'s AppState,
    api: Api,
    claims: &crate::token::Claims,
    model: &'s Model,
    classes: ClassSet,
) -> Result<Vec<Candidate<'s>>, ApiError> {
    let mut out = Vec::with_capacity(model.deployments.len());
    let mut not_cleared = None;
    let mut unconfigured = None;
    let mut other_api = None;
    let mut no_key = None;
    for d in &model.deployments {
        // Routing never sends a class of data to a deployment not cleared for it.
        if !crate::routing::cleared(d, classes) {
            not_cleared.get_or_insert_with(|| {
                ApiError::new(
                    Code::DataClassNotAllowed,
                    format!(
                        "model {} may not receive {} data: none of its deployments is cleared for it",
                        model.name,
                        d.data_classes.missing(classes)
                    ),
                )
                .param("model")
            });
            continue;
        }
        let Some(route) = state.providers.get(&d.provider) else {
            unconfigured.get_or_insert_with(|| {
                ApiError::new(
                    Code::NoProviderKey,
                    format!("provider {} is not configured", d.provider),
                )
            });
            continue;
        };
        if route.kind.family().is_some_and(|f| f != api.family()) {
            other_api.get_or_insert_with(|| {
                ApiError::new(
                    Code::InvalidRequest,
                    format!(
                        "model {} is served by provider {}, which does not speak {}",
                        model.name,
                        d.provider,
                        api.path()
                    ),
                )
                .param("model")
            });
            continue;
        }
        // A deployment may name whose keys pay for it (a central on-prem key, say).
        let owner = d
            .billing_owner
            .as_deref()
            .unwrap_or(&claims.tollgate.billing_owner);
        let key = if route.kind == ProviderKind::Mock {
            None
        } else {
            let picked = state.keys.select(
                &d.provider,
                &model.name,
                Owner {
                    name: owner,
                    shared: claims.tollgate.shared_keys,
                },
                |k| !state.revocations.key_disabled(&k.id),
            );
            match picked {
                Ok(k) => Some(k),
                Err(e) => {
                    no_key.get_or_insert_with(|| no_key_error(&d.provider, owner, claims, e));
                    continue;
                }
            }
        };
        out.push(Candidate {
            deployment: d,
            route,
            key,
            billing_owner: owner.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(no_key
            .or(not_cleared)
            .or(other_api)
            .or(unconfigured)
            .unwrap_or_else(|| {
                ApiError::new(
                    Code::NoProviderKey,
                    format!("model {} has no deployment", model.name),
                )
            }));
    }
    Ok(out)
}

fn no_key_error(provider: &str, owner: &str, claims: &crate::token::Claims, e: NoKey) -> ApiError {
    match e {
        NoKey::NoMatch => ApiError::new(
            Code::NoProviderKey,
            format!(
                "no usable {provider} key for billing owner {owner}{}",
                if claims.tollgate.shared_keys {
                    ""
                } else {
                    " (binding does not allow shared keys)"
                }
            ),
        )
        .retry_after(30),
        NoKey::Stale { age } => ApiError::new(
            Code::NoProviderKey,
            format!(
                "provider keys are unavailable: the secret store has not answered for {}s",
                age.as_secs()
            ),
        )
        .retry_after(30),
    }
}

/// The model of the token's allowlist with the lowest price that can serve `api`.
fn cheapest<'p>(
    state: &AppState,
    policy: &'p crate::policy::PolicySet,
    allowed: &[String],
    api: Api,
) -> Option<&'p Model> {
    allowed
        .iter()
        .filter_map(|m| policy.model(m))
        .filter(|m| {
            m.providers().any(|p| {
                state
                    .providers
                    .get(p)
                    .is_some_and(|r| r.kind.family().is_none_or(|f| f == api.family()))
            })
        })
        .min_by_key(|m| {
            (
                m.price.input_per_mtok_micro_usd + m.price.output_per_mtok_micro_usd,
                m.name.as_str(),
            )
        })
}

/// Read the body up to `limit`. An oversized body is still drained (up to a bound, briefly)
/// so the client reads a clean 413 instead of a connection reset mid-upload.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    const DRAIN_MAX: usize = 64 * 1024 * 1024;
    let too_large = || {
        ApiError::new(
            Code::RequestTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "request body could not be read",
                ));
            }
            Err(_) if over => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "request body was not received in time",
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > limit {
            over = true;
        }
        if over {
            if seen > DRAIN_MAX {
                return Err(too_large());
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        Err(too_large())
    } else {
        Ok(buf.freeze())
    }
}

/// Admit `ask` under `pool`'s `at_cap` action: with `queue`, a request refused for a rate
/// window, a concurrency slot or budget (not in a monthly window: a month does not free up
/// while a client waits) waits up to the pool's timeout and is admitted as soon as capacity
/// frees up — woken by a local settlement or polling, since other replicas free it too.
async fn admit(
    state: &AppState,
    ask: &Ask<'_>,
    pool: &Pool,
    subject: &str,
) -> Result<crate::quota::Admission, ApiError> {
    let refused = match admit_once(state, ask).await {
        Ok(a) => return Ok(a),
        Err(e) => e,
    };
    let AtCap::Queue {
        timeout,
        max_waiting,
    } = pool.at_cap
    else {
        return Err(refused);
    };
    let queueable = |e: &ApiError| match e.code {
        Code::RateLimitExceeded => true,
        Code::BudgetExceeded => ask
            .budget
            .as_ref()
            .is_some_and(|b| !matches!(b.window, BudgetWindow::Monthly { .. })),
        _ => false,
    };
    if !queueable(&refused) {
        return Err(refused);
    }
    let Some(_slot) = state.quota.enqueue(ask.pool, max_waiting) else {
        let mut e = refused;
        e.message = format!(
            "{}; the queue of pool {} is full ({max_waiting} waiting)",
            e.message, ask.pool
        );
        return Err(e);
    };
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut last = refused;
    loop {
        // A full rate window frees up at the next minute; a budget or a concurrency slot when
        // some request settles, here or on another replica.
        let poll = match last.code {
            Code::RateLimitExceeded => last
                .retry_after
                .map_or(QUEUE_POLL, |s| Duration::from_secs(s).min(QUEUE_POLL * 4)),
            _ => QUEUE_POLL,
        };
        let until = (tokio::time::Instant::now() + poll).min(deadline);
        tokio::select! {
            () = state.quota.released() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        let again = Ask {
            now_ms: crate::clock::ledger_ms(),
            ..ask.clone()
        };
        match admit_once(state, &again).await {
            Ok(a) => {
                decisions::queued(state, subject, ask.pool, started.elapsed());
                return Ok(a);
            }
            Err(e) if queueable(&e) => last = e,
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            last.message = format!(
                "{} (after waiting {}s in the queue of pool {})",
                last.message,
                started.elapsed().as_secs(),
                ask.pool
            );
            return Err(last);
        }
    }
}

/// How often a queued request looks again for capacity freed on other replicas.
const QUEUE_POLL: Duration = Duration::from_millis(500);

/// Admit `ask`, topping up this replica's budget lease from the store when it is short (the
/// uncommon path: a background task keeps leases topped up).
async fn admit_once(state: &AppState, ask: &Ask<'_>) -> Result<crate::quota::Admission, ApiError> {
    use crate::app::budget::Need;
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(pool = ask.pool, error = %e, "budget lease could not be topped up");
        ApiError::new(
            Code::Unavailable,
            format!(
                "the budget of pool {} cannot be checked right now; retry shortly",
                ask.pool
            ),
        )
        .retry_after(1)
    };
    // Each round fills one short window or lease: up to four rate windows (token and pool,
    // requests and tokens) and the budget, with room for others racing for the same money.
    let mut raced_for_rate = false;
    for _ in 0..8 {
        let need = match state.quota.admit(ask) {
            Ok(a) => return Ok(a),
            Err(Denied::NeedsRate(need)) => {
                // Filled or not, the next admission decides: a window the fleet used up is
                // refused there with its Retry-After.
                state.rates.refill(&need).await;
                raced_for_rate = true;
                continue;
            }
            Err(Denied::NeedsBudget { want, .. }) => Need::Money(want),
            Err(Denied::NeedsReport { .. }) => Need::Report,
            Err(d) => return Err(denied(d)),
        };
        raced_for_rate = false;
        match state.leases.refill(ask.pool, need).await {
            Ok(true) => {}
            Ok(false) => {
                state.alerts.reached_cap(ask.pool);
                return Err(denied(Denied::Budget {
                    pool: ask.pool.to_owned(),
                    cap: ask.budget.as_ref().map_or(Usd::ZERO, |b| b.cap),
                    worst: ask.worst_cost,
                }));
            }
            Err(e) => return Err(unavailable(&e)),
        }
    }
    // Other requests took what was topped up round after round: the window is nearly spent.
    if raced_for_rate {
        return Err(ApiError::new(
            Code::RateLimitExceeded,
            "per-minute limit nearly reached: other requests took the last of this minute's window",
        )
        .retry_after(1));
    }
    state.alerts.reached_cap(ask.pool);
    Err(denied(Denied::Budget {
        pool: ask.pool.to_owned(),
        cap: ask.budget.as_ref().map_or(Usd::ZERO, |b| b.cap),
        worst: ask.worst_cost,
    }))
}

fn denied(d: Denied) -> ApiError {
    match &d {
        Denied::Rate { retry_after, .. } => {
            ApiError::new(Code::RateLimitExceeded, d.to_string()).retry_after(*retry_after)
        }
        Denied::Concurrency { .. } => {
            ApiError::new(Code::RateLimitExceeded, d.to_string()).retry_after(1)
        }
        Denied::TooLarge { .. } => ApiError::new(Code::RequestTooLarge, d.to_string()),
        Denied::Budget { .. } => ApiError::new(Code::BudgetExceeded, d.to_string()),
        Denied::NeedsBudget { .. } | Denied::NeedsReport { .. } | Denied::NeedsRate(_) => {
            ApiError::new(Code::Unavailable, d.to_string()).retry_after(1)
        }
    }
}

fn set_rate_headers(h: &mut HeaderMap, r: &RateInfo) {
    let pairs = [
        ("x-ratelimit-limit-requests", r.limit_requests),
        ("x-ratelimit-remaining-requests", r.remaining_requests),
        ("x-ratelimit-limit-tokens", r.limit_tokens),
        ("x-ratelimit-remaining-tokens", r.remaining_tokens),
    ];
    for (name, v) in pairs {
        if let Some(v) = v {
            h.insert(HeaderName::from_static(name), HeaderValue::from(v));
        }
    }
    // OpenAI's duration format ("12s", "850ms"): when the current window ends.
    let reset = if r.reset_ms >= 1_000 {
        format!("{}s", (r.reset_ms + 999) / 1_000)
    } else {
        format!("{}ms", r.reset_ms.max(0))
    };
    for (limited, name) in [
        (r.limit_requests, "x-ratelimit-reset-requests"),
        (r.limit_tokens, "x-ratelimit-reset-tokens"),
    ] {
        if limited.is_some()
            && let Ok(v) = HeaderValue::from_str(&reset)
        {
            h.insert(HeaderName::from_static(name), v);
        }
    }
}
