//! Staged rotation of provider keys against real secret stores (OpenBao, moto) and a test
//! upstream that accepts only the keys it was told are valid: a full rotation under traffic
//! with no failed request, a bad pending key rolled back at `tested`, a key that degrades
//! during the canary rolled back, concurrent rotate calls giving one rotation, and abort.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::app::{OPENAI_KEY, Options, TestApp, spawn_app_with};
use support::db::TestDbKind;
use support::peers::{Bao, Moto, unique_prefix};

const NEW_KEY: &str = "sk-test-openai-rotated-4c1d9e";
const ROLES: &str = r#"
roles:
  - role: security
    groups: ["sec-team"]
"#;

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
    let policy = format!("{}{ROLES}", support::app::POLICY);
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

async fn vault_meta(bao: &Bao, id: &str) -> Value {
    bao.api(Method::GET, &format!("secret/metadata/{id}"), None)
        .await["data"]["custom_metadata"]
        .clone()
}

#[tokio::test]
async fn a_vault_key_rotates_through_every_step_under_traffic_without_a_failed_request() {
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    let app = app(bao.secrets_toml(&p), rotation_toml("1500ms", "500ms")).await;
    app.upstream.accept_openai_key(NEW_KEY);
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
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "failed requests during the rotation: {failed:?}"
    );
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
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    let app = app(bao.secrets_toml(&p), rotation_toml("30s", "500ms")).await;
    app.upstream.accept_openai_key(NEW_KEY);
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
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
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
    let bao = Bao::shared();
    let (p, id) = vault_key_with_pending(&bao).await;
    let app = app(bao.secrets_toml(&p), rotation_toml("1h", "1h")).await;
    app.upstream.accept_openai_key(NEW_KEY);
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
    let t = security(&app);
    let r = abort(&app, rid).await;
    assert_eq!(r.status(), 202);
    let done = until_state(&app, rid, "rolled_back", Duration::from_secs(10)).await;
    assert_eq!(done["outcome"], "aborted by sam@example.com");
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
    use tollgate::store::{NewRotation, RotationState as S, RotationTrigger, Store, Transition};
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
        let (rot, created) = store
            .start_rotation(&NewRotation {
                key_id: id.clone(),
                from_version: "1".into(),
                to_version: "2".into(),
                trigger: RotationTrigger::Manual,
                emergency: false,
                requested_by: "test".into(),
                now: tollgate::clock::now_ms(),
            })
            .await
            .unwrap();
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
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(failed.is_empty(), "{failed:?} of {}", statuses.len());
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
