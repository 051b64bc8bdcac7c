//! Faults of a replica's own host, with real processes on one PostgreSQL database: replicas
//! whose clocks are two minutes apart (libfaketime), and a replica killed with SIGKILL under
//! load. Skewed replicas still mint and verify each other's tokens with the default leeway,
//! date a subject's revocation and the tokens it refuses on one scale (no token of the
//! revoked subject slips through on the replica whose clock is ahead), and share each
//! per-minute window, which rolls over once for the fleet. A killed replica's promised-unused
//! money is reclaimed by the survivors, the hard cap still holds (in the database and as the
//! provider counts calls), and the survivors answer every call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, TestApp};
use support::db::{TestDb, TestDbKind};
use support::oidc::TestIssuer;
use support::process::{Tollgate, exchange};
use support::upstream::TestUpstream;

const POLICY: &str = r#"
models:
  gpt-test:
    provider: openai
    upstream_model: gpt-test-upstream
    price: { input: 1.00, output: 2.00 }
pools:
  open: {}
  capped:
    budget: { usd: 0.02, window: daily }
bindings:
  - name: team-a
    match: { namespace: team-a }
    team: a
    pool: open
    billing_owner: team-a
    models: [gpt-test]
    limits: { rpm: 12 }
  - name: capped
    match: { namespace: team-c }
    team: c
    pool: capped
    billing_owner: team-a
    models: [gpt-test]
    max_tokens: { default: 16, max: 16 }
roles:
  - role: responder
    subjects: ["resp@example.com"]
"#;

const RPM: usize = 12;
const CAP_MICRO_USD: i64 = 20_000;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// One database, one issuer, one upstream, and replicas as processes.
struct Fleet {
    db: TestDb,
    issuer: TestIssuer,
    upstream: TestUpstream,
    dirs: Vec<tempfile::TempDir>,
    urls: Vec<String>,
    http: reqwest::Client,
}

impl Fleet {
    async fn new() -> Fleet {
        Fleet {
            db: TestDb::new(TestDbKind::Postgres).await,
            issuer: TestIssuer::start().await,
            upstream: TestUpstream::start(OPENAI_KEY, ANTHROPIC_KEY).await,
            dirs: Vec::new(),
            urls: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Start one more replica, number `self.urls.len()`; `skew` shifts its clock
    /// (libfaketime's offset, e.g. "+120").
    async fn start(&mut self, skew: Option<&str>) -> Tollgate {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            policy: Some(POLICY.into()),
            admin: Some(String::new()),
            ..Options::default()
        };
        let mut t = Tollgate::prepare(
            dir.path(),
            &self.db.url,
            &self.issuer.url,
            &self.upstream.url,
            &opts,
        );
        if let Some(offset) = skew {
            assert!(
                Path::new(LIBFAKETIME).exists(),
                "{LIBFAKETIME} is missing: scripts/test installs libfaketime"
            );
            t.env = vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), offset.into()),
                // Timers and timeouts keep the real monotonic clock: only the wall clock lies.
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ("FAKETIME_NO_CACHE".into(), "1".into()),
            ];
        }
        t.start().await;
        self.dirs.push(dir);
        self.urls.push(t.url.clone());
        t
    }

    fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    async fn call(&self, i: usize, token: &str) -> (u16, Value) {
        match self
            .http
            .post(format!("{}/v1/chat/completions", self.url(i)))
            .bearer_auth(token)
            .json(&TestApp::chat("gpt-test", "hello from a pod"))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn store(&self) -> tollgate::store::Store {
        tollgate::store::Store::connect(&self.db.url, 2)
            .await
            .unwrap()
    }

    /// Every spend row: (at, cost).
    async fn spend(&self) -> Vec<(i64, i64)> {
        let db = sqlx::PgPool::connect(&self.db.url).await.unwrap();
        let rows = sqlx::query_as("SELECT at, cost_micro_usd FROM spend")
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        rows
    }
}

/// How far (s) the wall clock of a replica's host is from this one's: the `Date` header of its
/// answer ("Sun, 06 Dec 2026 18:26:53 GMT"), compared by the time of day.
async fn host_skew_of(http: &reqwest::Client, url: &str) -> i64 {
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    let real = real_ms() / 1000;
    let date = r.headers()["date"].to_str().unwrap().to_owned();
    let hms = date.split(' ').nth(4).unwrap();
    let sod = hms
        .split(':')
        .map(|p| p.parse::<i64>().unwrap())
        .fold(0, |acc, p| acc * 60 + p);
    (sod - real.rem_euclid(86_400) + 43_200).rem_euclid(86_400) - 43_200
}

/// The real time (this host's, the database's), unix ms.
fn real_ms() -> i64 {
    tollgate::clock::host_ms()
}

/// Wait until the current UTC minute has between `from` and `to` seconds gone.
async fn at_second(from: i64, to: i64) {
    loop {
        let into = real_ms().rem_euclid(60_000);
        if (from * 1000..to * 1000).contains(&into) {
            return;
        }
        let wait = (from * 1000 - into).rem_euclid(60_000);
        tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
    }
}

/// `n` calls at once, round-robin over `replicas`: how many were admitted. Every refusal is
/// the rate limit's.
async fn burst(fleet: &Fleet, replicas: &[usize], token: &str, n: usize) -> usize {
    let calls = (0..n).map(|i| fleet.call(replicas[i % replicas.len()], token));
    let mut ok = 0;
    for (status, v) in futures_util::future::join_all(calls).await {
        match status {
            200 => ok += 1,
            429 => assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_two_minutes_apart_share_tokens_revocations_and_one_minute_window() {
    let mut fleet = Fleet::new().await;
    let mut processes = vec![
        fleet.start(None).await,
        fleet.start(Some("+120")).await,
        fleet.start(Some("-120")).await,
    ];
    let (on_time, ahead, behind) = (0, 1, 2);
    let all = [on_time, ahead, behind];

    // The skew is real: each host shows its own time.
    let now = real_ms() / 1000;
    for (i, expected) in [(ahead, 120), (behind, -120), (on_time, 0)] {
        let shown = host_skew_of(&fleet.http, fleet.url(i)).await;
        assert!(
            (shown - expected).abs() <= 3,
            "replica {i}'s host is {shown} s off, not {expected} s: libfaketime is not in effect"
        );
    }

    // Each replica takes the cluster's service-account token (iat = the real now) and mints a
    // token every other replica verifies: 30 s of leeway is plenty once replicas date tokens
    // by the store's clock, while their hosts are 240 s apart.
    let sa = fleet.issuer.service_account_token("team-a", "app");
    let mut tokens = Vec::new();
    for &i in &all {
        tokens.push(exchange(&fleet.http, fleet.url(i), &sa).await);
    }
    for (minted_by, token) in tokens.iter().enumerate() {
        for &i in &all {
            let (status, v) = fleet.call(i, token).await;
            assert_eq!(status, 200, "minted by {minted_by}, used at {i}: {v}");
        }
    }

    // A subject revoked on the on-time replica: its tokens minted on the replica whose host
    // runs ahead are refused everywhere (dated by that host, they would look newer than the
    // revocation and slip through), and a token minted after it serves again.
    let resp = fleet.issuer.sign(&json!({
        "iss": fleet.issuer.url, "sub": "resp@example.com", "aud": ["tollgate-admin"],
        "iat": now, "exp": now + 600,
    }));
    let r = fleet
        .http
        .request(
            Method::POST,
            format!("{}/admin/v1/revocations", fleet.url(behind)),
        )
        .bearer_auth(&resp)
        .json(
            &json!({"kind": "subject", "id": "system:serviceaccount:team-a:app",
                      "reason": "leaked in a CI log"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for (minted_by, token) in tokens.iter().enumerate() {
        for &i in &all {
            let (status, v) = fleet.call(i, token).await;
            assert_eq!(
                (status, v["error"]["code"].as_str()),
                (401, Some("token_revoked")),
                "minted by {minted_by} before the revocation, used at {i}: {v}"
            );
        }
    }
    // And the subject cannot exchange again, on any replica.
    for &i in &all {
        let r = support::process::exchange_response(&fleet.http, fleet.url(i), &sa).await;
        assert_eq!(r.status(), 400, "exchange at {i} after the revocation");
    }

    // One per-minute window for the fleet: 12 rpm hold over the three replicas (a replica
    // counting into its own host's minute would add a window of its own), and the window
    // rolls over once, at the store's minute.
    let other = fleet.issuer.service_account_token("team-a", "other");
    let token = exchange(&fleet.http, fleet.url(on_time), &other).await;
    at_second(5, 45).await;
    let minute = real_ms() / 60_000;
    let ok = burst(&fleet, &all, &token, 3 * RPM).await;
    assert!(ok <= RPM, "{ok} admitted in one minute past {RPM} rpm");
    assert!(ok >= RPM - 3, "only {ok} of {RPM} admitted");
    assert_eq!(real_ms() / 60_000, minute, "the burst crossed a minute");
    let next = (minute + 1) * 60_000 + 1_000;
    tokio::time::sleep(Duration::from_millis((next - real_ms()) as u64)).await;
    assert_eq!(real_ms() / 60_000, minute + 1);
    let rolled_at = real_ms();
    let ok = burst(&fleet, &all, &token, 3 * RPM).await;
    assert!(ok <= RPM, "{ok} admitted in the next minute past {RPM} rpm");
    assert!(
        ok >= RPM - 3,
        "the window did not roll over: only {ok} admitted"
    );
    assert_eq!(
        burst(&fleet, &all, &token, 6).await,
        0,
        "a second roll-over"
    );

    // Spend is dated by the store's clock on every replica: the calls of the last burst are
    // the rows dated since it started, and no row is dated in the future.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = fleet.spend().await;
    let until = real_ms();
    let recent = rows
        .iter()
        .filter(|(at, _)| (rolled_at - 1_000..=until).contains(at))
        .count();
    assert_eq!(recent, ok, "rows dated in the last burst: {rows:?}");
    assert!(rows.iter().all(|(at, _)| *at <= until), "{rows:?}");

    // Each replica says how far its host is from the store.
    for (i, expected) in [(ahead, -120.0), (behind, 120.0), (on_time, 0.0)] {
        let offset = support::process::metrics(&fleet.http, fleet.url(i))
            .await
            .value("tollgate_clock_store_offset_seconds")
            .unwrap();
        assert!(
            (offset - expected).abs() < 3.0,
            "replica {i} reports {offset} s, not {expected}"
        );
    }
    for t in &mut processes {
        t.stop().await;
    }
}

/// The budget lease a replica holds in the store: (granted, available, allowance).
async fn lease_of(store: &tollgate::store::Store, replica: &str) -> (i64, i64, i64) {
    store
        .budget_leases("capped")
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.replica == replica)
        .map_or((0, 0, 0), |l| {
            (
                l.granted_micro_usd,
                l.available_micro_usd,
                l.allowance_micro_usd,
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_cap_and_its_leases_are_reclaimed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut fleet = Fleet::new().await;
    let store = fleet.store().await;
    let mut doomed_process = fleet.start(None).await;
    let doomed_id: String = {
        let db = sqlx::PgPool::connect(&fleet.db.url).await.unwrap();
        let id = sqlx::query_scalar("SELECT id FROM replicas")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        id
    };
    let mut survivor_process = fleet.start(None).await;
    let (doomed, survivor) = (0, 1);
    let sa = fleet.issuer.service_account_token("team-c", "batch");
    let token = exchange(&fleet.http, fleet.url(survivor), &sa).await;

    // Six clients at a steady pace, one of them on the doomed replica. A replica promises
    // (in each report) to use at most four times what it reserved in the last second, and at
    // least a lease slice; what it holds beyond that is what a reclaim returns. The doomed
    // replica, lightly loaded, holds more than its promise once it has topped its lease up:
    // then it is killed with SIGKILL. Its client moves to the survivor and everyone calls
    // flat out until the budget refuses them for good — which takes the survivor
    // reclaiming the dead replica's lease (10 s of silence) and spending it.
    let killed = AtomicBool::new(false);
    let started = Instant::now();
    let fleet_ref = &fleet;
    let clients = (0..6).map(|c| {
        let (killed, token) = (&killed, &token);
        async move {
            let mut answers = Vec::new();
            let mut refused_since: Option<Instant> = None;
            let mut killed_at: Option<Instant> = None;
            loop {
                let dead = killed.load(Ordering::Relaxed);
                if dead {
                    killed_at.get_or_insert_with(Instant::now);
                }
                let at = if c == 0 && !dead { doomed } else { survivor };
                let (status, v) = fleet_ref.call(at, token).await;
                answers.push((at, status, v["error"]["code"].as_str().map(str::to_owned)));
                match status {
                    200 => refused_since = None,
                    429 if v["error"]["code"] == "budget_exceeded" => {
                        let since = *refused_since.get_or_insert_with(Instant::now);
                        if killed_at.is_some_and(|k| k.elapsed() > Duration::from_secs(13))
                            && since.elapsed() > Duration::from_secs(4)
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => {}
                }
                if !dead {
                    let pace = if c == 0 { 200 } else { 150 };
                    tokio::time::sleep(Duration::from_millis(pace)).await;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "the load never ended"
                );
            }
            answers
        }
    });
    let load = futures_util::future::join_all(clients);
    let kill = async {
        loop {
            let (_, available, allowance) = lease_of(&store, &doomed_id).await;
            if available - allowance >= 100 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the doomed replica never held more than it promised"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        doomed_process.kill().await;
        killed.store(true, Ordering::Relaxed);
        // Its last word in the store: what it may have spent since is kept, the rest is
        // the survivor's to reclaim.
        lease_of(&store, &doomed_id).await
    };
    let (answers, at_death) = tokio::join!(load, kill);
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    let served = answers.iter().filter(|a| a.1 == 200).count();
    eprintln!(
        "kill -9 under load: {} answers, {served} served; the dead replica's lease at death \
         (granted, available, allowance): {at_death:?}",
        answers.len()
    );

    // The survivor answered every call: served or refused by the budget, never an error.
    for (at, status, code) in &answers {
        if *at == survivor {
            assert!(
                *status == 200 || (*status == 429 && code.as_deref() == Some("budget_exceeded")),
                "the survivor answered {status} {code:?}"
            );
        }
    }

    // The survivor reclaimed exactly what the dead replica held beyond its promise.
    let (granted_at_death, available, allowance) = at_death;
    let reclaimable = available - allowance;
    assert!(reclaimable >= 100, "{at_death:?}");
    let after = lease_of(&store, &doomed_id).await;
    assert_eq!(
        after,
        (granted_at_death - reclaimable, allowance, allowance),
        "the dead replica's lease after the reclaim"
    );
    let log = survivor_process.log_text();
    assert!(
        log.contains("reclaimed budget leases of replicas that stopped reporting"),
        "{log}"
    );

    // The cap held: in what the store granted, in the spend rows, and as the provider counts
    // calls (every call cost the same; the calls the dead replica served but had not yet
    // recorded are among them).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let day = real_ms() / tollgate::store::DAY_MS;
    let granted = store.budget_granted("capped", day, day).await.unwrap();
    let rows = fleet.spend().await;
    let spent: i64 = rows.iter().map(|r| r.1).sum();
    let per_call = rows.iter().map(|r| r.1).max().unwrap();
    assert!(rows.iter().all(|r| r.1 == per_call), "{rows:?}");
    // What the dead replica spent stays counted against the cap: the store still grants it at
    // least the calls it answered (it may have spent more: calls it served as it died).
    let answered_by_dead = answers
        .iter()
        .filter(|(at, status, _)| *at == doomed && *status == 200)
        .count() as i64;
    assert!(answered_by_dead > 0);
    assert!(
        after.0 >= answered_by_dead * per_call,
        "the dead replica answered {answered_by_dead} calls, yet keeps only {} µ$ of the cap",
        after.0
    );

    let provider_calls = fleet.upstream.requests().len() as i64;
    eprintln!(
        "granted {granted} µ$, {} rows for {spent} µ$, {provider_calls} calls at the provider, cap {CAP_MICRO_USD} µ$",
        rows.len()
    );
    assert!(granted <= CAP_MICRO_USD, "granted {granted} past the cap");
    assert!(spent <= CAP_MICRO_USD, "spent {spent} past the cap");
    assert!(
        provider_calls * per_call <= CAP_MICRO_USD,
        "the provider served {provider_calls} calls of {per_call} µ$ past the {CAP_MICRO_USD} µ$ cap"
    );
    // And the reclaimed money went back into use: everything not kept by the dead replica
    // was granted to the survivor, but for a few calls' worth.
    assert!(
        granted >= CAP_MICRO_USD - 4 * per_call,
        "granted {granted}: the reclaimed money was not spent"
    );
    survivor_process.stop().await;
}
