//! The fleet-wide budget lease statements, against SQLite and PostgreSQL: concurrent acquires
//! never grant past the cap, earlier days of a window count, returns and reclaims give money
//! back exactly once, and spend recorded before leases existed is not forgotten.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::db::{TestDb, kinds};
use tollgate::store::{DAY_MS, LeaseReport, SpendRecord, Store};

const DAY: i64 = 20_400;

async fn each_store<F, Fut>(f: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in kinds() {
        eprintln!("--- store backend: {kind:?}");
        let db = TestDb::new(kind).await;
        let store = Store::connect(&db.url, 8).await.unwrap();
        store.migrate().await.unwrap();
        f(store.clone()).await;
        store.close().await;
    }
}

/// `replica`'s lease of pool "p": (granted, available, allowance).
async fn lease(store: &Store, replica: &str) -> (i64, i64, i64) {
    let l = store
        .budget_leases("p")
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.replica == replica)
        .unwrap();
    (
        l.granted_micro_usd,
        l.available_micro_usd,
        l.allowance_micro_usd,
    )
}

#[tokio::test]
async fn concurrent_acquires_never_grant_past_the_cap() {
    each_store(|store| async move {
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let replica = format!("r{}", i % 3);
                    let mut got = 0;
                    for _ in 0..5 {
                        got += store
                            .acquire_budget(&replica, "p", DAY, DAY, 1_000, 37, 1)
                            .await
                            .unwrap();
                    }
                    got
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(
            total, 1_000,
            "every micro-dollar granted once, none past the cap"
        );
        assert_eq!(store.budget_granted("p", DAY, DAY).await.unwrap(), 1_000);
        let leases = store.budget_leases("p").await.unwrap();
        assert_eq!(
            leases.iter().map(|l| l.granted_micro_usd).sum::<i64>(),
            1_000
        );
        assert_eq!(
            store
                .acquire_budget("r0", "p", DAY, DAY, 1_000, 10, 1)
                .await
                .unwrap(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn earlier_days_of_the_window_count_and_a_new_window_starts_clean() {
    each_store(|store| async move {
        assert_eq!(
            store
                .acquire_budget("r", "p", DAY, DAY, 100, 60, 1)
                .await
                .unwrap(),
            60
        );
        // Next day, same (weekly, say) window: 40 left.
        assert_eq!(
            store
                .acquire_budget("r", "p", DAY, DAY + 1, 100, 100, 2)
                .await
                .unwrap(),
            40
        );
        // A window starting on DAY + 2 does not see the earlier days.
        assert_eq!(
            store
                .acquire_budget("r", "p", DAY + 2, DAY + 2, 100, 100, 3)
                .await
                .unwrap(),
            100
        );
        // Another pool is independent.
        assert_eq!(
            store
                .acquire_budget("r", "q", DAY, DAY, 5, 100, 1)
                .await
                .unwrap(),
            5
        );
    })
    .await;
}

#[tokio::test]
async fn returns_give_back_at_most_what_is_held() {
    each_store(|store| async move {
        store
            .acquire_budget("a", "p", DAY, DAY, 100, 70, 1)
            .await
            .unwrap();
        assert_eq!(store.return_budget("a", "p", DAY, 30).await.unwrap(), 30);
        assert_eq!(
            store.return_budget("a", "p", DAY, 1_000).await.unwrap(),
            40,
            "never more than the lease"
        );
        assert_eq!(store.return_budget("b", "p", DAY, 10).await.unwrap(), 0);
        assert_eq!(store.budget_granted("p", DAY, DAY).await.unwrap(), 0);
        assert_eq!(
            store
                .acquire_budget("b", "p", DAY, DAY, 100, 100, 2)
                .await
                .unwrap(),
            100
        );
    })
    .await;
}

#[tokio::test]
async fn a_dead_replicas_promised_money_is_reclaimed_once() {
    each_store(|store| async move {
        store
            .acquire_budget("dead", "p", DAY, DAY, 100, 80, 1)
            .await
            .unwrap();
        let report = LeaseReport {
            pool: "p".into(),
            day: DAY,
            available: 50,
            allowance: 15,
            held: 80,
        };
        let granted = store
            .heartbeat("dead", std::slice::from_ref(&report))
            .await
            .unwrap();
        assert_eq!(granted, vec![("p".to_owned(), DAY, 80)]);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store.heartbeat("alive", &[]).await.unwrap();
        // Silence is judged by the store's clock: 300 ms is not a minute.
        assert_eq!(store.reclaim_expired(60_000).await.unwrap(), 0);
        assert_eq!(store.reclaim_expired(150).await.unwrap(), 35);
        assert_eq!(store.reclaim_expired(150).await.unwrap(), 0, "idempotent");
        assert_eq!(store.budget_granted("p", DAY, DAY).await.unwrap(), 45);
        assert_eq!(
            store
                .acquire_budget("alive", "p", DAY, DAY, 100, 100, 9_000)
                .await
                .unwrap(),
            55
        );
        // The "dead" replica was only stalled: its next heartbeat learns that it holds 35
        // less, and the store keeps its report consistent with what it still grants.
        let granted = store.heartbeat("dead", &[report]).await.unwrap();
        assert_eq!(granted, vec![("p".to_owned(), DAY, 45)]);
        let (_, available, allowance) = lease(&store, "dead").await;
        assert_eq!((available, allowance), (15, 15));
        assert_eq!(
            store.reclaim_expired(150).await.unwrap(),
            0,
            "nothing promised is left to reclaim"
        );
    })
    .await;
}

#[tokio::test]
async fn money_granted_after_the_last_report_is_never_reclaimed() {
    each_store(|store| async move {
        // Registered, granted 80, and dead before its first report: it may have spent all of
        // it, so nothing comes back.
        store.heartbeat("fresh", &[]).await.unwrap();
        store
            .acquire_budget("fresh", "p", DAY, DAY, 1_000, 80, 1)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store.heartbeat("alive", &[]).await.unwrap();
        assert_eq!(store.reclaim_expired(150).await.unwrap(), 0);

        // Reported (50 available, 15 promised), then 20 more granted: 15 + 20 may be spent
        // by the time it dies, so only 35 of the 70 it holds unreserved come back.
        let report = LeaseReport {
            pool: "p".into(),
            day: DAY,
            available: 50,
            allowance: 15,
            held: 80,
        };
        store.heartbeat("late", &[]).await.unwrap();
        store
            .acquire_budget("late", "p", DAY, DAY, 1_000, 80, 1)
            .await
            .unwrap();
        store.heartbeat("late", &[report]).await.unwrap();
        store
            .acquire_budget("late", "p", DAY, DAY, 1_000, 20, 1)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store.heartbeat("alive", &[]).await.unwrap();
        assert_eq!(store.reclaim_expired(150).await.unwrap(), 35);
        assert_eq!(lease(&store, "late").await, (65, 35, 35));
    })
    .await;
}

#[tokio::test]
async fn spend_recorded_before_leases_is_not_forgotten() {
    each_store(|store| async move {
        let row = |id: &str, cost: i64, at: i64| SpendRecord {
            request_id: id.into(),
            at,
            jti: "j".into(),
            subject: "s".into(),
            team: "t".into(),
            pool: "p".into(),
            billing_owner: "o".into(),
            provider: "openai".into(),
            provider_key_id: "k".into(),
            model: "m".into(),
            upstream_model: "m".into(),
            endpoint: "/v1/chat/completions".into(),
            stream: false,
            input_tokens: 1,
            output_tokens: 1,
            cached_input_tokens: 0,
            cost_micro_usd: cost,
            status: 200,
            latency_ms: 1,
            prompt_sha256: None,
            provider_key_version: None,
            requested_model: None,
            deployment: None,
        };
        store
            .insert_spend(&[
                row("a", 50, DAY * DAY_MS + 10),
                row("b", 20, DAY * DAY_MS + 20),
                row("yesterday", 999, DAY * DAY_MS - 1),
            ])
            .await
            .unwrap();
        assert_eq!(
            store
                .acquire_budget("r", "p", DAY, DAY, 100, 100, 1)
                .await
                .unwrap(),
            30
        );
    })
    .await;
}

#[tokio::test]
async fn a_month_boundary_starts_a_clean_window_exactly_once_for_every_replica() {
    use tollgate::policy::BudgetWindow;
    use tollgate::quota::first_day;
    // 2026-11-15, 2026-11-30 23:59:59 and 2026-12-01 00:00:01 UTC.
    let (mid, last, next) = (
        1_794_744_000_000_i64,
        1_796_083_199_000_i64,
        1_796_083_201_000_i64,
    );
    let at = |ms: i64| {
        (
            first_day(&BudgetWindow::Monthly { start: 1 }, ms),
            ms / DAY_MS,
        )
    };
    each_store(|store| async move {
        let (first, day) = at(mid);
        assert_eq!(
            store
                .acquire_budget("a", "p", first, day, 100, 60, mid)
                .await
                .unwrap(),
            60
        );
        // Later in the same month, another replica sees the month's spend.
        let (first, day) = at(last);
        assert_eq!(
            store
                .acquire_budget("b", "p", first, day, 100, 100, last)
                .await
                .unwrap(),
            40
        );
        // December: one clean window, shared by both replicas (no double reset).
        let (first, day) = at(next);
        assert_eq!(first, day, "the window starts on December 1st");
        let a = store
            .acquire_budget("a", "p", first, day, 100, 70, next)
            .await
            .unwrap();
        let b = store
            .acquire_budget("b", "p", first, day, 100, 70, next)
            .await
            .unwrap();
        assert_eq!((a, b), (70, 30));
    })
    .await;
}
