//! The `tollgate` binary's offline commands, run as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_check_accepts_the_examples_and_reports_file_line_reason() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (code, out, _) = tollgate(&["policy", "check", examples]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (5 models, 1 bindings)"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "pools:\n  p: {}\nbindings:\n  - name: b\n    match: { namespace: x }\n    team: t\n    pool: p\n    models: [ghost]\n",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["policy", "check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    let file = dir.path().join("bad.yaml");
    assert!(
        out.contains(&format!("{}:8: model ghost is not defined", file.display())),
        "{out}"
    );
}

#[test]
fn serve_check_config_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tollgate.toml");
    std::fs::write(
        &cfg,
        "public_url = \"https://t\"\ndatabase_url = \"mysql://x\"\n",
    )
    .unwrap();
    let (code, _, err) = tollgate(&["serve", "--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("database_url"), "{err}");
    let (code, _, err) = tollgate(&["serve", "--config", "/nonexistent.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.toml"), "{err}");
    // Issuer settings are checked too, without fetching anything.
    std::fs::write(
        &cfg,
        "public_url = \"https://t\"\ndatabase_url = \"sqlite::memory:\"\n[signing]\nkey_encryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n[secrets]\npath = \"keys.yaml\"\n[[issuers]]\nname = \"c\"\nissuer = \"http://issuer.example\"\nbearer_token_file = \"/t\"\n",
    )
    .unwrap();
    let (code, _, err) = tollgate(&["serve", "--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("issuers[0].bearer_token_file"), "{err}");
}

#[test]
fn dev_workload_token_is_a_kubernetes_shaped_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = tollgate(&[
        "dev",
        "workload-token",
        "--namespace",
        "demo",
        "--service-account",
        "app",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    assert_eq!(token.split('.').count(), 3);
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:demo:app");
    assert_eq!(claims["aud"][0], "tollgate");
    assert_eq!(claims["kubernetes.io"]["namespace"], "demo");
}

#[test]
fn admin_keys_lists_the_inventory_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        "keys:\n  - id: openai-team-a\n    provider: openai\n    api_key: sk-cli-secret-1\n    billing_owner: team-a\n    allowed_models: [gpt-4o-mini]\n",
    )
    .unwrap();
    let cfg = dir.path().join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "public_url = \"https://t\"\ndatabase_url = \"sqlite://{}\"\n[signing]\nkey_encryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n[secrets]\npath = \"{}\"\n",
            dir.path().join("t.db").display(),
            keys.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) = tollgate(&["admin", "keys", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no provider keys recorded yet"), "{out}");
    let (code, out, err) = tollgate(&["admin", "keys", "--config", c, "--refresh"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains("openai-team-a") && out.contains("team-a") && out.contains("active"),
        "{out}"
    );
    let (code, out, _) = tollgate(&["admin", "keys", "--config", c, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["id"], "openai-team-a");
    assert_eq!(v[0]["versions"][0]["stage"], "current");
    assert_eq!(v[0]["allowed_models"], "gpt-4o-mini");
    assert!(!out.contains("sk-cli-secret-1") && !err.contains("sk-cli-secret-1"));
}

#[test]
fn admin_pauses_lists_and_unpause_lifts_a_pause_of_the_anomaly_guard() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let cfg = dir.path().join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "public_url = \"https://t\"\ndatabase_url = \"sqlite://{}\"\n[signing]\nkey_encryption_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n[secrets]\nfrom_env = true\n",
            db.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) = tollgate(&["admin", "pauses", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing is paused"), "{out}");

    let url = format!("sqlite://{}", db.display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let s = tollgate::store::Store::connect(&url, 1).await.unwrap();
        s.pause(
            tollgate::store::PauseKind::Subject,
            "system:serviceaccount:ml:loop",
            "spent $41.20 in the last 5m, 38x its baseline",
            1_800_000_000_000,
        )
        .await
        .unwrap()
        .unwrap();
        s.close().await;
    });
    let (code, out, _) = tollgate(&["admin", "pauses", "--config", c]);
    assert_eq!(code, 0);
    assert!(out.starts_with("KIND"), "{out}");
    assert!(
        out.contains("subject")
            && out.contains("system:serviceaccount:ml:loop")
            && out.contains("38x"),
        "{out}"
    );

    let (code, _, err) = tollgate(&["admin", "unpause", "--config", c, "--key", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("provider_key nope is not paused"), "{err}");
    let (code, _, err) = tollgate(&["admin", "unpause", "--config", c]);
    assert_eq!(code, 2, "a target is required: {err}");
    let (code, out, err) = tollgate(&[
        "admin",
        "unpause",
        "--config",
        c,
        "--subject",
        "system:serviceaccount:ml:loop",
        "--by",
        "oncall",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lifted the pause of subject system:serviceaccount:ml:loop"),
        "{out}"
    );
    let (_, out, _) = tollgate(&["admin", "pauses", "--config", c]);
    assert!(out.contains("nothing is paused"), "{out}");
    let (_, out, _) = tollgate(&["admin", "pauses", "--config", c, "--lifted", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["lifted_by"], "oncall");
    assert_eq!(v[0]["kind"], "subject");

    // The lift is on the audit log, which verifies and exports as JSON lines.
    let (code, out, err) = tollgate(&["audit", "verify", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 chains, 3 entries") && out.contains("ok: the audit log is intact"),
        "{out}"
    );
    let (code, out, err) = tollgate(&["audit", "export", "--config", c]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["chain.start", "pause.lifted", "chain.end"]);
    assert_eq!(lines[1]["actor"], "oncall");
    assert_eq!(lines[1]["detail"]["via"], "cli");
    let (code, out, _) = tollgate(&[
        "audit",
        "export",
        "--config",
        c,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = tollgate(&["audit", "export", "--config", c, "--since", "last tuesday"]);
    assert_ne!(code, 0);
    assert!(err.contains("--since"), "{err}");

    // Someone with the file rewrites an entry: verify names it and exits 1.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for s in [
            "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET actor = 'someone-else' WHERE action = 'pause.lifted'",
        ] {
            sqlx::query(s).execute(&pool).await.unwrap();
        }
    });
    let (code, out, _) = tollgate(&["audit", "verify", "--config", c]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN chain") && out.contains("at entry 1 (altered)"),
        "{out}"
    );
    let (code, out, _) = tollgate(&["audit", "verify", "--config", c, "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["problems"][0]["kind"], "altered");
    assert_eq!(report["problems"][0]["seq"], 1);
}

#[test]
fn dev_admin_token_is_a_person_token_for_the_admin_audience() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = tollgate(&[
        "dev",
        "admin-token",
        "--group",
        "sre",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            out.trim().split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "admin@example.com");
    assert_eq!(claims["aud"], serde_json::json!(["tollgate-admin"]));
    assert_eq!(claims["groups"], serde_json::json!(["sre"]));
}

#[test]
fn break_glass_token_prints_a_fresh_token_and_only_its_hash_is_kept() {
    use sha2::Digest;
    let (code, out, err) = tollgate(&["admin", "break-glass-token", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(
        token.starts_with("tgbg_") && token.len() == 5 + 43,
        "{token}"
    );
    assert_eq!(
        v["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    );
    let (_, again, _) = tollgate(&["admin", "break-glass-token", "--json"]);
    assert_ne!(out, again);
}
