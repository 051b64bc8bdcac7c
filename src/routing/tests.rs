use super::*;
use crate::policy::{Deployment, Limits, Price, Routing};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::{Duration, Instant};

fn dep(name: &str, tier: u8, weight: u32) -> Deployment {
    Deployment {
        name: name.into(),
        provider: name.into(),
        upstream_model: "m".into(),
        billing_owner: None,
        weight,
        tier,
        limits: Limits::default(),
        price: Price::default(),
        data_classes: crate::guardrails::ClassSet::PUBLIC_INTERNAL,
    }
}

#[test]
fn the_first_choice_follows_the_weights_and_every_deployment_is_in_the_order() {
    let ds = [
        dep("a", 1, 3),
        dep("b", 1, 1),
        dep("c", 2, 5),
        dep("z", 1, 0),
    ];
    let refs: Vec<&Deployment> = ds.iter().collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut first = [0u32; 4];
    for _ in 0..8000 {
        let o = order(&refs, &mut rng);
        assert_eq!(o.len(), 4);
        // Tier 1 (weighted a/b, then the weight-0 standby z), then tier 2.
        assert_eq!(o[2], 3, "{o:?}");
        assert_eq!(o[3], 2, "{o:?}");
        first[o[0]] += 1;
    }
    // 3:1 → 6000:2000, within 5 %.
    assert!((5700..=6300).contains(&first[0]), "{first:?}");
    assert!((1700..=2300).contains(&first[1]), "{first:?}");
    assert_eq!(first[2] + first[3], 0);
}

#[test]
fn backoff_is_jittered_and_bounded() {
    let mut rng = StdRng::seed_from_u64(1);
    let draws: Vec<Duration> = (0..200).map(|_| backoff(1, &mut rng)).collect();
    assert!(draws.iter().all(|d| *d <= Duration::from_millis(200)));
    assert!(draws.iter().any(|d| *d != draws[0]), "no jitter");
    assert!((0..200).all(|_| backoff(40, &mut rng) <= Duration::from_secs(5)));
}

fn policy(failures: u32, cooldown_ms: u64) -> Routing {
    Routing {
        breaker_failures: failures,
        breaker_cooldown: Duration::from_millis(cooldown_ms),
        ..Routing::default()
    }
}

fn go(b: &std::sync::Arc<Breakers>, p: &Routing, now: Instant) -> Probe {
    match b.admit("m/a", p, now) {
        Admit::Go(probe) => probe,
        other => panic!("refused: {other:?}"),
    }
}

#[test]
fn a_breaker_opens_after_consecutive_failures_and_one_probe_closes_it() {
    let b = Breakers::new();
    let p = policy(3, 1000);
    let t0 = Instant::now();
    go(&b, &p, t0).verdict_at(Verdict::Failed, t0);
    go(&b, &p, t0).verdict_at(Verdict::Healthy, t0);
    // A success in between resets the count: two more failures keep it closed.
    go(&b, &p, t0).verdict_at(Verdict::Failed, t0);
    go(&b, &p, t0).verdict_at(Verdict::Failed, t0);
    assert_eq!(b.state("m/a", t0), breaker::CircuitState::Closed);
    go(&b, &p, t0).verdict_at(Verdict::Failed, t0);
    assert_eq!(b.state("m/a", t0), breaker::CircuitState::Open);
    assert!(matches!(
        b.admit("m/a", &p, t0 + Duration::from_millis(999)),
        Admit::Open(_)
    ));
    // Cool-down over: exactly one probe goes through.
    let t1 = t0 + Duration::from_millis(1000);
    let probe = go(&b, &p, t1);
    assert!(probe.is_probe());
    assert!(matches!(b.admit("m/a", &p, t1), Admit::Open(_)));
    probe.verdict_at(Verdict::Healthy, t1);
    assert_eq!(b.state("m/a", t1), breaker::CircuitState::Closed);
    assert!(!go(&b, &p, t1).is_probe());
}

#[test]
fn a_failed_probe_doubles_the_cool_down_up_to_ten_times() {
    let b = Breakers::new();
    let p = policy(1, 100);
    let mut t = Instant::now();
    go(&b, &p, t).verdict_at(Verdict::Failed, t);
    let mut expected = 100;
    for _ in 0..8 {
        t += Duration::from_millis(expected);
        let probe = go(&b, &p, t);
        assert!(probe.is_probe());
        probe.verdict_at(Verdict::Failed, t);
        expected = (expected * 2).min(1000);
        assert!(matches!(
            b.admit("m/a", &p, t + Duration::from_millis(expected - 1)),
            Admit::Open(_)
        ));
    }
    assert_eq!(expected, 1000);
}

#[test]
fn a_cancelled_probe_frees_the_slot_and_429_pauses_without_opening() {
    let b = Breakers::new();
    let p = policy(1, 100);
    let t0 = Instant::now();
    go(&b, &p, t0).verdict_at(Verdict::Failed, t0);
    let t1 = t0 + Duration::from_millis(100);
    drop(go(&b, &p, t1));
    assert!(
        go(&b, &p, t1).is_probe(),
        "a dropped probe must let another through"
    );

    let b = Breakers::new();
    go(&b, &p, t0).verdict_at(Verdict::Throttled(Duration::from_secs(2)), t0);
    assert!(
        matches!(b.admit("m/a", &p, t0 + Duration::from_secs(1)), Admit::Throttled(d) if d == Duration::from_secs(1))
    );
    assert_eq!(b.state("m/a", t0), breaker::CircuitState::Closed);
    assert!(!go(&b, &p, t0 + Duration::from_secs(2)).is_probe());
}

mod data_classes {
    use super::*;
    use crate::guardrails::{ClassSet, DataClass};
    use proptest::prelude::*;

    fn names(mask: u8) -> String {
        let v: Vec<&str> = DataClass::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| c.as_str())
            .collect();
        format!("[{}]", v.join(", "))
    }

    fn set(mask: u8) -> ClassSet {
        ClassSet::of(
            &DataClass::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| *c)
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Over random policies (deployments cleared for random classes, or inheriting the
        /// model's, or the default), random bindings (classes sent, PII detection on or off)
        /// and prompts with or without personal data: a request is routed only to deployments
        /// cleared for every class it carries, and to every such deployment.
        #[test]
        fn routing_never_sends_a_class_to_a_deployment_not_cleared_for_it(
            model_mask in proptest::option::of(1u8..16),
            deployment_masks in proptest::collection::vec(proptest::option::of(1u8..16), 1..6),
            binding_mask in 1u8..16,
            detect_pii in any::<bool>(),
            personal in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut yaml = String::from("models:\n  m:\n    price: { input: 1, output: 1 }\n");
            if let Some(m) = model_mask {
                yaml += &format!("    data_classes: {}\n", names(m));
            }
            yaml += "    deployments:\n";
            for (i, d) in deployment_masks.iter().enumerate() {
                yaml += &format!("      - name: d{i}\n        provider: p{i}\n        tier: {}\n", 1 + i % 2);
                if let Some(d) = d {
                    yaml += &format!("        data_classes: {}\n", names(*d));
                }
            }
            yaml += &format!(
                "pools:\n  p: {{}}\nbindings:\n  - name: b\n    match: {{ namespace: x }}\n    team: t\n    pool: p\n    models: [m]\n    guardrails: {{ data_classes: {}, detect_pii: {detect_pii} }}\n",
                names(binding_mask)
            );
            let policy = crate::policy::load_str("p.yaml", &yaml).unwrap();
            let g = &policy.binding("b").unwrap().guardrails;
            let prompt = if personal { "write to jane@example.com" } else { "write a haiku" };
            let classes = g.classes(&g.inspect(prompt));

            // The oracle, from the masks alone.
            let mut want = set(binding_mask);
            if detect_pii && personal {
                want = want.with(DataClass::Pii);
            }
            prop_assert_eq!(classes, want);
            let model = policy.model("m").unwrap();
            let effective = |i: usize| match (deployment_masks[i], model_mask) {
                (Some(d), _) | (None, Some(d)) => set(d),
                (None, None) => ClassSet::PUBLIC_INTERNAL,
            };

            let eligible: Vec<&Deployment> =
                model.deployments.iter().filter(|d| cleared(d, classes)).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let routed = order(&eligible, &mut rng);
            prop_assert_eq!(routed.len(), eligible.len());
            for i in routed {
                let d = eligible[i];
                let n: usize = d.name[1..].parse().unwrap();
                prop_assert!(effective(n).covers(classes), "{} got {:?}", d.name, classes);
            }
            let cleared_count = (0..deployment_masks.len()).filter(|i| effective(*i).covers(classes)).count();
            prop_assert_eq!(eligible.len(), cleared_count);
        }
    }
}
