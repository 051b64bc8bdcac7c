//! Budget threshold alerts: each threshold fires once per window for the whole fleet, to
//! every webhook, in Tollgate's JSON and in Slack's format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::app::{Options, TestApp, spawn_app_with};
use support::db::TestDbKind;
use support::hooks::receiver;

const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
pools:
  capped:
    budget: { usd: 0.0005, window: daily }
    alerts: [50, 80, 100]
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: capped
    billing_owner: team-a
    models: [gpt-test]
    max_tokens: { default: 16, max: 16 }
"#;

#[tokio::test]
async fn each_threshold_fires_once_per_window_for_the_fleet() {
    let (hooks, seen) = receiver().await;
    let alerts = format!(
        "[alerts]\ncheck_interval = \"100ms\"\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/json\"\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/slack\"\nformat = \"slack\"\n"
    );
    let first = spawn_app_with(
        TestDbKind::Postgres,
        Options {
            policy: Some(POLICY.into()),
            extra_config: alerts.clone(),
            ..Options::default()
        },
    )
    .await;
    let second = spawn_app_with(
        TestDbKind::Postgres,
        Options {
            policy: Some(POLICY.into()),
            extra_config: alerts,
            database_url: Some(first.db.url.clone()),
            ..Options::default()
        },
    )
    .await;
    let token = first.token_for("team-a").await;
    let body = TestApp::chat("gpt-test", "hello from a pod");
    let mut refused = 0;
    for i in 0..100 {
        let app = if i % 2 == 0 { &first } else { &second };
        let r = app.post("/v1/chat/completions", &token, &body).await;
        if r.status() == 429 {
            refused += 1;
            if refused == 4 {
                break;
            }
        }
    }
    assert_eq!(refused, 4, "the pool reached its cap");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;

    let seen = seen.lock().clone();
    let json: Vec<&Value> = seen
        .iter()
        .filter(|(k, _)| k == "json")
        .map(|(_, v)| v)
        .collect();
    let mut thresholds: Vec<u64> = json
        .iter()
        .map(|v| v["threshold_percent"].as_u64().unwrap())
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 80, 100], "once each, fleet-wide: {json:?}");
    let v = json[0];
    assert_eq!(v["type"], "budget_threshold");
    assert_eq!(v["pool"], "capped");
    assert_eq!(v["cap_usd"], 0.0005);
    assert_eq!(v["window"]["kind"], "daily");
    let slack: Vec<&Value> = seen
        .iter()
        .filter(|(k, _)| k == "slack")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(slack.len(), 3);
    assert!(
        slack.iter().all(|v| v["text"]
            .as_str()
            .unwrap()
            .contains("pool *capped* reached")),
        "{slack:?}"
    );
    first.stop().await;
    second.stop().await;
}

const FALLBACK_POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
    fallback: gpt-cheap
  gpt-cheap:
    provider: openai
    upstream_model: gpt-cheap-upstream
    price: { input: 0.10, output: 0.20 }
pools:
  capped:
    budget: { usd: 0.001, window: daily }
    fallback_at: 50
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: capped
    billing_owner: team-a
    models: [gpt-test]
    max_tokens: { default: 16, max: 16 }
"#;

#[tokio::test]
async fn past_fallback_at_requests_are_served_by_the_cheaper_model_and_say_so() {
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(FALLBACK_POLICY.into()),
            extra_config: "[alerts]\ncheck_interval = \"50ms\"\n".into(),
            ..Options::default()
        },
    )
    .await;
    let token = app.token_for("team-a").await;
    let body = TestApp::chat("gpt-test", "hello from a pod");
    let first = app.post("/v1/chat/completions", &token, &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-tollgate-model"], "gpt-test");
    assert!(first.headers().get("x-tollgate-fallback-from").is_none());

    let mut fell_back = None;
    for _ in 0..200 {
        let r = app.post("/v1/chat/completions", &token, &body).await;
        assert_eq!(
            r.status(),
            200,
            "the fallback keeps the pool under its cap longer"
        );
        if r.headers().get("x-tollgate-fallback-from").is_some() {
            fell_back = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = fell_back.expect("past 50 % of the budget the fallback serves");
    assert_eq!(r.headers()["x-tollgate-model"], "gpt-cheap");
    assert_eq!(r.headers()["x-tollgate-fallback-from"], "gpt-test");
    let id = support::app::request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["model"], "gpt-cheap-upstream",
        "the provider's answer names it too"
    );
    assert_eq!(
        app.upstream.requests().last().unwrap().body["model"],
        "gpt-cheap-upstream"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.spend_row(&id).await.model, "gpt-cheap");
    app.stop().await;
}
