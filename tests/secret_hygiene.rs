//! A full scenario with recognisable credentials: the provider keys, the workload token and
//! the Tollgate token must appear in no log line (captured at TRACE) and no response body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use parking_lot::Mutex;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, TestApp, spawn_app};
use support::db::kinds;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_a_log_line_or_a_response() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let mut bodies = String::new();
    let mut secrets = vec![OPENAI_KEY.to_owned(), ANTHROPIC_KEY.to_owned()];
    for kind in kinds() {
        let app = spawn_app(kind).await;
        let wl = app.workload_token("team-a", "app");
        secrets.push(wl.clone());
        let r = app.exchange(&wl).await;
        let text = r.text().await.unwrap();
        let token = serde_json::from_str::<serde_json::Value>(&text).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        secrets.push(token.clone());
        let mut stream = TestApp::chat("gpt-test", "hello");
        stream["stream"] = json!(true);
        for body in [TestApp::chat("gpt-test", "hello"), stream] {
            bodies.push_str(
                &app.post("/v1/chat/completions", &token, &body)
                    .await
                    .text()
                    .await
                    .unwrap(),
            );
        }
        let msg = json!({"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
        bodies.push_str(&app.anthropic(&token, &msg).await.text().await.unwrap());
        // The provider refuses our key and echoes it, as OpenAI does.
        app.upstream.fail_next(
            401,
            json!({"error": {"message": format!("Incorrect API key provided: {OPENAI_KEY}")}}),
        );
        bodies.push_str(
            &app.post(
                "/v1/chat/completions",
                &token,
                &TestApp::chat("gpt-test", "x"),
            )
            .await
            .text()
            .await
            .unwrap(),
        );
        // A bad token, and a workload token presented to the proxy.
        bodies.push_str(
            &app.post("/v1/chat/completions", &wl, &TestApp::chat("gpt-test", "x"))
                .await
                .text()
                .await
                .unwrap(),
        );
        // A forged subject token with the right shape.
        bodies.push_str(&app.exchange(&format!("{wl}x")).await.text().await.unwrap());
        app.stop().await;
    }
    let logs = String::from_utf8(capture.0.lock().clone()).unwrap();
    assert!(
        logs.contains("request settled"),
        "the scenario logged requests"
    );
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a credential reached the logs");
        assert!(
            !bodies.contains(s.as_str()),
            "a credential reached a response"
        );
        // the JWT signature part alone must not appear either
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 20) {
            assert!(!logs.contains(sig), "a token signature reached the logs");
        }
    }
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        assert!(!bodies.contains(key), "a provider key reached a response");
    }
}
