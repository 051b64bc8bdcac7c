use super::*;
use secrecy::ExposeSecret;
use std::io::Write;
use std::sync::Arc;

fn store_with(yaml: &str) -> (tempfile::NamedTempFile, Arc<dyn SecretStore>) {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    let s: Arc<dyn SecretStore> = Arc::new(FileStore::new(Some(f.path().to_owned()), false));
    (f, s)
}

const KEYS: &str = r#"
keys:
  - id: team-a-openai
    provider: openai
    api_key: sk-team-a
    billing_owner: team-a
    allowed_models: "gpt-4o-mini gpt-4o"
  - id: shared-openai-1
    provider: openai
    api_key: sk-shared-1
  - id: shared-openai-2
    provider: openai
    api_key: sk-shared-2
    allowed_models: [gpt-4o-mini]
  - id: anthropic
    provider: anthropic
    api_key: sk-ant
    billing_owner: team-b
"#;

#[tokio::test]
async fn owner_keys_are_preferred_and_models_respected() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    for _ in 0..4 {
        let k = cache
            .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
            .unwrap();
        assert_eq!(k.id, "team-a-openai");
    }
    // team-a key does not allow embeddings: falls to a shared key allowing all models
    let k = cache
        .select(
            "openai",
            "text-embedding-3-small",
            Owner::or_shared("team-a"),
            |_| true,
        )
        .unwrap();
    assert_eq!(k.id, "shared-openai-1");
    assert!(
        cache
            .select("anthropic", "claude", Owner::or_shared("team-a"), |_| true)
            .is_err()
    );
    assert_eq!(
        cache
            .select("anthropic", "claude", Owner::or_shared("team-b"), |_| true)
            .unwrap()
            .id,
        "anthropic"
    );
}

#[tokio::test]
async fn an_owner_that_refuses_shared_keys_is_served_by_its_own_only() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let own = cache
        .select("openai", "gpt-4o", Owner::only("team-a"), |_| true)
        .unwrap();
    assert_eq!(own.id, "team-a-openai");
    // Its own key does not allow embeddings and the shared one may not stand in.
    assert_eq!(
        cache
            .select(
                "openai",
                "text-embedding-3-small",
                Owner::only("team-a"),
                |_| true
            )
            .unwrap_err(),
        NoKey::NoMatch
    );
    assert_eq!(
        cache
            .select("openai", "gpt-4o-mini", Owner::only("someone"), |_| true)
            .unwrap_err(),
        NoKey::NoMatch
    );
}

#[tokio::test]
async fn equal_keys_share_the_load() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let k = cache
            .select("openai", "gpt-4o-mini", Owner::or_shared("someone"), |_| {
                true
            })
            .unwrap();
        *seen.entry(k.id.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("shared-openai-1"), Some(&5));
    assert_eq!(seen.get("shared-openai-2"), Some(&5));
}

#[tokio::test]
async fn broken_file_keeps_cached_keys() {
    let (f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    std::fs::write(f.path(), "keys: [ {id: x} ]").unwrap();
    assert!(cache.refresh().await.is_err());
    assert!(
        cache
            .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
            .is_ok()
    );
}

#[tokio::test]
async fn invalid_entries_are_named_without_the_secret() {
    let (_f, s) = store_with(
        "keys:\n  - id: k1\n    provider: openai\n    api_key: sk-secret-value\n    api_key_env: X\n",
    );
    let err = s.list().await.unwrap_err().to_string();
    assert!(err.contains("k1"), "{err}");
    assert!(!err.contains("sk-secret-value"), "{err}");
}

#[tokio::test]
async fn debug_output_never_shows_the_key() {
    let (_f, s) = store_with(KEYS);
    let keys = s.list().await.unwrap().keys;
    let dbg = format!("{keys:?}");
    assert!(
        !dbg.contains("sk-team-a") && !dbg.contains("sk-shared"),
        "{dbg}"
    );
    assert_eq!(keys[0].secret.expose_secret(), "sk-team-a");
}

#[test]
fn allowed_models_parse_commas_spaces_and_star() {
    assert_eq!(AllowedModels::parse("*"), AllowedModels::All);
    assert_eq!(AllowedModels::parse(""), AllowedModels::All);
    assert_eq!(
        AllowedModels::parse("a, b  c"),
        AllowedModels::Only(vec!["a".into(), "b".into(), "c".into()])
    );
}

#[tokio::test]
async fn a_quarantined_key_stops_serving_until_a_new_version_arrives() {
    let (f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let k = cache
        .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
        .unwrap();
    assert!(cache.quarantine(&k), "first quarantine alerts");
    assert!(!cache.quarantine(&k), "later ones do not");
    // team-a's own key is out: the shared one serves.
    let k2 = cache
        .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
        .unwrap();
    assert_eq!(k2.id, "shared-openai-1");
    // A refresh with the same version keeps the quarantine.
    cache.refresh().await.unwrap();
    let k3 = cache
        .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
        .unwrap();
    assert_ne!(k3.id, "team-a-openai");
    // The file store reports version "1" always; a predicate still lets callers exclude keys.
    drop(f);
    assert!(matches!(
        cache.select("openai", "gpt-4o", Owner::or_shared("team-a"), |k| k.id
            == "nope"),
        Err(super::cache::NoKey::NoMatch)
    ));
}

#[tokio::test]
async fn cached_keys_stop_serving_past_max_staleness() {
    let (f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_millis(1))
        .await
        .unwrap();
    std::fs::write(f.path(), "not: [valid").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(cache.refresh().await.is_err());
    let h = cache.health();
    assert!(h.degraded && h.stale, "{h:?}");
    assert!(matches!(
        cache.select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true),
        Err(super::cache::NoKey::Stale { .. })
    ));
    std::fs::write(f.path(), KEYS).unwrap();
    cache.refresh().await.unwrap();
    assert!(!cache.health().degraded);
    assert!(
        cache
            .select("openai", "gpt-4o", Owner::or_shared("team-a"), |_| true)
            .is_ok()
    );
}

#[tokio::test]
async fn a_rotation_route_sends_exactly_its_share_to_the_candidate_and_never_a_refused_one() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let pick = |c: &KeyCache| {
        c.select("anthropic", "claude", Owner::only("team-b"), |_| true)
            .unwrap()
    };
    let base = pick(&cache);
    let candidate = Arc::new(base.with_version(SecretString::from("sk-ant-new"), "v2"));
    assert_eq!(
        (candidate.id.as_str(), candidate.billing_owner.as_str()),
        ("anthropic", "team-b"),
        "the candidate is the same key: spend and budgets follow the id"
    );
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        "anthropic".to_owned(),
        Arc::new(RotationRoute::new(Arc::clone(&candidate), 250_000)),
    );
    cache.set_routes(routes);
    let served: Vec<String> = (0..100).map(|_| pick(&cache).version.clone()).collect();
    assert_eq!(served.iter().filter(|v| *v == "v2").count(), 25);
    // Spread, not bunched: every 4th request.
    assert_eq!(served[3], "v2");
    assert_eq!(served[0], base.version);

    // A refused candidate stops serving at once; the listed version stands in.
    assert!(cache.quarantine(&candidate));
    assert!((0..20).all(|_| pick(&cache).version == base.version));
    assert!(!base.is_quarantined());

    // Promoted: every request.
    let promoted = Arc::new(base.with_version(SecretString::from("sk-ant-new"), "v3"));
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        "anthropic".to_owned(),
        Arc::new(RotationRoute::new(Arc::clone(&promoted), 1_000_000)),
    );
    cache.set_routes(routes);
    assert!((0..20).all(|_| pick(&cache).version == "v3"));
    assert_eq!(pick(&cache).secret.expose_secret(), "sk-ant-new");
    cache.set_routes(std::collections::HashMap::new());
    assert_eq!(pick(&cache).version, base.version);
}

#[tokio::test]
async fn after_promotion_the_previous_version_stands_in_for_a_refused_new_one() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let pick = |c: &KeyCache| c.select("anthropic", "claude", Owner::only("team-b"), |_| true);
    // The listing already shows the new version (as after promotion); the route keeps the
    // old one as its previous.
    let listed = pick(&cache).unwrap();
    let old = Arc::new(listed.with_version(SecretString::from("sk-ant-old"), "v0"));
    let route = |previous: Option<Arc<ProviderKey>>| {
        let mut routes = std::collections::HashMap::new();
        let candidate =
            Arc::new(listed.with_version(listed.secret.clone(), listed.version.clone()));
        routes.insert(
            "anthropic".to_owned(),
            Arc::new(RotationRoute::new(candidate, 1_000_000).with_previous(previous)),
        );
        routes
    };
    cache.set_routes(route(Some(Arc::clone(&old))));
    let served = pick(&cache).unwrap();
    assert_eq!(served.version, listed.version);
    // The provider refuses the new version: the request's retry goes to the old one, and so
    // does every request after it.
    assert_eq!(cache.fallback_for(&served).unwrap().version, "v0");
    assert!(cache.quarantine(&served));
    assert!((0..10).all(|_| pick(&cache).unwrap().version == "v0"));
    // Without a previous version (an emergency rotation), or once it is refused too, nothing
    // stands in.
    cache.set_routes(route(None));
    assert!(pick(&cache).is_err());
    cache.set_routes(route(Some(Arc::clone(&old))));
    cache.quarantine(&old);
    assert!(pick(&cache).is_err());
    // Rolled back while this listing still shows the refused new version: the route sends
    // every request to the old version until the listing catches up.
    let restored = Arc::new(listed.with_version(SecretString::from("sk-ant-old"), "v0"));
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        "anthropic".to_owned(),
        Arc::new(RotationRoute::new(restored, 1_000_000)),
    );
    cache.set_routes(routes);
    assert!((0..5).all(|_| pick(&cache).unwrap().version == "v0"));
}
