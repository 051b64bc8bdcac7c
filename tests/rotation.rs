//! Staged rotation of provider keys against real secret stores (OpenBao, moto) and a test
//! upstream that accepts only the keys it was told are valid: a full rotation under traffic
//! with no failed request, a bad pending key rolled back at `tested`, a key that degrades
//! during the canary rolled back, concurrent rotate calls giving one rotation, and abort;
//! policy schedules, keys created and deleted through OpenAI's admin API (served by the test
//! upstream), emergency rotation from `disable --rotate`, and a leader killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::app::{OPENAI_KEY, Options, TestApp, UPSTREAM_URL, spawn_app_with};
use support::db::{TestDb, TestDbKind};
use support::peers::{Bao, Moto, unique_prefix};

const NEW_KEY: &str = "sk-test-openai-rotated-4c1d9e";
const ROLES: &str = r#"
roles:
  - role: security
    groups: ["sec-team"]
  - role: responder
    groups: ["oncall"]
"#;
/// The admin key of the test upstream's OpenAI admin API.
const ADMIN_KEY: &str = "sk-admin-test-7f3a91";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Fast pacing: the whole rotation takes a few seconds.
fn rotation_toml(canary: &str, drain: &str) -> String {
    format!(
        "[rotation]\ntick = \"100ms\"\nlease = \"1s\"\ncanary_share = 0.25\ncanary_duration = \"{canary}\"\n\
         canary_min_requests = 4\ndrain = \"{drain}\"\nemergency_drain = \"200ms\"\n"
    )
}

async fn app(secrets: String, rotation: String) -> TestApp {
    app_on(TestDbKind::Sqlite, None, secrets, rotation).await
}

async fn app_on(
    kind: TestDbKind,
    database_url: Option<String>,
    secrets: String,
    rotation: String,
) -> TestApp {
    app_with_policy(kind, database_url, secrets, rotation, "").await
}

/// [`app_on`] with `extra_policy` appended to the policy file.
async fn app_with_policy(
    kind: TestDbKind,
    database_url: Option<String>,
    secrets: String,
    rotation: String,
    extra_policy: &str,
) -> TestApp {
    let policy = format!("{}{ROLES}{extra_policy}", support::app::POLICY);
    spawn_app_with(
        kind,
        Options {
            policy: Some(policy),
            secrets: Some(secrets),
            extra_config: rotation,
            admin: Some(String::new()),
            database_url,
            ..Options::default()
        },
    )
    .await
}

async fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("admin")
        .args(args)
        .env("TOLLGATE_URL", &app.url)
        .env("TOLLGATE_ADMIN_TOKEN", security(app))
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn security(app: &TestApp) -> String {
    app.admin_token("sam@example.com", &["sec-team"])
}

fn enc(id: &str) -> String {
    id.replace('/', "%2F")
}

async fn rotate(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    let t = security(app);
    app.admin(
        Method::POST,
        &format!("/admin/v1/keys/{}/rotate", enc(id)),
        Some(&t),
        Some(&body),
    )
    .await
}

async fn rotation(app: &TestApp, rid: i64) -> Value {
    let t = security(app);
    let r = app
        .admin(
            Method::GET,
            &format!("/admin/v1/rotations/{rid}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn abort(app: &TestApp, rid: i64) -> reqwest::Response {
    let t = security(app);
    app.admin(
        Method::POST,
        &format!("/admin/v1/rotations/{rid}/abort"),
        Some(&t),
        None,
    )
    .await
}

/// Poll until the rotation is in `state` (panics with its history after `within`).
async fn until_state(app: &TestApp, rid: i64, state: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        let r = rotation(app, rid).await;
        if r["state"] == state {
            return r;
        }
        assert!(
            Instant::now() < end,
            "rotation never reached {state}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn states(r: &Value) -> Vec<String> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to_state"].as_str().unwrap().to_owned())
        .collect()
}

/// Clients calling through Tollgate until stopped; every status is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<u16>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(app: &TestApp, token: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
                let (http, url, token) = (app.http.clone(), app.url.clone(), token.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = http
                            .post(format!("{url}/v1/chat/completions"))
                            .bearer_auth(&token)
                            .json(&TestApp::chat("gpt-test", "hello during a rotation"))
                            .send()
                            .await
                            .unwrap();
                        statuses.lock().push(r.status().as_u16());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            statuses,
            tasks,
        }
    }

    async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.statuses.lock().clone()
    }
}

/// A manual rotation of `id` from version 1 to 2, recorded straight in the store.
async fn stage_1_to_2(
    store: &tollgate::store::Store,
    id: &str,
) -> (tollgate::store::RotationRecord, bool) {
    store
        .start_rotation(&tollgate::store::NewRotation {
            key_id: id.to_owned(),
            from_version: "1".into(),
            to_version: "2".into(),
            trigger: tollgate::store::RotationTrigger::Manual,
            emergency: false,
            requested_by: "test".into(),
            issued_ref: None,
            now: tollgate::clock::now_ms(),
        })
        .await
        .unwrap()
}

/// Every client request was answered 200.
fn assert_no_failures(statuses: &[u16]) {
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "failed requests: {failed:?} of {}",
        statuses.len()
    );
}

/// `n` chat calls, each answered 200.
async fn calls_succeed(app: &TestApp, token: &str, n: usize) {
    for _ in 0..n {
        let r = app
            .post(
                "/v1/chat/completions",
                token,
                &TestApp::chat("gpt-test", "hi"),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
}

/// A Vault key pinned at version 1 (`OPENAI_KEY`) with `NEW_KEY` written as version 2.
async fn vault_key_with_pending(bao: &Bao) -> (String, String) {
    let p = unique_prefix();
    let id = format!("{p}/openai/team-a");
    bao.put_key(&id, OPENAI_KEY).await;
    bao.put_metadata(
        &id,
        &[("billing_owner", "team-a"), ("tollgate_version", "1")],
    )
    .await;
    assert_eq!(bao.put_key(&id, NEW_KEY).await, 2);
    (p, id)
}

/// A Vault key with a pending version and a replica that rotates at this pace and whose
/// upstream accepts the new key.
async fn vault_rotation_app(canary: &str, drain: &str) -> (Bao, String, TestApp) {
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    let app = app(bao.secrets_toml(&p), rotation_toml(canary, drain)).await;
    app.upstream.accept_openai_key(NEW_KEY);
    (bao, id, app)
}

async fn vault_meta(bao: &Bao, id: &str) -> Value {
    bao.api(Method::GET, &format!("secret/metadata/{id}"), None)
        .await["data"]["custom_metadata"]
        .clone()
}

#[tokio::test]
async fn a_vault_key_rotates_through_every_step_under_traffic_without_a_failed_request() {
    let (bao, id, app) = vault_rotation_app("1500ms", "500ms").await;
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tollgate::clock::now_ms();

    let r = rotate(&app, &id, json!({})).await;
    assert_eq!(r.status(), 202);
    let r: Value = r.json().await.unwrap();
    assert_eq!(
        (
            r["state"].as_str(),
            r["from_version"].as_str(),
            r["to_version"].as_str()
        ),
        (Some("staged"), Some("1"), Some("2"))
    );
    let rid = r["id"].as_i64().unwrap();
    let done = until_state(&app, rid, "retired", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses = traffic.stop().await;

    assert_eq!(
        states(&done),
        [
            "staged", "tested", "canary", "promoted", "draining", "retired"
        ]
    );
    assert_no_failures(&statuses);
    assert!(statuses.len() > 50, "traffic ran: {}", statuses.len());
    // The canary saw the new key while the old one still served most requests.
    let canary = &done["events"][3]["detail"];
    assert!(
        canary["pending"]["requests"].as_i64().unwrap() > 0,
        "{canary}"
    );
    assert!(
        canary["current"]["requests"].as_i64().unwrap()
            > canary["pending"]["requests"].as_i64().unwrap(),
        "{canary}"
    );
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "2");
    // After retirement every request uses the new key.
    let before = app
        .upstream
        .count_with_key("/v1/chat/completions", OPENAI_KEY);
    calls_succeed(&app, &token, 5).await;
    assert_eq!(
        app.upstream
            .count_with_key("/v1/chat/completions", OPENAI_KEY),
        before
    );
    // Spend rows say which version served, per second of the rotation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timeline = app.store().version_timeline(&id, started).await.unwrap();
    let versions: std::collections::BTreeSet<_> =
        timeline.iter().filter_map(|t| t.1.clone()).collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["1", "2"]);
    eprintln!("timeline (second, version, requests, errors): {timeline:?}");
    eprintln!("events: {:#}", done["events"]);
    // Every step is in the audit log.
    let t = security(&app);
    let audit: Value = app
        .admin(Method::GET, "/admin/v1/audit?limit=100", Some(&t), None)
        .await
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    for step in [
        "rotation.requested",
        "rotation.tested",
        "rotation.canary",
        "rotation.promoted",
        "rotation.retired",
    ] {
        assert!(text.contains(step), "{step} audited: {text}");
    }
    assert!(!text.contains(NEW_KEY) && !text.contains(OPENAI_KEY));
}

#[tokio::test]
async fn a_pending_key_the_provider_refuses_is_rolled_back_at_tested_and_never_serves() {
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    // The upstream does not know NEW_KEY.
    let app = app(bao.secrets_toml(&p), rotation_toml("1s", "500ms")).await;
    let token = app.token_for("team-a").await;
    let r = rotate(&app, &id, json!({})).await;
    assert_eq!(r.status(), 202);
    let rid = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let done = until_state(&app, rid, "rolled_back", Duration::from_secs(20)).await;
    assert_eq!(states(&done), ["staged", "rolled_back"]);
    let why = done["outcome"].as_str().unwrap();
    assert!(why.contains("refused the pending key (401)"), "{why}");
    // Withdrawn in Vault, the old version still pinned, never served.
    let meta = vault_meta(&bao, &id).await;
    assert_eq!(
        (
            meta["tollgate_version"].as_str(),
            meta["tollgate_rejected"].as_str()
        ),
        (Some("1"), Some("2"))
    );
    calls_succeed(&app, &token, 10).await;
    assert_eq!(
        app.upstream.count_with_key("/v1/chat/completions", NEW_KEY),
        0
    );
    // Nothing pending any more: a new rotation needs a new version.
    let r = rotate(&app, &id, json!({})).await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("no pending version"),
        "{p}"
    );
}

#[tokio::test]
async fn a_key_that_degrades_during_the_canary_is_rolled_back_without_failing_a_client() {
    degraded_canary(500, "error rate").await;
}

#[tokio::test]
async fn a_key_refused_during_the_canary_is_rolled_back_at_once_without_failing_a_client() {
    degraded_canary(401, "refused the pending key during the canary").await;
}

async fn degraded_canary(status: u16, reason: &str) {
    let (bao, id, app) = vault_rotation_app("30s", "500ms").await;
    // The live test (GET /models) passes; real calls with the new key fail.
    app.upstream.degrade_key(NEW_KEY, status);
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 4);
    let r = rotate(&app, &id, json!({})).await;
    let rid = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let done = until_state(&app, rid, "rolled_back", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_new = app.upstream.count_with_key("/v1/chat/completions", NEW_KEY);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses = traffic.stop().await;
    assert_eq!(states(&done), ["staged", "tested", "canary", "rolled_back"]);
    let why = done["outcome"].as_str().unwrap();
    assert!(why.contains(reason), "{why}");
    assert!(
        served_new >= 1,
        "the canary judged real traffic: {served_new}"
    );
    assert_eq!(
        app.upstream.count_with_key("/v1/chat/completions", NEW_KEY),
        served_new,
        "a rolled-back key never serves again"
    );
    // Each request the candidate failed was served by the current version instead.
    assert_no_failures(&statuses);
    assert!(
        app.upstream
            .count_with_key("/v1/chat/completions", OPENAI_KEY)
            >= statuses.len(),
        "every request was answered with the current key"
    );
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "1");
}

#[tokio::test]
async fn concurrent_rotate_calls_give_one_rotation_and_abort_rolls_it_back() {
    let (_bao, id, app) = vault_rotation_app("1h", "1h").await;
    let calls = (0..8).map(|_| rotate(&app, &id, json!({})));
    let replies = futures_util::future::join_all(calls).await;
    let mut ids = Vec::new();
    let mut created = 0;
    for r in replies {
        created += usize::from(r.status() == 202);
        assert!(r.status() == 202 || r.status() == 200);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let rid = ids[0];
    until_state(&app, rid, "canary", Duration::from_secs(20)).await;
    // The metrics show the key in canary (the follower reads every tick).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = format!(r#"tollgate_rotation_state{{key="{id}",state="canary"}}"#);
    assert_eq!(app.metrics().await.value(&state), Some(1.0));
    let t = security(&app);
    let r = abort(&app, rid).await;
    assert_eq!(r.status(), 202);
    let done = until_state(&app, rid, "rolled_back", Duration::from_secs(10)).await;
    assert_eq!(done["outcome"], "aborted by sam@example.com");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = app.metrics().await;
    assert_eq!(
        m.value(&state),
        None,
        "a finished rotation leaves the gauge"
    );
    assert_eq!(
        m.value(r#"tollgate_rotations_finished_total{outcome="rolled_back"}"#),
        Some(1.0)
    );
    let r = abort(&app, rid).await;
    assert_eq!(r.status(), 409);
    // Roles: a viewer-less caller may not rotate; unknown keys and ids are 404.
    let nobody = app.admin_token("mallory@example.com", &[]);
    let r = app
        .admin(
            Method::POST,
            &format!("/admin/v1/keys/{}/rotate", enc(&id)),
            Some(&nobody),
            Some(&json!({})),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(rotate(&app, "nope/openai/x", json!({})).await.status(), 404);
    let r = app
        .admin(Method::GET, "/admin/v1/rotations/999999", Some(&t), None)
        .await;
    assert_eq!(r.status(), 404);
    let r = rotate(&app, &id, json!({"emergncy": true})).await;
    assert_eq!(r.status(), 400, "unknown fields are refused");

    // The CLI shows the same through the API.
    let (code, out, err) = cli(&app, &["rotations", "--key", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rolled_back") && out.contains("1 -> 2"),
        "{out}"
    );
    let (code, out, err) = cli(&app, &["rotations", &rid.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("aborted by sam@example.com") && out.contains("canary"),
        "{out}"
    );
    let (code, _, err) = cli(&app, &["rotate", "nope/openai/x"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no provider key nope/openai/x"), "{err}");
}

/// A replica died while leading rotations, at every step (its lease row is left behind):
/// a replica started later takes the leases once they lapse and finishes each rotation,
/// serving every request meanwhile.
#[tokio::test]
async fn rotations_left_by_a_dead_leader_at_any_step_are_resumed_by_another_replica() {
    use tollgate::store::{RotationState as S, Store, Transition};
    let bao = Bao::shared();
    let p = unique_prefix();
    let db = support::db::TestDb::new(TestDbKind::Postgres).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    store.migrate().await.unwrap();
    // (key, the state it died in, whether it had already moved the pin)
    let cases = [
        ("staged", vec![], false),
        ("tested", vec![S::Tested], false),
        ("canary", vec![S::Tested, S::Canary], false),
        ("canary-pinned", vec![S::Tested, S::Canary], true),
        ("promoted", vec![S::Tested, S::Canary, S::Promoted], true),
        (
            "draining",
            vec![S::Tested, S::Canary, S::Promoted, S::Draining],
            true,
        ),
    ];
    let mut ids = Vec::new();
    for (name, path, pinned) in &cases {
        let id = format!("{p}/openai/{name}");
        bao.put_key(&id, OPENAI_KEY).await;
        bao.put_metadata(
            &id,
            &[("billing_owner", "team-a"), ("tollgate_version", "1")],
        )
        .await;
        bao.put_key(&id, NEW_KEY).await;
        let (rot, created) = stage_1_to_2(&store, &id).await;
        assert!(created);
        assert!(
            store
                .claim_rotation(rot.id, "dead-replica", 600_000)
                .await
                .unwrap()
        );
        let mut from = S::Staged;
        for to in path {
            let t = Transition {
                from,
                to: *to,
                leader: "dead-replica",
                outcome: "step of the dead leader",
                detail: json!({}),
                now: tollgate::clock::now_ms(),
            };
            assert!(store.advance_rotation(rot.id, &t).await.unwrap());
            from = *to;
        }
        if *pinned {
            bao.put_metadata(
                &id,
                &[("billing_owner", "team-a"), ("tollgate_version", "2")],
            )
            .await;
        }
        // Another replica may not take a live lease.
        assert!(
            !store
                .claim_rotation(rot.id, "someone-else", 1000)
                .await
                .unwrap()
        );
        // The leader dies: its lease lapses.
        assert!(
            store
                .claim_rotation(rot.id, "dead-replica", -1)
                .await
                .unwrap()
        );
        ids.push((id, rot.id));
    }
    let app = app_on(
        TestDbKind::Postgres,
        Some(db.url.clone()),
        bao.secrets_toml(&p),
        rotation_toml("600ms", "300ms"),
    )
    .await;
    app.upstream.accept_openai_key(NEW_KEY);
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 3);
    let replica = app.state.rotator.replica().to_owned();
    for (id, rid) in &ids {
        let done = until_state(&app, *rid, "retired", Duration::from_secs(30)).await;
        let events = done["events"].as_array().unwrap();
        assert_eq!(
            events.last().unwrap()["actor"],
            replica.as_str(),
            "{id}: {done:#}"
        );
        assert_eq!(vault_meta(&bao, id).await["tollgate_version"], "2", "{id}");
    }
    let statuses = traffic.stop().await;
    assert_no_failures(&statuses);
}

#[tokio::test]
async fn an_aws_key_rotates_by_moving_awscurrent_and_keeping_awsprevious() {
    let moto = Moto::shared();
    let p = format!("{}/", unique_prefix());
    let name = format!("{p}openai/team-a");
    let value = |k: &str| json!({ "api_key": k }).to_string();
    moto.create(&name, &value(OPENAI_KEY), &[("billing_owner", "team-a")])
        .await;
    let app = app(moto.secrets_toml(&p), rotation_toml("800ms", "300ms")).await;
    // Written after the last listing (refresh_interval is 1h): rotate lists the store again.
    let sm = moto.client();
    let put = sm
        .put_secret_value()
        .secret_id(&name)
        .secret_string(value(NEW_KEY))
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let pending = put.version_id().unwrap().to_owned();
    app.upstream.accept_openai_key(NEW_KEY);
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 3);
    let r = rotate(&app, &name, json!({})).await;
    let status = r.status();
    let r: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["to_version"], pending.as_str());
    let done = until_state(
        &app,
        r["id"].as_i64().unwrap(),
        "retired",
        Duration::from_secs(30),
    )
    .await;
    let statuses = traffic.stop().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(states(&done).len(), 6);
    let d = sm.describe_secret().secret_id(&name).send().await.unwrap();
    let stages = d.version_ids_to_stages().unwrap();
    assert_eq!(stages[&pending], ["AWSCURRENT"]);
    assert!(
        stages
            .values()
            .any(|s| s.iter().any(|l| l == "AWSPREVIOUS"))
    );
}

/// An OpenAI key issuer for the keys under `{prefix}/openai/`, speaking to the test upstream's
/// admin API with the admin key kept in Vault at `admin_path`.
fn issuer_toml(prefix: &str, admin_path: &str) -> String {
    format!(
        "schedule_tick = \"100ms\"\n[[rotation.issuers]]\nname = \"openai-test\"\nkind = \"openai\"\n\
         keys = [\"{prefix}/openai/*\"]\nbase_url = \"{UPSTREAM_URL}\"\nproject_id = \"proj_test\"\n\
         admin_key_secret = \"{admin_path}\"\n"
    )
}

async fn rotations_of(app: &TestApp, id: &str) -> Vec<Value> {
    let t = security(app);
    let r: Value = app
        .admin(
            Method::GET,
            &format!("/admin/v1/rotations?key={}", enc(id)),
            Some(&t),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    r["rotations"].as_array().unwrap().clone()
}

/// An app whose database says key `id` was first seen `seen_ago_ms` ago, with `schedule`
/// appended to the policy.
async fn scheduled_app(
    bao: &Bao,
    p: &str,
    id: &str,
    seen_ago_ms: i64,
    schedule: &str,
    rotation: String,
) -> (TestApp, TestDb) {
    let db = TestDb::new(TestDbKind::Sqlite).await;
    let store = tollgate::store::Store::connect(&db.url, 2).await.unwrap();
    store.migrate().await.unwrap();
    store
        .schedule_first_seen(id, tollgate::clock::now_ms() - seen_ago_ms)
        .await
        .unwrap();
    store.close().await;
    let app = app_with_policy(
        TestDbKind::Sqlite,
        Some(db.url.clone()),
        bao.secrets_toml(p),
        rotation,
        schedule,
    )
    .await;
    (app, db)
}

/// The first rotation of `id`, once one exists.
async fn first_rotation_of(app: &TestApp, id: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        if let Some(r) = rotations_of(app, id).await.pop() {
            return r;
        }
        assert!(Instant::now() < end, "no rotation of {id} started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn vault_version(bao: &Bao, id: &str, version: u64) -> String {
    bao.api(
        Method::GET,
        &format!("secret/data/{id}?version={version}"),
        None,
    )
    .await["data"]["data"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_due_schedule_rotates_to_a_key_the_issuer_creates_and_retiring_it_deletes_it_at_the_provider()
 {
    let bao = Bao::shared();
    let p = unique_prefix();
    let id = format!("{p}/openai/team-a");
    let fresh = format!("{p}/openai/fresh");
    // No pin: the first issued version must not serve before its canary.
    bao.put_key_with(&id, OPENAI_KEY, &[("billing_owner", "team-a")])
        .await;
    bao.put_key_with(&fresh, OPENAI_KEY, &[("billing_owner", "team-b")])
        .await;
    let admin_path = format!("{p}-admin/openai");
    bao.put_key(&admin_path, ADMIN_KEY).await;
    // team-a's key was first seen 31 days ago, so its 30-day schedule is due; the other key
    // is seen for the first time now and is not.
    let schedule =
        format!("rotations:\n  - name: monthly\n    keys: [\"{p}/openai/*\"]\n    every: 30d\n");
    let rotation = format!(
        "{}{}",
        rotation_toml("1s", "300ms"),
        issuer_toml(&p, &admin_path)
    );
    let (app, _db) = scheduled_app(&bao, &p, &id, 31 * DAY_MS, &schedule, rotation).await;
    // The provider refuses the admin key: a clear 503 that names the issuer and no key, and
    // nothing is created or recorded.
    app.upstream.serve_admin_api("sk-admin-some-other-key");
    let r = rotate(&app, &fresh, json!({})).await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("openai-test") && body.contains("401") && !body.contains(ADMIN_KEY),
        "{body}"
    );
    assert!(app.upstream.service_accounts().is_empty());
    app.upstream.serve_admin_api(ADMIN_KEY);
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 2);

    // The schedule starts the rotation by itself, with a key the issuer created.
    let first = first_rotation_of(&app, &id, Duration::from_secs(15)).await;
    assert_eq!(
        (first["trigger"].as_str(), first["requested_by"].as_str()),
        (Some("schedule"), Some("schedule:monthly"))
    );
    assert_eq!(
        (first["from_version"].as_str(), first["to_version"].as_str()),
        (Some("1"), Some("2"))
    );
    let rid = first["id"].as_i64().unwrap();
    let done = until_state(&app, rid, "retired", Duration::from_secs(30)).await;
    assert_eq!(
        states(&done),
        [
            "staged", "tested", "canary", "promoted", "draining", "retired"
        ]
    );
    let accounts = app.upstream.service_accounts();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0].project, "proj_test");
    assert!(accounts[0].name.contains(&id), "{accounts:?}");
    assert_eq!(done["issued_ref"], accounts[0].id.as_str());
    assert_eq!(vault_version(&bao, &id, 2).await, accounts[0].key);
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "2");
    // The old key was not created by the issuer: a person revokes it at the console.
    assert_eq!(done["events"][5]["detail"]["revoke_at_provider"], true);
    assert!(
        rotations_of(&app, &fresh).await.is_empty(),
        "a key seen just now is not due"
    );

    // Rotating again (nothing pending) asks the issuer again; retiring version 2 deletes its
    // service account, and with it the key, at the provider.
    let r = rotate(&app, &id, json!({})).await;
    assert_eq!(r.status(), 202);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["to_version"], "3");
    let done = until_state(
        &app,
        r["id"].as_i64().unwrap(),
        "retired",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        done["events"][5]["detail"]["deleted_at_provider"],
        accounts[0].id.as_str()
    );
    let now = app.upstream.service_accounts();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].id, accounts[0].id);
    assert_eq!(vault_version(&bao, &id, 3).await, now[0].key);

    // A rotation aborted before promotion deletes the key it had created.
    let r: Value = rotate(&app, &id, json!({})).await.json().await.unwrap();
    let rid = r["id"].as_i64().unwrap();
    assert_eq!(abort(&app, rid).await.status(), 202);
    let back = until_state(&app, rid, "rolled_back", Duration::from_secs(15)).await;
    let last = back["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["detail"]["deleted_at_provider"], back["issued_ref"]);
    assert_eq!(app.upstream.service_accounts().len(), 1);
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "3");

    let statuses = traffic.stop().await;
    assert_no_failures(&statuses);
    calls_succeed(&app, &token, 3).await;
    assert!(
        app.upstream
            .count_with_key("/v1/chat/completions", &now[0].key)
            > 0
    );
    // No key, admin or issued, in the audit log or the rotation history.
    let t = security(&app);
    let audit = app
        .admin(Method::GET, "/admin/v1/audit?limit=200", Some(&t), None)
        .await
        .text()
        .await
        .unwrap();
    for secret in [
        ADMIN_KEY,
        OPENAI_KEY,
        accounts[0].key.as_str(),
        now[0].key.as_str(),
    ] {
        assert!(!audit.contains(secret) && !done.to_string().contains(secret));
    }
}

#[tokio::test]
async fn a_due_key_without_a_pending_version_or_issuer_waits_for_security() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let id = format!("{p}/openai/team-a");
    bao.put_key_with(
        &id,
        OPENAI_KEY,
        &[("billing_owner", "team-a"), ("tollgate_version", "1")],
    )
    .await;
    let schedule =
        format!("rotations:\n  - name: nightly\n    keys: [\"{p}/*\"]\n    cron: \"0 3 * * *\"\n");
    let (hooks, seen) = support::hooks::receiver().await;
    let rotation = format!(
        "{}schedule_tick = \"100ms\"\n[alerts]\n[[alerts.webhooks]]\nurl = \"{hooks}/hook/json\"\n",
        rotation_toml("1s", "300ms")
    );
    let (app, _db) = scheduled_app(&bao, &p, &id, 2 * DAY_MS, &schedule, rotation).await;
    app.upstream.accept_openai_key(NEW_KEY);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        rotations_of(&app, &id).await.is_empty(),
        "nothing to rotate to yet"
    );
    // Security is told once (not on every round) what to write.
    let due: Vec<Value> = seen
        .lock()
        .iter()
        .filter(|(_, b)| b["type"] == "rotation_due")
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0]["key"], id.as_str());
    assert!(due[0]["message"].as_str().unwrap().contains("AWSPENDING"));
    // Security writes the new key: the due schedule rotates to it.
    assert_eq!(bao.put_key(&id, NEW_KEY).await, 2);
    let rid = first_rotation_of(&app, &id, Duration::from_secs(15)).await["id"]
        .as_i64()
        .unwrap();
    let done = until_state(&app, rid, "retired", Duration::from_secs(30)).await;
    assert_eq!(done["requested_by"], "schedule:nightly");
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "2");
}

#[tokio::test]
async fn disabling_a_key_with_rotate_replaces_it_by_an_emergency_rotation_without_an_outage() {
    // A canary and drain far longer than the test: the emergency rotation skips the one and
    // shortens the other.
    let (_bao, id, app) = vault_rotation_app("60s", "60s").await;
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 2);
    let oncall = app.admin_token("olive@example.com", &["oncall"]);
    let disable = |body: Value| {
        let (app, id, t) = (&app, &id, oncall.clone());
        async move {
            app.admin(
                Method::POST,
                &format!("/admin/v1/keys/{}/disable", enc(id)),
                Some(&t),
                Some(&body),
            )
            .await
        }
    };
    let r = disable(json!({"reason": "leaked in a CI log", "rotate": true})).await;
    assert_eq!(r.status(), 202);
    let r: Value = r.json().await.unwrap();
    assert_eq!(
        (r["trigger"].as_str(), r["emergency"].as_bool()),
        (Some("emergency"), Some(true))
    );
    assert_eq!(r["requested_by"], "olive@example.com");
    let done = until_state(
        &app,
        r["id"].as_i64().unwrap(),
        "retired",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        states(&done),
        ["staged", "tested", "promoted", "draining", "retired"]
    );
    let statuses = traffic.stop().await;
    assert_no_failures(&statuses);
    // The key id is not revoked: its new version serves; the old one is unused.
    let before = app
        .upstream
        .count_with_key("/v1/chat/completions", OPENAI_KEY);
    calls_succeed(&app, &token, 3).await;
    assert_eq!(
        app.upstream
            .count_with_key("/v1/chat/completions", OPENAI_KEY),
        before
    );
    // Nothing left to rotate to: the responder is told how to cut the key instead.
    let r = disable(json!({"reason": "again", "rotate": true})).await;
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap();
    assert!(body.contains("without rotate"), "{body}");
    let (code, _, err) = cli(&app, &["disable-key", &id, "--reason", "again", "--rotate"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("without rotate"), "{err}");
    let t = security(&app);
    let audit = app
        .admin(Method::GET, "/admin/v1/audit?limit=100", Some(&t), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(audit.contains("key.disabled_by_rotation"), "{audit}");
}

#[tokio::test]
async fn a_leader_killed_with_sigkill_mid_rotation_is_replaced_without_a_failed_request() {
    use support::app::{ANTHROPIC_KEY, POLICY, config_text};
    for kill_at in ["canary", "draining"] {
        eprintln!("--- the leader is killed in {kill_at}");
        let bao = Bao::shared();
        let (p, id) = vault_key_with_pending(&bao).await;
        let db = TestDb::new(TestDbKind::Postgres).await;
        let store = tollgate::store::Store::connect(&db.url, 2).await.unwrap();
        store.migrate().await.unwrap();
        // Replica A: its own process, so it can be killed with SIGKILL.
        let issuer = support::oidc::TestIssuer::start().await;
        let upstream = support::upstream::TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
        upstream.accept_openai_key(NEW_KEY);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("policies/policy.yaml"),
            format!("{POLICY}{ROLES}"),
        )
        .unwrap();
        let opts = Options {
            secrets: Some(bao.secrets_toml(&p)),
            extra_config: rotation_toml("3s", "3s"),
            ..Options::default()
        };
        let text = config_text(
            &db.url,
            &issuer.url,
            &upstream.url,
            dir.path().join("policies"),
            &dir.path().join("no-keys.yaml"),
            &opts,
        );
        std::fs::write(dir.path().join("tollgate.toml"), text).unwrap();
        let log = std::fs::File::create(dir.path().join("a.log")).unwrap();
        let mut a = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(dir.path().join("tollgate.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (rot, _) = stage_1_to_2(&store, &id).await;
        let end = Instant::now() + Duration::from_secs(30);
        let a_leader = loop {
            let r = store.rotation(rot.id).await.unwrap().unwrap();
            if r.state.as_str() == kill_at {
                break r.leader.unwrap();
            }
            let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
            assert!(
                Instant::now() < end,
                "replica A never led the rotation to {kill_at}: {r:?}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // Replica B joins and serves traffic; then A dies without a word.
        let b = app_on(
            TestDbKind::Postgres,
            Some(db.url.clone()),
            bao.secrets_toml(&p),
            rotation_toml("3s", "3s"),
        )
        .await;
        b.upstream.accept_openai_key(NEW_KEY);
        let token = b.token_for("team-a").await;
        let traffic = Traffic::start(&b, &token, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store
                .rotation(rot.id)
                .await
                .unwrap()
                .unwrap()
                .leader
                .as_deref(),
            Some(a_leader.as_str()),
            "A still leads while it lives"
        );
        a.start_kill().unwrap();
        let status = a.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );

        let done = until_state(&b, rot.id, "retired", Duration::from_secs(30)).await;
        let statuses = traffic.stop().await;
        assert_no_failures(&statuses);
        assert_eq!(
            states(&done),
            [
                "staged", "tested", "canary", "promoted", "draining", "retired"
            ]
        );
        assert_eq!(done["leader"], b.state.rotator.replica());
        assert_ne!(done["leader"], a_leader.as_str());
        assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "2");
        store.close().await;
    }
}

#[tokio::test]
async fn every_replica_switches_to_the_promoted_version_within_the_propagation_bound() {
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    // The periodic re-read is slow here: the switch must come from the change feed.
    let fleet = support::app::spawn_fleet_opts(
        TestDbKind::Postgres,
        3,
        Options {
            policy: Some(format!("{}{ROLES}", support::app::POLICY)),
            secrets: Some(bao.secrets_toml(&p)),
            extra_config: rotation_toml("500ms", "1s"),
            admin: Some(String::new()),
            revocation_sync_interval: Some("5s".into()),
            ..Options::default()
        },
    )
    .await;
    // Each replica's first moment of routing every request of the key to version 2.
    let watchers: Vec<_> = fleet
        .iter()
        .map(|app| {
            let (keys, id) = (std::sync::Arc::clone(&app.state.keys), id.clone());
            tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(30);
                loop {
                    if keys
                        .routes()
                        .get(&id)
                        .is_some_and(|r| r.share_ppm == 1_000_000)
                    {
                        return tollgate::clock::now_ms();
                    }
                    assert!(Instant::now() < end, "never switched");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for app in &fleet {
        app.upstream.accept_openai_key(NEW_KEY);
    }
    let token = fleet[1].token_for("team-a").await;
    let traffic = Traffic::start(&fleet[1], &token, 2);
    let r: Value = rotate(&fleet[0], &id, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let rid = r["id"].as_i64().unwrap();
    let done = until_state(&fleet[0], rid, "retired", Duration::from_secs(30)).await;
    assert_no_failures(&traffic.stop().await);
    let promoted_at = fleet[0]
        .store()
        .rotation_events(rid)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.to_state == "promoted")
        .unwrap()
        .at;
    let mut lags = Vec::new();
    for w in watchers {
        lags.push(w.await.unwrap() - promoted_at);
    }
    eprintln!(
        "switch after promotion, per replica (ms): {lags:?}; leader {}",
        done["leader"]
    );
    assert!(
        lags.iter().all(|l| *l < 1_000),
        "every replica within 1 s of promotion: {lags:?}"
    );
}

#[tokio::test]
async fn a_new_version_the_provider_refuses_while_draining_is_rolled_back_to_the_old_one() {
    let (bao, id, app) = vault_rotation_app("300ms", "30s").await;
    let token = app.token_for("team-a").await;
    let traffic = Traffic::start(&app, &token, 2);
    let r: Value = rotate(&app, &id, json!({})).await.json().await.unwrap();
    let rid = r["id"].as_i64().unwrap();
    until_state(&app, rid, "draining", Duration::from_secs(15)).await;
    // Someone revokes the new key at the provider while the old one is still in the store.
    app.upstream.revoke_openai_key(NEW_KEY);
    let back = until_state(&app, rid, "rolled_back", Duration::from_secs(15)).await;
    assert!(
        back["outcome"]
            .as_str()
            .unwrap()
            .contains("after promotion"),
        "{back:#}"
    );
    assert_eq!(vault_meta(&bao, &id).await["tollgate_version"], "1");
    assert_eq!(vault_meta(&bao, &id).await["tollgate_rejected"], "2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request the new version failed was served by the old one, which then stood in for
    // it until the rollback: no client saw the revocation.
    assert_no_failures(&traffic.stop().await);
    // The old version serves everything again.
    let before = app
        .upstream
        .count_with_key("/v1/chat/completions", OPENAI_KEY);
    calls_succeed(&app, &token, 5).await;
    assert_eq!(
        app.upstream
            .count_with_key("/v1/chat/completions", OPENAI_KEY),
        before + 5
    );
}
