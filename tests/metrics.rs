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
    // The provider fails one call, and its retry (routing retries a 500 once).
    for _ in 0..2 {
        app.upstream.fail_next(
            500,
            json!({"error": {"message": "boom", "type": "server_error"}}),
        );
    }
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
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_deployment_attempts_total{model="gpt-test",deployment="openai",outcome="failed"}"#
        ),
        2.0
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

#[tokio::test]
async fn metrics_show_each_budgeted_pools_spend_cap_and_utilisation_in_its_window() {
    let app = support::app::spawn_app_with(
        TestDbKind::Sqlite,
        support::app::Options {
            extra_config: "[alerts]\ncheck_interval = \"50ms\"\n".into(),
            policy: Some(support::app::POLICY.replace(
                "budget: { usd: 0.0001, window: daily }",
                "budget: { usd: 1, window: daily }",
            )),
            ..Default::default()
        },
    )
    .await;
    // Before any spend, the budgeted pool shows 0 of its $1 cap; the unbudgeted one is absent.
    let mut m = app.metrics().await;
    for _ in 0..100 {
        if m.value(r#"tollgate_budget_cap_micro_usd{pool="tiny",window="daily"}"#)
            .is_some()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        m = app.metrics().await;
    }
    assert_eq!(
        value(
            &m,
            r#"tollgate_budget_cap_micro_usd{pool="tiny",window="daily"}"#
        ),
        1_000_000.0
    );
    assert_eq!(
        value(
            &m,
            r#"tollgate_budget_utilization_ratio{pool="tiny",window="daily"}"#
        ),
        0.0
    );
    assert!(!m.0.contains(r#"pool="main",window"#), "{}", m.0);

    // One call of the `broke` binding spends from the pool.
    let token = app.token_for("broke").await;
    let r = app
        .post(
            CHAT,
            &token,
            &TestApp::chat("gpt-test", "four words of prompt"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut spent = 0.0;
    for _ in 0..100 {
        spent = app
            .metrics()
            .await
            .value(r#"tollgate_budget_spent_micro_usd{pool="tiny",window="daily"}"#)
            .unwrap_or(0.0);
        if spent > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(spent > 0.0, "the spend never reached the metric");
    let m = app.metrics().await;
    let ratio = value(
        &m,
        r#"tollgate_budget_utilization_ratio{pool="tiny",window="daily"}"#,
    );
    assert!((ratio - spent / 1e6).abs() < 1e-9, "{ratio} vs {spent}");
}

/// The metric names (`tollgate_…`) a text mentions.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn every_series_the_charts_alerts_and_dashboard_query_is_exposed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut wanted = std::collections::BTreeSet::new();
    for f in [
        "helm/tollgate/templates/prometheusrule.yaml",
        "helm/tollgate/dashboards/tollgate.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{f}")).unwrap();
        wanted.extend(names_in(&text));
    }
    assert!(wanted.len() >= 10, "{wanted:?}");
    let app = spawn_app(TestDbKind::Sqlite).await;
    // Request-path families appear with their first sample: a served call, a refused one and
    // one the provider fails.
    let token = app.token_for("team-a").await;
    let ok = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert_eq!(ok.status(), 200);
    let refused = app
        .post(CHAT, &token, &TestApp::chat("unbound", "hi"))
        .await;
    assert!(refused.status().is_client_error());
    for _ in 0..2 {
        app.upstream.fail_next(
            500,
            json!({"error": {"message": "boom", "type": "server_error"}}),
        );
    }
    let failed = app
        .post(CHAT, &token, &TestApp::chat("gpt-test", "hi"))
        .await;
    assert!(failed.status().is_server_error());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let m = app.metrics().await;
    for name in &wanted {
        // OpenMetrics names a counter's family without `_total`, a histogram's without the
        // suffix of its samples.
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            m.0.contains(&format!("# TYPE {family} ")),
            "the chart queries {name}, which Tollgate does not expose:\n{}",
            m.0
        );
    }
}
