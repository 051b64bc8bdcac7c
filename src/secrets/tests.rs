use super::*;
use secrecy::ExposeSecret;
use std::io::Write;

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
    let cache = KeyCache::load(s).await.unwrap();
    for _ in 0..4 {
        let k = cache.select("openai", "gpt-4o", "team-a").unwrap();
        assert_eq!(k.id, "team-a-openai");
    }
    // team-a key does not allow embeddings: falls to a shared key allowing all models
    let k = cache
        .select("openai", "text-embedding-3-small", "team-a")
        .unwrap();
    assert_eq!(k.id, "shared-openai-1");
    assert!(cache.select("anthropic", "claude", "team-a").is_none());
    assert_eq!(
        cache.select("anthropic", "claude", "team-b").unwrap().id,
        "anthropic"
    );
}

#[tokio::test]
async fn equal_keys_share_the_load() {
    let (_f, s) = store_with(KEYS);
    let cache = KeyCache::load(s).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let k = cache.select("openai", "gpt-4o-mini", "someone").unwrap();
        *seen.entry(k.id.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("shared-openai-1"), Some(&5));
    assert_eq!(seen.get("shared-openai-2"), Some(&5));
}

#[tokio::test]
async fn broken_file_keeps_cached_keys() {
    let (f, s) = store_with(KEYS);
    let cache = KeyCache::load(s).await.unwrap();
    std::fs::write(f.path(), "keys: [ {id: x} ]").unwrap();
    assert!(cache.refresh().await.is_err());
    assert!(cache.select("openai", "gpt-4o", "team-a").is_some());
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
    let keys = s.list().await.unwrap();
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
