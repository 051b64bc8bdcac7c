//! A month boundary on a fleet, with the ledger clock moved to 30 seconds before midnight of
//! 31 December: three replicas spend a monthly cap, cross into January together, and the new
//! window starts clean exactly once — every replica serves again, the fleet spends at most one
//! cap in January, December's spend is still there, and each alert fires once per window.
//!
//! The ledger clock is process-wide, so this file holds one test (its own process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::app::{TestApp, spawn_fleet_with};
use support::db::TestDbKind;
use support::hooks::receiver;

const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
pools:
  monthly:
    budget: { usd: 0.001, window: monthly }
    alerts: [50, 100]
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: monthly
    billing_owner: team-a
    models: [gpt-test]
    max_tokens: { default: 16, max: 16 }
"#;

const CAP: i64 = 1_000;
const DEC_1: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z
const JAN_1: i64 = 1_798_761_600_000; // 2027-01-01T00:00:00Z

/// Round-robin requests over the fleet until each replica has refused three in a row; the
/// answers that were served.
async fn spend_to_cap(apps: &[TestApp], token: &str) -> usize {
    let body = TestApp::chat("gpt-test", "hello from a pod");
    let mut refused = [0; 3];
    let mut ok = 0;
    let mut i = 0;
    while refused.iter().any(|r| *r < 3) {
        let r = apps[i % 3].post("/v1/chat/completions", token, &body).await;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        match (status, v["error"]["code"].as_str()) {
            (200, _) => {
                ok += 1;
                refused[i % 3] = 0;
            }
            (429, Some("budget_exceeded")) => refused[i % 3] += 1,
            other => panic!("unexpected {other:?}: {v}"),
        }
        i += 1;
        assert!(i < 2_000, "the cap never held");
    }
    ok
}

#[tokio::test]
async fn a_month_boundary_starts_one_clean_window_for_the_whole_fleet() {
    let (hooks, seen) = receiver().await;
    let alerts = format!(
        "[alerts]\ncheck_interval = \"100ms\"\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/json\"\n"
    );
    let apps = spawn_fleet_with(TestDbKind::Postgres, POLICY, &alerts, 3).await;
    let token = apps[0].token_for("team-a").await;
    let store = apps[0].store();

    tollgate::clock::shift_ledger(JAN_1 - 30_000);
    let december = spend_to_cap(&apps, &token).await;
    assert!(
        tollgate::clock::ledger_ms() < JAN_1,
        "December's spending ran past midnight"
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // spend flush
    let dec_spent = store.spend_since("monthly", DEC_1).await.unwrap();
    assert!(
        dec_spent <= CAP && dec_spent > CAP / 2,
        "December: {dec_spent} µ$"
    );

    // Midnight: every replica serves again, from one clean window.
    tollgate::clock::shift_ledger(JAN_1 + 2_000);
    let body = TestApp::chat("gpt-test", "happy new year");
    for (i, app) in apps.iter().enumerate() {
        let r = app.post("/v1/chat/completions", &token, &body).await;
        assert_eq!(r.status(), 200, "replica {i} in the new window");
    }
    let january = spend_to_cap(&apps, &token).await + 3;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let jan_spent = store.spend_since("monthly", JAN_1).await.unwrap();
    let all = store.spend_since("monthly", DEC_1).await.unwrap();
    eprintln!(
        "month boundary: December {dec_spent} µ$ over {december} requests, January {jan_spent} µ$ over {january}, cap {CAP} µ$"
    );
    assert!(
        jan_spent <= CAP && jan_spent > CAP / 2,
        "January: {jan_spent} µ$"
    );
    assert_eq!(
        all - jan_spent,
        dec_spent,
        "December's spend is kept across the boundary"
    );
    let day = JAN_1 / tollgate::store::DAY_MS;
    assert!(store.budget_granted("monthly", day, day).await.unwrap() <= CAP);

    // Exactly once: with the upkeep ticking on (leases handed back and re-leased), another
    // round of spending finds only what the leases had left of January's one cap.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let more = spend_to_cap(&apps, &token).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let jan_total = store.spend_since("monthly", JAN_1).await.unwrap();
    assert!(
        jan_total <= CAP,
        "no second reset: January {jan_total} µ$ after {more} more"
    );
    // Each threshold once per window: 50 and 100 % for December, again for January.
    let mut fired: Vec<(i64, String)> = seen
        .lock()
        .iter()
        .map(|(_, b)| {
            (
                b["threshold_percent"].as_i64().unwrap(),
                b["window"]["start"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        [
            (50, "2026-12-01T00:00:00Z".to_owned()),
            (50, "2027-01-01T00:00:00Z".to_owned()),
            (100, "2026-12-01T00:00:00Z".to_owned()),
            (100, "2027-01-01T00:00:00Z".to_owned()),
        ]
    );
    for app in apps {
        app.stop().await;
    }
}
