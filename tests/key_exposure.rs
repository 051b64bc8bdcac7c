//! Secret hygiene at rest and on every surface (`secret_hygiene.rs` covers log lines at TRACE
//! and prompts): a real `tollgate serve` process runs a full scenario with recognisable
//! provider keys, and afterwards their bytes appear nowhere — not in any response (served,
//! streamed, refused, or a provider error that quotes the key), the log, the metrics, the admin
//! API (key inventory, spend, audit), or the database files (the audit log lives there).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::app::{ADMIN_AUDIENCE, ANTHROPIC_KEY, OPENAI_KEY, Options, POLICY, TestApp};
use support::db::{TestDb, TestDbKind};
use support::oidc::TestIssuer;
use support::process::Tollgate;
use support::upstream::TestUpstream;

/// Everything a caller or an operator was shown.
#[derive(Default)]
struct Seen(Vec<u8>);

impl Seen {
    async fn take(&mut self, r: reqwest::Response) -> u16 {
        let status = r.status().as_u16();
        for (k, v) in r.headers() {
            self.0.extend_from_slice(k.as_str().as_bytes());
            self.0.extend_from_slice(v.as_bytes());
        }
        self.0.extend_from_slice(&r.bytes().await.unwrap());
        status
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_appear_in_no_response_log_metric_admin_answer_or_database_file() {
    let issuer = TestIssuer::start().await;
    let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
    let db = TestDb::new(TestDbKind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = format!("{POLICY}roles:\n  - role: admin\n    subjects: [\"root@example.com\"]\n");
    let opts = Options {
        policy: Some(policy),
        admin: Some(String::new()),
        ..Options::default()
    };
    let mut tollgate = Tollgate::prepare(dir.path(), &db.url, &issuer.url, &upstream.url, &opts);
    tollgate.start().await;
    let http = reqwest::Client::new();
    let url = &tollgate.url;
    let mut seen = Seen::default();

    let sa = issuer.service_account_token("team-a", "app");
    let token = support::process::exchange(&http, url, &sa).await;

    let chat = |body: Value| {
        http.post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let messages = |body: Value| {
        http.post(format!("{url}/v1/messages"))
            .header("x-api-key", &token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    assert_eq!(
        seen.take(chat(TestApp::chat("gpt-test", "hello")).await.unwrap())
            .await,
        200
    );
    let mut stream = TestApp::chat("gpt-test", "stream this");
    stream["stream"] = json!(true);
    assert_eq!(seen.take(chat(stream).await.unwrap()).await, 200);
    let claude = json!({"model": "claude-test", "max_tokens": 32,
        "messages": [{"role": "user", "content": "hello"}]});
    assert_eq!(
        seen.take(messages(claude.clone()).await.unwrap()).await,
        200
    );
    let mut claude_stream = claude.clone();
    claude_stream["stream"] = json!(true);
    assert_eq!(seen.take(messages(claude_stream).await.unwrap()).await, 200);
    // Refusals: a model the token lacks, a bad token.
    assert!(
        seen.take(chat(TestApp::chat("unbound", "x")).await.unwrap())
            .await
            >= 400
    );
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("not-a-token")
        .json(&TestApp::chat("gpt-test", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.take(r).await, 401);
    // The provider quotes the key in a 400 (relayed as its verdict), a 500 and a 401 (last:
    // it quarantines the key).
    // A 500 is retried once (routing's default), so it is said twice.
    for status in [400, 500, 401] {
        for _ in 0..if status == 500 { 2 } else { 1 } {
            upstream.fail_next(
                status,
                json!({"error": {"message": format!("Incorrect API key provided: {OPENAI_KEY}."),
                    "type": "invalid_request_error"}}),
            );
        }
        let got = seen
            .take(chat(TestApp::chat("gpt-test", "x")).await.unwrap())
            .await;
        assert_eq!(got, if status == 400 { 400 } else { 502 });
    }

    // Operators' views.
    let now = tollgate::clock::now_secs();
    let admin = issuer.sign(&json!({"iss": issuer.url, "sub": "root@example.com",
        "aud": [ADMIN_AUDIENCE], "iat": now, "exp": now + 600}));
    for path in [
        "/admin/v1/keys",
        "/admin/v1/spend",
        "/admin/v1/audit",
        "/admin/v1/tokens",
    ] {
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(seen.take(r).await, 200, "{path}");
    }
    let r = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(seen.take(r).await, 200);

    // SIGTERM: writers flush their rows and the audit log into the database.
    tollgate.stop().await;
    let log = std::fs::read(&tollgate.log).unwrap();
    let mut files = Vec::new();
    let db_file = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    for entry in std::fs::read_dir(db_file.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(!files.is_empty());
    // The scenario really happened: the upstream saw the keys, the database holds spend rows.
    assert!(upstream.count_with_key("/v1/chat/completions", OPENAI_KEY) >= 2);
    assert!(
        files.iter().any(|(_, b)| contains(b, "gpt-test")),
        "spend rows are in the database"
    );
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        assert!(!contains(&seen.0, key), "{key} in a response");
        assert!(!contains(&log, key), "{key} in the log");
        for (path, bytes) in &files {
            assert!(!contains(bytes, key), "{key} in {}", path.display());
        }
    }
    // Nor the workload's own credentials in the log.
    assert!(!contains(&log, &token), "the Tollgate token in the log");
    assert!(!contains(&log, &sa), "the service-account token in the log");
}
