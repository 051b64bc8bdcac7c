//! Upstream faults (issue 9, fault injection): a provider that says 429 with `Retry-After`, and
//! one whose connection breaks mid-answer, plain and streamed. The client gets a clear answer
//! without hanging, nothing is billed twice, and the next call is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::app::{TestApp, spawn_app};
use support::db::TestDbKind;

const CHAT: &str = "/v1/chat/completions";
const SPEND: &str = r#"tollgate_spend_micro_usd_total{team="a",pool="main",model="gpt-test"}"#;

async fn spent(app: &TestApp) -> f64 {
    // Settlement is asynchronous to the answer: give it a moment.
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.metrics().await.value(SPEND).unwrap_or(0.0)
}

#[tokio::test]
async fn a_provider_429_is_relayed_with_its_retry_after_and_charged_nothing() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    // A pause longer than 10 s (or the model's deadline) is not waited for: the
    // provider's answer and its Retry-After go to the client.
    app.upstream.rate_limit_next(45);
    let r = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "45");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(spent(&app).await, 0.0, "a refused call costs nothing");
    // One call reached the provider.
    assert_eq!(app.upstream.requests().len(), 1);
    // The deployment is paused on this replica for those 45 s: the next call is refused at
    // once, with what is left of the pause, and never reaches the provider.
    let r = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert_eq!(r.status(), 429);
    let left: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((40..=45).contains(&left), "{left}");
    assert_eq!(app.upstream.requests().len(), 1);

    // A short pause is waited out within the deadline and the call retried: served.
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    app.upstream.rate_limit_next(1);
    let started = std::time::Instant::now();
    let r = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
    assert_eq!(app.upstream.requests().len(), 2);
    assert!(spent(&app).await > 0.0);
}

#[tokio::test]
async fn a_connection_broken_mid_answer_is_a_502_or_an_ended_stream_and_billed_once() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;

    // Plain: the provider may have done the work, so the reservation is charged, once.
    app.upstream.reset_next();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        app.post(CHAT, &token, &TestApp::chat("gpt-test", "hi")),
    )
    .await
    .expect("a broken upstream connection hangs the client");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error", "{v}");
    let after_plain = spent(&app).await;
    assert!(after_plain > 0.0, "the worst case is charged");
    assert_eq!(app.upstream.requests().len(), 1, "not retried");

    // Streamed: the client's stream ends (200 was already sent) instead of hanging.
    app.upstream.reset_next();
    let mut body = TestApp::chat("gpt-test", "hi");
    body["stream"] = json!(true);
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        let r = app.post(CHAT, &token, &body).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap_or_default()
    })
    .await
    .expect("a broken upstream stream hangs the client");
    assert!(!text.contains("[DONE]"), "{text}");
    let after_stream = spent(&app).await;
    assert!(after_stream >= after_plain);
    let r = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.upstream.requests().len(), 3);
    // Both broken calls settled once each, as failed (the stream's 200 was already sent, but
    // its settlement records the provider's failure).
    let m = app.metrics().await;
    assert_eq!(
        m.value(
            r#"tollgate_llm_requests_total{team="a",pool="main",model="gpt-test",status="502"}"#
        ),
        Some(2.0),
        "{}",
        m.0
    );
}
