//! The README's "Rotate a key" walkthroughs, run verbatim: the `sh` blocks under "Vault /
//! OpenBao" and "AWS Secrets Manager" are read from README.md and run with bash (`set -e`)
//! against a Tollgate replica on a private OpenBao (the `vault` command is OpenBao's `bao`) and
//! a private moto (the `aws` command is the AWS CLI from `.venv`, pointed at moto). An edit of
//! the README that breaks a command breaks this test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::app::{OPENAI_KEY, Options, POLICY, TestApp, spawn_app_with};
use support::db::TestDbKind;
use support::peers::{Bao, Moto};

/// The key the walkthroughs rotate to (`sk-new...` in the README, accepted by the upstream).
const README_NEW_KEY: &str = "sk-new...";
const KEY: &str = "tollgate/providers/openai/team-a";
const ROLES: &str = "roles:\n  - role: security\n    groups: [\"sec-team\"]\n";

/// The `sh` block that follows `marker` in the README's "Rotate a key" section.
fn walkthrough(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Rotate a key")
        .nth(1)
        .expect("README has a 'Rotate a key' section");
    let after = section
        .split_once(marker)
        .unwrap_or_else(|| panic!("README 'Rotate a key' has no {marker:?}"))
        .1;
    let block = after.split_once("```sh\n").expect("a sh block follows").1;
    block.split_once("```").unwrap().0.to_owned()
}

/// A directory of commands the walkthroughs call: `vault` (OpenBao's CLI), `aws`, `tollgate`.
fn tools() -> tempfile::TempDir {
    let need = |var: &str| {
        std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run scripts/test"))
    };
    let dir = tempfile::tempdir().unwrap();
    let link = |name: &str, target: &Path| {
        std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
    };
    link("vault", Path::new(&need("TOLLGATE_TEST_BAO_BIN")));
    link("aws", Path::new(&need("TOLLGATE_TEST_AWS_CLI")));
    link("tollgate", Path::new(env!("CARGO_BIN_EXE_tollgate")));
    dir
}

async fn app(secrets: String, rotation: &str) -> TestApp {
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(format!("{POLICY}{ROLES}")),
            secrets: Some(secrets),
            extra_config: rotation.to_owned(),
            admin: Some(String::new()),
            ..Options::default()
        },
    )
    .await;
    app.upstream.accept_openai_key(README_NEW_KEY);
    app
}

/// Run `script` with bash, `set -e`, the tools first on `PATH` and `env`; its output.
async fn run(script: &str, tools: &Path, env: &[(&str, String)]) -> String {
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{script}\n---\n{text}"
    );
    text
}

fn cli_env(app: &TestApp) -> Vec<(&'static str, String)> {
    vec![
        ("TOLLGATE_URL", app.url.clone()),
        (
            "TOLLGATE_ADMIN_TOKEN",
            app.admin_token("sam@example.com", &["sec-team"]),
        ),
    ]
}

async fn rotation(app: &TestApp, id: i64) -> Value {
    let t = app.admin_token("sam@example.com", &["sec-team"]);
    app.admin(
        Method::GET,
        &format!("/admin/v1/rotations/{id}"),
        Some(&t),
        None,
    )
    .await
    .json()
    .await
    .unwrap()
}

async fn until_state(app: &TestApp, id: i64, state: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rotation(app, id).await;
        if r["state"] == state {
            return r;
        }
        assert!(Instant::now() < end, "never {state}: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_readme_vault_walkthrough_works_verbatim() {
    let bao = Bao::spawn().await;
    bao.put_key_with(KEY, OPENAI_KEY, &[("billing_owner", "team-a")])
        .await;
    // Paced like production: the walkthrough's last command aborts the rotation it started.
    let app = app(bao.secrets_toml("tollgate/providers"), "").await;
    let tools = tools();
    let mut env = cli_env(&app);
    env.push(("VAULT_ADDR", bao.addr.clone()));
    env.push(("VAULT_TOKEN", bao.token.clone()));
    env.push(("BAO_ADDR", bao.addr.clone()));
    env.push(("BAO_TOKEN", bao.token.clone()));
    let out = run(&walkthrough("**Vault / OpenBao**"), tools.path(), &env).await;
    // `rotations 1` showed the history, and the abort rolled the rotation back: version 1
    // serves, version 2 is withdrawn.
    assert!(out.contains("staged"), "{out}");
    let r = until_state(&app, 1, "rolled_back").await;
    assert_eq!(
        (r["from_version"].as_str(), r["to_version"].as_str()),
        (Some("1"), Some("2"))
    );
    let meta = bao
        .api(Method::GET, &format!("secret/metadata/{KEY}"), None)
        .await["data"]["custom_metadata"]
        .clone();
    assert_eq!(meta["tollgate_version"], "1");
    assert_eq!(meta["tollgate_rejected"], "2");
    assert_eq!(meta["billing_owner"], "team-a", "patch kept the metadata");
}

#[tokio::test]
async fn the_readme_aws_walkthrough_works_verbatim() {
    let moto = Moto::spawn().await;
    moto.create(
        KEY,
        &json!({"api_key": OPENAI_KEY}).to_string(),
        &[("billing_owner", "team-a")],
    )
    .await;
    let app = app(
        moto.secrets_toml("tollgate/providers/"),
        "[rotation]\ntick = \"100ms\"\nlease = \"1s\"\ncanary_duration = \"500ms\"\ncanary_min_requests = 1\ndrain = \"300ms\"\n",
    )
    .await;
    let tools = tools();
    let mut env = cli_env(&app);
    env.push(("AWS_ENDPOINT_URL", moto.endpoint.clone()));
    env.push(("AWS_DEFAULT_REGION", "us-east-1".to_owned()));
    let out = run(&walkthrough("**AWS Secrets Manager**"), tools.path(), &env).await;
    assert!(out.contains("staged") || out.contains("tested"), "{out}");
    // Traffic lets the canary judge; no request fails and the rotation ends with the new key
    // current.
    let token = app.token_for("team-a").await;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .post(
                "/v1/chat/completions",
                &token,
                &TestApp::chat("gpt-test", "hi"),
            )
            .await;
        assert_eq!(r.status(), 200);
        let rot = rotation(&app, 1).await;
        if rot["state"] == "retired" {
            break;
        }
        assert!(Instant::now() < end, "never retired: {rot:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Asked by label: moto answers an unlabelled GetSecretValue with the version the secret was
    // created with, not AWSCURRENT as AWS does.
    let value = moto
        .client()
        .get_secret_value()
        .secret_id(KEY)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    assert!(
        value.secret_string().unwrap().contains(README_NEW_KEY),
        "{:?}",
        value.secret_string()
    );
}
