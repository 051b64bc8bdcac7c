//! SIGTERM under load, as Kubernetes stops a pod: requests in flight (a plain call and a
//! stream, both still waiting on the provider) finish with their full answers, new connections
//! are no longer accepted, the process exits 0, and the calls' spend rows are in the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, TestApp};
use support::db::{TestDb, TestDbKind};
use support::oidc::TestIssuer;
use support::process::Tollgate;
use support::upstream::TestUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_and_streams_finish_and_flushes_their_spend() {
    let issuer = TestIssuer::start().await;
    let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
    let db = TestDb::new(TestDbKind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let mut tollgate = Tollgate::prepare(
        dir.path(),
        &db.url,
        &issuer.url,
        &upstream.url,
        &Options::default(),
    );
    tollgate.start().await;
    let http = reqwest::Client::new();
    let url = tollgate.url.clone();
    let sa = issuer.service_account_token("team-a", "app");
    let token = support::process::exchange(&http, &url, &sa).await;

    // Both calls wait 1.5 s on the provider (within its 2 s response timeout).
    upstream.delay_next(Duration::from_millis(1500));
    upstream.delay_next(Duration::from_millis(1500));
    let plain = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&TestApp::chat("gpt-test", "plain in flight"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let streamed = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut body = TestApp::chat("gpt-test", "stream in flight");
            body["stream"] = json!(true);
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    // Both reached the provider; then the pod is told to stop.
    for _ in 0..100 {
        if upstream.requests().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.requests().len(), 2);
    let stop = tokio::spawn(async move {
        tollgate.stop().await;
        tollgate
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new connection is not served any more.
    let late = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        late.is_err(),
        "a new connection was served while draining: {late:?}"
    );

    let (status, text) = plain.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello back"), "{text}");
    let (status, text) = streamed.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream finished: {text}"
    );
    let tollgate = stop.await.unwrap();

    // Both calls were settled and their rows written before the exit.
    let log = tollgate.log_text();
    let settled = log.matches("request settled").count();
    assert_eq!(settled, 2, "{log}");
    let db_file = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        db_file.display()
    ))
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spend WHERE status = 200")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 2, "both calls' spend rows survived the SIGTERM");
}
