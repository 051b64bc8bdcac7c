use super::*;
use std::sync::Barrier;

fn ask<'a>(jti: &'a str, worst_cost: i64, budget: Option<i64>) -> Ask<'a> {
    Ask {
        jti,
        token_limits: Limits {
            rpm: Some(1000),
            tpm: Some(1_000_000),
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
        now_ms: 1_795_487_580_000,
    }
}

#[test]
fn hard_cap_holds_under_parallel_admissions() {
    let q = Quota::new();
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
fn budget_denial_names_pool_and_reservation_counts() {
    let q = Quota::new();
    let held = q.admit(&ask("a", 600, Some(1_000))).unwrap();
    let err = q.admit(&ask("b", 600, Some(1_000))).unwrap_err();
    assert!(
        matches!(err, Denied::Budget { ref pool, .. } if pool == "p"),
        "{err}"
    );
    held.settle(10, Usd(100));
    assert!(
        q.admit(&ask("b", 600, Some(1_000))).is_ok(),
        "settled lower frees budget"
    );
}

#[test]
fn dropped_admission_charges_worst_case() {
    let q = Quota::new();
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
fn rpm_limit_denies_with_retry_after_and_request_over_tpm_is_too_large() {
    let q = Quota::new();
    let mut a = ask("a", 0, None);
    a.token_limits.rpm = Some(2);
    q.admit(&a).unwrap().settle(1, Usd::ZERO);
    q.admit(&a).unwrap().settle(1, Usd::ZERO);
    match q.admit(&a) {
        Err(Denied::Rate {
            unit: "requests",
            retry_after,
            ..
        }) => assert!(retry_after >= 1),
        other => panic!("{other:?}"),
    }
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
fn new_calendar_window_starts_clean_once() {
    let q = Quota::new();
    q.seed_spend("p", 0, Usd(1_000));
    // the seeded window is long gone: today's window starts at zero
    let a = q.admit(&ask("a", 10, Some(1_000))).unwrap();
    a.settle(1, Usd(10));
    assert_eq!(q.spent("p"), Usd(10));
    let b = q.admit(&ask("a", 10, Some(1_000))).unwrap();
    b.settle(1, Usd(10));
    assert_eq!(q.spent("p"), Usd(20), "no second reset within the window");
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
            let q = Quota::new();
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
