//! RFC 8693 token exchange against the real server, a loopback OIDC issuer, and both stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::app::{TestApp, spawn_app};
use support::db::kinds;
use tollgate::store::{NewRevocation, RevocationKind};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Run `body` once per store backend, each on a fresh app and database.
macro_rules! on_both_stores {
    ($name:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for kind in kinds() {
                eprintln!("--- store backend: {kind:?}");
                let app = spawn_app(kind).await;
                $body(&app).await;
                app.stop().await;
            }
        }
    };
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn oauth_error(r: reqwest::Response) -> (String, String) {
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    (
        v["error"].as_str().unwrap().to_owned(),
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn exchange_returns_an_rfc8693_response_with_quota_claims(app: &TestApp) {
    let r = app.exchange(&app.workload_token("team-a", "ranker")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(
        v["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!((890..=900).contains(&expires_in), "{expires_in}");
    assert_eq!(
        v["scope"],
        "gpt-test embed-test claude-test pricey orphan mocked"
    );
    let token = v["access_token"].as_str().unwrap();
    let header = jwt_part(token, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let claims = jwt_part(token, 1);
    assert_eq!(claims["iss"], "http://tollgate.test");
    assert_eq!(claims["aud"], "tollgate");
    assert_eq!(claims["sub"], "system:serviceaccount:team-a:ranker");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        expires_in
    );
    let q = &claims["tollgate"];
    assert_eq!(q["team"], "a");
    assert_eq!(q["pool"], "main");
    assert_eq!(q["billing_owner"], "team-a");
    assert_eq!(q["max_tokens"], 256);
    assert_eq!(q["default_max_tokens"], 64);
    assert_eq!(q["max_request_usd"], 0.5);

    // The kid is published, and the metadata points at the JWKS and token endpoint.
    let jwks: Value = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&header["kid"].as_str().unwrap()), "{jwks}");
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "no private key material in the JWKS"
    );
    let meta: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            app.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], "http://tollgate.test");
    assert_eq!(meta["token_endpoint"], "http://tollgate.test/v1/token");
    assert_eq!(
        meta["revocation_endpoint"],
        "http://tollgate.test/v1/token/revoke"
    );
    assert_eq!(meta["grant_types_supported"][0], GRANT);

    // The inventory records the token (never the token itself).
    let jti = claims["jti"].as_str().unwrap();
    let mut found = false;
    for _ in 0..50 {
        let rows = app
            .store()
            .issued_tokens_for_subject("system:serviceaccount:team-a:ranker", 0)
            .await
            .unwrap();
        if rows.iter().any(|r| r.jti == jti) {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(found, "issued token recorded in the inventory");
}
on_both_stores!(
    exchange_returns_an_rfc8693_response_with_quota_claims_test,
    exchange_returns_an_rfc8693_response_with_quota_claims
);

async fn scope_and_ttl_may_only_narrow(app: &TestApp) {
    let wl = app.workload_token("team-a", "app");
    let base = [
        ("grant_type", GRANT),
        ("subject_token_type", JWT),
        ("subject_token", wl.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let r = app
        .exchange_form(&with(&[("scope", "gpt-test"), ("requested_ttl", "60")]))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["scope"], "gpt-test");
    assert_eq!(v["expires_in"], 60);
    let claims = jwt_part(v["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["tollgate"]["models"], json!(["gpt-test"]));

    let r = app
        .exchange_form(&with(&[("requested_ttl", "86400")]))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 900, "never beyond 15 minutes");

    let r = app
        .exchange_form(&with(&[("scope", "gpt-test unbound")]))
        .await;
    assert_eq!(oauth_error(r).await.0, "invalid_scope");
    for bad in ["0", "-5", "soon", "1e3"] {
        let r = app.exchange_form(&with(&[("requested_ttl", bad)])).await;
        assert_eq!(oauth_error(r).await.0, "invalid_request", "ttl {bad}");
    }
}
on_both_stores!(
    scope_and_ttl_may_only_narrow_test,
    scope_and_ttl_may_only_narrow
);

async fn malformed_requests_get_rfc6749_errors(app: &TestApp) {
    let wl = app.workload_token("team-a", "app");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("subject_token", &wl), ("subject_token_type", JWT)],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("subject_token", &wl),
                ("subject_token_type", JWT),
            ],
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", GRANT), ("subject_token_type", JWT)],
            "invalid_request",
        ),
        (
            vec![("grant_type", GRANT), ("subject_token", &wl)],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("subject_token", &wl),
                ("subject_token_type", "urn:x:saml"),
            ],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("subject_token", &wl),
                ("subject_token_type", JWT),
                ("audience", "https://evil.example"),
            ],
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("subject_token", &wl),
                ("subject_token_type", JWT),
                ("resource", "https://api.openai.com"),
            ],
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("grant_type", GRANT),
                ("subject_token", &wl),
                ("subject_token_type", JWT),
            ],
            "invalid_request",
        ),
    ];
    for (fields, want) in cases {
        let r = app.exchange_form(&fields).await;
        let (got, desc) = oauth_error(r).await;
        assert_eq!(got, want, "{fields:?}: {desc}");
        assert!(!desc.contains(&wl), "the subject token is never echoed");
    }
    // audience naming us is fine
    let r = app
        .exchange_form(&[
            ("grant_type", GRANT),
            ("subject_token", &wl),
            ("subject_token_type", JWT),
            ("audience", "tollgate"),
        ])
        .await;
    assert_eq!(r.status(), 200);
    // not a form
    let r = app
        .http
        .post(format!("{}/v1/token", app.url))
        .json(&json!({"grant_type": GRANT}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.0, "invalid_request");
    // oversized form
    let big = "x".repeat(64 * 1024);
    let r = app
        .exchange_form(&[("grant_type", GRANT), ("subject_token", &big)])
        .await;
    assert_eq!(oauth_error(r).await.0, "invalid_request");
    // wrong method
    let r = app
        .http
        .get(format!("{}/v1/token", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}
on_both_stores!(
    malformed_requests_get_rfc6749_errors_test,
    malformed_requests_get_rfc6749_errors
);

async fn forged_and_invalid_subject_tokens_are_refused(app: &TestApp) {
    let good = app.issuer.claims("team-a", "app");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!(["kubernetes"]);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut expired = good.clone();
    let now = tollgate::clock::now_secs();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut future = good.clone();
    future["nbf"] = json!(now + 3600);
    let signed = app.issuer.sign(&good);
    let mut parts: Vec<String> = signed.split('.').map(str::to_owned).collect();
    let mut tampered_claims = good.clone();
    tampered_claims["kubernetes.io"]["namespace"] = json!("kube-system");
    parts[1] = URL_SAFE_NO_PAD.encode(tampered_claims.to_string());
    let tampered = parts.join(".");
    let unknown_kid = app.issuer.sign_with_header(
        &json!({"alg": "RS256", "kid": "not-a-key", "typ": "JWT"}),
        &good,
        support::oidc::KeyChoice::Rsa,
    );
    let cases = vec![
        ("alg none", app.issuer.unsigned(&good, "none")),
        ("alg None", app.issuer.unsigned(&good, "None")),
        ("alg nOnE", app.issuer.unsigned(&good, "nOnE")),
        (
            "HS256 keyed with the public key",
            app.issuer.hs256_with_public_key(&good),
        ),
        ("wrong audience", app.issuer.sign(&wrong_aud)),
        ("untrusted issuer", app.issuer.sign(&wrong_iss)),
        ("expired", app.issuer.sign(&expired)),
        ("not yet valid", app.issuer.sign(&future)),
        ("tampered payload", tampered),
        ("unknown kid", unknown_kid),
        ("garbage", "not.a.jwt".to_owned()),
        ("two segments", "abc.def".to_owned()),
    ];
    for (what, token) in cases {
        let r = app.exchange(&token).await;
        let (code, desc) = oauth_error(r).await;
        assert_eq!(code, "invalid_request", "{what}: {desc}");
        assert!(!desc.contains(&token), "{what}: token echoed");
    }
    // The genuine article still works after all that.
    assert_eq!(app.exchange(&signed).await.status(), 200);
}
on_both_stores!(
    forged_and_invalid_subject_tokens_are_refused_test,
    forged_and_invalid_subject_tokens_are_refused
);

async fn a_tollgate_token_is_never_a_workload_identity(app: &TestApp) {
    let tollgate_token = app.token_for("team-a").await;
    let (code, _) = oauth_error(app.exchange(&tollgate_token).await).await;
    assert_eq!(code, "invalid_request");
}
on_both_stores!(
    a_tollgate_token_is_never_a_workload_identity_test,
    a_tollgate_token_is_never_a_workload_identity
);

async fn workload_without_binding_is_unauthorized(app: &TestApp) {
    let r = app
        .exchange(&app.workload_token("somewhere-else", "app"))
        .await;
    let (code, desc) = oauth_error(r).await;
    assert_eq!(code, "unauthorized_client");
    assert!(
        desc.contains("system:serviceaccount:somewhere-else:app"),
        "{desc}"
    );
}
on_both_stores!(
    workload_without_binding_is_unauthorized_test,
    workload_without_binding_is_unauthorized
);

async fn revoked_subject_cannot_exchange(app: &TestApp) {
    app.state
        .revocations
        .revoke(&NewRevocation {
            kind: RevocationKind::Subject,
            value: "system:serviceaccount:team-a:leaky".into(),
            reason: "test".into(),
            created_at: tollgate::clock::now_ms(),
            expires_at: None,
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let r = app.exchange(&app.workload_token("team-a", "leaky")).await;
    assert_eq!(oauth_error(r).await.0, "invalid_grant");
    assert_eq!(
        app.exchange(&app.workload_token("team-a", "other"))
            .await
            .status(),
        200
    );
}
on_both_stores!(
    revoked_subject_cannot_exchange_test,
    revoked_subject_cannot_exchange
);

async fn revoke_form(app: &TestApp, fields: &[(&str, &str)]) -> reqwest::Response {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    app.http
        .post(format!("{}/v1/token/revoke", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn a_workload_revokes_its_own_token_per_rfc7009(app: &TestApp) {
    let token = app.token_for("team-a").await;
    let chat = TestApp::chat("gpt-test", "hi");
    assert_eq!(
        app.post("/v1/chat/completions", &token, &chat)
            .await
            .status(),
        200
    );

    let r = revoke_form(
        app,
        &[("token", &token), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.text().await.unwrap().is_empty());
    let r = app.post("/v1/chat/completions", &token, &chat).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "token_revoked", "{v}");
    // Recorded for the fleet, by its holder, lapsing after the token would have.
    let jti = jwt_part(&token, 1)["jti"].as_str().unwrap().to_owned();
    let exp = jwt_part(&token, 1)["exp"].as_i64().unwrap();
    let rows = app
        .store()
        .active_revocations(tollgate::clock::now_ms())
        .await
        .unwrap();
    let row = rows.iter().find(|r| r.value == jti).expect("stored");
    assert_eq!(row.kind, RevocationKind::Jti);
    assert!(
        row.created_by
            .starts_with("self:system:serviceaccount:team-a:"),
        "{row:?}"
    );
    assert!(row.expires_at.unwrap() > exp * 1000);
    // Again, an unknown hint, a forged token: all 200 and nothing new (RFC 7009 2.2).
    assert_eq!(
        revoke_form(app, &[("token", &token), ("token_type_hint", "weird")])
            .await
            .status(),
        200
    );
    assert_eq!(
        revoke_form(app, &[("token", "not.a.token")]).await.status(),
        200
    );
    let n = app
        .store()
        .active_revocations(tollgate::clock::now_ms())
        .await
        .unwrap()
        .len();
    assert_eq!(
        n,
        rows.len(),
        "nothing recorded twice or for a forged token"
    );
    // Another token of the same workload still works: only the one token is revoked.
    let other = app.token_for("team-a").await;
    assert_eq!(
        app.post("/v1/chat/completions", &other, &chat)
            .await
            .status(),
        200
    );
    // Malformed requests get RFC 6749 errors.
    assert_eq!(
        oauth_error(revoke_form(app, &[]).await).await.0,
        "invalid_request"
    );
    assert_eq!(
        oauth_error(revoke_form(app, &[("token", "a"), ("token", "b")]).await)
            .await
            .0,
        "invalid_request"
    );
    let r = app
        .http
        .post(format!("{}/v1/token/revoke", app.url))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.0, "invalid_request");
}
on_both_stores!(
    a_workload_revokes_its_own_token_per_rfc7009_test,
    a_workload_revokes_its_own_token_per_rfc7009
);
