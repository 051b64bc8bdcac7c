//! Routing (issue 10): a model served by several deployments, each its own test upstream with
//! its own key, made to fail, stall or say 429 on command. Load spreads by weight; a request
//! fails over before the first byte and never after it; a failing deployment's circuit opens
//! and a probe closes it again; per-deployment limits spread load before the provider says
//! 429; and each request is billed once, at the deployment that served it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::app::{TestApp, request_id};
use support::multi::{EAST_KEY, routed};
use support::upstream::Sticky;

const CHAT: &str = "/v1/chat/completions";
/// `chat` on east (tier 1) then west (tier 2); `solo` only on east.
fn tiered(east_extra: &str) -> String {
    format!(
        "  chat:\n    price: {{ input: 1, output: 2 }}\n    routing: {{ breaker: {{ failures: 3, cooldown: 1s }} }}\n    deployments:\n      - name: east\n        provider: east\n        upstream_model: gpt-east\n{east_extra}      - name: west\n        provider: west\n        upstream_model: gpt-west\n        tier: 2\n  solo:\n    price: {{ input: 1, output: 2 }}\n    routing: {{ deadline: 2s }}\n    deployments:\n      - name: east\n        provider: east\n{east_extra}"
    )
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn chat(app: &TestApp, token: &str, model: &str) -> reqwest::Response {
    app.post(CHAT, token, &TestApp::chat(model, "hello there"))
        .await
}

#[tokio::test]
async fn load_spreads_by_weight_and_each_answer_names_its_deployment() {
    let r = routed(
        "  chat:\n    price: { input: 1, output: 2 }\n    deployments:\n      - name: east\n        provider: east\n        upstream_model: gpt-east\n        weight: 3\n      - name: west\n        provider: west\n        upstream_model: gpt-west\n        weight: 1\n        price: { input: 2, output: 4 }\n  solo:\n    provider: east\n    price: { input: 1, output: 1 }\n",
    )
    .await;
    let token = r.app.token_for("team-a").await;
    let mut by_header = std::collections::HashMap::<String, u32>::new();
    let mut ids = Vec::new();
    for _ in 0..25 {
        let batch =
            futures_util::future::join_all((0..8).map(|_| chat(&r.app, &token, "chat"))).await;
        for resp in batch {
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "x-tollgate-model"), "chat");
            assert_eq!(header(&resp, "x-tollgate-attempts"), "1");
            let d = header(&resp, "x-tollgate-deployment");
            *by_header.entry(d.clone()).or_default() += 1;
            ids.push((request_id(&resp), d));
        }
    }
    let east = by_header.get("east").copied().unwrap_or(0);
    let west = by_header.get("west").copied().unwrap_or(0);
    assert_eq!(east + west, 200, "{by_header:?}");
    // 3:1 of 200 is 150:50; the binomial's standard deviation is about 6.
    assert!((125..=175).contains(&east), "east served {east} of 200");
    // The header tells the truth: each upstream served exactly what it claims, with its key.
    assert_eq!(r.east.served() as u32, east);
    assert_eq!(r.west.served() as u32, west);
    assert!(
        r.east
            .requests()
            .iter()
            .all(|q| q.body["model"] == "gpt-east"
                && q.header("authorization").as_deref() == Some(&format!("Bearer {EAST_KEY}")[..]))
    );
    // Each row records the model asked for, the model and deployment that served, its key
    // and its price: the same prompt costs twice as much at west.
    let mut cost = std::collections::HashMap::new();
    for (id, d) in ids.iter().take(40) {
        let row = r.app.spend_row(id).await;
        assert_eq!(row.requested_model.as_deref(), Some("chat"));
        assert_eq!(row.model, "chat");
        assert_eq!(row.deployment.as_deref(), Some(d.as_str()));
        assert_eq!(row.provider, *d);
        assert_eq!(row.provider_key_id, format!("{d}-a"));
        assert_eq!(row.upstream_model, format!("gpt-{d}"));
        cost.insert(d.clone(), row.cost_micro_usd);
    }
    if let (Some(e), Some(w)) = (cost.get("east"), cost.get("west")) {
        assert_eq!(*w, 2 * e, "{cost:?}");
    }
}

#[tokio::test]
async fn a_failing_deployment_is_failed_over_then_its_circuit_opens_and_a_probe_closes_it() {
    let r = routed(&tiered("")).await;
    let token = r.app.token_for("team-a").await;
    r.east.set_sticky(Some(Sticky::Fail(503)));
    let mut ids = Vec::new();
    for i in 0..6 {
        let resp = chat(&r.app, &token, "chat").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-tollgate-deployment"), "west");
        // Three failures open east's circuit: later requests skip it.
        let attempts = if i < 3 { "2" } else { "1" };
        assert_eq!(
            header(&resp, "x-tollgate-attempts"),
            attempts,
            "request {i}"
        );
        ids.push(request_id(&resp));
    }
    assert_eq!(r.east.calls(), 3);
    assert_eq!(r.west.served(), 6);
    // Billed once each, at the deployment that served; the failed attempts cost nothing.
    let mut total = 0;
    for id in &ids {
        let row = r.app.spend_row(id).await;
        assert_eq!(row.deployment.as_deref(), Some("west"));
        assert_eq!(row.status, 200);
        assert!(row.cost_micro_usd > 0);
        total += row.cost_micro_usd;
    }
    assert_eq!(r.app.store().recent_spend(100).await.unwrap().len(), 6);
    assert_eq!(r.app.state.quota.spent("main").micros(), total);
    let m = r.app.metrics().await;
    assert_eq!(
        m.value(
            r#"tollgate_deployment_attempts_total{model="chat",deployment="east",outcome="failed"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        m.value(r#"tollgate_deployment_attempts_total{model="chat",deployment="east",outcome="skipped_open"}"#),
        Some(3.0)
    );
    let circuit =
        |d: &str| format!(r#"tollgate_deployment_circuit_state{{model="chat",deployment="{d}"}}"#);
    assert_eq!(m.value(&circuit("east")), Some(1.0), "open");
    assert_eq!(m.value(&circuit("west")), Some(0.0), "closed");

    // A probe that fails opens the circuit again, for twice as long.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = chat(&r.app, &token, "chat").await;
    assert_eq!(header(&resp, "x-tollgate-deployment"), "west");
    assert_eq!(header(&resp, "x-tollgate-attempts"), "2");
    assert_eq!(r.east.calls(), 4);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = chat(&r.app, &token, "chat").await;
    assert_eq!(
        header(&resp, "x-tollgate-attempts"),
        "1",
        "still open (2 s)"
    );
    assert_eq!(r.east.calls(), 4);

    // Healed: once the cool-down is over, one probe goes to east and closes the circuit.
    r.east.set_sticky(None);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..3 {
        let resp = chat(&r.app, &token, "chat").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-tollgate-deployment"), "east");
        assert_eq!(header(&resp, "x-tollgate-attempts"), "1");
    }
    assert_eq!(r.east.served(), 3);
    assert_eq!(r.app.metrics().await.value(&circuit("east")), Some(0.0));
}

#[tokio::test]
async fn a_request_never_fails_over_after_a_byte_reached_the_client_or_the_provider_may_bill() {
    let r = routed(&tiered("")).await;
    let token = r.app.token_for("team-a").await;

    // A stream that breaks after its first bytes: the client got them; west is never asked.
    r.east.reset_next();
    let body =
        json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = tokio::time::timeout(Duration::from_secs(10), r.app.post(CHAT, &token, &body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-deployment"), "east");
    let rid = request_id(&resp);
    let _ = resp.bytes().await;
    let row = r.app.spend_row(&rid).await;
    assert_eq!(row.deployment.as_deref(), Some("east"));
    assert!(row.cost_micro_usd > 0, "a broken stream is charged, once");

    // A plain answer broken after its head: 502, charged its reservation, not failed over.
    r.east.reset_next();
    let resp = chat(&r.app, &token, "chat").await;
    let rid = request_id(&resp);
    assert_eq!(resp.status(), 502);
    assert!(r.app.spend_row(&rid).await.cost_micro_usd > 0);

    // A provider that does not answer in time may be doing the work: 504, not sent again.
    r.east.delay_next(Duration::from_secs(3));
    let resp = chat(&r.app, &token, "chat").await;
    let rid = request_id(&resp);
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(r.app.spend_row(&rid).await.cost_micro_usd > 0);

    assert_eq!(r.west.calls(), 0, "nothing may be sent twice");
    assert_eq!(r.app.store().recent_spend(100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_rate_limited_deployment_is_paused_and_the_last_retry_after_is_passed_on() {
    let r = routed(&tiered("")).await;
    let token = r.app.token_for("team-a").await;
    r.east.set_sticky(Some(Sticky::RateLimited(30)));
    let resp = chat(&r.app, &token, "chat").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-deployment"), "west");
    assert_eq!(header(&resp, "x-tollgate-attempts"), "2");
    // East asked for 30 s: it is not called again meanwhile, and its 429 opened no circuit.
    for _ in 0..3 {
        let resp = chat(&r.app, &token, "chat").await;
        assert_eq!(header(&resp, "x-tollgate-attempts"), "1");
    }
    assert_eq!(r.east.calls(), 1);
    let m = r.app.metrics().await;
    assert_eq!(
        m.value(r#"tollgate_deployment_attempts_total{model="chat",deployment="east",outcome="throttled"}"#),
        Some(1.0)
    );

    // Every deployment over its limit for longer than a retry waits (10 s): the provider's 429
    // is relayed with the soonest Retry-After, each asked once, nothing charged.
    let r = routed(&tiered("")).await;
    let token = r.app.token_for("team-a").await;
    r.east.set_sticky(Some(Sticky::RateLimited(50)));
    r.west.set_sticky(Some(Sticky::RateLimited(40)));
    let resp = chat(&r.app, &token, "chat").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "40");
    let rid = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!((r.east.calls(), r.west.calls()), (1, 1));
    assert_eq!(r.app.spend_row(&rid).await.cost_micro_usd, 0);
}

#[tokio::test]
async fn per_deployment_limits_spread_load_before_the_provider_says_429() {
    // Each minute of a window is its own: stay clear of a minute's end.
    let ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000) as u64;
    if ms > 50_000 {
        tokio::time::sleep(Duration::from_millis(60_100 - ms)).await;
    }
    let r = routed(&tiered("        limits: { rpm: 2 }\n")).await;
    let token = r.app.token_for("team-a").await;
    let mut served = Vec::new();
    for _ in 0..5 {
        let resp = chat(&r.app, &token, "chat").await;
        assert_eq!(resp.status(), 200);
        served.push(header(&resp, "x-tollgate-deployment"));
    }
    assert_eq!(served, ["east", "east", "west", "west", "west"]);
    assert_eq!(r.east.calls(), 2, "east was never asked past its rpm");

    // Limits count per model and deployment, as providers count them per model and key.
    // A model whose only deployment is full answers 429 itself, with when to come back.
    for _ in 0..2 {
        assert_eq!(chat(&r.app, &token, "solo").await.status(), 200);
    }
    let resp = chat(&r.app, &token, "solo").await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("every deployment of model solo is at its provider's rate limit"),
        "{v}"
    );
    assert_eq!(r.east.calls(), 4);
}

#[tokio::test]
async fn a_stalled_deployment_is_not_failed_over_but_its_circuit_moves_the_next_requests() {
    let r = routed(&tiered("")).await;
    let token = r.app.token_for("team-a").await;
    // East answers after 3 s; the upstream response timeout is 2 s.
    r.east
        .set_sticky(Some(Sticky::Stall(Duration::from_secs(3))));
    for i in 0..3 {
        let resp = chat(&r.app, &token, "chat").await;
        assert_eq!(
            resp.status(),
            504,
            "request {i}: east may be doing the work"
        );
        assert!(r.app.spend_row(&request_id(&resp)).await.cost_micro_usd > 0);
    }
    assert_eq!(r.west.calls(), 0);
    // Three timeouts opened east's circuit: the next requests go to west at once.
    let started = std::time::Instant::now();
    let resp = chat(&r.app, &token, "chat").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-tollgate-deployment"), "west");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.east.calls(), 3);
}
