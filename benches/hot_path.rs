//! Micro-benchmarks of the hot path, in process (no sockets): what a Tollgate token's
//! signature check costs the first time, what the verified-token cache answers in, the
//! parse/estimate/rewrite of a request body, and a whole chat completion through the router
//! against the built-in mock provider (authentication, revocation check, model allowlist,
//! max_tokens clamp, worst-case pricing, limits and budget admission, settlement, spend
//! queueing). `cargo bench --bench hot_path`; figures go to `bench/RESULTS.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::ExposeSecret;
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;
use tollgate::app::Application;
use tollgate::config::Config;
use tollgate::providers::{Api, parse_request};
use tollgate::token::Grant;
use tower::ServiceExt;

const POLICY: &str = r#"
models:
  bench-model:
    provider: mock
    price: { input: 0.15, output: 0.60 }
pools:
  bench:
    budget: { usd: 1000000, window: daily }
    limits: { rpm: 100000000, tpm: 100000000000, concurrency: 100000 }
bindings:
  - name: bench
    match: { namespace: bench }
    team: bench
    pool: bench
    billing_owner: bench
    models: [bench-model]
    limits: { rpm: 100000000, tpm: 100000000000, concurrency: 100000 }
    max_tokens: { default: 64, max: 256 }
    max_request_usd: 10
"#;

const BODY: &str = r#"{"model":"bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark"}],"max_tokens":16}"#;

fn grant() -> Grant {
    Grant {
        team: "bench".into(),
        pool: "bench".into(),
        billing_owner: "bench".into(),
        shared_keys: true,
        binding: "bench".into(),
        issuer: "bench".into(),
        pod_uid: None,
        models: vec!["bench-model".into()],
        rpm: Some(100_000_000),
        tpm: Some(100_000_000_000),
        concurrency: Some(100_000),
        max_tokens: 256,
        default_max_tokens: 64,
        max_request_usd: Some(10.0),
    }
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/bench.yaml"), POLICY).unwrap();
    let config = Config::from_toml_str(&format!(
        r#"
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:1"
database_url = "sqlite://{db}"
policy_dir = "{policies}"
[signing]
key_encryption_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[secrets]
path = "{keys}"
"#,
        db = dir.path().join("t.db").display(),
        policies = dir.path().join("policies").display(),
        keys = dir.path().join("keys.yaml").display(),
    ))
    .unwrap();
    std::fs::write(dir.path().join("keys.yaml"), "keys: []\n").unwrap();
    let app = rt.block_on(Application::build(config)).unwrap();
    let state = app.state().clone();
    let router = tollgate::app::router(state.clone());
    let minted = rt
        .block_on(state.tokens.mint(
            "system:serviceaccount:bench:load",
            grant(),
            Duration::from_secs(900),
        ))
        .unwrap();
    let token = minted.token.expose_secret().to_owned();

    let mut g = c.benchmark_group("token");
    g.bench_function("verify_signature_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(state.tokens.verify_uncached(&token).await.unwrap()) });
    });
    g.bench_function("verify_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(state.tokens.verify(&token).await.unwrap()) });
    });
    g.finish();

    let mut g = c.benchmark_group("request");
    g.bench_function("parse_estimate_rewrite", |b| {
        b.iter(|| {
            let mut req = parse_request(
                Api::ChatCompletions,
                bytes::Bytes::from_static(BODY.as_bytes()),
            )
            .unwrap();
            req.set_max_tokens(16);
            black_box(req.estimate_input_tokens());
            black_box(req.upstream_body("bench-upstream"))
        });
    });
    // The default guardrails (every request): inspect the prompt text for secrets and
    // injection phrases; and, when a secret is found, the redacting rewrite of the body.
    let guardrails = tollgate::guardrails::Guardrails::default();
    let prose =
        "The quarterly report shows revenue up 4% with costs flat; summarise it for the board. ";
    let long = json!({"model": "bench-model", "messages": [
        {"role": "system", "content": "You are a careful analyst."},
        {"role": "user", "content": format!("{} key sk-proj-abcdefghijklmnop1234 end", prose.repeat(100))}
    ]})
    .to_string();
    g.bench_function("guardrails_inspect_short", |b| {
        let req = parse_request(
            Api::ChatCompletions,
            bytes::Bytes::from_static(BODY.as_bytes()),
        )
        .unwrap();
        b.iter(|| black_box(guardrails.inspect(&req.prompt_text())));
    });
    let clean = json!({"model": "bench-model", "messages": [
        {"role": "system", "content": "You are a careful analyst."},
        {"role": "user", "content": prose.repeat(100)}
    ]})
    .to_string();
    g.bench_function("guardrails_inspect_8kb_clean", |b| {
        let req = parse_request(Api::ChatCompletions, bytes::Bytes::from(clean.clone())).unwrap();
        b.iter(|| black_box(guardrails.inspect(&req.prompt_text())));
    });
    g.bench_function("guardrails_inspect_8kb_with_secret", |b| {
        let req = parse_request(Api::ChatCompletions, bytes::Bytes::from(long.clone())).unwrap();
        b.iter(|| black_box(guardrails.inspect(&req.prompt_text())));
    });
    g.bench_function("guardrails_inspect_redact_8kb", |b| {
        let req = parse_request(Api::ChatCompletions, bytes::Bytes::from(long.clone())).unwrap();
        b.iter(|| {
            black_box(guardrails.inspect(&req.prompt_text()));
            black_box(req.rewrite_prompt(&mut |t| guardrails.redact(t)))
        });
    });
    let auth = format!("Bearer {token}");
    g.bench_function("chat_completion_in_process_mock", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::post("/v1/chat/completions")
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(Body::from(BODY))
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            black_box(
                axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap(),
            )
        });
    });
    g.finish();
    drop(app);
    drop(dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hot_path
}
criterion_main!(benches);
