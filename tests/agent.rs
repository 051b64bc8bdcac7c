//! `tollgate agent` end to end, as a pod runs it: real `tollgate serve` and `tollgate agent`
//! processes, a projected service-account token file the test rotates as the kubelet would, a
//! client with no key at all talking to the agent's loopback proxy, a Tollgate restart in the
//! middle, and an identity Tollgate refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, TestApp};
use support::db::{TestDb, TestDbKind};
use support::oidc::TestIssuer;
use support::peers::free_port;
use support::process::{BIN, Tollgate, wait_ok};
use support::upstream::TestUpstream;
use tokio::process::{Child, Command};

/// Replace the token file the way the kubelet does: write beside it, rename over it.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn agent(args: &[&str], log: &Path) -> Child {
    Command::new(BIN)
        .arg("agent")
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn chat(http: &reqwest::Client, base: &str) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .json(&TestApp::chat("gpt-test", "hello from a keyless app"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_agent_keeps_a_keyless_client_working_across_token_rotation_and_a_tollgate_restart() {
    let issuer = TestIssuer::start().await;
    let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
    let db = TestDb::new(TestDbKind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tollgate =
        Tollgate::prepare(d, &db.url, &issuer.url, &upstream.url, &Options::default());
    tollgate.start().await;

    // The pod: a projected token for team-a/app, the agent beside the app.
    let sa_token = d.join("sa-token");
    write_token(&sa_token, &issuer.service_account_token("team-a", "app"));
    let aport = free_port();
    let agent_url = format!("http://127.0.0.1:{aport}");
    let agent_log = d.join("agent.log");
    let token_out = d.join("tollgate-token");
    let _agent = agent(
        &[
            "--url",
            &tollgate.url,
            "--token-file",
            sa_token.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{aport}"),
            "--write-token",
            token_out.to_str().unwrap(),
            "--refresh-after",
            "1s",
        ],
        &agent_log,
    );
    wait_ok(&format!("{agent_url}/agent/healthz"), &agent_log).await;
    let http = reqwest::Client::new();

    // The app holds no key: OpenAI-style and Anthropic-style calls both work.
    let r = chat(&http, &agent_url).await;
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{agent_url}/v1/messages"))
        .header("x-api-key", "unused")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-test", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        upstream
            .requests()
            .iter()
            .all(|q| !q.headers.iter().any(|(_, v)| v.contains("unused"))),
        "the app's placeholder key never reaches the provider"
    );
    // The token file is a working Tollgate token, private to the pod's user.
    let written = std::fs::read_to_string(&token_out).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = http
        .post(format!("{}/v1/chat/completions", tollgate.url))
        .bearer_auth(&written)
        .json(&TestApp::chat("gpt-test", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The kubelet rotates the projected token: the agent's next exchange uses the new one.
    write_token(&sa_token, &issuer.service_account_token("team-a", "app-v2"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = chat(&http, &agent_url).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let store = tollgate::store::Store::connect(&db.url, 2).await.unwrap();
    let row = loop {
        if let Some(row) = store.spend_record(&rid).await.unwrap() {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(row.subject.ends_with("app-v2"), "{}", row.subject);

    // Tollgate restarts. A call made while it is down waits for it and succeeds.
    tollgate.stop().await;
    let during = tokio::spawn({
        let (http, agent_url) = (http.clone(), agent_url.clone());
        async move { chat(&http, &agent_url).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tollgate.start().await;
    assert_eq!(during.await.unwrap(), 200);
    for _ in 0..3 {
        assert_eq!(chat(&http, &agent_url).await.status(), 200);
    }
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        !log.contains(written.trim()),
        "the agent never logs a token"
    );
    assert!(log.contains("Tollgate token obtained"), "{log}");
}

#[tokio::test]
async fn the_agent_exits_with_a_clear_message_when_its_identity_is_refused() {
    let app = support::app::spawn_app(TestDbKind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let sa_token = dir.path().join("sa-token");
    // No binding matches this namespace.
    write_token(
        &sa_token,
        &app.issuer.service_account_token("nobody-binds-this", "app"),
    );
    let log = dir.path().join("agent.log");
    let mut child = agent(
        &[
            "--url",
            &app.url,
            "--token-file",
            sa_token.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &log,
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("refused this workload's identity"), "{text}");

    // Bad invocations are refused before anything starts.
    for (args, want) in [
        (vec!["--url", app.url.as_str()], "--listen"),
        (
            vec!["--url", app.url.as_str(), "--listen", "0.0.0.0:9999"],
            "loopback",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("agent")
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
