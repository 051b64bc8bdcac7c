//! The hash-chained audit log: what lands in it (every token issued, admin action, revocation
//! and budget refusal, never a token), that the store refuses to rewrite it, and that
//! `verify` finds each kind of tampering — a changed field, a deleted row, reordered rows, a
//! rewritten entry, a truncated or deleted chain — at the right position, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{Options, POLICY, TestApp, spawn_app_with};
use support::db::{TestDb, TestDbKind, kinds};
use tokio_util::sync::CancellationToken;
use tollgate::audit::{Audit, ProblemKind, Report, entry_hash, verify};
use tollgate::spend::WriterConfig;
use tollgate::store::Store;

const ROLES: &str = r#"
roles:
  - role: admin
    subjects: ["root@example.com"]
  - role: viewer
    subjects: ["val@example.com"]
"#;

fn wcfg() -> WriterConfig {
    WriterConfig {
        batch_size: 100,
        flush_interval: Duration::from_millis(10),
        queue_capacity: 1000,
        shutdown_deadline: Duration::from_secs(5),
    }
}

async fn fresh(kind: TestDbKind) -> (TestDb, Store) {
    let db = TestDb::new(kind).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    store.migrate().await.unwrap();
    (db, store)
}

/// A chain as one process leaves it: start, `n` entries, a clean end, flushed.
async fn chain_of(store: &Store, n: usize) -> String {
    let cancel = CancellationToken::new();
    let (audit, task) = Audit::start(store.clone(), wcfg(), None, cancel.clone()).await;
    for i in 0..n {
        audit.record(
            "alice@example.com",
            "test.entry",
            &i.to_string(),
            json!({"i": i}),
        );
    }
    audit.close();
    cancel.cancel();
    task.await.unwrap();
    audit.chain_id().to_owned()
}

/// Run statements as someone with the database's owner rights (a DBA, an attacker).
async fn sql(db: &TestDb, kind: TestDbKind, statements: &[&str]) -> Result<(), String> {
    for s in statements {
        let r = match kind {
            TestDbKind::Postgres => {
                let p = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query(s).execute(&p).await.map(|_| ())
            }
            TestDbKind::Sqlite => {
                let p = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query(s).execute(&p).await.map(|_| ())
            }
        };
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn drop_guards(db: &TestDb, kind: TestDbKind) {
    let drops: &[&str] = match kind {
        TestDbKind::Postgres => &[
            "DROP TRIGGER audit_log_append_only ON audit_log",
            "DROP TRIGGER audit_log_no_truncate ON audit_log",
        ],
        TestDbKind::Sqlite => &[
            "DROP TRIGGER audit_log_no_update",
            "DROP TRIGGER audit_log_no_delete",
        ],
    };
    sql(db, kind, drops).await.unwrap();
}

fn only_problem(r: &Report) -> (&str, i64, ProblemKind) {
    assert!(!r.ok);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    eprintln!(
        "  found: {:?} at {}#{}: {}",
        p.kind, p.chain_id, p.seq, p.detail
    );
    (p.chain_id.as_str(), p.seq, p.kind)
}

#[tokio::test]
async fn the_store_refuses_to_rewrite_history() {
    for kind in kinds() {
        let (db, store) = fresh(kind).await;
        let chain = chain_of(&store, 3).await;
        let attempts = [
            format!(
                "UPDATE audit_log SET actor = 'mallory' WHERE chain_id = '{chain}' AND seq = 1"
            ),
            format!("DELETE FROM audit_log WHERE chain_id = '{chain}' AND seq = 2"),
        ];
        for a in &attempts {
            let err = sql(&db, kind, &[a]).await.unwrap_err();
            assert!(err.contains("append-only"), "{kind:?} {a}: {err}");
        }
        if kind == TestDbKind::Postgres {
            let err = sql(&db, kind, &["TRUNCATE audit_log"]).await.unwrap_err();
            assert!(err.contains("append-only"), "{err}");
        }
        let r = verify(&store).await.unwrap();
        assert!(r.ok, "{kind:?}: {:?}", r.problems);
        assert_eq!((r.chains, r.entries), (1, 5), "start + 3 + end");
    }
}

/// A fresh chain of 6 entries, `statements(chain)` run against it, and what verify says.
async fn tampered(kind: TestDbKind, statements: impl Fn(&str) -> Vec<String>) -> (String, Report) {
    let (db, store) = fresh(kind).await;
    let c = chain_of(&store, 6).await;
    drop_guards(&db, kind).await;
    let list = statements(&c);
    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
    sql(&db, kind, &refs).await.unwrap();
    let r = verify(&store).await.unwrap();
    (c, r)
}

#[tokio::test]
async fn verify_finds_each_tampering_at_its_position() {
    for kind in kinds() {
        eprintln!("{kind:?}");
        // A changed field: that entry no longer matches its hash.
        let (c, r) = tampered(kind, |c| {
            vec![format!(
                "UPDATE audit_log SET target = 'x' WHERE chain_id = '{c}' AND seq = 3"
            )]
        })
        .await;
        assert_eq!(only_problem(&r), (c.as_str(), 3, ProblemKind::Altered));

        // A deleted row: the gap is where it was.
        let (c, r) = tampered(kind, |c| {
            vec![format!(
                "DELETE FROM audit_log WHERE chain_id = '{c}' AND seq = 4"
            )]
        })
        .await;
        assert_eq!(only_problem(&r), (c.as_str(), 4, ProblemKind::Missing));

        // Reordered rows (2 and 3 swap places): 2 no longer follows 1.
        let (c, r) = tampered(kind, |c| {
            vec![
                format!("UPDATE audit_log SET seq = -1 WHERE chain_id = '{c}' AND seq = 2"),
                format!("UPDATE audit_log SET seq = 2 WHERE chain_id = '{c}' AND seq = 3"),
                format!("UPDATE audit_log SET seq = 3 WHERE chain_id = '{c}' AND seq = -1"),
            ]
        })
        .await;
        assert_eq!(only_problem(&r), (c.as_str(), 2, ProblemKind::BrokenLink));

        // A rewritten entry whose hash was recomputed: the next entry no longer follows it.
        let (db, store) = fresh(kind).await;
        let c = chain_of(&store, 6).await;
        drop_guards(&db, kind).await;
        let mut row = store.audit_chain_page(&c, 1, 1).await.unwrap().remove(0);
        row.actor = "mallory@example.com".into();
        row.hash = entry_hash(&row);
        sql(
            &db,
            kind,
            &[&format!(
                "UPDATE audit_log SET actor = '{}', hash = '{}' WHERE chain_id = '{c}' AND seq = 2",
                row.actor, row.hash
            )],
        )
        .await
        .unwrap();
        let r = verify(&store).await.unwrap();
        assert_eq!(only_problem(&r), (c.as_str(), 3, ProblemKind::BrokenLink));

        // A truncated chain: a later chain anchored its old head.
        let (db, store) = fresh(kind).await;
        let first = chain_of(&store, 6).await; // entries 0..=7
        let second = chain_of(&store, 1).await;
        assert!(verify(&store).await.unwrap().ok);
        drop_guards(&db, kind).await;
        sql(
            &db,
            kind,
            &[&format!(
                "DELETE FROM audit_log WHERE chain_id = '{first}' AND seq >= 5"
            )],
        )
        .await
        .unwrap();
        let r = verify(&store).await.unwrap();
        assert_eq!(
            only_problem(&r),
            (first.as_str(), 7, ProblemKind::AnchorMissing)
        );
        assert!(
            r.problems[0].detail.contains(&second),
            "{}",
            r.problems[0].detail
        );

        // A deleted chain.
        sql(
            &db,
            kind,
            &[&format!("DELETE FROM audit_log WHERE chain_id = '{first}'")],
        )
        .await
        .unwrap();
        let r = verify(&store).await.unwrap();
        assert_eq!(
            only_problem(&r),
            (first.as_str(), 7, ProblemKind::AnchorMissing)
        );
        assert!(
            r.problems[0].detail.contains("deleted"),
            "{}",
            r.problems[0].detail
        );
    }
}

async fn app(kind: TestDbKind) -> TestApp {
    spawn_app_with(
        kind,
        Options {
            policy: Some(format!("{POLICY}{ROLES}")),
            admin: Some(String::new()),
            ..Options::default()
        },
    )
    .await
}

async fn entries(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app
        .admin(Method::GET, "/admin/v1/audit?limit=1000", Some(token), None)
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn tokens_admin_actions_and_refusals_are_audited_and_no_token_is() {
    for kind in kinds() {
        let app = app(kind).await;
        let admin = app.admin_token("root@example.com", &[]);
        let viewer = app.admin_token("val@example.com", &[]);
        let workload = app.token_for("team-a").await;
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(&admin),
                Some(&json!({"kind": "team", "id": "a", "reason": "drill"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().await.unwrap()["revocation_id"]
            .as_i64()
            .unwrap();
        let r = app
            .admin(
                Method::DELETE,
                &format!("/admin/v1/revocations/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status(), 204);
        // A budget refusal and a throttle.
        let broke = app.token_for("broke").await;
        let r = app
            .post(
                "/v1/chat/completions",
                &broke,
                &TestApp::chat("gpt-test", "hi"),
            )
            .await;
        assert_eq!(r.status(), 429);
        let slow = app.token_for("slow-lane").await;
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let r = app
                .post(
                    "/v1/chat/completions",
                    &slow,
                    &TestApp::chat("gpt-test", "hi"),
                )
                .await;
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 429]);
        let r = app
            .http
            .post(format!("{}/v1/token/revoke", app.url))
            .form(&[("token", workload.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // The writer flushes every 50ms.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = entries(&app, &viewer).await;
            if log.iter().any(|e| e["action"] == "token.revoked") {
                break log;
            }
            assert!(tokio::time::Instant::now() < deadline, "{log:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let find = |action: &str| {
            log.iter()
                .find(|e| e["action"] == action)
                .unwrap_or_else(|| panic!("no {action} in {log:#?}"))
        };
        assert_eq!(find("chain.start")["seq"], 0);
        let issued = log
            .iter()
            .find(|e| {
                e["action"] == "token.issued" && e["actor"] == "system:serviceaccount:team-a:app"
            })
            .unwrap();
        assert_eq!(issued["actor"], "system:serviceaccount:team-a:app");
        assert_eq!(issued["detail"]["team"], "a");
        let jti = issued["target"].as_str().unwrap();
        let created = find("revocation.created");
        assert_eq!(created["actor"], "root@example.com");
        assert_eq!(created["target"], id.to_string());
        assert_eq!(created["detail"]["kind"], "team");
        assert_eq!(created["detail"]["reason"], "drill");
        assert_eq!(created["detail"]["via"], "oidc:idp");
        assert_eq!(created["detail"]["roles"], json!(["admin"]));
        assert_eq!(find("revocation.lifted")["target"], id.to_string());
        assert_eq!(find("token.revoked")["target"], jti);
        let reject = find("budget.reject");
        assert_eq!(reject["actor"], "system:serviceaccount:broke:app");
        assert_eq!(reject["target"], "tiny");
        let throttle = find("quota.throttle");
        assert_eq!(throttle["actor"], "system:serviceaccount:slow-lane:app");
        assert!(throttle["detail"]["retry_after"].is_u64(), "{throttle}");
        let text = serde_json::to_string(&log).unwrap();
        assert!(!text.contains(&workload), "a token in the audit log");
        assert!(!text.contains(&admin), "an admin token in the audit log");

        let r = app
            .admin(Method::GET, "/admin/v1/audit/verify", Some(&viewer), None)
            .await;
        assert_eq!(r.status(), 200);
        let report: Value = r.json().await.unwrap();
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["chains"], 1);

        // Paging: `next` leads to the rest, in order, without repeats.
        let r = app
            .admin(Method::GET, "/admin/v1/audit?limit=2", Some(&viewer), None)
            .await;
        let page: Value = r.json().await.unwrap();
        let next = page["next"].as_str().unwrap().to_owned();
        let r = app
            .admin(
                Method::GET,
                &format!("/admin/v1/audit?limit=1000&after={next}"),
                Some(&viewer),
                None,
            )
            .await;
        let rest: Value = r.json().await.unwrap();
        let mut seqs: Vec<i64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .chain(rest["entries"].as_array().unwrap())
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        let n = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), n);
        assert!(n >= log.len());
        for bad in [
            "limit=0",
            "limit=1001",
            "since=yesterday",
            "after=zzz",
            "colour=red",
        ] {
            let r = app
                .admin(
                    Method::GET,
                    &format!("/admin/v1/audit?{bad}"),
                    Some(&viewer),
                    None,
                )
                .await;
            assert_eq!(r.status(), 400, "{bad}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
    }
}
