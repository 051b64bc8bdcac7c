use super::*;
use std::sync::Barrier;

fn ask<'a>(jti: &'a str, worst_cost: i64, budget: Option<i64>) -> Ask<'a> {
    Ask {
        jti,
        // Per-minute limits need leased windows; the tests of those grant them.
        token_limits: Limits {
            rpm: None,
            tpm: None,
            concurrency: Some(1000),
        },
        pool: "p",
        pool_limits: Limits::default(),
        budget: budget.map(|cap| BudgetSpec {
            cap: Usd(cap),
            window: BudgetWindow::Daily,
        }),
        worst_tokens: 100,
        worst_cost: Usd(worst_cost),
        now_ms: NOW,
    }
}

const NOW: i64 = 1_795_487_580_000;
const TODAY: i64 = NOW / window::DAY_MS;

/// A ledger holding `amount` of pool "p"'s budget today, as the store would grant it.
fn with_lease(amount: i64) -> Arc<Quota> {
    let q = Quota::new();
    q.grant("p", TODAY, amount);
    q
}

#[test]
fn hard_cap_holds_under_parallel_admissions() {
    let q = with_lease(1_000);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let q = Arc::clone(&q);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let jti = format!("t{i}");
                let mut admitted = 0;
                for _ in 0..100 {
                    if let Ok(a) = q.admit(&ask(&jti, 10, Some(1_000))) {
                        a.settle(50, Usd(10));
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let total: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 100, "exactly cap / cost requests fit");
    assert_eq!(q.spent("p"), Usd(1_000));
}

#[test]
fn a_short_lease_asks_for_what_is_missing_and_reservations_count() {
    let q = with_lease(1_000);
    let held = q.admit(&ask("a", 600, Some(1_000))).unwrap();
    let err = q.admit(&ask("b", 600, Some(1_000))).unwrap_err();
    assert!(
        matches!(err, Denied::NeedsBudget { ref pool, want: 200 } if pool == "p"),
        "{err}"
    );
    held.settle(10, Usd(100));
    let again = q.admit(&ask("b", 600, Some(1_000)));
    assert!(again.is_ok(), "settled lower frees budget");
    again.unwrap().settle(10, Usd(50));
    assert_eq!(q.spent("p"), Usd(150));
}

#[test]
fn dropped_admission_charges_worst_case() {
    let q = with_lease(1_000);
    drop(q.admit(&ask("a", 300, Some(1_000))).unwrap());
    assert_eq!(q.spent("p"), Usd(300));
}

#[test]
fn concurrency_limit_counts_in_flight_requests() {
    let q = Quota::new();
    let mut a = ask("a", 0, None);
    a.token_limits.concurrency = Some(2);
    let one = q.admit(&a).unwrap();
    let _two = q.admit(&a).unwrap();
    assert!(matches!(
        q.admit(&a),
        Err(Denied::Concurrency {
            scope: "token",
            limit: 2
        })
    ));
    one.settle(1, Usd::ZERO);
    assert!(q.admit(&a).is_ok());
}

#[test]
fn rpm_windows_are_leased_then_full_with_retry_after_and_request_over_tpm_is_too_large() {
    let q = Quota::new();
    let mut a = ask("a", 0, None);
    a.token_limits.rpm = Some(2);
    let need = match q.admit(&a) {
        Err(Denied::NeedsRate(n)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(need.scope.key(), "requests:token:a");
    assert_eq!((need.limit, need.want), (2, 1));
    assert_eq!(need.minute, NOW / rate::MINUTE_MS);
    q.grant_rate(&need.scope, need.minute, 2, 2, 2);
    q.admit(&a).unwrap().settle(1, Usd::ZERO);
    let second = q.admit(&a).unwrap();
    assert_eq!(second.rate_info().remaining_requests, Some(0));
    second.settle(1, Usd::ZERO);
    // Used up locally: lease more. The store has none left: the window is full.
    let Err(Denied::NeedsRate(more)) = q.admit(&a) else {
        panic!("asks for more")
    };
    q.grant_rate(&more.scope, more.minute, 0, 1, 2);
    match q.admit(&a) {
        Err(Denied::Rate {
            unit: "requests",
            retry_after,
            ..
        }) => assert!((1..=60).contains(&retry_after), "{retry_after}"),
        other => panic!("{other:?}"),
    }
    // The next minute starts clean.
    let mut later = ask("a", 0, None);
    later.token_limits.rpm = Some(2);
    later.now_ms = NOW + rate::MINUTE_MS;
    assert!(matches!(q.admit(&later), Err(Denied::NeedsRate(_))));

    let mut big = ask("b", 0, None);
    big.token_limits.tpm = Some(50);
    assert!(matches!(
        q.admit(&big),
        Err(Denied::TooLarge {
            needed: 100,
            limit: 50,
            ..
        })
    ));
}

#[test]
fn pool_token_windows_return_what_a_request_did_not_use() {
    let q = Quota::new();
    let mut a = ask("a", 0, None);
    a.pool_limits.tpm = Some(1_000);
    let Err(Denied::NeedsRate(need)) = q.admit(&a) else {
        panic!("asks for a lease")
    };
    assert_eq!(need.scope.key(), "tokens:pool:p");
    assert_eq!(need.want, 100);
    q.grant_rate(&need.scope, need.minute, 150, 150, 150);
    let held = q.admit(&a).unwrap();
    assert!(matches!(
        q.admit(&a),
        Err(Denied::NeedsRate(RateNeed { want: 50, .. }))
    ));
    held.settle(30, Usd::ZERO);
    assert!(q.admit(&a).is_ok(), "70 unused tokens came back");
}

#[test]
fn the_upkeep_tops_up_low_windows_and_leases_the_next_minute_ahead() {
    let q = Quota::new();
    let mut a = ask("a", 0, None);
    a.pool_limits.rpm = Some(100); // slice 5
    let Err(Denied::NeedsRate(need)) = q.admit(&a) else {
        panic!()
    };
    q.grant_rate(&need.scope, need.minute, 5, 5, 5);
    for _ in 0..3 {
        q.admit(&a).unwrap().settle(1, Usd::ZERO);
    }
    let needs = q.rate_needs(NOW + 1_000);
    assert_eq!(needs.len(), 1, "{needs:?}");
    assert_eq!((needs[0].minute, needs[0].want), (need.minute, 5));
    let late = q.rate_needs(NOW + 56_000);
    assert!(late.iter().any(|n| n.minute == need.minute + 1), "{late:?}");
    let ahead = late.iter().find(|n| n.minute == need.minute + 1).unwrap();
    q.grant_rate(&ahead.scope, ahead.minute, 5, 5, 5);
    assert!(
        q.rate_needs(NOW + 57_000)
            .iter()
            .all(|n| n.minute == need.minute),
        "leased ahead once per minute"
    );
    // Three idle minutes later the window is still leased ahead (a token calling every few
    // minutes never waits on the store) ...
    let later = NOW + 3 * 60_000 + 56_000;
    let needs = q.rate_needs(later);
    assert_eq!(needs.len(), 1, "{needs:?}");
    assert_eq!(needs[0].minute, need.minute + 4);
    q.grant_rate(&needs[0].scope, needs[0].minute, 5, 5, 5);
    let mut b = a.clone();
    b.now_ms = NOW + 4 * 60_000 + 1_000;
    assert!(q.admit(&b).is_ok(), "served from the slice leased ahead");
    // ... but not once it has been idle for longer than LEASE_AHEAD_IDLE minutes.
    assert!(q.rate_needs(NOW + 11 * 60_000 + 56_000).is_empty());
}

#[test]
fn each_day_has_its_own_lease_and_the_allowance_is_kept() {
    let q = with_lease(1_000);
    q.admit(&ask("a", 10, Some(1_000)))
        .unwrap()
        .settle(1, Usd(10));
    let mut tomorrow = ask("a", 10, Some(1_000));
    tomorrow.now_ms = NOW + window::DAY_MS;
    assert!(
        matches!(
            q.admit(&tomorrow),
            Err(Denied::NeedsBudget { want: 10, .. })
        ),
        "a new day needs a new lease"
    );
    // Two reports (the first sized by the recent pace): past the allowance, the replica must
    // report again before reserving.
    q.reported(&q.pending_reports(|_| 5));
    let reports = q.pending_reports(|_| 5);
    q.reported(&reports);
    let today = reports.iter().find(|r| r.day == TODAY).unwrap();
    assert_eq!((today.available, today.allowance), (990, 5));
    assert!(matches!(
        q.admit(&ask("a", 10, Some(1_000))),
        Err(Denied::NeedsReport { .. })
    ));
    assert_eq!(q.spent("p"), Usd(10));
}

mod ledger_properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of a random schedule.
    #[derive(Debug, Clone)]
    enum Step {
        /// Admit a request with this worst case.
        Admit(i64),
        /// Settle the n-th open admission (mod open count) at this fraction of its worst case.
        Settle(usize, u8),
        /// Drop the n-th open admission unsettled (a vanished client).
        Drop(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1i64..400).prop_map(Step::Admit),
            (any::<usize>(), 0u8..=100).prop_map(|(i, f)| Step::Settle(i, f)),
            any::<usize>().prop_map(Step::Drop),
        ]
    }

    proptest! {
        /// Any interleaving of admissions, settlements and drops keeps `spent + reserved`
        /// within the cap and conserves money: the pool's spend is exactly what was charged
        /// (the actual cost when settled, the reserved worst case when dropped).
        #[test]
        fn the_cap_holds_and_money_is_conserved(cap in 1i64..5_000, steps in proptest::collection::vec(step(), 1..200)) {
            let q = with_lease(cap);
            let mut open: Vec<(Admission, i64)> = Vec::new();
            let mut charged = 0i64;
            for s in steps {
                match s {
                    Step::Admit(worst) => {
                        if let Ok(a) = q.admit(&ask("t", worst, Some(cap))) {
                            open.push((a, worst));
                        }
                    }
                    Step::Settle(i, f) if !open.is_empty() => {
                        let (a, worst) = open.remove(i % open.len());
                        let actual = worst * i64::from(f) / 100;
                        a.settle(10, Usd(actual));
                        charged += actual;
                    }
                    Step::Drop(i) if !open.is_empty() => {
                        let (a, worst) = open.remove(i % open.len());
                        drop(a);
                        charged += worst;
                    }
                    _ => {}
                }
                let reserved: i64 = open.iter().map(|(_, w)| w).sum();
                prop_assert!(q.spent("p").micros() + reserved <= cap);
                prop_assert_eq!(q.spent("p").micros(), charged);
            }
        }
    }
}
