//! The LLM endpoints end to end: real server, loopback upstream that checks the injected key,
//! both stores. Every row of DESIGN.md's error table is exercised here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, POLICY, TestApp, request_id, spawn_app};
use support::db::kinds;
use tollgate::store::{NewRevocation, RevocationKind};

macro_rules! on_both_stores {
    ($name:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for kind in kinds() {
                eprintln!("--- store backend: {kind:?}");
                let app = spawn_app(kind).await;
                $body(&app).await;
                app.stop().await;
            }
        }
    };
}

/// Read an SSE body into its `data:` payloads.
async fn sse_data(r: reqwest::Response) -> Vec<String> {
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_owned()))
        .collect()
}

async fn openai_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "expected {code}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(v["error"]["type"].is_string());
    v
}

async fn anthropic_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "expected {code}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["type"].is_string());
    v
}

fn price(input: i64, output: i64, in_per_m: i64, out_per_m: i64) -> i64 {
    // micro-dollars, rounded up
    (input * in_per_m + output * out_per_m + 999_999) / 1_000_000
}

async fn chat_completion_injects_the_key_and_records_spend(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let r = app
        .post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("gpt-test", "hello there tollgate"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    let usage = body["usage"].clone();

    let seen = app.upstream.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.header("authorization").unwrap(),
        format!("Bearer {OPENAI_KEY}")
    );
    for (name, value) in last.headers.iter() {
        assert!(
            !value.contains(&token),
            "Tollgate token forwarded in {name}"
        );
    }
    assert_eq!(last.body["model"], "gpt-test-upstream");
    assert_eq!(last.body["max_tokens"], 64, "binding default applied");

    let row = app.spend_row(&rid).await;
    assert_eq!(row.model, "gpt-test");
    assert_eq!(row.upstream_model, "gpt-test-upstream");
    assert_eq!(row.team, "a");
    assert_eq!(row.pool, "main");
    assert_eq!(row.billing_owner, "team-a");
    assert_eq!(row.provider, "openai");
    assert_eq!(row.provider_key_id, "openai-team-a");
    assert_eq!(row.subject, "system:serviceaccount:team-a:app");
    assert_eq!(row.endpoint, "/v1/chat/completions");
    assert_eq!(row.status, 200);
    assert!(!row.stream);
    assert_eq!(row.input_tokens, usage["prompt_tokens"].as_i64().unwrap());
    assert_eq!(
        row.output_tokens,
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        row.cost_micro_usd,
        price(row.input_tokens, row.output_tokens, 1_000_000, 2_000_000)
    );
}
on_both_stores!(
    chat_completion_injects_the_key_and_records_spend_test,
    chat_completion_injects_the_key_and_records_spend
);

async fn streamed_chat_relays_events_reads_usage_and_strips_the_usage_chunk(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let mut body = TestApp::chat("gpt-test", "stream me a few words please");
    body["stream"] = json!(true);
    let r = app.post("/v1/chat/completions", &token, &body).await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let events = sse_data(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 2);
    assert!(
        chunks.iter().all(|c| c["usage"].is_null()),
        "client did not ask for usage"
    );
    let upstream_saw = app.upstream.requests().last().unwrap().body.clone();
    assert_eq!(upstream_saw["stream_options"]["include_usage"], true);
    let row = app.spend_row(&rid).await;
    assert!(row.stream);
    assert!(row.input_tokens > 0 && row.output_tokens > 0, "{row:?}");

    // A client that asks for usage gets exactly one usage chunk, matching the spend row.
    body["stream_options"] = json!({"include_usage": true});
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let rid = request_id(&r);
    let events = sse_data(r).await;
    let usage: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| !c["usage"].is_null())
        .collect();
    assert_eq!(usage.len(), 1);
    let row = app.spend_row(&rid).await;
    assert_eq!(
        row.input_tokens,
        usage[0]["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        row.output_tokens,
        usage[0]["usage"]["completion_tokens"].as_i64().unwrap()
    );
}
on_both_stores!(
    streamed_chat_relays_events_reads_usage_and_strips_the_usage_chunk_test,
    streamed_chat_relays_events_reads_usage_and_strips_the_usage_chunk
);

async fn completions_embeddings_and_responses_are_proxied_with_usage(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let r = app
        .post(
            "/v1/completions",
            &token,
            &json!({"model": "gpt-test", "prompt": "once upon a time"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        app.spend_row(&rid).await.output_tokens,
        v["usage"]["completion_tokens"].as_i64().unwrap()
    );

    let r = app
        .post(
            "/v1/embeddings",
            &token,
            &json!({"model": "embed-test", "input": ["a b c", "d e"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    let row = app.spend_row(&rid).await;
    assert_eq!(
        row.input_tokens,
        v["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(row.output_tokens, 0);
    assert!(
        app.upstream
            .requests()
            .last()
            .unwrap()
            .body
            .get("max_tokens")
            .is_none()
    );

    let r = app
        .post(
            "/v1/responses",
            &token,
            &json!({"model": "gpt-test", "input": "tell me about tollgates"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    let row = app.spend_row(&rid).await;
    assert_eq!(
        row.input_tokens,
        v["usage"]["input_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        row.output_tokens,
        v["usage"]["output_tokens"].as_i64().unwrap()
    );

    let r = app
        .post(
            "/v1/responses",
            &token,
            &json!({"model": "gpt-test", "input": "stream it", "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let events = sse_data(r).await;
    assert!(events.iter().any(|e| e.contains("response.completed")));
    let row = app.spend_row(&rid).await;
    assert!(row.output_tokens > 0 && row.stream);
}
on_both_stores!(
    completions_embeddings_and_responses_are_proxied_with_usage_test,
    completions_embeddings_and_responses_are_proxied_with_usage
);

async fn anthropic_messages_plain_and_streamed(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let body = json!({"model": "claude-test", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello claude from tollgate"}]});
    let r = app.anthropic(&token, &body).await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    let last = app.upstream.requests().last().unwrap().clone();
    assert_eq!(last.path, "/v1/messages");
    assert_eq!(last.header("x-api-key").unwrap(), ANTHROPIC_KEY);
    assert_eq!(last.header("anthropic-version").unwrap(), "2023-06-01");
    assert!(last.header("authorization").is_none());
    assert_eq!(last.body["model"], "claude-test-upstream");
    let row = app.spend_row(&rid).await;
    assert_eq!(
        row.input_tokens,
        v["usage"]["input_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        row.output_tokens,
        v["usage"]["output_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        row.cost_micro_usd,
        price(row.input_tokens, row.output_tokens, 3_000_000, 15_000_000)
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    // Authorization: Bearer works for Anthropic too.
    let r = app.post("/v1/messages", &token, &streamed).await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let events = sse_data(r).await;
    assert!(events.iter().any(|e| e.contains("message_stop")));
    let row = app.spend_row(&rid).await;
    assert!(
        row.stream && row.input_tokens > 0 && row.output_tokens > 0,
        "{row:?}"
    );
}
on_both_stores!(
    anthropic_messages_plain_and_streamed_test,
    anthropic_messages_plain_and_streamed
);

async fn models_endpoint_lists_the_tokens_models(app: &TestApp) {
    let token = app.token_for("slow-lane").await;
    let r = app
        .http
        .get(format!("{}/v1/models", app.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-test"]);
    let r = app
        .http
        .get(format!("{}/v1/models", app.url))
        .send()
        .await
        .unwrap();
    openai_error(r, 401, "invalid_token").await;
}
on_both_stores!(
    models_endpoint_lists_the_tokens_models_test,
    models_endpoint_lists_the_tokens_models
);

async fn max_tokens_is_clamped_to_the_binding(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let mut body = TestApp::chat("gpt-test", "hi");
    body["max_tokens"] = json!(100_000);
    assert_eq!(
        app.post("/v1/chat/completions", &token, &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.upstream.requests().last().unwrap().body["max_tokens"],
        256
    );
    let mut body = TestApp::chat("gpt-test", "hi");
    body["max_completion_tokens"] = json!(10);
    assert_eq!(
        app.post("/v1/chat/completions", &token, &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.upstream.requests().last().unwrap().body["max_completion_tokens"],
        10
    );
}
on_both_stores!(
    max_tokens_is_clamped_to_the_binding_test,
    max_tokens_is_clamped_to_the_binding
);

async fn bad_tokens_get_401_in_each_apis_shape(app: &TestApp) {
    let body = TestApp::chat("gpt-test", "hi");
    let r = app
        .http
        .post(format!("{}/v1/chat/completions", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    openai_error(r, 401, "invalid_token").await;
    let r = app
        .http
        .post(format!("{}/v1/messages", app.url))
        .json(&json!({"model": "claude-test", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    anthropic_error(r, 401, "invalid_token").await;
    // A workload token is not a Tollgate token.
    let wl = app.workload_token("team-a", "app");
    openai_error(
        app.post("/v1/chat/completions", &wl, &body).await,
        401,
        "invalid_token",
    )
    .await;
    // Tampered Tollgate token.
    let token = app.token_for("team-a").await;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replace('a', "b");
    let forged = parts.join(".");
    openai_error(
        app.post("/v1/chat/completions", &forged, &body).await,
        401,
        "invalid_token",
    )
    .await;
    for junk in ["x", "a.b.c", &"A".repeat(20_000)] {
        openai_error(
            app.post("/v1/chat/completions", junk, &body).await,
            401,
            "invalid_token",
        )
        .await;
    }
    assert!(
        app.upstream.requests().is_empty(),
        "nothing reached the provider"
    );
}
on_both_stores!(
    bad_tokens_get_401_in_each_apis_shape_test,
    bad_tokens_get_401_in_each_apis_shape
);

async fn revoked_tokens_are_refused(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let body = TestApp::chat("gpt-test", "hi");
    assert_eq!(
        app.post("/v1/chat/completions", &token, &body)
            .await
            .status(),
        200
    );
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let revoke = |kind, value: &str| NewRevocation {
        kind,
        value: value.to_owned(),
        reason: "test".into(),
        created_at: tollgate::clock::now_ms(),
        expires_at: None,
        created_by: "test".into(),
    };
    app.state
        .revocations
        .revoke(&revoke(
            RevocationKind::Jti,
            claims["jti"].as_str().unwrap(),
        ))
        .await
        .unwrap();
    openai_error(
        app.post("/v1/chat/completions", &token, &body).await,
        401,
        "token_revoked",
    )
    .await;

    // A team revocation cuts every token of the team issued before it.
    let other = app.token_for("team-a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.state
        .revocations
        .revoke(&revoke(RevocationKind::Team, "a"))
        .await
        .unwrap();
    anthropic_error(
        app.anthropic(&other, &json!({"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
            .await,
        401,
        "token_revoked",
    )
    .await;
}
on_both_stores!(revoked_tokens_are_refused_test, revoked_tokens_are_refused);

async fn policy_refusals_follow_the_error_table(app: &TestApp) {
    let token = app.token_for("team-a").await;
    // model not in the token
    openai_error(
        app.post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("unbound", "hi"),
        )
        .await,
        403,
        "model_not_allowed",
    )
    .await;
    // unknown model
    openai_error(
        app.post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("gpt-9000", "hi"),
        )
        .await,
        404,
        "model_not_found",
    )
    .await;
    // worst case over max_request_usd
    openai_error(
        app.post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("pricey", "hi"),
        )
        .await,
        400,
        "request_too_expensive",
    )
    .await;
    // body over the size limit
    let huge = TestApp::chat("gpt-test", &"word ".repeat(2_000_000));
    openai_error(
        app.post("/v1/chat/completions", &token, &huge).await,
        413,
        "request_too_large",
    )
    .await;
    // provider not configured / no key for the owner
    openai_error(
        app.post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("orphan", "hi"),
        )
        .await,
        503,
        "no_provider_key",
    )
    .await;
    let nokeys = app.token_for("no-keys").await;
    anthropic_error(
        app.anthropic(&nokeys, &json!({"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
            .await,
        503,
        "no_provider_key",
    )
    .await;
    // Anthropic model on an OpenAI endpoint
    let r = app
        .post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("claude-test", "hi"),
        )
        .await;
    openai_error(r, 400, "invalid_request").await;
    assert!(
        app.upstream.requests().is_empty(),
        "nothing reached the provider"
    );
}
on_both_stores!(
    policy_refusals_follow_the_error_table_test,
    policy_refusals_follow_the_error_table
);

async fn rate_limits_and_budgets_refuse_with_429(app: &TestApp) {
    let token = app.token_for("slow-lane").await;
    let body = TestApp::chat("gpt-test", "hi");
    for i in 0..2 {
        let r = app.post("/v1/chat/completions", &token, &body).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (1 - i).to_string().as_str()
        );
        let reset = r.headers()["x-ratelimit-reset-requests"].to_str().unwrap();
        let secs: u64 = reset
            .strip_suffix("ms")
            .map(|_| 0)
            .or_else(|| reset.strip_suffix('s').and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("OpenAI duration format: {reset}"));
        assert!(secs <= 60, "{reset}");
        assert!(
            !r.headers().contains_key("x-ratelimit-limit-tokens"),
            "no token limit on this token or its pool"
        );
    }
    // A token without limits of its own sees its pool's (rpm 100000).
    let pooled = app.token_for("team-a").await;
    let r = app.post("/v1/chat/completions", &pooled, &body).await;
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "100000");
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));

    let r = app.post("/v1/chat/completions", &token, &body).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    openai_error(r, 429, "rate_limit_exceeded").await;

    let broke = app.token_for("broke").await;
    openai_error(
        app.post("/v1/chat/completions", &broke, &body).await,
        429,
        "budget_exceeded",
    )
    .await;
}
on_both_stores!(
    rate_limits_and_budgets_refuse_with_429_test,
    rate_limits_and_budgets_refuse_with_429
);

async fn upstream_failures_map_to_502_and_504_without_leaking_the_key(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let body = TestApp::chat("gpt-test", "hi");
    // A 500 is retried once (the default `routing.retries`) after a jittered backoff; a
    // second 500 is the answer.
    let calls = app.upstream.calls();
    for _ in 0..2 {
        app.upstream
            .fail_next(500, json!({"error": {"message": "boom"}}));
    }
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let rid = request_id(&r);
    openai_error(r, 502, "upstream_error").await;
    assert_eq!(app.upstream.calls() - calls, 2);
    assert_eq!(
        app.spend_row(&rid).await.cost_micro_usd,
        0,
        "a refused call costs nothing"
    );

    app.upstream.fail_next(
        401,
        json!({"error": {"message": format!("Incorrect API key provided: {OPENAI_KEY}"), "code": "invalid_api_key"}}),
    );
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let text = r.text().await.unwrap();
    assert!(!text.contains(OPENAI_KEY), "provider key leaked: {text}");
    assert!(text.contains("upstream_error"), "{text}");

    // The provider's verdict on the request itself is relayed.
    app.upstream.fail_next(
        400,
        json!({"error": {"message": "bad param", "type": "invalid_request_error"}}),
    );
    let r = app.post("/v1/chat/completions", &token, &body).await;
    assert_eq!(r.status(), 400);

    // A provider that takes too long may still do (and bill) the work: the reservation is
    // charged, once; a provider that cannot be reached costs nothing.
    app.upstream.delay_next(Duration::from_secs(4));
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let rid = request_id(&r);
    openai_error(r, 504, "upstream_timeout").await;
    let row = app.spend_row(&rid).await;
    assert!(
        row.cost_micro_usd > 0,
        "a timed-out call is charged its reservation"
    );
}
on_both_stores!(
    upstream_failures_map_to_502_and_504_without_leaking_the_key_test,
    upstream_failures_map_to_502_and_504_without_leaking_the_key
);

async fn malformed_bodies_get_400_in_the_apis_shape(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let raw = |body: &'static str| {
        app.http
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        "not json",
        "[1,2]",
        "{}",
        r#"{"model": 5, "messages": []}"#,
        r#"{"model": "gpt-test", "messages": [], "stream": "yes"}"#,
        r#"{"model": "gpt-test", "messages": [], "max_tokens": -1}"#,
        "{\"model\": \"gpt-test\", \"messages\": \"\u{0}\"",
        "",
    ] {
        let r = raw(body).await.unwrap();
        openai_error(r, 400, "invalid_request").await;
    }
    let r = app
        .http
        .post(format!("{}/v1/messages", app.url))
        .header("x-api-key", &token)
        .body("{\"model\":")
        .send()
        .await
        .unwrap();
    anthropic_error(r, 400, "invalid_request").await;
    // unknown routes and methods are problem+json
    let r = app
        .http
        .get(format!("{}/v2/nothing", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app
        .http
        .get(format!("{}/v1/chat/completions", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}
on_both_stores!(
    malformed_bodies_get_400_in_the_apis_shape_test,
    malformed_bodies_get_400_in_the_apis_shape
);

async fn policy_reload_applies_without_restart_and_keeps_last_good(app: &TestApp) {
    let token = app.token_for("team-a").await;
    app.write_policy("models: [this is: not valid");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        app.post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("gpt-test", "hi")
        )
        .await
        .status(),
        200,
        "a broken edit keeps the last good policy"
    );
    app.write_policy(&POLICY.replace(
        "upstream_model: gpt-test-upstream",
        "upstream_model: gpt-reloaded",
    ));
    let mut reloaded = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = app
            .post(
                "/v1/chat/completions",
                &token,
                &TestApp::chat("gpt-test", "hi"),
            )
            .await;
        assert_eq!(r.status(), 200);
        if app.upstream.requests().last().unwrap().body["model"] == "gpt-reloaded" {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "policy change picked up");
}
on_both_stores!(
    policy_reload_applies_without_restart_and_keeps_last_good_test,
    policy_reload_applies_without_restart_and_keeps_last_good
);

async fn mock_provider_serves_both_wire_formats(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let r = app
        .post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("mocked", "hello mock"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let v: Value = r.json().await.unwrap();
    let row = app.spend_row(&rid).await;
    assert_eq!(row.provider_key_id, "mock");
    assert_eq!(
        row.input_tokens,
        v["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert!(
        app.upstream.requests().is_empty(),
        "the mock never calls out"
    );
}
on_both_stores!(
    mock_provider_serves_both_wire_formats_test,
    mock_provider_serves_both_wire_formats
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = spawn_app(kinds()[0]).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_spend_rows() {
    for kind in kinds() {
        let app = spawn_app(kind).await;
        let token = app.token_for("team-a").await;
        let mut ids = Vec::new();
        for _ in 0..20 {
            let r = app
                .post(
                    "/v1/chat/completions",
                    &token,
                    &TestApp::chat("gpt-test", "hi"),
                )
                .await;
            ids.push(request_id(&r));
        }
        let db = app.stop().await;
        let store = tollgate::store::Store::connect(&db.url, 1).await.unwrap();
        for id in ids {
            assert!(
                store.spend_record(&id).await.unwrap().is_some(),
                "{kind:?}: {id} lost"
            );
        }
    }
}
