//! The anomaly guard: a workload whose spend jumps far past its own baseline is paused on
//! the whole fleet (its requests and token exchanges refused with a clear code, an alert sent,
//! the pause counted and recorded) until an admin lifts it; a provider key past its absolute
//! limit stops serving while the other keys carry on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::app::{Options, TestApp, request_id, spawn_app_with};
use support::db::TestDbKind;
use support::hooks::receiver;
use tollgate::store::PauseKind;

async fn app(anomaly: &str, hooks: &str) -> TestApp {
    spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            extra_config: format!(
                "[anomaly]\ncheck_interval = \"100ms\"\n{anomaly}\n[alerts]\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/json\"\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/slack\"\nformat = \"slack\"\n"
            ),
            ..Options::default()
        },
    )
    .await
}

/// A Tollgate token for service account `sa` of namespace team-a.
async fn token(app: &TestApp, sa: &str) -> String {
    let r = app.exchange(&app.workload_token("team-a", sa)).await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn call_model(app: &TestApp, token: &str, model: &str) -> reqwest::Response {
    app.post(
        "/v1/chat/completions",
        token,
        &TestApp::chat(model, "hello there"),
    )
    .await
}

async fn call(app: &TestApp, token: &str) -> reqwest::Response {
    call_model(app, token, "gpt-test").await
}

/// The mock provider: no provider key involved, so only the subject's velocity counts.
async fn mocked(app: &TestApp, token: &str) -> reqwest::Response {
    call_model(app, token, "mocked").await
}

/// Wait until `f` holds (the guard checks every 100 ms; spend rows flush every 500 ms).
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_subject_spending_far_past_its_own_baseline_is_paused_until_an_admin_lifts_it() {
    let (hooks, seen) = receiver().await;
    // A 2 s window against the 60 s before it: one call of history is its busiest 2 s; eight
    // calls in one window are eight times that.
    let app = app(
        "window = \"2s\"\nbaseline = \"60s\"\nmultiple = 4\nmin_spend_usd = 0.000001",
        &hooks,
    )
    .await;
    let steady = token(&app, "steady").await;
    let fresh = token(&app, "fresh").await;
    let r = mocked(&app, &steady).await;
    let subject = {
        let id = request_id(&r);
        tokio::time::sleep(Duration::from_millis(700)).await;
        app.spend_row(&id).await.subject
    };
    // Let the history fall out of the window into the baseline, then spike.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for _ in 0..8 {
        assert_eq!(mocked(&app, &steady).await.status(), 200);
        // A workload with no history is only held to the absolute limits (none here).
        assert_eq!(mocked(&app, &fresh).await.status(), 200);
    }
    eventually("the spiking subject is paused", async || {
        mocked(&app, &steady).await.status() == 403
    })
    .await;
    let r = mocked(&app, &steady).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "workload_paused", "{v}");
    assert_eq!(v["error"]["type"], "permission_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("its busiest 2s") && msg.contains("admin"),
        "{msg}"
    );
    // Anthropic callers get it in Anthropic's shape.
    let r = app
        .anthropic(
            &steady,
            &serde_json::json!({"model": "claude-test", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    // No new token either, and the fresh workload is untouched.
    let r = app.exchange(&app.workload_token("team-a", "steady")).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    assert!(
        v["error_description"].as_str().unwrap().contains("paused"),
        "{v}"
    );
    assert_eq!(mocked(&app, &fresh).await.status(), 200);

    // Recorded once, alerted once per webhook, counted.
    let pauses = app.store().pauses(None).await.unwrap();
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(
        (pauses[0].kind, pauses[0].value.as_str()),
        (PauseKind::Subject, subject.as_str())
    );
    eventually("both webhooks got the alert", async || {
        seen.lock()
            .iter()
            .filter(|(_, b)| {
                b["type"] == "anomaly_pause"
                    || b["text"].as_str().is_some_and(|t| t.contains("paused"))
            })
            .count()
            == 2
    })
    .await;
    let json = seen
        .lock()
        .iter()
        .find(|(k, _)| k == "json")
        .unwrap()
        .1
        .clone();
    assert_eq!(json["kind"], "subject");
    assert_eq!(json["id"], subject.as_str());
    let slack = seen
        .lock()
        .iter()
        .find(|(k, _)| k == "slack")
        .unwrap()
        .1
        .clone();
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .contains("tollgate admin unpause --subject"),
        "{slack}"
    );
    let m = app.metrics().await;
    assert_eq!(
        m.value("tollgate_anomaly_pauses{kind=\"subject\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.value("tollgate_anomaly_pauses_recorded_total{kind=\"subject\"}"),
        Some(1.0)
    );

    // An admin lifts it: served again on the next re-sync, and not paused again at once.
    assert!(
        app.store()
            .lift_pause(
                PauseKind::Subject,
                &subject,
                "oncall",
                tollgate::clock::now_ms()
            )
            .await
            .unwrap()
    );
    eventually("the lifted subject is served", async || {
        mocked(&app, &steady).await.status() == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        mocked(&app, &steady).await.status(),
        200,
        "lift_grace keeps it running"
    );
    let all = app.store().pauses(Some(0)).await.unwrap();
    assert_eq!(all[0].lifted_by.as_deref(), Some("oncall"));
    app.stop().await;
}

#[tokio::test]
async fn a_key_past_its_absolute_limit_stops_serving_and_the_next_key_takes_over() {
    let (hooks, seen) = receiver().await;
    // A call costs a few tens of micro-dollars: a few calls take the key past $0.0001.
    let app = app("key_max_spend_usd = 0.0001", &hooks).await;
    let t = token(&app, "app").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let r = call(&app, &t).await;
        assert_eq!(r.status(), 200);
        ids.push(request_id(&r));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.spend_row(&ids[0]).await.provider_key_id,
        "openai-team-a"
    );
    eventually("the team's key is paused", async || {
        app.state.revocations.key_disabled("openai-team-a")
    })
    .await;
    // Not the workload: it is served by the shared key now.
    let r = call(&app, &t).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.spend_row(&id).await.provider_key_id, "openai-shared");
    let pauses = app.store().pauses(None).await.unwrap();
    assert!(
        pauses.iter().any(|p| p.kind == PauseKind::ProviderKey
            && p.value == "openai-team-a"
            && p.reason.contains("over the limit of $0.000100")),
        "{pauses:?}"
    );
    assert!(
        pauses.iter().all(|p| p.kind == PauseKind::ProviderKey),
        "{pauses:?}"
    );
    eventually("the alert names the key", async || {
        seen.lock()
            .iter()
            .any(|(k, b)| k == "json" && b["kind"] == "provider_key" && b["id"] == "openai-team-a")
    })
    .await;
    // The key's id shows in alerts and pauses; its secret never does.
    assert!(!format!("{:?}", seen.lock()).contains(support::app::OPENAI_KEY));
    app.stop().await;
}
