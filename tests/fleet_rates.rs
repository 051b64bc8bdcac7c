//! Per-minute limits on a fleet: three Tollgate replicas on one PostgreSQL share each limit's
//! window, so a pool's or a token's requests per minute hold for the fleet, not per replica.
//! The bound (README "Budgets and limits"): never more than the limit in a UTC minute; at
//! most one slice per replica unused near the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::app::{TestApp, spawn_fleet};
use support::db::TestDbKind;

const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
pools:
  limited:
    limits: { rpm: 40 }
  open: {}
bindings:
  - name: pool-limited
    match: { namespace: team-a }
    team: a
    pool: limited
    billing_owner: team-a
    models: [gpt-test]
  - name: token-limited
    match: { namespace: team-b }
    team: b
    pool: open
    billing_owner: team-a
    models: [gpt-test]
    limits: { rpm: 10 }
"#;

async fn fleet() -> Vec<TestApp> {
    spawn_fleet(TestDbKind::Postgres, POLICY, 3).await
}

/// Wait until at least 20 s of the current UTC minute remain, so a burst stays in one window.
async fn early_in_a_minute() {
    let into = tollgate::clock::now_ms().rem_euclid(60_000);
    if into > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - into as u64)).await;
    }
}

/// `n` requests at once, round-robin over the replicas: (admitted, refused with 429).
async fn burst(apps: &[TestApp], token: &str, n: usize) -> (usize, usize) {
    let body = TestApp::chat("gpt-test", "hello from a pod");
    let calls = (0..n).map(|i| {
        let body = body.clone();
        async move {
            let r = apps[i % apps.len()]
                .post("/v1/chat/completions", token, &body)
                .await;
            let status = r.status().as_u16();
            let h = r.headers().clone();
            let v: Value = r.json().await.unwrap_or_default();
            match status {
                200 => true,
                429 => {
                    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
                    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!((1..=60).contains(&retry), "retry-after {retry}");
                    false
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|ok| **ok).count();
    (ok, n - ok)
}

#[tokio::test]
async fn per_minute_limits_hold_for_the_fleet_not_per_replica() {
    let apps = fleet().await;
    let pool_token = apps[0].token_for("team-a").await;
    let own_token = apps[1].token_for("team-b").await;
    early_in_a_minute().await;

    // Pool limit of 40 rpm, 120 requests spread over three replicas.
    let (ok, refused) = burst(&apps, &pool_token, 120).await;
    eprintln!("fleet pool rpm 40: {ok} admitted, {refused} refused");
    assert!(ok <= 40, "{ok} admitted past the pool's 40 rpm");
    // Near the limit at most one slice (40 / 20 = 2) per replica may sit unused.
    assert!(ok >= 40 - 3 * 2, "only {ok} of 40 admitted");

    // A token's own limit of 10 rpm, 45 requests over three replicas.
    let (ok, refused) = burst(&apps, &own_token, 45).await;
    eprintln!("fleet token rpm 10: {ok} admitted, {refused} refused");
    assert!(ok <= 10, "{ok} admitted past the token's 10 rpm");
    assert!(ok >= 10 - 3, "only {ok} of 10 admitted");

    // The windows are shared through the store: their totals never passed the limits.
    let r = apps[2]
        .post(
            "/v1/chat/completions",
            &own_token,
            &TestApp::chat("gpt-test", "again"),
        )
        .await;
    assert_eq!(r.status(), 429);
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_response_carries_the_fleet_wide_remaining_requests() {
    let apps = fleet().await;
    let token = apps[0].token_for("team-b").await;
    early_in_a_minute().await;
    let body = TestApp::chat("gpt-test", "hello");
    let mut remaining = Vec::new();
    for app in &apps {
        let r = app.post("/v1/chat/completions", &token, &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10");
        let left: u64 = r.headers()["x-ratelimit-remaining-requests"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        remaining.push(left);
    }
    // Each replica leased a slice of the same window: what is left shrinks across replicas.
    assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");
    assert!(remaining[2] <= 7, "{remaining:?}");
    for app in apps {
        app.stop().await;
    }
}
