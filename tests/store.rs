//! The store suite, run against SQLite and PostgreSQL alike, each test on a fresh database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::db::{TestDb, kinds};
use tollgate::store::{
    IssuedTokenRecord, NewRevocation, PauseKind, RATE_BATCH, RateAsk, RevocationKind,
    SigningKeyRecord, SpendRecord, Store, Velocity,
};

async fn each_store<F, Fut>(f: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in kinds() {
        eprintln!("--- store backend: {kind:?}");
        let db = TestDb::new(kind).await;
        let store = Store::connect(&db.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap(); // idempotent
        f(store.clone()).await;
        store.close().await;
    }
}

fn key(generation: i64, kid: &str) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        generation,
        algorithm: "EdDSA".into(),
        public_jwk: "{}".into(),
        sealed_private_key: vec![1, 2, 3, 0, 255],
        created_at: 10,
        sign_from: 100,
        sign_until: 200,
        publish_until: 300,
    }
}

fn spend(id: &str, pool: &str, at: i64, cost: i64) -> SpendRecord {
    SpendRecord {
        request_id: id.into(),
        at,
        jti: "j".into(),
        subject: "system:serviceaccount:a:b".into(),
        team: "a".into(),
        pool: pool.into(),
        billing_owner: "platform".into(),
        provider: "openai".into(),
        provider_key_id: "k1".into(),
        model: "gpt".into(),
        upstream_model: "gpt-up".into(),
        endpoint: "/v1/chat/completions".into(),
        stream: true,
        input_tokens: 11,
        output_tokens: 22,
        cached_input_tokens: 3,
        cost_micro_usd: cost,
        status: 200,
        latency_ms: 42,
        prompt_sha256: None,
        provider_key_version: None,
        requested_model: None,
        deployment: None,
    }
}

#[tokio::test]
async fn replicas_racing_for_a_signing_key_generation_get_exactly_one() {
    each_store(|s| async move {
        assert!(s.insert_signing_key(&key(1, "a")).await.unwrap());
        assert!(
            !s.insert_signing_key(&key(1, "b")).await.unwrap(),
            "same generation"
        );
        assert!(
            !s.insert_signing_key(&key(2, "a")).await.unwrap(),
            "same kid"
        );
        let mut k2 = key(2, "c");
        k2.publish_until = 1_000;
        assert!(s.insert_signing_key(&k2).await.unwrap());
        let published = s.signing_keys(299).await.unwrap();
        assert_eq!(
            published,
            vec![key(1, "a"), k2.clone()],
            "round trip, by generation"
        );
        assert_eq!(s.signing_keys(300).await.unwrap(), vec![k2]);
    })
    .await;
}

#[tokio::test]
async fn issued_tokens_are_idempotent_and_listed_by_subject() {
    each_store(|s| async move {
        let t = |jti: &str, exp: i64| IssuedTokenRecord {
            jti: jti.into(),
            subject: "sub".into(),
            issuer: "k8s".into(),
            team: "a".into(),
            pool: "p".into(),
            binding: "b".into(),
            models: vec!["m1".into(), "m2".into()],
            issued_at: 1,
            expires_at: exp,
            pod_uid: Some("pod".into()),
        };
        let rows = vec![t("1", 100), t("2", 50)];
        assert_eq!(s.insert_issued_tokens(&rows).await.unwrap(), 2);
        assert_eq!(s.insert_issued_tokens(&rows).await.unwrap(), 0, "replay");
        assert_eq!(
            s.issued_tokens_for_subject("sub", 60).await.unwrap(),
            vec![t("1", 100)]
        );
        assert!(
            s.issued_tokens_for_subject("other", 0)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn revocations_expire_and_can_be_lifted() {
    each_store(|s| async move {
        let r = |kind, value: &str, expires_at| NewRevocation {
            kind,
            value: value.into(),
            reason: "leak".into(),
            created_at: 1_000,
            expires_at,
            created_by: "alice".into(),
        };
        let a = s
            .insert_revocation(&r(RevocationKind::Jti, "j1", None))
            .await
            .unwrap();
        let b = s
            .insert_revocation(&r(RevocationKind::Team, "t", Some(2_000)))
            .await
            .unwrap();
        let c = s
            .insert_revocation(&r(RevocationKind::PodUid, "p", None))
            .await
            .unwrap();
        assert!(a.id < b.id && b.id < c.id);
        assert_eq!(
            s.active_revocations(1_500).await.unwrap(),
            vec![a.clone(), b, c.clone()]
        );
        assert_eq!(
            s.active_revocations(2_000).await.unwrap(),
            vec![a, c.clone()]
        );
        assert!(s.delete_revocation(c.id).await.unwrap());
        assert!(!s.delete_revocation(c.id).await.unwrap());
        assert_eq!(s.active_revocations(2_000).await.unwrap().len(), 1);
        // Purged: expired ones, and jti ones older than the horizon; a subject revocation
        // without expiry stays (it still refuses new tokens).
        let d = s
            .insert_revocation(&r(RevocationKind::Subject, "s", None))
            .await
            .unwrap();
        assert_eq!(s.purge_revocations(1_500, 500).await.unwrap(), 0);
        assert_eq!(
            s.purge_revocations(2_000, 1_001).await.unwrap(),
            2,
            "the team's expired, j1 old"
        );
        assert_eq!(s.active_revocations(0).await.unwrap(), vec![d]);
    })
    .await;
}

#[tokio::test]
async fn spend_batches_are_idempotent_and_summed_per_pool_and_window() {
    each_store(|s| async move {
        let rows = vec![
            spend("r1", "p", 1_000, 5),
            spend("r2", "p", 2_000, 7),
            spend("r3", "q", 2_000, 100),
        ];
        assert_eq!(s.insert_spend(&rows).await.unwrap(), 3);
        assert_eq!(s.insert_spend(&rows).await.unwrap(), 0, "a replayed batch");
        assert_eq!(
            s.spend_since("p", 0).await.unwrap(),
            12,
            "never double counted"
        );
        assert_eq!(
            s.spend_since("p", 2_000).await.unwrap(),
            7,
            "window start is inclusive"
        );
        assert_eq!(s.spend_since("p", 2_001).await.unwrap(), 0);
        assert_eq!(s.spend_since("none", 0).await.unwrap(), 0);
        assert_eq!(
            s.spend_by_pool_since(0).await.unwrap(),
            vec![("p".to_owned(), 12), ("q".to_owned(), 100)]
        );
        assert_eq!(s.spend_record("r3").await.unwrap(), Some(rows[2].clone()));
        assert_eq!(s.spend_record("nope").await.unwrap(), None);
        let recent = s.recent_spend(2).await.unwrap();
        assert_eq!(recent.len(), 2);
        assert!(recent[0].at >= recent[1].at);
    })
    .await;
}

#[tokio::test]
async fn a_pause_is_recorded_once_lifted_with_its_author_and_velocity_reads_both_windows() {
    each_store(|s| async move {
        let subject = "system:serviceaccount:a:b";
        let first = s
            .pause(PauseKind::Subject, subject, "spike", 10)
            .await
            .unwrap();
        assert_eq!(first.as_ref().map(|p| p.kind), Some(PauseKind::Subject));
        assert_eq!(
            s.pause(PauseKind::Subject, subject, "spike again", 11)
                .await
                .unwrap(),
            None,
            "replicas racing record one pause"
        );
        // The same value as another kind is another pause.
        assert!(
            s.pause(PauseKind::ProviderKey, subject, "k", 12)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(s.pauses(None).await.unwrap().len(), 2);
        assert!(
            s.lift_pause(PauseKind::Subject, subject, "oncall", 20)
                .await
                .unwrap()
        );
        assert!(
            !s.lift_pause(PauseKind::Subject, subject, "oncall", 21)
                .await
                .unwrap()
        );
        let active = s.pauses(None).await.unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].kind, PauseKind::ProviderKey);
        let history = s.pauses(Some(20)).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].lifted_by.as_deref(), Some("oncall"));
        assert_eq!(history[0].lifted_at, Some(20));
        assert!(
            s.pauses(Some(21)).await.unwrap().len() == 1,
            "lifted before the horizon"
        );
        // Paused again after the lift: a new row.
        assert!(
            s.pause(PauseKind::Subject, subject, "again", 30)
                .await
                .unwrap()
                .is_some()
        );

        // Baseline 0..1000 in slots of 500 and recent 1000.. per subject and per key; the
        // floor filters.
        let mut rows = vec![
            spend("b1", "p", 100, 10),
            spend("b2", "p", 200, 15),
            spend("b3", "p", 900, 20),
            spend("r1", "p", 1_000, 50),
            spend("r2", "p", 1_500, 60),
        ];
        let mut quiet = spend("q1", "p", 1_200, 3);
        quiet.subject = "system:serviceaccount:a:quiet".into();
        quiet.provider_key_id = "mock".into();
        rows.push(quiet);
        s.insert_spend(&rows).await.unwrap();
        let v = s
            .spend_velocity(PauseKind::Subject, 0, 1_000, 500, 100, 1_000_000)
            .await
            .unwrap();
        assert_eq!(
            v,
            vec![Velocity {
                id: subject.into(),
                recent_cost: 110,
                recent_tokens: 66,
                peak_cost: 25,
                peak_tokens: 66,
            }],
            "the busiest slot of the baseline"
        );
        let by_tokens = s
            .spend_velocity(PauseKind::Subject, 0, 1_000, 500, 1_000_000, 30)
            .await
            .unwrap();
        assert_eq!(
            by_tokens.len(),
            2,
            "the token floor counts on its own: {by_tokens:?}"
        );
        let keys = s
            .spend_velocity(PauseKind::ProviderKey, 0, 1_000, 500, 0, 0)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "the mock provider has no key: {keys:?}");
        assert_eq!((keys[0].id.as_str(), keys[0].recent_cost), ("k1", 110));
    })
    .await;
}

#[tokio::test]
async fn a_large_batch_is_written_in_one_call() {
    each_store(|s| async move {
        let rows: Vec<SpendRecord> = (0..5_000)
            .map(|i| spend(&format!("r{i}"), "p", i, 1))
            .collect();
        assert_eq!(s.insert_spend(&rows).await.unwrap(), 5_000);
        assert_eq!(s.spend_since("p", 0).await.unwrap(), 5_000);
    })
    .await;
}

#[tokio::test]
async fn rate_window_leases_racing_never_grant_past_the_limit() {
    each_store(|store| async move {
        // Three "replicas" lease slices of 7 from a window of 100 at once.
        let lease = |store: Store| async move {
            let mut got = 0;
            loop {
                let (g, total) = store
                    .acquire_rate("requests:pool:p", 42, 100, 7)
                    .await
                    .unwrap();
                assert!(total <= 100, "window total {total} past the limit");
                if g == 0 {
                    return got;
                }
                got += g;
            }
        };
        let (a, b, c) = tokio::join!(
            lease(store.clone()),
            lease(store.clone()),
            lease(store.clone())
        );
        assert_eq!(a + b + c, 100, "the whole window, exactly once");
        // Another minute and another scope are windows of their own.
        assert_eq!(
            store
                .acquire_rate("requests:pool:p", 43, 100, 7)
                .await
                .unwrap(),
            (7, 7)
        );
        assert_eq!(
            store.acquire_rate("tokens:pool:p", 42, 5, 7).await.unwrap(),
            (5, 5),
            "a grant stops at the limit"
        );
        assert_eq!(store.forget_rate_windows(43).await.unwrap(), 2);
        assert_eq!(
            store
                .acquire_rate("requests:pool:p", 42, 100, 7)
                .await
                .unwrap(),
            (7, 7),
            "a forgotten window starts again (only past minutes are forgotten)"
        );
    })
    .await;
}

#[tokio::test]
async fn many_rate_windows_are_leased_in_one_batch_each_within_its_own_limit() {
    each_store(|store| async move {
        let ask = |scope: String, minute, limit, want| RateAsk {
            scope,
            minute,
            limit,
            want,
        };
        // More windows than one statement takes, each with its own limit.
        let asks: Vec<RateAsk> = (0..RATE_BATCH as u64 + 5)
            .map(|i| ask(format!("requests:token:t{i}"), 7, i % 10, 5))
            .collect();
        let got = store.acquire_rates(&asks).await.unwrap();
        assert_eq!(got.len(), asks.len());
        for (a, (g, total)) in asks.iter().zip(&got) {
            assert_eq!(*g, a.want.min(a.limit), "{}", a.scope);
            assert_eq!(*total, *g);
        }
        // Again: only what each window has left.
        let again = store.acquire_rates(&asks).await.unwrap();
        for (a, (g, total)) in asks.iter().zip(&again) {
            assert_eq!(*g, a.limit.saturating_sub(5).min(5), "{}", a.scope);
            assert_eq!(*total, (a.limit).min(10));
        }
        // A window asked twice in one batch is leased once (the larger want); a window of
        // the single-lease API sees the batch's grants.
        let dup = store
            .acquire_rates(&[
                ask("tokens:pool:p".into(), 9, 100, 3),
                ask("tokens:pool:p".into(), 9, 100, 8),
            ])
            .await
            .unwrap();
        assert_eq!(dup, vec![(8, 8), (0, 8)]);
        assert_eq!(
            store
                .acquire_rate("tokens:pool:p", 9, 100, 1)
                .await
                .unwrap(),
            (1, 9)
        );
        assert_eq!(store.acquire_rates(&[]).await.unwrap(), vec![]);
    })
    .await;
}

#[tokio::test]
async fn a_rotation_is_one_per_key_advanced_only_by_its_leader_and_judged_from_spend_rows() {
    use tollgate::store::{NewRotation, RotationState as S, RotationTrigger, Transition};
    each_store(|s| async move {
        let new = |key: &str| NewRotation {
            key_id: key.into(),
            from_version: "1".into(),
            to_version: "2".into(),
            trigger: RotationTrigger::Manual,
            emergency: false,
            requested_by: "sam".into(),
            issued_ref: None,
            now: 1_000,
        };
        // Concurrent starts: one rotation.
        let starts = futures_util::future::join_all((0..6).map(|_| {
            let (s, r) = (s.clone(), new("k1"));
            async move { s.start_rotation(&r).await }
        }))
        .await;
        let ids: std::collections::BTreeSet<i64> =
            starts.iter().map(|r| r.as_ref().unwrap().0.id).collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(starts.iter().filter(|r| r.as_ref().unwrap().1).count(), 1);
        let id = *ids.first().unwrap();
        // The lease: one holder until it lapses.
        assert!(s.claim_rotation(id, "r1", 60_000).await.unwrap());
        assert!(!s.claim_rotation(id, "r2", 60_000).await.unwrap());
        let step = |from, to, leader| Transition {
            from,
            to,
            leader,
            outcome: "ok",
            detail: serde_json::json!({"n": 1}),
            now: 2_000,
        };
        assert!(
            !s.advance_rotation(id, &step(S::Staged, S::Tested, "r2"))
                .await
                .unwrap()
        );
        assert!(
            s.advance_rotation(id, &step(S::Staged, S::Tested, "r1"))
                .await
                .unwrap()
        );
        assert!(
            !s.advance_rotation(id, &step(S::Staged, S::Tested, "r1"))
                .await
                .unwrap(),
            "a step taken twice changes nothing"
        );
        s.release_rotation(id, "r1").await.unwrap();
        assert!(s.claim_rotation(id, "r2", 60_000).await.unwrap());
        let events = s.rotation_events(id).await.unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.seq, e.to_state.as_str(), e.actor.as_str()))
                .collect::<Vec<_>>(),
            [(1, "staged", "sam"), (2, "tested", "r1")]
        );
        // Abort: recorded once, kept with its first asker; finished rotations refuse it.
        let a = s.request_rotation_abort(id, "ana").await.unwrap().unwrap();
        assert_eq!(a.abort_requested_by.as_deref(), Some("ana"));
        let a = s.request_rotation_abort(id, "bob").await.unwrap().unwrap();
        assert_eq!(a.abort_requested_by.as_deref(), Some("ana"));
        assert!(
            s.advance_rotation(id, &step(S::Tested, S::RolledBack, "r2"))
                .await
                .unwrap()
        );
        assert!(s.request_rotation_abort(id, "bob").await.unwrap().is_none());
        assert!(s.open_rotations().await.unwrap().is_empty());
        assert_eq!(s.rotations_for_routing(2_000).await.unwrap().len(), 1);
        // Finished: the key may rotate again.
        let (again, created) = s.start_rotation(&new("k1")).await.unwrap();
        assert!(created && again.id != id);
        assert_eq!(s.rotations(Some("k1"), 10).await.unwrap().len(), 2);

        // Per-version outcomes from spend rows.
        let mut rows = Vec::new();
        for (i, (version, status)) in [("1", 200), ("1", 500), ("2", 200), ("2", 401), ("2", 503)]
            .into_iter()
            .enumerate()
        {
            let mut r = spend(&format!("rq{i}"), "p", 5_000, 1);
            r.provider_key_version = Some(version.into());
            r.status = status;
            rows.push(r);
        }
        s.insert_spend(&rows).await.unwrap();
        let o = s.version_outcome("k1", "2", 5_000).await.unwrap();
        assert_eq!((o.requests, o.errors, o.refused), (3, 2, 1));
        let o = s.version_outcome("k1", "1", 5_000).await.unwrap();
        assert_eq!((o.requests, o.errors, o.refused), (2, 1, 0));
        assert_eq!(
            s.version_outcome("k1", "2", 5_001).await.unwrap().requests,
            0
        );
        let t = s.version_timeline("k1", 4_000).await.unwrap();
        assert_eq!(
            t,
            [(1, Some("1".into()), 2, 1), (1, Some("2".into()), 3, 2)]
        );
    })
    .await;
}

#[tokio::test]
async fn schedules_count_from_first_sight_and_one_replica_at_a_time_issues_a_key() {
    use tollgate::store::{NewRotation, RotationState as S, RotationTrigger, Transition};
    each_store(|s| async move {
        // The first sight is recorded once; later calls return it.
        assert_eq!(s.schedule_first_seen("k1", 1_000).await.unwrap(), 1_000);
        assert_eq!(s.schedule_first_seen("k1", 9_000).await.unwrap(), 1_000);
        // One issue lease per key; its holder may renew; released, another takes it.
        assert!(s.claim_issue("k1", "r1", 60_000).await.unwrap());
        assert!(!s.claim_issue("k1", "r2", 60_000).await.unwrap());
        assert!(s.claim_issue("k1", "r1", 60_000).await.unwrap());
        s.release_issue("k1", "r2").await.unwrap();
        assert!(
            !s.claim_issue("k1", "r2", 60_000).await.unwrap(),
            "only the holder releases"
        );
        s.release_issue("k1", "r1").await.unwrap();
        assert!(s.claim_issue("k1", "r2", 1).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            s.claim_issue("k1", "r3", 60_000).await.unwrap(),
            "a lapsed lease is taken over"
        );
        // A key without a first sight has no lease to claim.
        assert!(!s.claim_issue("k2", "r1", 60_000).await.unwrap());

        // The provider's id of an issued key is found by the version it became.
        let (rot, _) = s
            .start_rotation(&NewRotation {
                key_id: "k1".into(),
                from_version: "1".into(),
                to_version: "2".into(),
                trigger: RotationTrigger::Schedule,
                emergency: false,
                requested_by: "schedule:monthly".into(),
                issued_ref: Some("svc_acct_1".into()),
                now: 2_000,
            })
            .await
            .unwrap();
        assert_eq!(rot.issued_ref.as_deref(), Some("svc_acct_1"));
        assert_eq!(
            s.issued_ref_of("k1", "2").await.unwrap().as_deref(),
            Some("svc_acct_1")
        );
        assert_eq!(s.issued_ref_of("k1", "1").await.unwrap(), None);
        // A rolled-back version's key is no one's.
        assert!(s.claim_rotation(rot.id, "r1", 60_000).await.unwrap());
        let t = Transition {
            from: S::Staged,
            to: S::RolledBack,
            leader: "r1",
            outcome: "test",
            detail: serde_json::json!({}),
            now: 3_000,
        };
        assert!(s.advance_rotation(rot.id, &t).await.unwrap());
        assert_eq!(s.issued_ref_of("k1", "2").await.unwrap(), None);
    })
    .await;
}
