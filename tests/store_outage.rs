//! The store fails under load, with real processes: a PostgreSQL cluster of the test's own is
//! stopped (`pg_ctl -m immediate`, connections cut) and restarted, or slowed down, or the
//! spool's disk fills. Calls keep being served from memory; every spend row, issued token and
//! audit entry reaches the database once it is back, also across a SIGTERM in the middle of
//! the outage (the spool on disk is replayed by the next start); revocations made before the
//! outage are still enforced; `/readyz` says what is going on; and a replica that can no
//! longer make its records durable refuses work rather than lose them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, TestApp};
use support::oidc::TestIssuer;
use support::pg::Cluster;
use support::process::Tollgate;
use support::upstream::TestUpstream;

async fn call(http: &reqwest::Client, url: &str, token: &str, text: &str) -> (u16, Value) {
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&TestApp::chat("gpt-test", text))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn ready(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(format!("{url}/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Poll `/readyz` until `ok` holds (20 s at most).
async fn ready_until(
    http: &reqwest::Client,
    t: &Tollgate,
    what: &str,
    ok: impl Fn(u16, &Value) -> bool,
) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = ready(http, &t.url).await;
        if ok(s, &v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "never {what}: {s} {v}\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

async fn revoke(http: &reqwest::Client, url: &str, token: &str) {
    let r = http
        .post(format!("{url}/v1/token/revoke"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A `tollgate serve` on a PostgreSQL cluster of its own, with a workload token exchanged.
struct Setup {
    pg: Cluster,
    issuer: TestIssuer,
    _upstream: TestUpstream,
    dir: tempfile::TempDir,
    tollgate: Tollgate,
    http: reqwest::Client,
    url: String,
    sa: String,
    token: String,
}

impl Setup {
    /// `at_dir` builds the options once the test's directory exists (a spool inside it).
    async fn start(at_dir: impl FnOnce(&std::path::Path) -> Options) -> Setup {
        let pg = Cluster::start();
        let issuer = TestIssuer::start().await;
        let upstream = TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await;
        let dir = tempfile::tempdir().unwrap();
        let opts = at_dir(dir.path());
        let mut tollgate =
            Tollgate::prepare(dir.path(), &pg.url(), &issuer.url, &upstream.url, &opts);
        tollgate.start().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let url = tollgate.url.clone();
        let sa = issuer.service_account_token("team-a", "app");
        let token = support::process::exchange(&http, &url, &sa).await;
        Setup {
            pg,
            issuer,
            _upstream: upstream,
            dir,
            tollgate,
            http,
            url,
            sa,
            token,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_and_a_sigterm_in_it_lose_no_spend_row_token_or_audit_entry() {
    let Setup {
        pg,
        issuer: _issuer,
        _upstream,
        dir,
        mut tollgate,
        http,
        url,
        sa,
        token,
    } = Setup::start(|_| Options::default()).await;
    let revoked = support::process::exchange(&http, &url, &sa).await;
    revoke(&http, &url, &revoked).await;

    let mut served = 0;
    for i in 0..20 {
        let (s, v) = call(&http, &url, &token, &format!("before {i}")).await;
        assert_eq!(s, 200, "{v}");
        served += 1;
    }

    // The database goes away mid-load.
    pg.down();
    for i in 0..40 {
        let (s, v) = call(&http, &url, &token, &format!("during {i}")).await;
        assert_eq!(
            s,
            200,
            "served from memory during the outage: {v}\n{}",
            tollgate.log_text()
        );
        served += 1;
    }
    let (s, v) = call(&http, &url, &revoked, "revoked before the outage").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "token_revoked");
    let v = ready_until(&http, &tollgate, "spooling", |s, v| {
        s == 200 && v["writers"]["spend"]["state"] == "spooling"
    })
    .await;
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["store"], "unreachable", "{v}");
    assert!(
        v["writers"]["spend"]["spool_bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    let metrics = support::process::metrics(&http, &url).await.0;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_spool_bytes{writer=\"spend\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The pod is stopped in the middle of the outage: the spool stays on disk.
    tollgate.stop().await;
    let log = tollgate.log_text();
    assert!(log.contains("rows left in the spool"), "{log}");
    assert!(
        std::fs::read_dir(dir.path().join("spool/spend"))
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "jsonl")),
        "spend batches on disk"
    );

    // The database comes back, then the replica: it replays what the last run spooled.
    pg.up();
    tollgate.start().await;
    ready_until(&http, &tollgate, "replayed", |s, v| {
        s == 200
            && ["spend", "issued_tokens", "audit"]
                .iter()
                .all(|w| v["writers"][w]["state"] == "direct")
    })
    .await;
    for i in 0..5 {
        let (s, _) = call(&http, &url, &token, &format!("after {i}")).await;
        assert_eq!(s, 200);
        served += 1;
    }
    tollgate.stop().await;

    let db = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM spend WHERE status = 200").await,
        served,
        "every served call has its spend row, once"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM spend WHERE status = 401").await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tokens_issued").await, 2);
    // Two chains, the first run's (closed in the outage, replayed) and the second's, with no
    // entry missing: verify walks every chain and its anchors.
    let store = tollgate::store::Store::connect(&pg.url(), 2).await.unwrap();
    let report = tollgate::audit::verify(&store).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.chains, 2, "{report:?}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'chain.end'"
        )
        .await,
        2,
        "the chain closed during the outage reached the store"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'token.issued'"
        )
        .await,
        2
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool/spend"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.extension().is_some_and(|x| x == "jsonl").then_some(p)
        })
        .collect();
    assert!(
        left.is_empty(),
        "the spool is empty after the replay: {left:?}"
    );
}

/// A small tmpfs: a disk that fills after a few spool batches. Needs root, as `scripts/test`
/// runs in CI; it fails, never skips, without it.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a small tmpfs for the full-disk test needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_refuses_new_work_rather_than_lose_records_and_recovers() {
    let mut disk = None;
    let Setup {
        pg,
        issuer: _issuer,
        _upstream,
        dir: _dir,
        mut tollgate,
        http,
        url,
        sa,
        token,
    } = Setup::start(|dir| {
        let mnt = Tmpfs::mount(&dir.join("small-disk"), "64k");
        let spool = format!("[spool]\ndir = \"{}\"\n", mnt.0.display());
        disk = Some(mnt);
        Options {
            spool: Some(spool),
            // Without the pool's fleet-wide rate: its leased slice would run out first (a
            // replica cut off from the store serves no more than the slice it holds).
            policy: Some(support::app::POLICY.replace("limits: { rpm: 100000 }", "limits: {}")),
            ..Options::default()
        }
    })
    .await;
    pg.down();
    let mut served = 0i64;
    let mut refused = None;
    // Calls go on until the first store write has failed and the spool has hit the full disk.
    let end = Instant::now() + Duration::from_secs(40);
    let mut i = 0;
    while Instant::now() < end {
        i += 1;
        let (s, v) = call(
            &http,
            &url,
            &token,
            &format!("call {i} with some words to fill the disk"),
        )
        .await;
        match s {
            200 => served += 1,
            503 => {
                refused = Some(v);
                break;
            }
            _ => panic!("{s} {v}"),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("never refused:\n{}", tollgate.log_text()));
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spool is full"),
        "{refused}"
    );
    assert!(
        served > 0,
        "the spool took some batches before the disk filled"
    );
    let log = tollgate.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    let (s, v) = ready(&http, &url).await;
    assert_eq!(s, 503, "a replica that cannot record is not ready: {v}");
    assert_eq!(v["writers"]["spend"]["state"], "holding", "{v}");
    assert_eq!(v["writers"]["spend"]["accepting"], false, "{v}");
    let r = support::process::exchange_response(&http, &url, &sa).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "temporarily_unavailable", "{v}");

    // The database returns: held rows and the spool drain, and the replica serves again.
    pg.up();
    ready_until(&http, &tollgate, "recovered", |s, v| {
        s == 200 && v["writers"]["spend"]["state"] == "direct"
    })
    .await;
    let (s, v) = call(&http, &url, &token, "after").await;
    assert_eq!(s, 200, "{v}");
    served += 1;
    tollgate.stop().await;
    let db = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM spend WHERE status = 200").await,
        served,
        "every served call's row survived the full disk"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM spend WHERE status = 503").await,
        0,
        "refused calls cost nothing"
    );
    // Unmounted before the test's directory is removed.
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_postgres_never_slows_a_call() {
    let Setup {
        pg,
        issuer: _issuer,
        _upstream,
        dir: _dir,
        mut tollgate,
        http,
        url,
        sa: _sa,
        token,
    } = Setup::start(|_| Options::default()).await;
    let db = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    // Every spend insert now takes 1.5 s.
    for sql in [
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$",
        "CREATE TRIGGER slow BEFORE INSERT ON spend FOR EACH STATEMENT EXECUTE FUNCTION slow_down()",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let t = Instant::now();
        let (s, v) = call(&http, &url, &token, &format!("slow store {i}")).await;
        assert_eq!(s, 200, "{v}");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // A generous bound: a call that waited on one of those inserts would take 1.5 s.
    assert!(
        slowest < Duration::from_millis(750),
        "a call waited on the store: {slowest:?}"
    );
    let end = Instant::now() + Duration::from_secs(30);
    while count(&db, "SELECT COUNT(*) FROM spend").await < 60 {
        assert!(
            Instant::now() < end,
            "rows never arrived:\n{}",
            tollgate.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tollgate.stop().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM spend").await, 60);
}
