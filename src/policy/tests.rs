use super::*;
use std::time::Duration;

const GOOD: &str = r#"
models:
  small:
    provider: openai
    price: { input: 0.15, output: 0.60 }
  big:
    provider: openai
    upstream_model: big-2024
    price: { input: "2.5", output: 10, cached_input: 1.25 }
    fallback: small
pools:
  p:
    budget: { usd: 25, window: "rolling:7" }
    limits: { rpm: 10 }
bindings:
  - name: exact
    match: { namespace: team-a, service_account: ranker }
    team: a
    pool: p
    models: [big]
  - name: wide
    match: { namespace: "team-*" }
    team: any
    pool: p
    billing_owner: platform
    shared_keys: false
    models: [small, big]
    token_ttl: 5m
    max_tokens: { default: 100, max: 200 }
    max_request_usd: 0.5
roles:
  - role: finops
    groups: [finance]
"#;

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

fn errors(files: &[(&str, &str)]) -> Vec<(usize, String)> {
    let d = dir_with(files);
    load_dir(d.path())
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| (e.line, e.message))
        .collect()
}

#[test]
fn a_valid_policy_loads_with_exact_prices_and_defaults() {
    let d = dir_with(&[("p.yaml", GOOD)]);
    let set = load_dir(d.path()).unwrap();
    let big = set.model("big").unwrap();
    assert_eq!(big.primary().upstream_model, "big-2024");
    assert_eq!(big.price.input_per_mtok_micro_usd, 2_500_000);
    assert_eq!(big.price.cached_input_per_mtok_micro_usd, 1_250_000);
    assert_eq!(
        set.model("small")
            .unwrap()
            .price
            .cached_input_per_mtok_micro_usd,
        150_000
    );
    let pool = set.pool("p").unwrap();
    assert_eq!(
        pool.budget.as_ref().unwrap().window,
        BudgetWindow::Rolling { days: 7 }
    );
    assert_eq!(pool.alerts, vec![50, 80, 100]);
    let wide = set.binding("wide").unwrap();
    assert_eq!(wide.token_ttl, Duration::from_secs(300));
    assert_eq!(wide.max_request_micro_usd, Some(500_000));
    assert_eq!(set.binding("exact").unwrap().billing_owner, "a");
    assert!(
        set.binding("exact").unwrap().shared_keys,
        "allowed by default"
    );
    assert!(!wide.shared_keys);
    assert_eq!(
        set.binding("exact").unwrap().token_ttl,
        Duration::from_secs(900)
    );
    assert!(set.roles()[0].applies_to("bob", &["finance".into()]));
    assert_eq!(set.digest().len(), 64);
}

#[test]
fn first_matching_binding_wins_and_globs_apply() {
    let d = dir_with(&[("p.yaml", GOOD)]);
    let set = load_dir(d.path()).unwrap();
    let w = |ns: &'static str, sa: &'static str| WorkloadRef {
        issuer: "k8s",
        subject: "s",
        namespace: Some(ns),
        service_account: Some(sa),
    };
    assert_eq!(
        set.binding_for(&w("team-a", "ranker")).unwrap().name,
        "exact"
    );
    assert_eq!(set.binding_for(&w("team-a", "other")).unwrap().name, "wide");
    assert_eq!(set.binding_for(&w("team-zz", "x")).unwrap().name, "wide");
    assert!(set.binding_for(&w("prod", "x")).is_none());
    let oidc = WorkloadRef {
        issuer: "k8s",
        subject: "s",
        namespace: None,
        service_account: None,
    };
    assert!(
        set.binding_for(&oidc).is_none(),
        "a namespace glob never matches a token without one"
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = "models:\n  m:\n    provider: openai\n    price: { input: -1, output: 1 }\npools:\n  p:\n    budget: { usd: 0, window: hourly }\nbindings:\n  - name: b\n    match: { namespace: x }\n    team: t\n    pool: nope\n    models: [m, ghost]\n    token_ttl: 1h\n";
    let errs = errors(&[("a.yaml", text)]);
    let has =
        |line: usize, needle: &str| errs.iter().any(|(l, m)| *l == line && m.contains(needle));
    assert!(has(4, "price.input"), "{errs:?}");
    assert!(has(7, "budget.usd"), "{errs:?}");
    assert!(has(7, "budget.window"), "{errs:?}");
    assert!(has(12, "pool nope"), "{errs:?}");
    assert!(has(13, "model ghost"), "{errs:?}");
    assert!(has(14, "token_ttl"), "{errs:?}");
}

#[test]
fn duplicates_across_files_and_unknown_fields_are_errors() {
    let m = "models:\n  m:\n    provider: openai\n    price: { input: 1, output: 1 }\n";
    let errs = errors(&[("a.yaml", m), ("b.yaml", m)]);
    assert!(
        errs.iter()
            .any(|(l, e)| *l == 2 && e.contains("already defined")),
        "{errs:?}"
    );
    let errs = errors(&[(
        "a.yaml",
        "models:\n  m:\n    provider: openai\n    prices: {}\n",
    )]);
    assert!(errs.iter().any(|(_, e)| e.contains("prices")), "{errs:?}");
    let errs = errors(&[("a.yaml", "bindings: [")]);
    assert_eq!(errs.len(), 1);
}

#[test]
fn calendar_windows_take_an_anchor_and_others_refuse_one() {
    let pool = |budget: &str| format!("pools:\n  p:\n    budget: {budget}\n");
    let window = |budget: &str| {
        let d = dir_with(&[("a.yaml", &pool(budget))]);
        load_dir(d.path())
            .unwrap()
            .pool("p")
            .unwrap()
            .budget
            .clone()
            .unwrap()
            .window
    };
    assert_eq!(
        window("{ usd: 1, window: monthly }"),
        BudgetWindow::Monthly { start: 1 }
    );
    assert_eq!(
        window("{ usd: 1, window: monthly, anchor: 15 }"),
        BudgetWindow::Monthly { start: 15 }
    );
    assert_eq!(
        window("{ usd: 1, window: weekly, anchor: sunday }"),
        BudgetWindow::Weekly { start: 6 }
    );
    assert_eq!(
        window("{ usd: 1, window: weekly, anchor: Wed }"),
        BudgetWindow::Weekly { start: 2 }
    );
    for (budget, needle) in [
        ("{ usd: 1, window: monthly, anchor: 31 }", "from 1 to 28"),
        ("{ usd: 1, window: monthly, anchor: first }", "from 1 to 28"),
        ("{ usd: 1, window: weekly, anchor: 3 }", "weekday"),
        (
            "{ usd: 1, window: daily, anchor: 1 }",
            "only weekly and monthly",
        ),
        (
            "{ usd: 1, window: \"rolling:7\", anchor: 1 }",
            "only weekly and monthly",
        ),
    ] {
        let errs = errors(&[("a.yaml", &pool(budget))]);
        assert!(
            errs.iter()
                .any(|(l, e)| *l == 3 && e.contains("budget.anchor") && e.contains(needle)),
            "{budget}: {errs:?}"
        );
    }
}

#[test]
fn at_cap_actions_take_their_own_fields_and_nothing_else() {
    let pool = |body: &str| format!("pools:\n  p:\n{body}");
    let ok = dir_with(&[(
        "a.yaml",
        &pool(
            "    budget: { usd: 10, window: daily }\n    at_cap: queue\n    queue_timeout: 20s\n  d:\n    budget: { usd: 10, window: daily }\n    at_cap: degrade\n    overdraft_usd: 0.5\n",
        ),
    )]);
    let set = load_dir(ok.path()).unwrap();
    assert_eq!(
        set.pool("p").unwrap().at_cap,
        AtCap::Queue {
            timeout: Duration::from_secs(20),
            max_waiting: 100
        }
    );
    assert_eq!(
        set.pool("d").unwrap().at_cap,
        AtCap::Degrade {
            overdraft_micro_usd: 500_000
        }
    );
    let cases = [
        ("    at_cap: queue\n", "needs queue_timeout"),
        ("    at_cap: queue\n    queue_timeout: 10m\n", "at most 5m"),
        ("    at_cap: queue\n    queue_timeout: 0s\n", "more than 0"),
        (
            "    at_cap: queue\n    queue_timeout: 1s\n    queue_max: 0\n",
            "queue_max must be",
        ),
        ("    queue_timeout: 1s\n", "only applies to at_cap: queue"),
        ("    queue_max: 3\n", "only applies to at_cap: queue"),
        (
            "    budget: { usd: 1, window: daily }\n    at_cap: degrade\n",
            "needs overdraft_usd",
        ),
        (
            "    at_cap: degrade\n    overdraft_usd: 1\n",
            "needs a budget",
        ),
        (
            "    budget: { usd: 1, window: daily }\n    at_cap: degrade\n    overdraft_usd: 2\n",
            "at most the budget",
        ),
        (
            "    budget: { usd: 1, window: daily }\n    overdraft_usd: 0.1\n",
            "only applies to at_cap: degrade",
        ),
        ("    at_cap: wait\n", "must be reject, queue or degrade"),
    ];
    for (body, needle) in cases {
        let errs = errors(&[("a.yaml", &pool(body))]);
        assert!(
            errs.iter().any(|(l, e)| *l >= 3 && e.contains(needle)),
            "{body:?}: {errs:?}"
        );
    }
}

#[test]
fn fallback_must_exist_share_the_provider_and_not_loop() {
    let text = "models:\n  a:\n    provider: openai\n    price: { input: 1, output: 1 }\n    fallback: b\n  b:\n    provider: openai\n    price: { input: 1, output: 1 }\n    fallback: a\n  c:\n    provider: anthropic\n    price: { input: 1, output: 1 }\n    fallback: a\n";
    let errs = errors(&[("a.yaml", text)]);
    assert!(errs.iter().any(|(_, e)| e.contains("loops")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|(_, e)| e.contains("served by a provider it is not (openai)")),
        "{errs:?}"
    );
}

#[test]
fn a_binding_must_narrow_its_match() {
    let text = "models:\n  m:\n    provider: openai\n    price: { input: 1, output: 1 }\npools:\n  p: {}\nbindings:\n  - name: all\n    match: { issuer: k8s }\n    team: t\n    pool: p\n    models: [m]\n";
    let errs = errors(&[("a.yaml", text)]);
    assert!(
        errs.iter()
            .any(|(l, e)| *l == 9 && e.contains("at least one")),
        "{errs:?}"
    );
}

#[test]
fn missing_directory_is_an_error_and_empty_is_valid() {
    assert!(load_dir(std::path::Path::new("/nonexistent/policies")).is_err());
    let d = dir_with(&[("empty.yaml", "# nothing yet\n")]);
    assert!(load_dir(d.path()).unwrap().bindings().is_empty());
}

#[test]
fn reload_swaps_good_edits_and_keeps_the_last_good_set() {
    let d = dir_with(&[("p.yaml", GOOD)]);
    let store = PolicyStore::open(d.path()).unwrap();
    assert!(!store.reload().unwrap());
    std::fs::write(d.path().join("p.yaml"), "models: [broken").unwrap();
    assert!(store.reload().is_err());
    assert!(
        store.current().model("big").is_some(),
        "last good policy kept"
    );
    std::fs::write(
        d.path().join("p.yaml"),
        GOOD.replace("big-2024", "big-2025"),
    )
    .unwrap();
    assert!(store.reload().unwrap());
    assert_eq!(
        store
            .current()
            .model("big")
            .unwrap()
            .primary()
            .upstream_model,
        "big-2025"
    );
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = load_dir(&dir).unwrap();
    let demo = WorkloadRef {
        issuer: "dev",
        subject: "system:serviceaccount:demo:app",
        namespace: Some("demo"),
        service_account: Some("app"),
    };
    let b = set.binding_for(&demo).unwrap();
    assert!(
        b.models
            .iter()
            .any(|m| set.model(m).unwrap().primary().provider == "openai")
    );
    assert!(
        b.models
            .iter()
            .any(|m| set.model(m).unwrap().primary().provider == "anthropic")
    );
}

#[test]
fn rotation_schedules_cover_their_keys_and_fall_due_on_time() {
    let d = dir_with(&[(
        "r.yaml",
        r#"
rotations:
  - name: team-a-monthly
    keys: ["tollgate/openai/*"]
    billing_owner: team-a
    every: 30d
  - name: nightly
    keys: ["tollgate/*"]
    cron: "0 3 * * *"
    retry_after: 1h
"#,
    )]);
    let set = load_dir(d.path()).unwrap();
    let monthly = set
        .rotation_schedule_for("tollgate/openai/k1", "team-a")
        .unwrap();
    assert_eq!(monthly.name, "team-a-monthly");
    assert_eq!(
        monthly.retry_after,
        Duration::from_secs(6 * 3600),
        "the default"
    );
    let day = 24 * 3600 * 1000;
    assert_eq!(monthly.due_at(1_000), Some(1_000 + 30 * day));
    // Another owner's key falls to the next schedule; a key no glob covers has none.
    let nightly = set
        .rotation_schedule_for("tollgate/openai/k1", "team-b")
        .unwrap();
    assert_eq!(nightly.name, "nightly");
    assert_eq!(nightly.retry_after, Duration::from_secs(3600));
    assert!(
        set.rotation_schedule_for("other/openai/k1", "team-a")
            .is_none()
    );
    // 2026-12-04T10:00:00Z → the next 03:00 UTC is 2026-12-05T03:00:00Z; at 02:59 it is the
    // same day's.
    let t = 1_796_378_400_000;
    assert_eq!(nightly.due_at(t), Some(1_796_439_600_000));
    assert_eq!(nightly.due_at(1_796_439_540_000), Some(1_796_439_600_000));
    // Exactly at a fire time the next one is a day later (a rotation started at 03:00 is
    // not due again at 03:00).
    assert_eq!(
        nightly.due_at(1_796_439_600_000),
        Some(1_796_439_600_000 + day)
    );
}

#[test]
fn bad_rotation_schedules_name_the_problem() {
    for (entry, want) in [
        (
            "keys: [\"a/*\"]\n    every: 30d\n    cron: \"0 3 * * *\"",
            "exactly one of every",
        ),
        ("keys: [\"a/*\"]", "exactly one of every"),
        ("keys: []\n    every: 30d", "keys: name the key ids"),
        ("keys: [\"a/[\"]\n    every: 30d", "keys:"),
        ("keys: [\"a/*\"]\n    every: 10s", "every: at least 1m"),
        ("keys: [\"a/*\"]\n    every: soon", "every:"),
        ("keys: [\"a/*\"]\n    cron: \"0 0 3 * * *\"", "five fields"),
        ("keys: [\"a/*\"]\n    cron: \"61 3 * * *\"", "cron:"),
        (
            "keys: [\"a/*\"]\n    every: 1d\n    retry_after: 1s",
            "retry_after: at least 1m",
        ),
        (
            "keys: [\"a/*\"]\n    every: 1d\n    when: now",
            "unknown field",
        ),
    ] {
        let text = format!("rotations:\n  - name: s\n    {entry}\n");
        let errs = errors(&[("r.yaml", &text)]);
        assert!(
            errs.iter().any(|(_, m)| m.contains(want)),
            "{entry:?}: {errs:?}"
        );
    }
    let twice = "rotations:\n  - name: s\n    keys: [\"a/*\"]\n    every: 1d\n  - name: s\n    keys: [\"b/*\"]\n    every: 1d\n";
    let errs = errors(&[("r.yaml", twice)]);
    assert!(
        errs.iter()
            .any(|(l, m)| *l == 5 && m.contains("defined twice")),
        "{errs:?}"
    );
}

const ROUTED: &str = r#"
models:
  chat:
    price: { input: 1, output: 2 }
    routing: { retries: 2, deadline: 20s, breaker: { failures: 5, cooldown: 10s } }
    deployments:
      - name: east
        provider: azure-east
        upstream_model: gpt-4o-2024-08-06
        weight: 3
        limits: { rpm: 600, tpm: 200000 }
      - name: west
        provider: azure-west
      - name: onprem
        provider: vllm
        upstream_model: llama-3-70b
        billing_owner: platform
        tier: 2
        weight: 0
        price: { input: 0.1, output: 0.1 }
  chat-mini:
    provider: azure-east
    price: { input: 0.1, output: 0.2 }
"#;

#[test]
fn deployments_load_with_their_defaults_and_the_short_form_is_one_deployment() {
    let set = load_str("p.yaml", ROUTED).unwrap();
    let chat = set.model("chat").unwrap();
    let names: Vec<&str> = chat.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["east", "west", "onprem"]);
    let [east, west, onprem] = &chat.deployments[..] else {
        panic!()
    };
    assert_eq!((east.weight, east.tier, east.limits.rpm), (3, 1, Some(600)));
    assert_eq!(east.upstream_model, "gpt-4o-2024-08-06");
    assert_eq!(
        (west.weight, west.tier, west.upstream_model.as_str()),
        (1, 1, "chat")
    );
    assert_eq!(
        west.price, chat.price,
        "a deployment inherits the model's price"
    );
    assert_eq!((onprem.weight, onprem.tier), (0, 2));
    assert_eq!(onprem.billing_owner.as_deref(), Some("platform"));
    assert_eq!(onprem.price.input_per_mtok_micro_usd, 100_000);
    assert_eq!(chat.routing.retries, 2);
    assert_eq!(chat.routing.deadline, Some(Duration::from_secs(20)));
    assert_eq!(chat.routing.breaker_failures, 5);
    assert_eq!(chat.routing.breaker_cooldown, Duration::from_secs(10));
    let mini = set.model("chat-mini").unwrap();
    assert_eq!(mini.deployments.len(), 1);
    assert_eq!(mini.primary().name, "azure-east");
    assert_eq!(mini.routing, Routing::default());
    let providers = set.providers_referenced();
    assert_eq!(
        providers.into_iter().collect::<Vec<_>>(),
        ["azure-east", "azure-west", "vllm"]
    );
}

#[test]
fn bad_deployments_name_the_problem_and_its_line() {
    let bad = r#"
models:
  both:
    provider: openai
    price: { input: 1, output: 1 }
    deployments:
      - name: a
        provider: openai
  neither:
    price: { input: 1, output: 1 }
  none:
    price: { input: 1, output: 1 }
    deployments: []
  odd:
    price: { input: 1, output: 1 }
    upstream_model: x
    routing: { retries: 9, deadline: 1ms, breaker: { failures: 0 } }
    deployments:
      - name: a
        provider: openai
        weight: 1001
        tier: 0
      - name: a
        provider: openai
      - name: Bad!
        provider: "UPPER"
        billing_owner: " "
        price: { input: -1, output: 1 }
"#;
    let errs = errors(&[("p.yaml", bad)]);
    let has = |line: usize, text: &str| {
        assert!(
            errs.iter().any(|(l, m)| *l == line && m.contains(text)),
            "no {text:?} at line {line}: {errs:?}"
        );
    };
    has(3, "has both provider and deployments");
    has(9, "needs a provider or a list of deployments");
    has(13, "deployments must list at least one");
    has(16, "upstream_model belongs to each of its deployments");
    has(17, "retries must be between 0 and 5");
    has(17, "deadline must be between 100ms and 15m");
    has(17, "breaker.failures must be between 1 and 100");
    has(21, "weight must be between 0 and 1000");
    has(22, "tier must be between 1 and 9");
    has(23, "two deployments named a");
    has(25, "deployment name \"Bad!\"");
    has(26, "provider \"UPPER\" must match");
    has(25, "billing_owner must not be empty");
    has(28, "price.input");
}

#[test]
fn a_fallback_is_served_only_by_providers_of_its_model() {
    let text = ROUTED
        .replace(
            "  chat-mini:\n    provider: azure-east",
            "  chat-mini:\n    provider: elsewhere",
        )
        .replace(
            "    routing: { retries: 2",
            "    fallback: chat-mini\n    routing: { retries: 2",
        );
    let err = load_str("p.yaml", &text).unwrap_err().to_string();
    assert!(
        err.contains("served by a provider it is not (elsewhere)"),
        "{err}"
    );
    let ok = text.replace("provider: elsewhere", "provider: vllm");
    load_str("p.yaml", &ok).unwrap();
}

#[test]
fn the_readme_routing_example_is_a_valid_policy() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("# policies/models.yaml\n")
        .expect("the README's routing example");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the block")];
    let set = load_str("README.md", block).unwrap();
    let m = set.model("gpt-4o").unwrap();
    let shape: Vec<(&str, u32, u8)> = m
        .deployments
        .iter()
        .map(|d| (d.name.as_str(), d.weight, d.tier))
        .collect();
    assert_eq!(shape, [("east", 3, 1), ("west", 1, 1), ("openai", 1, 2)]);
    assert_eq!(m.deployments[0].limits.rpm, Some(600));
}

#[test]
fn the_readme_guardrails_example_is_a_valid_policy() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("# policies/support.yaml\n")
        .expect("the README's guardrails example");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the block")];
    let block = format!("{block}pools:\n  support: {{}}\n");
    let set = load_str("README.md", &block).unwrap();
    let g = &set.binding("support-bot").unwrap().guardrails;
    assert_eq!(g.max_messages, Some(40));
    assert_eq!(g.secrets, crate::guardrails::SecretAction::Block);
    assert!(!g.allow_code);
    let found = g.inspect("Customer jane@example.com asks");
    assert_eq!(found.pii, ["email"]);
    let chat = set.model("support-chat").unwrap();
    let cleared: Vec<&str> = chat
        .deployments
        .iter()
        .filter(|d| crate::routing::cleared(d, g.classes(&found)))
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(cleared, ["onprem"]);
}
