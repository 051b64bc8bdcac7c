//! `GET /metrics` after traffic: the request-path series (requests by route and status,
//! latency and Tollgate's own overhead, tokens and money by team/pool/model, refusals by code,
//! upstream errors by provider), the writers' queues and rotations, parsed from the
//! exposition text; and no token, key or subject in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::app::{OPENAI_KEY, TestApp, spawn_app};
use support::db::TestDbKind;

const CHAT: &str = "/v1/chat/completions";

fn value(m: &support::app::Metrics, series: &str) -> f64 {
    m.value(series)
        .unwrap_or_else(|| panic!("no series {series} in\n{}", m.0))
}

#[tokio::test]
async fn metrics_count_requests_tokens_money_refusals_and_upstream_errors_after_traffic() {
    let app = spawn_app(TestDbKind::Sqlite).await;
    let token = app.token_for("team-a").await;
    for _ in 0..3 {
        let r = app
            .post(
                CHAT,
                &token,
                &TestApp::chat("gpt-test", "four words of prompt"),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // A model the token does not carry: refused by Tollgate.
    let r = app
        .post(CHAT, &token, &TestApp::chat("no-such-model", "hi"))
        .await;
    assert!(r.status().is_client_error());
    let refused_code = r.headers()["x-tollgate-error-code"]
        .to_str()
        .unwrap()
        .to_owned();
    // The provider fails one call.
    app.upstream.fail_next(
        500,
        json!({"error": {"message": "boom", "type": "server_error"}}),
    );
    let r = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert!(r.status().is_server_error());
    // A token exchange with a bad subject token.
    let r = app.exchange("not-a-jwt").await;
    assert_eq!(r.status(), 400);
    // Spend rows are settled asynchronously; the counters are updated at settlement.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let m = app.metrics().await;
    assert_eq!(
        value(
            &m,
            &format!(r#"tollgate_http_requests_total{{route="{CHAT}",status="200"}}"#)
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"tollgate_rejections_total{{route="{CHAT}",code="{refused_code}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_rejections_total{route="/v1/token",code="invalid_request"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_llm_requests_total{team="a",pool="main",model="gpt-test",status="200"}"#
        ),
        3.0
    );
    // The test upstream counts words: 4 prompt words per call; the failed call charged none.
    assert_eq!(
        value(
            &m,
            r#"tollgate_tokens_total{team="a",pool="main",model="gpt-test",kind="input"}"#
        ),
        12.0
    );
    assert!(
        value(
            &m,
            r#"tollgate_spend_micro_usd_total{team="a",pool="main",model="gpt-test"}"#
        ) > 0.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_upstream_errors_total{provider="openai",status="500"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"tollgate_http_request_duration_seconds_count{{route="{CHAT}"}}"#)
        ),
        5.0
    );
    // Tollgate's own time is measured on every call that reached the provider, and is small.
    assert_eq!(
        value(
            &m,
            &format!(r#"tollgate_overhead_seconds_count{{route="{CHAT}"}}"#)
        ),
        4.0
    );
    let overhead = value(
        &m,
        &format!(r#"tollgate_overhead_seconds_sum{{route="{CHAT}"}}"#),
    );
    assert!(overhead > 0.0 && overhead < 4.0, "{overhead}");
    assert_eq!(
        value(&m, r#"tollgate_writer_queue_depth{writer="spend"}"#),
        0.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_rotations_finished_total{outcome="rolled_back"}"#
        ),
        0.0
    );
    assert_eq!(value(&m, r#"tollgate_revocations_active{kind="jti"}"#), 0.0);
    // Bounded labels only: no token, key or subject.
    for secret in [token.as_str(), OPENAI_KEY, "system:serviceaccount"] {
        assert!(!m.0.contains(secret), "{secret} in the metrics");
    }
}
