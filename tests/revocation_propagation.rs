//! Revocation propagation across a fleet: three replicas on one PostgreSQL. A revocation of
//! every kind made on replica A is refused on B and C within the bound (target p99 100 ms,
//! hard bound 1 s), measured and printed. The periodic re-sync is set to an hour so only the
//! LISTEN/NOTIFY path can be fast; two more tests show the safety nets: a notification that
//! never comes (trigger disabled) is covered by the periodic re-sync, and a listener whose
//! connection is killed reconnects and re-reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};
use support::app::{Options, POLICY, TestApp, spawn_fleet_opts};
use support::db::TestDbKind;
use tollgate::revocation::Principal;
use tollgate::store::{NewRevocation, RevocationKind};

const KINDS: [RevocationKind; 7] = [
    RevocationKind::Jti,
    RevocationKind::Subject,
    RevocationKind::Team,
    RevocationKind::Pool,
    RevocationKind::Issuer,
    RevocationKind::PodUid,
    RevocationKind::ProviderKey,
];
const SAMPLES_PER_KIND: usize = 15;
const HARD_BOUND: Duration = Duration::from_secs(1);
const TARGET_P99: Duration = Duration::from_millis(100);

async fn fleet(sync: &str) -> Vec<TestApp> {
    spawn_fleet_opts(
        TestDbKind::Postgres,
        3,
        Options {
            revocation_sync_interval: Some(sync.into()),
            ..Options::default()
        },
    )
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Is `value` of `kind` refused by this replica's in-memory set (what the hot path asks)?
fn refused(app: &TestApp, kind: RevocationKind, value: &str) -> bool {
    let set = &app.state.revocations;
    if kind == RevocationKind::ProviderKey {
        return set.key_disabled(value);
    }
    let pick = |k: RevocationKind| if kind == k { value } else { "-" };
    let p = Principal {
        jti: Some(pick(RevocationKind::Jti)),
        subject: pick(RevocationKind::Subject),
        team: pick(RevocationKind::Team),
        pool: pick(RevocationKind::Pool),
        issuer: pick(RevocationKind::Issuer),
        pod_uid: (kind == RevocationKind::PodUid).then_some(value),
        // Issued a minute ago: every cut-off made now applies.
        issued_at: now_ms() / 1000 - 60,
    };
    set.check(&p).is_err()
}

/// Wait until `app` refuses `value`; the time it took from `start`, or `None` past `limit`.
async fn until_refused(
    app: &TestApp,
    kind: RevocationKind,
    value: &str,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        if refused(app, kind, value) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn revocation(kind: RevocationKind, value: &str) -> NewRevocation {
    NewRevocation {
        kind,
        value: value.to_owned(),
        reason: "propagation test".into(),
        created_at: now_ms(),
        expires_at: None,
        created_by: "test".into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_replica_is_refused_on_the_others_within_the_bound() {
    let apps = fleet("1h").await;
    let mut all = Vec::new();
    for kind in KINDS {
        let mut per_kind = Vec::new();
        for i in 0..SAMPLES_PER_KIND {
            let value = format!("{}-{i}-{}", kind.as_str(), uuid::Uuid::new_v4().simple());
            assert!(!refused(&apps[1], kind, &value));
            // Measured from the responder's call on A: its write, the trigger, NOTIFY, and
            // B's and C's re-read.
            let start = Instant::now();
            apps[0]
                .state
                .revocations
                .revoke(&revocation(kind, &value))
                .await
                .unwrap();
            let (b, c) = tokio::join!(
                until_refused(&apps[1], kind, &value, start, HARD_BOUND),
                until_refused(&apps[2], kind, &value, start, HARD_BOUND),
            );
            for (replica, t) in [("B", b), ("C", c)] {
                let t = t.unwrap_or_else(|| {
                    panic!(
                        "{} revocation not refused on replica {replica} within {HARD_BOUND:?}",
                        kind.as_str()
                    )
                });
                per_kind.push(t);
            }
        }
        per_kind.sort();
        eprintln!(
            "propagation {:<12} n={} p50={:?} p99={:?} max={:?}",
            kind.as_str(),
            per_kind.len(),
            percentile(&per_kind, 0.5),
            percentile(&per_kind, 0.99),
            per_kind[per_kind.len() - 1]
        );
        all.extend(per_kind);
    }
    all.sort();
    let p99 = percentile(&all, 0.99);
    eprintln!(
        "propagation all kinds, 3 replicas: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        p99,
        all[all.len() - 1]
    );
    assert!(
        p99 <= TARGET_P99,
        "p99 {p99:?} is past the {TARGET_P99:?} target"
    );
    // Each replica re-read once per revocation at most (statements are coalesced).
    let n = apps[1].state.revocations.notifications();
    assert!(
        n >= (KINDS.len() * SAMPLES_PER_KIND) as u64 / 2,
        "{n} notifications"
    );
    // Every replica measured each revocation's lag once, when it first enforced it; the
    // recording replica too.
    let total = (KINDS.len() * SAMPLES_PER_KIND) as f64;
    for app in &apps {
        let m = app.metrics().await;
        let count = m
            .value("tollgate_revocation_propagation_seconds_count")
            .unwrap();
        let sum = m
            .value("tollgate_revocation_propagation_seconds_sum")
            .unwrap();
        assert_eq!(count, total, "{}", m.0);
        assert!(
            sum / count < HARD_BOUND.as_secs_f64(),
            "mean lag {}",
            sum / count
        );
        assert_eq!(
            m.value(r#"tollgate_revocation_propagation_seconds_bucket{le="+Inf"}"#),
            Some(total)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_refused_over_http_on_every_replica() {
    // The responder's path: an admin token and the admin API of one replica.
    let apps = spawn_fleet_opts(
        TestDbKind::Postgres,
        3,
        Options {
            revocation_sync_interval: Some("1h".into()),
            policy: Some(format!(
                "{POLICY}roles:\n  - role: responder\n    subjects: [\"oncall@example.com\"]\n"
            )),
            admin: Some(String::new()),
            ..Options::default()
        },
    )
    .await;
    let token = apps[0].token_for("team-a").await;
    let chat = TestApp::chat("gpt-test", "hi");
    for app in &apps {
        let r = app.post("/v1/chat/completions", &token, &chat).await;
        assert_eq!(r.status(), 200);
    }
    let claims = apps[0].state.tokens.verify(&token).await.unwrap();
    let admin = apps[0].admin_token("oncall@example.com", &[]);
    let start = Instant::now();
    let r = apps[0]
        .admin(
            reqwest::Method::POST,
            "/admin/v1/revocations",
            Some(&admin),
            Some(&serde_json::json!({"kind": "subject", "id": claims.sub, "reason": "leaked"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    for app in &apps[1..] {
        until_refused(app, RevocationKind::Subject, &claims.sub, start, HARD_BOUND)
            .await
            .expect("refused within the bound");
        let r = app.post("/v1/chat/completions", &token, &chat).await;
        assert_eq!(r.status(), 401);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "token_revoked", "{v}");
        // And no new token for the revoked workload, on any replica.
        let r = app.exchange(&app.workload_token("team-a", "app")).await;
        assert_eq!(r.status(), 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_notification_is_covered_by_the_periodic_resync() {
    let apps = fleet("300ms").await;
    let db = apps[0].store();
    // A change no trigger announces (as if the notification were lost).
    let pool = sqlx::PgPool::connect(&apps[0].db.url).await.unwrap();
    sqlx::query("ALTER TABLE revocations DISABLE TRIGGER revocations_notify")
        .execute(&pool)
        .await
        .unwrap();
    let before = apps[1].state.revocations.notifications();
    let start = Instant::now();
    db.insert_revocation(&revocation(RevocationKind::Team, "silent"))
        .await
        .unwrap();
    for app in &apps[1..] {
        let t = until_refused(app, RevocationKind::Team, "silent", start, HARD_BOUND)
            .await
            .expect("the periodic re-sync applies it within the bound");
        eprintln!("without a notification: refused after {t:?}");
    }
    assert_eq!(apps[1].state.revocations.notifications(), before);
    sqlx::query("ALTER TABLE revocations ENABLE TRIGGER revocations_notify")
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_whose_connection_dies_reconnects_and_rereads() {
    let apps = fleet("1h").await;
    let pool = sqlx::PgPool::connect(&apps[0].db.url).await.unwrap();
    // Kill every listening connection of this database (the three replicas' feeds).
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed.len(), 3, "one listener per replica");
    // A revocation made while the feeds reconnect: either the notification reaches the new
    // connection, or the re-read after reconnecting finds it.
    let start = Instant::now();
    apps[0]
        .store()
        .insert_revocation(&revocation(RevocationKind::Pool, "after-the-cut"))
        .await
        .unwrap();
    for app in &apps[1..] {
        let t = until_refused(
            app,
            RevocationKind::Pool,
            "after-the-cut",
            start,
            Duration::from_secs(3),
        )
        .await
        .expect("refused after the listener reconnected");
        eprintln!("after a listener reconnect: refused after {t:?}");
    }
    // And the feed works again afterwards.
    let start = Instant::now();
    apps[0]
        .store()
        .insert_revocation(&revocation(RevocationKind::Pool, "later"))
        .await
        .unwrap();
    for app in &apps[1..] {
        until_refused(app, RevocationKind::Pool, "later", start, HARD_BOUND)
            .await
            .expect("notifications flow again");
    }
}
