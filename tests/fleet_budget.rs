//! A hard-capped pool on a fleet: three Tollgate replicas on one PostgreSQL, a few hundred
//! concurrent requests against a small cap. The recorded spend never passes the cap, and the
//! cap is actually reached (within what the replicas' leases may still hold).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::app::{Options, TestApp, spawn_app_with, spawn_fleet};
use support::db::TestDbKind;

const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
pools:
  capped:
    budget: { usd: 0.001, window: daily }
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: capped
    billing_owner: team-a
    models: [gpt-test]
    max_tokens: { default: 16, max: 16 }
"#;

const CAP_MICRO_USD: i64 = 1_000;

async fn fleet(kind: TestDbKind) -> Vec<TestApp> {
    spawn_fleet(kind, POLICY, 3).await
}

#[tokio::test]
async fn three_replicas_never_spend_past_a_hard_cap_and_reach_it() {
    let apps = fleet(TestDbKind::Postgres).await;
    // A token minted by one replica is valid on all (signing keys are shared by the store).
    let token = apps[0].token_for("team-a").await;
    let body = TestApp::chat("gpt-test", "hello from a pod");
    // 30 clients at once, round-robin over the replicas, each going on until the budget
    // refuses it five times in a row: concurrent load that keeps coming after settlements.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..30).map(|_| async {
        let (mut ok, mut refused, mut in_a_row) = (0usize, 0usize, 0);
        while in_a_row < 5 {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = apps[i % 3]
                .post("/v1/chat/completions", &token, &body)
                .await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or_default();
            match (status, v["error"]["code"].as_str()) {
                (200, _) => {
                    ok += 1;
                    in_a_row = 0;
                }
                (429, Some("budget_exceeded")) => {
                    refused += 1;
                    in_a_row += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("unexpected answer {other:?}: {v}"),
            }
        }
        (ok, refused)
    });
    let results = futures_util::future::join_all(workers).await;
    let ok: usize = results.iter().map(|r| r.0).sum();
    let capped: usize = results.iter().map(|r| r.1).sum();

    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // spend flush
    let store = apps[0].store();
    let spent = store.spend_since("capped", 0).await.unwrap();
    let day = tollgate::clock::now_ms() / tollgate::store::DAY_MS;
    let granted = store.budget_granted("capped", day, day).await.unwrap();
    eprintln!(
        "fleet budget: cap {CAP_MICRO_USD} µ$, spent {spent} µ$ over {ok} requests, granted {granted} µ$, {capped} refused"
    );
    assert!(spent <= CAP_MICRO_USD, "spent {spent} > cap");
    assert!(granted <= CAP_MICRO_USD, "granted {granted} > cap");
    // Undershoot: at most one lease slice (cap / 20) per replica stays unused — in practice
    // less than one request's worst case each (money too small to cover a request).
    let slack = 3 * (CAP_MICRO_USD / 20);
    assert!(
        spent >= CAP_MICRO_USD - slack,
        "spent {spent} leaves more than {slack} of the cap unused"
    );
    // Replicas that shut down hand back every unreserved micro-dollar: what stays granted
    // is exactly what was spent.
    let db = apps[0].db.url.clone();
    for app in apps {
        app.stop().await;
    }
    let store = tollgate::store::Store::connect(&db, 2).await.unwrap();
    assert_eq!(
        store.budget_granted("capped", day, day).await.unwrap(),
        store.spend_since("capped", 0).await.unwrap()
    );
}

#[tokio::test]
async fn a_budget_that_cannot_be_checked_is_a_503_with_retry_after_not_a_500() {
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(POLICY.into()),
            ..Options::default()
        },
    )
    .await;
    let token = app.token_for("team-a").await;
    // The ledger breaks under the replica (as a database outage would for its statements).
    let db = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
    sqlx::query("DROP TABLE budget_leases")
        .execute(&db)
        .await
        .unwrap();
    let r = app
        .post(
            "/v1/chat/completions",
            &token,
            &TestApp::chat("gpt-test", "hello"),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("capped"),
        "{v}"
    );
    app.stop().await;
}
