//! The admin API as an operator uses it: OIDC callers mapped to roles by policy, the
//! break-glass token, 401 vs 403 on every documented operation (the role matrix is read from
//! the served OpenAPI document, so the document, the router and the checks cannot drift),
//! revocations, keys, tokens and pauses, and the bad inputs, each answered with an RFC 9457
//! problem.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::app::{OPENAI_KEY, Options, POLICY, TestApp, spawn_app_with};
use support::db::{TestDbKind, kinds};
use tollgate::store::PauseKind;

const ROLES: &str = r#"
roles:
  - role: admin
    subjects: ["root@example.com"]
  - role: security
    groups: ["sec-team"]
  - role: responder
    subjects: ["resp@example.com"]
  - role: finops
    subjects: ["fin@example.com"]
  - role: viewer
    subjects: ["*@viewers.example.com"]
"#;

/// A caller per role, and one whom policy grants nothing.
const CALLERS: [(&str, &str, &[&str]); 6] = [
    ("admin", "root@example.com", &[]),
    ("security", "sam@example.com", &["sec-team"]),
    ("responder", "resp@example.com", &[]),
    ("finops", "fin@example.com", &[]),
    ("viewer", "val@viewers.example.com", &[]),
    ("none", "mallory@example.com", &["other"]),
];

/// A break-glass token and its SHA-256 (made once by `tollgate admin break-glass-token`).
const BREAK_GLASS: &str = "tgbg_8k2lZ0bqYc1x0h3m9TAtq3XcQbmH8nJvU5w6ZpRk1sE";

async fn app(kind: TestDbKind) -> TestApp {
    let hash = hex_sha256(BREAK_GLASS);
    spawn_app_with(
        kind,
        Options {
            policy: Some(format!("{POLICY}{ROLES}")),
            admin: Some(format!("break_glass_sha256 = \"{hash}\"")),
            ..Options::default()
        },
    )
    .await
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn token(app: &TestApp, role: &str) -> String {
    let (_, sub, groups) = CALLERS.iter().find(|c| c.0 == role).unwrap();
    app.admin_token(sub, groups)
}

/// Assert an RFC 9457 problem of `status` and return its body.
async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status, "status");
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "content type"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], status, "{v}");
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("https://tollgate.dev/problems/"),
        "{v}"
    );
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    v
}

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let r = app.admin(Method::GET, path, Some(token), None).await;
    assert_eq!(r.status(), 200, "GET {path}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

/// Every documented operation, called by every role with harmless arguments (unknown ids,
/// empty bodies): a role the document names never gets 401/403, any other role gets 403, no
/// credential gets 401 with a Bearer challenge. Also: the document lists exactly the
/// operations below, and each one is routed (never a 404/405 from the router).
#[tokio::test]
async fn every_operation_enforces_the_roles_its_document_names() {
    let app = app(TestDbKind::Sqlite).await;
    let doc = get_json(&app, "/admin/v1/openapi.json", &token(&app, "viewer")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let roles: BTreeSet<&str> = op["x-tollgate-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} names no roles"))
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            ops.insert(format!("{} {path}", method.to_uppercase()));
            let concrete = path
                .replace("{revocation_id}", "999999")
                .replace("{pause_id}", "999999")
                .replace("{rotation_id}", "999999")
                .replace("{id}", "no-such-key");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method == Method::POST).then(|| json!({}));

            let r = app
                .admin(method.clone(), &concrete, None, body.as_ref())
                .await;
            assert_eq!(
                r.headers()["www-authenticate"],
                "Bearer realm=\"tollgate-admin\""
            );
            problem(r, 401).await;

            for (role, _, _) in CALLERS {
                let r = app
                    .admin(
                        method.clone(),
                        &concrete,
                        Some(&token(&app, role)),
                        body.as_ref(),
                    )
                    .await;
                let status = r.status().as_u16();
                if roles.contains(role) {
                    assert!(
                        ![401, 403, 404, 405].contains(&status)
                            || (status == 404 && concrete.contains("999999"))
                            || (status == 404 && concrete.contains("no-such-key")),
                        "{role} on {method} {concrete}: {status}"
                    );
                } else {
                    let v = problem(r, 403).await;
                    assert_eq!(v["title"], "forbidden");
                }
            }
        }
    }
    let expected: BTreeSet<String> = [
        "GET /admin/v1/whoami",
        "GET /admin/v1/openapi.json",
        "POST /admin/v1/revocations",
        "GET /admin/v1/revocations",
        "GET /admin/v1/revocations/{revocation_id}",
        "DELETE /admin/v1/revocations/{revocation_id}",
        "GET /admin/v1/keys",
        "POST /admin/v1/keys/{id}/disable",
        "POST /admin/v1/keys/{id}/enable",
        "POST /admin/v1/keys/{id}/rotate",
        "GET /admin/v1/rotations",
        "GET /admin/v1/rotations/{rotation_id}",
        "POST /admin/v1/rotations/{rotation_id}/abort",
        "GET /admin/v1/tokens",
        "GET /admin/v1/pauses",
        "DELETE /admin/v1/pauses/{pause_id}",
        "GET /admin/v1/audit",
        "GET /admin/v1/audit/verify",
        "GET /admin/v1/spend",
        "GET /admin/v1/budgets",
        "POST /admin/v1/budgets/{pool}/increases",
        "GET /admin/v1/budgets/increases",
        "POST /admin/v1/budgets/increases/{increase_id}/approve",
        "POST /admin/v1/budgets/increases/{increase_id}/deny",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(ops, expected);
    // A route the document does not know is not served either.
    let r = app
        .admin(
            Method::GET,
            "/admin/v1/secrets",
            Some(&token(&app, "admin")),
            None,
        )
        .await;
    problem(r, 404).await;
}

/// Credentials that are not admin credentials: workload tokens, Tollgate tokens, forged,
/// expired, wrong audience, wrong scheme, garbage, a wrong break-glass token.
#[tokio::test]
async fn only_admin_credentials_authenticate() {
    let app = app(TestDbKind::Sqlite).await;
    let who = |t: String| {
        let app = &app;
        async move {
            app.admin(Method::GET, "/admin/v1/whoami", Some(&t), None)
                .await
        }
    };
    let now = tollgate::clock::now_secs();
    let expired = app.issuer.sign(&json!({
        "iss": app.issuer.url, "sub": "root@example.com", "aud": ["tollgate-admin"],
        "iat": now - 7200, "exp": now - 3600,
    }));
    let mut forged = app.admin_token("resp@example.com", &[]);
    forged.replace_range(forged.len() - 6.., "AAAAAA");
    let elevated = {
        // A payload swapped for another subject's, signature kept.
        let mine = app.admin_token("val@viewers.example.com", &[]);
        let root = app.admin_token("root@example.com", &[]);
        let m: Vec<&str> = mine.split('.').collect();
        let r: Vec<&str> = root.split('.').collect();
        format!("{}.{}.{}", m[0], r[1], m[2])
    };
    let cases = [
        ("workload token", app.workload_token("team-a", "app")),
        ("tollgate token", app.token_for("team-a").await),
        ("expired", expired),
        ("bad signature", forged),
        ("swapped payload", elevated),
        ("garbage", "not-a-jwt".to_owned()),
        ("wrong break-glass", format!("{BREAK_GLASS}x")),
    ];
    for (what, t) in cases {
        let r = who(t).await;
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{what}"
        );
        let v = problem(r, 401).await;
        assert_eq!(v["title"], "invalid_token", "{what}: {v}");
    }
    for header in ["Basic cm9vdDpyb290", "Bearer", "Bearer    "] {
        let r = app
            .http
            .get(format!("{}/admin/v1/whoami", app.url))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        problem(r, 401).await;
    }
    // The no-role caller learns why.
    let v = problem(who(token(&app, "none")).await, 403).await;
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("mallory@example.com") && detail.contains("none"),
        "{detail}"
    );

    let me = who(token(&app, "security")).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(
        me,
        json!({"subject": "sam@example.com", "via": "oidc", "issuer": "idp",
               "groups": ["sec-team"], "roles": ["security"]})
    );
}

#[tokio::test]
async fn the_break_glass_token_is_admin_and_counted() {
    let app = app(TestDbKind::Sqlite).await;
    let before = app
        .metrics()
        .await
        .value("tollgate_admin_break_glass_uses_total")
        .unwrap();
    let me = get_json(&app, "/admin/v1/whoami", BREAK_GLASS).await;
    assert_eq!(me["subject"], "break-glass");
    assert_eq!(me["via"], "break_glass");
    assert_eq!(me["roles"], json!(["admin"]));
    let r = app
        .admin(
            Method::POST,
            "/admin/v1/revocations",
            Some(BREAK_GLASS),
            Some(&json!({"kind": "team", "id": "a", "reason": "bootstrap drill"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["created_by"], "break-glass");
    let after = app
        .metrics()
        .await
        .value("tollgate_admin_break_glass_uses_total")
        .unwrap();
    assert_eq!(after - before, 2.0);

    // Without a configured hash the prefix alone opens nothing.
    let bare = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            policy: Some(format!("{POLICY}{ROLES}")),
            admin: Some(String::new()),
            ..Options::default()
        },
    )
    .await;
    let r = bare
        .admin(Method::GET, "/admin/v1/whoami", Some(BREAK_GLASS), None)
        .await;
    problem(r, 401).await;
}

/// An admin issuer that shares an audience with a workload issuer of the same `iss` would make
/// every workload token an admin credential: refused at start, naming the field.
#[tokio::test]
async fn an_admin_audience_shared_with_workloads_is_refused_at_start() {
    let text = r#"
listen = "127.0.0.1:0"
public_url = "http://tollgate.test"
database_url = "sqlite::memory:"
[signing]
key_encryption_key = "3q2+78r+ur7erb7v3q2+78r+ur7erb7v3q2+78r+ur4="
[secrets]
path = "/nonexistent"
[[issuers]]
name = "cluster"
issuer = "https://kubernetes.default.svc"
[[admin.issuers]]
name = "cluster-admin"
issuer = "https://kubernetes.default.svc"
"#;
    let cfg = tollgate::config::Config::from_toml_str(text).unwrap();
    let err = match tollgate::app::Application::build(cfg).await {
        Ok(_) => panic!("started with a shared audience"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("admin.issuers[0].audiences") && err.contains("tollgate-admin"),
        "{err}"
    );
}

async fn chat_status(app: &TestApp, token: &str) -> (u16, Value) {
    let r = app
        .post(
            "/v1/chat/completions",
            token,
            &TestApp::chat("gpt-test", "hi"),
        )
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Revoke, list, read, lift — on SQLite and PostgreSQL — and the bad inputs of each.
#[tokio::test]
async fn revocations_cut_off_and_lift() {
    for kind in kinds() {
        let app = app(kind).await;
        let resp = token(&app, "responder");
        let sec = token(&app, "security");
        let workload = app.token_for("team-a").await;
        assert_eq!(chat_status(&app, &workload).await.0, 200);

        let subject = "system:serviceaccount:team-a:app";
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(&resp),
                Some(&json!({"kind": "subject", "id": subject, "reason": "leaked in CI log"})),
            )
            .await;
        assert_eq!(r.status(), 201, "{kind:?}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let rec: Value = r.json().await.unwrap();
        let id = rec["revocation_id"].as_i64().unwrap();
        assert_eq!(location, format!("/admin/v1/revocations/{id}"));
        assert_eq!(rec["kind"], "subject");
        assert_eq!(rec["id"], subject);
        assert_eq!(rec["created_by"], "resp@example.com");
        assert_eq!(rec["expires_at"], Value::Null);
        assert!(tollgate::clock::parse_rfc3339(rec["created_at"].as_str().unwrap()).is_some());

        // In force at once on this replica: the token is refused, no new one is minted.
        let (status, body) = chat_status(&app, &workload).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("token_revoked"))
        );
        let r = app.exchange(&app.workload_token("team-a", "app")).await;
        assert_eq!(r.status(), 400);

        let one = get_json(&app, &location, &token(&app, "viewer")).await;
        assert_eq!(one, rec);
        let all = get_json(&app, "/admin/v1/revocations?kind=subject", &resp).await;
        assert_eq!(all["revocations"], json!([rec]));
        let none = get_json(&app, "/admin/v1/revocations?kind=team", &resp).await;
        assert_eq!(none["revocations"], json!([]));

        // A responder cuts; only security or admin restores.
        let r = app
            .admin(Method::DELETE, &location, Some(&resp), None)
            .await;
        problem(r, 403).await;
        let r = app.admin(Method::DELETE, &location, Some(&sec), None).await;
        assert_eq!(r.status(), 204);
        assert_eq!(chat_status(&app, &workload).await.0, 200);
        problem(
            app.admin(Method::DELETE, &location, Some(&sec), None).await,
            404,
        )
        .await;
        problem(
            app.admin(Method::GET, &location, Some(&sec), None).await,
            404,
        )
        .await;

        // A token revocation is final.
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(&resp),
                Some(&json!({"kind": "jti", "id": "0192-jti", "reason": "r",
                             "expires_at": "2099-01-01T00:00:00+02:00"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let rec: Value = r.json().await.unwrap();
        assert_eq!(rec["expires_at"], "2098-12-31T22:00:00.000Z");
        let path = format!("/admin/v1/revocations/{}", rec["revocation_id"]);
        problem(
            app.admin(Method::DELETE, &path, Some(&sec), None).await,
            409,
        )
        .await;

        // Bad inputs: each a 400 (or 404 for a target that does not exist) naming the field.
        let bad: [(Value, u16, &str); 11] = [
            (
                json!({"kind": "planet", "id": "x", "reason": "r"}),
                400,
                "unknown variant",
            ),
            (json!({"id": "x", "reason": "r"}), 400, "kind"),
            (
                json!({"kind": "subject", "id": " ", "reason": "r"}),
                400,
                "id must not be empty",
            ),
            (
                json!({"kind": "subject", "id": "x", "reason": ""}),
                400,
                "reason",
            ),
            (
                json!({"kind": "subject", "id": "x".repeat(600), "reason": "r"}),
                400,
                "at most",
            ),
            (
                json!({"kind": "subject", "id": "a\u{0}b", "reason": "r"}),
                400,
                "control",
            ),
            (
                json!({"kind": "subject", "id": "x", "reason": "r", "expires_at": "tomorrow"}),
                400,
                "RFC 3339",
            ),
            (
                json!({"kind": "subject", "id": "x", "reason": "r", "expires_at": "2001-01-01T00:00:00Z"}),
                400,
                "future",
            ),
            (
                json!({"kind": "subject", "id": "x", "reason": "r", "extra": 1}),
                400,
                "unknown field",
            ),
            (
                json!({"kind": "team", "id": "no-such-team", "reason": "r"}),
                404,
                "no-such-team",
            ),
            (
                json!({"kind": "provider_key", "id": "no-such-key", "reason": "r"}),
                404,
                "no-such-key",
            ),
        ];
        for (body, status, needle) in bad {
            let r = app
                .admin(
                    Method::POST,
                    "/admin/v1/revocations",
                    Some(&resp),
                    Some(&body),
                )
                .await;
            let v = problem(r, status).await;
            assert!(
                v["detail"].as_str().unwrap().contains(needle),
                "{body}: {v}"
            );
        }
        for (path, needle) in [
            ("/admin/v1/revocations/abc", "abc"),
            ("/admin/v1/revocations?kind=planet", "planet"),
            ("/admin/v1/revocations?color=red", "color"),
        ] {
            let v = problem(app.admin(Method::GET, path, Some(&resp), None).await, 400).await;
            assert!(
                v["detail"].as_str().unwrap().contains(needle),
                "{path}: {v}"
            );
        }
        let raw = |ct: &'static str, body: Vec<u8>| {
            app.http
                .post(format!("{}/admin/v1/revocations", app.url))
                .bearer_auth(&resp)
                .header("content-type", ct)
                .body(body)
                .send()
        };
        problem(
            raw("text/plain", b"kind=subject".to_vec()).await.unwrap(),
            415,
        )
        .await;
        problem(
            raw("application/json", b"{\"kind\":".to_vec())
                .await
                .unwrap(),
            400,
        )
        .await;
        problem(
            raw("application/json", vec![b' '; 100 * 1024])
                .await
                .unwrap(),
            413,
        )
        .await;
        app.stop().await;
    }
}

/// The inventory never shows a secret; disabling every OpenAI key stops OpenAI traffic on
/// this replica at once, enabling brings it back; ids with `/` travel percent-encoded.
#[tokio::test]
async fn keys_are_listed_disabled_and_enabled() {
    let app = app(TestDbKind::Sqlite).await;
    let resp = token(&app, "responder");
    let sec = token(&app, "security");
    let r = app
        .admin(
            Method::GET,
            "/admin/v1/keys",
            Some(&token(&app, "finops")),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(OPENAI_KEY), "{text}");
    let keys: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["anthropic-team-a", "openai-shared", "openai-team-a"]);
    let k = &keys["keys"][2];
    assert_eq!(
        (
            &k["provider"],
            &k["billing_owner"],
            &k["state"],
            &k["disabled"]
        ),
        (
            &json!("openai"),
            &json!("team-a"),
            &json!("active"),
            &json!(false)
        )
    );

    let workload = app.token_for("team-a").await;
    for id in ["openai-team-a", "openai-shared"] {
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/v1/keys/{id}/disable"),
                Some(&resp),
                Some(&json!({"reason": "leaked"})),
            )
            .await;
        assert_eq!(r.status(), 201, "{id}");
        let rec: Value = r.json().await.unwrap();
        assert_eq!(rec["kind"], "provider_key");
    }
    // Disabling twice answers the revocation in force.
    let r = app
        .admin(
            Method::POST,
            "/admin/v1/keys/openai-shared/disable",
            Some(&resp),
            Some(&json!({"reason": "again"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (status, body) = chat_status(&app, &workload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_provider_key"))
    );
    let listed = get_json(&app, "/admin/v1/keys", &resp).await;
    assert_eq!(listed["keys"][2]["disabled"], true);

    problem(
        app.admin(
            Method::POST,
            "/admin/v1/keys/openai-shared/enable",
            Some(&resp),
            None,
        )
        .await,
        403,
    )
    .await;
    for id in ["openai-team-a", "openai-shared"] {
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/v1/keys/{id}/enable"),
                Some(&sec),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, json!({"id": id, "lifted": 1}));
    }
    assert_eq!(chat_status(&app, &workload).await.0, 200);

    let v = problem(
        app.admin(
            Method::POST,
            "/admin/v1/keys/openai%2Fprod%2Fmain/disable",
            Some(&resp),
            Some(&json!({"reason": "r"})),
        )
        .await,
        404,
    )
    .await;
    assert!(
        v["detail"].as_str().unwrap().contains("openai/prod/main"),
        "{v}"
    );
    let v = problem(
        app.admin(
            Method::POST,
            "/admin/v1/keys/openai-team-a/disable",
            Some(&resp),
            Some(&json!({})),
        )
        .await,
        400,
    )
    .await;
    assert!(v["detail"].as_str().unwrap().contains("reason"), "{v}");
}

fn jti_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_are_listed_with_their_state() {
    for kind in kinds() {
        let app = app(kind).await;
        let viewer = token(&app, "viewer");
        let first = jti_of(&app.token_for("team-a").await);
        let second = jti_of(&app.token_for("team-a").await);
        let other = jti_of(&app.token_for("slow-lane").await);
        let subject = "system:serviceaccount:team-a:app";
        let path = format!("/admin/v1/tokens?subject={}", urlencode(subject));
        let mut listed = Value::Null;
        for _ in 0..100 {
            listed = get_json(&app, &path, &viewer).await;
            if listed["tokens"].as_array().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let jtis: BTreeSet<&str> = listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["jti"].as_str().unwrap())
            .collect();
        assert_eq!(
            jtis,
            BTreeSet::from([first.as_str(), second.as_str()]),
            "{kind:?}"
        );
        let t = &listed["tokens"][0];
        assert_eq!(
            (&t["team"], &t["pool"], &t["binding"]),
            (&json!("a"), &json!("main"), &json!("team-a"))
        );
        assert_eq!(
            (&t["expired"], &t["revoked"]),
            (&json!(false), &Value::Null)
        );

        let r = app
            .admin(
                Method::POST,
                "/admin/v1/revocations",
                Some(&token(&app, "responder")),
                Some(&json!({"kind": "jti", "id": first, "reason": "r"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let listed = get_json(&app, &path, &viewer).await;
        for t in listed["tokens"].as_array().unwrap() {
            let want = if t["jti"] == first.as_str() {
                json!("jti")
            } else {
                Value::Null
            };
            assert_eq!(t["revoked"], want, "{t}");
        }
        let all = get_json(&app, "/admin/v1/tokens?limit=1", &viewer).await;
        assert_eq!(all["tokens"].as_array().unwrap().len(), 1);
        let everyone = get_json(&app, "/admin/v1/tokens?include_expired=true", &viewer).await;
        assert!(
            everyone["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["jti"] == other.as_str()),
            "{everyone}"
        );
        for q in ["limit=0", "limit=5000", "limit=-1", "subject=x&sort=asc"] {
            let r = app
                .admin(
                    Method::GET,
                    &format!("/admin/v1/tokens?{q}"),
                    Some(&viewer),
                    None,
                )
                .await;
            problem(r, 400).await;
        }
        app.stop().await;
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn pauses_are_listed_and_lifted() {
    let app = app(TestDbKind::Sqlite).await;
    let workload = app.token_for("team-a").await;
    let now = tollgate::clock::now_ms();
    let subject = "system:serviceaccount:team-a:app";
    let paused = app
        .store()
        .pause(
            PauseKind::Subject,
            subject,
            "spend ran away: $12 in 5 min",
            now,
        )
        .await
        .unwrap()
        .unwrap();
    app.state.revocations.sync().await.unwrap();
    let (status, body) = chat_status(&app, &workload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("workload_paused"))
    );

    let viewer = token(&app, "viewer");
    let listed = get_json(&app, "/admin/v1/pauses", &viewer).await;
    assert_eq!(listed["pauses"].as_array().unwrap().len(), 1);
    let p = &listed["pauses"][0];
    assert_eq!(
        (&p["pause_id"], &p["kind"], &p["id"]),
        (&json!(paused.id), &json!("subject"), &json!(subject))
    );

    let path = format!("/admin/v1/pauses/{}", paused.id);
    problem(
        app.admin(Method::DELETE, &path, Some(&viewer), None).await,
        403,
    )
    .await;
    let r = app
        .admin(Method::DELETE, &path, Some(&token(&app, "finops")), None)
        .await;
    assert_eq!(r.status(), 200);
    let lifted: Value = r.json().await.unwrap();
    assert_eq!(lifted["lifted_by"], "fin@example.com");
    assert!(lifted["lifted_at"].is_string());
    assert_eq!(chat_status(&app, &workload).await.0, 200);

    problem(
        app.admin(Method::DELETE, &path, Some(&token(&app, "finops")), None)
            .await,
        409,
    )
    .await;
    problem(
        app.admin(
            Method::DELETE,
            "/admin/v1/pauses/424242",
            Some(&token(&app, "admin")),
            None,
        )
        .await,
        404,
    )
    .await;
    assert_eq!(
        get_json(&app, "/admin/v1/pauses", &viewer).await["pauses"],
        json!([])
    );
    let with_lifted = get_json(&app, "/admin/v1/pauses?lifted=true", &viewer).await;
    assert_eq!(with_lifted["pauses"].as_array().unwrap().len(), 1);
    problem(
        app.admin(
            Method::GET,
            "/admin/v1/pauses?lifted=maybe",
            Some(&viewer),
            None,
        )
        .await,
        400,
    )
    .await;
}

/// `tollgate admin …` run as a responder would, against a running broker: the token comes
/// from the environment or a file, tables by default, `--json` for scripts, exit 2 when the
/// credential is refused and 1 for any other problem.
async fn cli(app: &TestApp, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("admin")
        .args(args)
        .env("TOLLGATE_URL", &app.url)
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("TOLLGATE_ADMIN_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI hung")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_revokes_lists_and_lifts_through_the_api() {
    let app = app(TestDbKind::Sqlite).await;
    let responder = token(&app, "responder");
    let workload = app.token_for("team-a").await;
    assert_eq!(chat_status(&app, &workload).await.0, 200);

    let (code, out, err) = cli(&app, Some(&responder), &["whoami"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resp@example.com"), "{out}");
    assert!(out.contains("responder"), "{out}");

    let subject = "system:serviceaccount:team-a:app";
    let (code, out, err) = cli(
        &app,
        Some(&responder),
        &[
            "revoke",
            "--kind",
            "subject",
            "--id",
            subject,
            "--reason",
            "leaked in CI",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ID") && out.contains(subject), "{out}");
    assert_eq!(chat_status(&app, &workload).await.0, 401);

    let (code, out, err) = cli(&app, Some(&responder), &["revocations", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let records = listed["revocations"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{out}");
    assert_eq!(records[0]["created_by"], "resp@example.com");
    let id = records[0]["revocation_id"].as_i64().unwrap().to_string();

    // The issued-token inventory is written in the background (every 50 ms here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = cli(&app, Some(&responder), &["tokens", "--subject", subject]).await;
        assert_eq!(code, 0, "{err}");
        if out.contains("revoked (subject)") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A responder may revoke but not restore: refused credential → exit 2, nothing changes.
    let (code, _, err) = cli(&app, Some(&responder), &["lift", &id]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("403"), "{err}");

    // The admin lifts it with the token in a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{}\n", token(&app, "admin"))).unwrap();
    let path = file.path().to_str().unwrap();
    let (code, out, err) = cli(&app, None, &["lift", "--token-file", path, &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("lifted revocation {id}")), "{out}");
    let (code, out, _) = cli(&app, None, &["revocations", "--token-file", path]).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing is revoked"), "{out}");

    // Bad input is the API's problem detail and exit 1; no credential, a clear hint and no call.
    let (code, _, err) = cli(
        &app,
        Some(&responder),
        &["revoke", "--kind", "galaxy", "--id", "x", "--reason", "r"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("400"), "{err}");
    let (code, _, err) = cli(&app, None, &["whoami"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("TOLLGATE_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = cli(&app, Some("not-a-token"), &["whoami"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("not-a-token"), "{err}");
}

#[tokio::test]
async fn the_cli_lists_disables_and_enables_keys_and_lifts_pauses_through_the_api() {
    let app = app(TestDbKind::Sqlite).await;
    let responder = token(&app, "responder");
    let admin = token(&app, "admin");
    let workload = app.token_for("team-a").await;
    assert_eq!(chat_status(&app, &workload).await.0, 200);

    let (code, out, err) = cli(&app, Some(&responder), &["keys"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID "), "{out}");
    for id in ["anthropic-team-a", "openai-shared", "openai-team-a"] {
        assert!(out.contains(id), "{out}");
    }
    assert!(!out.contains(OPENAI_KEY), "{out}");

    for id in ["openai-team-a", "openai-shared"] {
        let (code, out, err) = cli(
            &app,
            Some(&responder),
            &["disable-key", id, "--reason", "pasted in a ticket"],
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("disabled {id}")), "{out}");
    }
    let (status, body) = chat_status(&app, &workload).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_provider_key"))
    );
    let (code, out, _) = cli(&app, Some(&responder), &["keys", "--json"]).await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["keys"][2]["disabled"], true, "{out}");
    let (code, out, _) = cli(&app, Some(&responder), &["keys"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("active, disabled"), "{out}");

    // Restoring needs security or admin; an unknown key is the API's 404.
    let (code, _, err) = cli(&app, Some(&responder), &["enable-key", "openai-team-a"]).await;
    assert_eq!(code, 2, "{err}");
    for id in ["openai-team-a", "openai-shared"] {
        let (code, out, err) = cli(&app, Some(&admin), &["enable-key", id]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("enabled {id}")), "{out}");
    }
    let (code, out, _) = cli(&app, Some(&admin), &["enable-key", "openai-shared"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("was not disabled"), "{out}");
    let (code, _, err) = cli(
        &app,
        Some(&responder),
        &["disable-key", "no-such-key", "--reason", "r"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
    assert_eq!(chat_status(&app, &workload).await.0, 200);

    // The anomaly guard's pause, listed and lifted by the command its alert prints.
    let subject = "system:serviceaccount:team-a:app";
    app.store()
        .pause(
            PauseKind::Subject,
            subject,
            "spend ran away",
            tollgate::clock::now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    app.state.revocations.sync().await.unwrap();
    assert_eq!(chat_status(&app, &workload).await.0, 403);
    let (code, out, err) = cli(&app, Some(&responder), &["pauses"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(subject) && out.contains("spend ran away"),
        "{out}"
    );
    let (code, out, err) = cli(&app, Some(&responder), &["unpause", "--subject", subject]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lifted the pause"), "{out}");
    assert_eq!(chat_status(&app, &workload).await.0, 200);
    let (code, _, err) = cli(&app, Some(&responder), &["unpause", "--subject", subject]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not paused"), "{err}");
    let (code, out, _) = cli(&app, Some(&responder), &["pauses", "--lifted", "--json"]).await;
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["pauses"][0]["lifted_by"], "resp@example.com",
        "{out}"
    );
}

fn spent(
    id: &str,
    subject: &str,
    team: &str,
    pool: &str,
    model: &str,
    at: i64,
    cost: i64,
) -> tollgate::store::SpendRecord {
    tollgate::store::SpendRecord {
        request_id: id.into(),
        at,
        jti: "j".into(),
        subject: subject.into(),
        team: team.into(),
        pool: pool.into(),
        billing_owner: team.into(),
        provider: "openai".into(),
        provider_key_id: format!("key-{team}"),
        model: model.into(),
        upstream_model: model.into(),
        endpoint: "/v1/chat/completions".into(),
        stream: false,
        input_tokens: 100,
        output_tokens: 10,
        cached_input_tokens: 0,
        cost_micro_usd: cost,
        status: 200,
        latency_ms: 5,
        prompt_sha256: None,
        provider_key_version: None,
        requested_model: None,
        // Rows of gpt-test name their deployment; the others predate deployments.
        deployment: (model == "gpt-test").then(|| "east".into()),
    }
}

#[tokio::test]
async fn spend_is_grouped_as_json_and_csv_and_budgets_show_each_pool() {
    for kind in kinds() {
        let app = app(kind).await;
        let viewer = token(&app, "viewer");
        let day = tollgate::store::DAY_MS;
        let today = tollgate::clock::now_ms().div_euclid(day) * day;
        let rows = [
            spent(
                "r1",
                "system:serviceaccount:a:x",
                "a",
                "main",
                "gpt-test",
                today + 1_000,
                1_500_000,
            ),
            spent(
                "r2",
                "system:serviceaccount:a:y",
                "a",
                "main",
                "embed-test",
                today + 2_000,
                250_000,
            ),
            spent(
                "r3",
                "=HYPERLINK(\"x\")",
                "b",
                "tiny",
                "gpt-test",
                today + 3_000,
                40,
            ),
            spent(
                "r4",
                "system:serviceaccount:a:x",
                "a",
                "main",
                "gpt-test",
                today - day + 5,
                1_000_000,
            ),
        ];
        app.store().insert_spend(&rows).await.unwrap();
        let range = format!(
            "since={}&until={}",
            urlencode(&tollgate::clock::to_rfc3339(today - day)),
            urlencode(&tollgate::clock::to_rfc3339(today + day)),
        );

        let report = get_json(
            &app,
            &format!("/admin/v1/spend?group_by=team&{range}"),
            &viewer,
        )
        .await;
        assert_eq!(report["group_by"], "team");
        let groups = report["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["key"], "a");
        assert_eq!(groups[0]["requests"], 3);
        assert_eq!(groups[0]["cost_micro_usd"], 2_750_000);
        assert_eq!(groups[0]["cost_usd"], 2.75);
        assert_eq!(report["total"]["cost_micro_usd"], 2_750_040);
        assert_eq!(report["total"]["requests"], 4);
        let day_report = get_json(
            &app,
            &format!("/admin/v1/spend?group_by=day&{range}"),
            &viewer,
        )
        .await;
        let days: Vec<&str> = day_report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["key"].as_str().unwrap())
            .collect();
        let yesterday = tollgate::clock::to_rfc3339(today - day)[..10].to_owned();
        let this_day = tollgate::clock::to_rfc3339(today)[..10].to_owned();
        assert_eq!(days, [yesterday.as_str(), this_day.as_str()]);
        for (by, first, n) in [
            ("pool", "main", 2),
            ("subject", "system:serviceaccount:a:x", 3),
            ("key", "key-a", 2),
            ("model", "gpt-test", 2),
            ("deployment", "gpt-test/east", 2),
        ] {
            let r = get_json(
                &app,
                &format!("/admin/v1/spend?group_by={by}&{range}"),
                &viewer,
            )
            .await;
            let groups = r["groups"].as_array().unwrap();
            assert_eq!(
                (groups[0]["key"].as_str().unwrap(), groups.len()),
                (first, n),
                "{by}: {r}"
            );
        }
        // Only today (the default range is this UTC month, which may or may not hold yesterday).
        let since_today = format!("since={}", urlencode(&tollgate::clock::to_rfc3339(today)));
        let r = get_json(&app, &format!("/admin/v1/spend?{since_today}"), &viewer).await;
        assert_eq!(r["total"]["cost_micro_usd"], 1_750_040);

        let r = app
            .admin(
                Method::GET,
                &format!("/admin/v1/spend?group_by=subject&format=csv&{range}"),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
        let csv = r.text().await.unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "subject,requests,input_tokens,output_tokens,cached_input_tokens,cost_usd"
        );
        assert_eq!(lines[1], "system:serviceaccount:a:x,2,200,20,0,2.500000");
        // A spreadsheet must not run a subject as a formula.
        assert!(
            lines.contains(&"\"'=HYPERLINK(\"\"x\"\")\",1,100,10,0,0.000040"),
            "{csv}"
        );
        assert_eq!(*lines.last().unwrap(), "total,4,400,40,0,2.750040");
        let r = app
            .http
            .get(format!("{}/admin/v1/spend", app.url))
            .bearer_auth(&viewer)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().starts_with("team,requests"));
        for bad in [
            "group_by=colour",
            "since=yesterday",
            "format=xml",
            "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
            "limit=3",
        ] {
            problem(
                app.admin(
                    Method::GET,
                    &format!("/admin/v1/spend?{bad}"),
                    Some(&viewer),
                    None,
                )
                .await,
                400,
            )
            .await;
        }

        let b = get_json(&app, "/admin/v1/budgets", &viewer).await;
        let list = b["budgets"].as_array().unwrap();
        let names: Vec<&str> = list.iter().map(|p| p["pool"].as_str().unwrap()).collect();
        assert_eq!(names, ["main", "tiny"]);
        let tiny = &list[1];
        assert_eq!(tiny["window"], "daily");
        assert_eq!(tiny["cap_usd"], 0.0001);
        assert_eq!(tiny["spent_usd"], 0.00004);
        assert_eq!(tiny["percent"], 40.0);
        assert_eq!(tiny["window_start"], tollgate::clock::to_rfc3339(today));
        assert_eq!(tiny["at_cap"], "reject");
        assert!(
            list[0]["cap_usd"].is_null() && list[0]["window"].is_null(),
            "{}",
            list[0]
        );

        if kind == TestDbKind::Sqlite {
            let (code, out, err) = cli(
                &app,
                Some(&viewer),
                &[
                    "spend",
                    "--group-by",
                    "team",
                    "--since",
                    &tollgate::clock::to_rfc3339(today - day),
                ],
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert!(
                out.contains("TEAM") && out.contains("$2.75") && out.contains("total"),
                "{out}"
            );
            let (code, out, err) = cli(
                &app,
                Some(&viewer),
                &["spend", "--group-by", "model", "--csv"],
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert!(out.starts_with("model,requests"), "{out}");
            let (code, out, err) = cli(&app, Some(&viewer), &["budgets"]).await;
            assert_eq!(code, 0, "{err}");
            assert!(
                out.contains("tiny") && out.contains("daily") && out.contains("40.0%"),
                "{out}"
            );
            let (code, _, err) = cli(&app, Some(&viewer), &["spend", "--group-by", "colour"]).await;
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("group_by"), "{err}");
        }
    }
}

#[tokio::test]
async fn budget_increases_need_a_second_person_and_raise_the_cap() {
    for kind in kinds() {
        let app = spawn_app_with(
            kind,
            Options {
                policy: Some(format!("{POLICY}{ROLES}")),
                admin: Some("increase_finops_above_usd = 1\nincrease_request_ttl = \"10m\"".into()),
                ..Options::default()
            },
        )
        .await;
        let (responder, security, finops, viewer) = (
            token(&app, "responder"),
            token(&app, "security"),
            token(&app, "finops"),
            token(&app, "viewer"),
        );
        let broke = app.token_for("broke").await;
        let chat = || async {
            app.post(
                "/v1/chat/completions",
                &broke,
                &TestApp::chat("gpt-test", "hi"),
            )
            .await
            .status()
            .as_u16()
        };
        assert_eq!(chat().await, 429, "the tiny pool is at its cap");
        let ask = |amount: f64, who: &str| {
            let who = who.to_owned();
            let app = &app;
            async move {
                app.admin(
                    Method::POST,
                    "/admin/v1/budgets/tiny/increases",
                    Some(&who),
                    Some(&json!({"amount_usd": amount, "reason": "launch week"})),
                )
                .await
            }
        };
        let decide = |id: i64, verb: &str, who: &str, body: Value| {
            let (who, path) = (
                who.to_owned(),
                format!("/admin/v1/budgets/increases/{id}/{verb}"),
            );
            let app = &app;
            async move {
                app.admin(Method::POST, &path, Some(&who), Some(&body))
                    .await
            }
        };

        let r = ask(0.5, &responder).await;
        assert_eq!(r.status(), 201);
        assert!(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/admin/v1/budgets/increases/")
        );
        let small: Value = r.json().await.unwrap();
        assert_eq!(small["state"], "pending");
        assert_eq!(small["requested_by"], "resp@example.com");
        assert_eq!(
            small["approvable_by"],
            json!(["admin", "finops", "security"])
        );
        let small_id = small["increase_id"].as_i64().unwrap();
        let pending = get_json(&app, "/admin/v1/budgets/increases", &viewer).await;
        assert_eq!(pending["increases"].as_array().unwrap().len(), 1);

        // A responder may ask but not approve; a viewer approves nothing.
        let v = problem(
            decide(small_id, "approve", &responder, json!({})).await,
            403,
        )
        .await;
        assert!(v["detail"].as_str().unwrap().contains("responder"), "{v}");
        problem(decide(small_id, "approve", &viewer, json!({})).await, 403).await;
        assert_eq!(chat().await, 429);
        let r = decide(
            small_id,
            "approve",
            &security,
            json!({"reason": "ok for launch"}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let approved: Value = r.json().await.unwrap();
        assert_eq!(
            (approved["state"].as_str(), approved["decided_by"].as_str()),
            (Some("approved"), Some("sam@example.com"))
        );
        assert_eq!(chat().await, 200, "the cap rose on this replica at once");
        let budgets = get_json(&app, "/admin/v1/budgets", &viewer).await;
        let tiny = budgets["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["pool"] == "tiny")
            .unwrap()
            .clone();
        assert_eq!(tiny["increase_usd"], 0.5);
        assert_eq!(tiny["cap_usd"], 0.5001);
        problem(decide(small_id, "approve", &finops, json!({})).await, 409).await;

        // Above the threshold: finops or admin only.
        let big: Value = ask(5.0, &responder).await.json().await.unwrap();
        assert_eq!(big["approvable_by"], json!(["admin", "finops"]));
        let big_id = big["increase_id"].as_i64().unwrap();
        let v = problem(decide(big_id, "approve", &security, json!({})).await, 403).await;
        assert!(
            v["detail"].as_str().unwrap().contains("admin or finops"),
            "{v}"
        );
        assert_eq!(
            decide(big_id, "approve", &finops, json!({})).await.status(),
            200
        );

        // Denial needs a reason and is final.
        let third: Value = ask(0.1, &finops).await.json().await.unwrap();
        let third_id = third["increase_id"].as_i64().unwrap();
        // Nobody decides their own request, approver role or not.
        let v = problem(decide(third_id, "approve", &finops, json!({})).await, 403).await;
        assert!(v["detail"].as_str().unwrap().contains("two-person"), "{v}");
        problem(decide(third_id, "deny", &security, json!({})).await, 400).await;
        let r = decide(
            third_id,
            "deny",
            &security,
            json!({"reason": "not this week"}),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["state"], "denied");
        problem(
            decide(third_id, "approve", &token(&app, "admin"), json!({})).await,
            409,
        )
        .await;

        // An expired request cannot be approved; it lists as expired.
        let now = tollgate::clock::now_ms();
        let stale = app
            .store()
            .insert_increase(&tollgate::store::NewIncrease {
                pool: "tiny".into(),
                window_start: tollgate::quota::window_start(
                    &tollgate::policy::BudgetWindow::Daily,
                    now,
                ),
                amount_micro_usd: 1_000_000,
                reason: "forgotten".into(),
                requested_by: "resp@example.com".into(),
                requested_at: now - 120_000,
                expires_at: now - 60_000,
            })
            .await
            .unwrap();
        let v = problem(decide(stale.id, "approve", &finops, json!({})).await, 409).await;
        assert!(v["detail"].as_str().unwrap().contains("expired"), "{v}");
        let all = get_json(&app, "/admin/v1/budgets/increases?all=true", &viewer).await;
        let states: Vec<&str> = all["increases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["expired", "denied", "approved", "approved"]);
        assert_eq!(
            get_json(&app, "/admin/v1/budgets/increases", &viewer).await["increases"],
            json!([])
        );

        // Bad requests.
        for (body, status) in [
            (json!({"amount_usd": 0, "reason": "x"}), 400),
            (json!({"amount_usd": -1, "reason": "x"}), 400),
            (json!({"amount_usd": 1e9, "reason": "x"}), 400),
            (json!({"amount_usd": "ten", "reason": "x"}), 400),
            (json!({"amount_usd": 1, "reason": " "}), 400),
            (json!({"amount_usd": 1}), 400),
        ] {
            let r = app
                .admin(
                    Method::POST,
                    "/admin/v1/budgets/tiny/increases",
                    Some(&responder),
                    Some(&body),
                )
                .await;
            problem(r, status).await;
        }
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/budgets/ghost/increases",
                Some(&responder),
                Some(&json!({"amount_usd": 1, "reason": "x"})),
            )
            .await;
        problem(r, 404).await;
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/budgets/main/increases",
                Some(&responder),
                Some(&json!({"amount_usd": 1, "reason": "x"})),
            )
            .await;
        problem(r, 409).await;
        problem(decide(424242, "approve", &finops, json!({})).await, 404).await;

        // On the record.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = get_json(&app, "/admin/v1/audit?limit=1000", &viewer).await;
            let actions: Vec<String> = log["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["action"].as_str().unwrap().to_owned())
                .collect();
            if [
                "budget.increase_requested",
                "budget.increase_approved",
                "budget.increase_denied",
            ]
            .iter()
            .all(|a| actions.iter().any(|x| x == a))
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{actions:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        if kind == TestDbKind::Sqlite {
            let (code, out, err) = cli(
                &app,
                Some(&finops),
                &[
                    "increase",
                    "--pool",
                    "tiny",
                    "--amount-usd",
                    "0.25",
                    "--reason",
                    "demo",
                ],
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert!(out.contains("pending") && out.contains("$0.25"), "{out}");
            let (code, out, _) = cli(&app, Some(&viewer), &["increases"]).await;
            assert_eq!(code, 0);
            let id = out
                .lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            let (code, _, err) = cli(&app, Some(&finops), &["approve", &id]).await;
            assert_eq!(code, 2, "self-approval: {err}");
            assert!(err.contains("two-person"), "{err}");
            let (code, out, err) =
                cli(&app, Some(&security), &["approve", &id, "--reason", "fine"]).await;
            assert_eq!(code, 0, "{err}");
            assert!(out.contains("approved"), "{out}");
        }
    }
}
