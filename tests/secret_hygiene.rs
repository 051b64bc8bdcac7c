//! A full scenario with recognisable credentials: the provider keys, the workload token and
//! the Tollgate token must appear in no log line (captured at TRACE) and no response body; a
//! prompt is logged as its SHA-256, and as content only for a binding with `log_prompts`,
//! with its secrets redacted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use parking_lot::Mutex;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, POLICY, TestApp, spawn_app_with};
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

/// A binding that opts into prompt content logging.
const CHATTY: &str = "  - name: chatty\n    match: { namespace: chatty }\n    team: c\n    pool: main\n    models: [gpt-test]\n    log_prompts: true\n";

/// What Tollgate records for a chat body's prompt (see `InboundRequest::prompt_sha256`).
fn prompt_sha256(body: &serde_json::Value) -> String {
    use sha2::Digest;
    let raw = serde_json::to_string(&body["messages"]).unwrap();
    let mut h = sha2::Sha256::new();
    for part in ["messages", raw.as_str()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
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
        let app = spawn_app_with(
            kind,
            Options {
                policy: Some(format!("{POLICY}{CHATTY}")),
                ..Options::default()
            },
        )
        .await;
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
        // Prompts: the hash always, the content only where the binding asks, redacted.
        let quiet = TestApp::chat("gpt-test", "unlogged-phrase-9917");
        let r = app.post("/v1/chat/completions", &token, &quiet).await;
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(
            app.spend_row(&id).await.prompt_sha256.as_deref(),
            Some(prompt_sha256(&quiet).as_str())
        );
        let chatty = app.token_for("chatty").await;
        let loud = TestApp::chat(
            "gpt-test",
            &format!("logged-phrase-4412 AKIAIOSFODNN7EXAMPLE {OPENAI_KEY} Bearer {token}"),
        );
        let r = app.post("/v1/chat/completions", &chatty, &loud).await;
        assert_eq!(r.status(), 200);
        // A forged subject token with the right shape.
        bodies.push_str(&app.exchange(&format!("{wl}x")).await.text().await.unwrap());
        app.stop().await;
    }
    let logs = String::from_utf8(capture.0.lock().clone()).unwrap();
    assert!(
        logs.contains("request settled"),
        "the scenario logged requests"
    );
    assert!(
        !logs.contains("unlogged-phrase-9917"),
        "a prompt was logged"
    );
    assert!(
        logs.contains("logged-phrase-4412"),
        "log_prompts logs the prompt"
    );
    assert!(logs.contains("[REDACTED aws access key id]"), "{logs}");
    assert!(
        !logs.contains("AKIAIOSFODNN7EXAMPLE"),
        "a secret in a logged prompt"
    );
    assert!(logs.contains(&prompt_sha256(&TestApp::chat(
        "gpt-test",
        "unlogged-phrase-9917"
    ))));
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
