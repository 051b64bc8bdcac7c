//! What a pool does when a request hits its limits or its cap: `at_cap: queue` holds the
//! request until a concurrency slot, a rate window or budget frees up (never for a monthly
//! budget), up to its timeout and its queue length; `at_cap: degrade` serves only the
//! cheapest allowed model past the cap, from a bounded overdraft.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::app::{Options, TestApp, request_id, spawn_app_with};
use support::db::TestDbKind;

const POLICY: &str = r#"
models:
  big:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 10, output: 20 }
  small:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1, output: 2 }
  claude-cheap:
    provider: anthropic
    upstream_model: claude-test-upstream
    price: { input: 0.01, output: 0.01 }
pools:
  lane:
    limits: { concurrency: 1 }
    at_cap: queue
    queue_timeout: 10s
    queue_max: 2
  strict:
    limits: { concurrency: 1 }
  minute:
    limits: { rpm: 1 }
    at_cap: queue
    queue_timeout: 1s
  daily:
    budget: { usd: 0.03, window: daily }
    at_cap: queue
    queue_timeout: 10s
  monthly:
    budget: { usd: 0.03, window: monthly }
    at_cap: queue
    queue_timeout: 10s
  degrading:
    budget: { usd: 0.002, window: daily }
    at_cap: degrade
    overdraft_usd: 0.0005
bindings:
  - { name: lane, match: { namespace: lane }, team: t, pool: lane, billing_owner: team-a, models: [big] }
  - { name: strict, match: { namespace: strict }, team: t, pool: strict, billing_owner: team-a, models: [big] }
  - { name: minute, match: { namespace: minute }, team: t, pool: minute, billing_owner: team-a, models: [big] }
  - name: daily
    match: { namespace: daily }
    team: t
    pool: daily
    billing_owner: team-a
    models: [big]
    max_tokens: { default: 1000, max: 1000 }
  - name: monthly
    match: { namespace: monthly }
    team: t
    pool: monthly
    billing_owner: team-a
    models: [big]
    max_tokens: { default: 1000, max: 1000 }
  - name: degrading
    match: { namespace: degrading }
    team: t
    pool: degrading
    billing_owner: team-a
    models: [big, small, claude-cheap]
    max_tokens: { default: 16, max: 16 }
"#;

async fn app() -> TestApp {
    spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(POLICY.into()),
            ..Options::default()
        },
    )
    .await
}

/// Fire `n` requests at once; each answer with how long it took.
async fn burst(app: &TestApp, token: &str, n: usize) -> Vec<(u16, Value, Duration)> {
    let body = TestApp::chat("big", "hello there");
    let calls = (0..n).map(|_| async {
        let t = Instant::now();
        let r = app.post("/v1/chat/completions", token, &body).await;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        (status, v, t.elapsed())
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test]
async fn a_queued_request_waits_for_a_concurrency_slot_instead_of_being_refused() {
    let app = app().await;
    let strict = app.token_for("strict").await;
    app.upstream.delay_next(Duration::from_millis(800));
    let got = burst(&app, &strict, 2).await;
    let codes: Vec<_> = got
        .iter()
        .map(|(s, v, _)| (*s, v["error"]["code"].as_str().map(str::to_owned)))
        .collect();
    assert!(
        codes.contains(&(200, None))
            && codes.contains(&(429, Some("rate_limit_exceeded".to_owned()))),
        "without a queue the second is refused: {codes:?}"
    );

    let lane = app.token_for("lane").await;
    app.upstream.delay_next(Duration::from_millis(800));
    let got = burst(&app, &lane, 3).await;
    assert!(
        got.iter().all(|(s, _, _)| *s == 200),
        "queued, all are served: {got:?}"
    );
    let waited = got
        .iter()
        .filter(|(_, _, t)| *t >= Duration::from_millis(700));
    assert_eq!(waited.count(), 3, "two waited for the slow one: {got:?}");

    // One slow request holds the slot, two wait, the fourth finds the queue full.
    app.upstream.delay_next(Duration::from_millis(1500));
    let got = burst(&app, &lane, 4).await;
    let full: Vec<_> = got
        .iter()
        .filter(|(s, v, _)| {
            *s == 429
                && v["error"]["code"] == "rate_limit_exceeded"
                && v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("the queue of pool lane is full (2 waiting)")
        })
        .collect();
    assert_eq!(full.len(), 1, "{got:?}");
    assert!(full[0].2 < Duration::from_millis(1000), "refused at once");
    assert_eq!(got.iter().filter(|(s, _, _)| *s == 200).count(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_queued_request_gives_up_at_its_timeout_with_the_limit_it_waited_for() {
    let app = app().await;
    // The window is a UTC minute: keep clear of its end so it does not free up meanwhile.
    let into_minute = tollgate::clock::now_ms().rem_euclid(60_000);
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis((61_000 - into_minute) as u64)).await;
    }
    let token = app.token_for("minute").await;
    let body = TestApp::chat("big", "hello there");
    let r = app.post("/v1/chat/completions", &token, &body).await;
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    let r = app.post("/v1/chat/completions", &token, &body).await;
    let waited = t.elapsed();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("limit of 1 requests per minute")
            && msg.contains("in the queue of pool minute"),
        "{msg}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(3000)).contains(&waited),
        "held for its queue_timeout of 1s: {waited:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn budget_held_by_requests_in_flight_frees_up_for_the_queue_but_a_monthly_cap_never_waits() {
    let app = app().await;
    // A $0.03 cap holds one worst case (~$0.02 for 1000 output tokens) at a time; what a
    // request actually costs (a few tokens) comes back when it settles.
    for (ns, queued) in [("daily", true), ("monthly", false)] {
        let token = app.token_for(ns).await;
        app.upstream.delay_next(Duration::from_millis(800));
        let got = burst(&app, &token, 2).await;
        let mut statuses: Vec<_> = got.iter().map(|(s, _, _)| *s).collect();
        statuses.sort_unstable();
        if queued {
            assert_eq!(statuses, [200, 200], "{ns}: {got:?}");
        } else {
            assert_eq!(statuses, [200, 429], "{ns}: {got:?}");
            let (_, v, t) = got.iter().find(|(s, _, _)| *s == 429).unwrap();
            assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
            assert!(
                *t < Duration::from_millis(700),
                "a monthly budget is refused at once, not held: {t:?}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn past_its_cap_a_degrading_pool_serves_only_the_cheapest_model_from_its_overdraft() {
    let app = app().await;
    let token = app.token_for("degrading").await;
    let body = TestApp::chat("big", "hello there");
    let (mut big, mut small) = (Vec::new(), Vec::new());
    let refusal = loop {
        let r = app.post("/v1/chat/completions", &token, &body).await;
        if r.status() != 200 {
            break r;
        }
        let served = r.headers()["x-tollgate-model"].to_str().unwrap().to_owned();
        let degraded = r.headers().get("x-tollgate-degraded").is_some();
        let id = request_id(&r);
        match served.as_str() {
            "big" => {
                assert!(small.is_empty(), "once degraded, the window stays degraded");
                assert!(!degraded);
                big.push(id);
            }
            "small" => {
                assert!(degraded, "a degraded answer says so");
                assert_eq!(r.headers()["x-tollgate-fallback-from"], "big");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["model"], "gpt-test-upstream");
                small.push(id);
            }
            other => panic!("served by {other}: the cheapest model of this API is small"),
        }
        assert!(big.len() + small.len() < 200, "never stopped");
    };
    assert_eq!(refusal.status(), 429);
    let v: Value = refusal.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overdraft of $0.000500"),
        "{v}"
    );
    assert!(
        !big.is_empty() && small.len() >= 5,
        "{} big, {} small",
        big.len(),
        small.len()
    );

    tokio::time::sleep(Duration::from_millis(400)).await; // spend flush
    let mut spent_big = 0;
    for id in &big {
        spent_big += app.spend_row(id).await.cost_micro_usd;
    }
    for id in &small {
        assert_eq!(app.spend_row(id).await.model, "small");
    }
    let total = app.store().spend_since("degrading", 0).await.unwrap();
    eprintln!(
        "degrade: {} big ({spent_big} µ$), {} small, total {total} µ$ of cap 2000 + overdraft 500",
        big.len(),
        small.len()
    );
    assert!(spent_big <= 2_000, "the cap holds for the full model");
    assert!(total > 2_000 && total <= 2_500, "total {total}");
    app.stop().await;
}

#[tokio::test]
async fn time_in_the_queue_is_not_taken_from_the_routing_deadline() {
    // A 1 s routing deadline; three requests through one slot, the first two slow: the third
    // waits about 1.2 s in the queue and is still sent, with its full time for the provider.
    let policy = POLICY.replace("  big:\n", "  big:\n    routing: { deadline: 1s }\n");
    assert_ne!(policy, POLICY);
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(policy),
            ..Options::default()
        },
    )
    .await;
    let lane = app.token_for("lane").await;
    app.upstream.delay_next(Duration::from_millis(600));
    app.upstream.delay_next(Duration::from_millis(600));
    let got = burst(&app, &lane, 3).await;
    assert!(
        got.iter().all(|(s, _, _)| *s == 200),
        "queued past the deadline, still served: {got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, _, t)| *t >= Duration::from_millis(1150)),
        "{got:?}"
    );
}
