//! Two upstream deployments, `east` and `west`: each a test upstream of its own that accepts
//! only its own key, configured as providers `east` and `west` (OpenAI-compatible), with the
//! keys of billing owner team-a in a key file. The policy's models are the test's.

use super::app::{Options, TestApp, spawn_app_with};
use super::db::TestDbKind;
use super::upstream::TestUpstream;

pub const EAST_KEY: &str = "sk-east-0f1e2d3c4b5a6978";
pub const WEST_KEY: &str = "sk-west-8a7b6c5d4e3f2019";

/// An app whose models route over two deployments, `east` and `west`, each a test upstream
/// that accepts only its own key.
pub struct Routed {
    pub app: TestApp,
    pub east: TestUpstream,
    pub west: TestUpstream,
    _keys: tempfile::TempDir,
}

pub async fn routed(models: &str) -> Routed {
    routed_with(models, "").await
}

/// [`routed`], with more YAML under the binding `team-a` (indented four spaces).
pub async fn routed_with(models: &str, binding_extra: &str) -> Routed {
    let east = TestUpstream::start(EAST_KEY, "unused-a").await;
    let west = TestUpstream::start(WEST_KEY, "unused-b").await;
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("keys.yaml");
    std::fs::write(
        &file,
        format!(
            "keys:\n  - id: east-a\n    provider: east\n    api_key: {EAST_KEY}\n    billing_owner: team-a\n  - id: west-a\n    provider: west\n    api_key: {WEST_KEY}\n    billing_owner: team-a\n"
        ),
    )
    .unwrap();
    let policy = format!(
        "models:\n{models}\npools:\n  main:\n    budget: {{ usd: 100, window: daily }}\nbindings:\n  - name: team-a\n    match: {{ namespace: team-a }}\n    team: a\n    pool: main\n    billing_owner: team-a\n    models: [chat, solo]\n    max_tokens: {{ default: 64, max: 256 }}\n{binding_extra}"
    );
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(policy),
            secrets: Some(format!("[secrets]\npath = \"{}\"\n", file.display())),
            extra_config: format!(
                "[providers.east]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n\n[providers.west]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n",
                east.url, west.url
            ),
            ..Options::default()
        },
    )
    .await;
    Routed {
        app,
        east,
        west,
        _keys: keys,
    }
}
