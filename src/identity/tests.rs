#[path = "../../tests/support/oidc.rs"]
#[allow(dead_code)]
mod oidc;

use super::*;
use oidc::{KeyChoice, TestIssuer};
use serde_json::json;

fn cfg(issuer: &TestIssuer) -> IssuerConfig {
    serde_json::from_value(json!({"name": "k8s", "issuer": issuer.url})).unwrap()
}

fn verifier(issuer: &TestIssuer, min_refresh: Duration) -> IdentityVerifier {
    IdentityVerifier::new(
        vec![cfg(issuer)],
        vec!["https://tollgate.example".into()],
        reqwest::Client::new(),
    )
    .unwrap()
    .with_refresh_min_interval(min_refresh)
}

#[tokio::test]
async fn kubernetes_tokens_verify_with_rs256_and_es256() {
    let iss = TestIssuer::start().await;
    let v = verifier(&iss, Duration::from_secs(30));
    let w = v
        .verify(&iss.service_account_token("search", "ranker"))
        .await
        .unwrap();
    assert_eq!(w.subject, "system:serviceaccount:search:ranker");
    assert_eq!(w.namespace.as_deref(), Some("search"));
    assert_eq!(w.service_account.as_deref(), Some("ranker"));
    assert_eq!(w.pod_name.as_deref(), Some("ranker-pod"));
    assert!(w.pod_uid.is_some());
    assert_eq!(w.issuer_name, "k8s");
    let w = v
        .verify(&iss.sign_es256(&iss.claims("a", "b")))
        .await
        .unwrap();
    assert_eq!(w.namespace.as_deref(), Some("a"));
    assert_eq!(iss.discovery_hits(), 1, "keys cached after the first fetch");
}

#[tokio::test]
async fn the_attack_catalogue_is_refused_with_specific_errors() {
    let iss = TestIssuer::start().await;
    let v = verifier(&iss, Duration::from_secs(30));
    let good = iss.claims("ns", "sa");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let now = crate::clock::now_secs();
    let cases: Vec<(&str, String, IdentityError)> = vec![
        (
            "none",
            iss.unsigned(&good, "none"),
            IdentityError::UnsupportedAlgorithm("none".into()),
        ),
        (
            "NONE",
            iss.unsigned(&good, "NONE"),
            IdentityError::UnsupportedAlgorithm("NONE".into()),
        ),
        (
            "nOnE",
            iss.unsigned(&good, "nOnE"),
            IdentityError::UnsupportedAlgorithm("nOnE".into()),
        ),
        (
            "hs256",
            iss.hs256_with_public_key(&good),
            IdentityError::UnsupportedAlgorithm("HS256".into()),
        ),
        (
            "aud",
            iss.sign(&with(&|c| c["aud"] = json!("other"))),
            IdentityError::WrongAudience,
        ),
        (
            "iss",
            iss.sign(&with(&|c| c["iss"] = json!("https://evil"))),
            IdentityError::UntrustedIssuer,
        ),
        (
            "expired",
            iss.sign(&with(&|c| {
                c["iat"] = json!(now - 600);
                c["exp"] = json!(now - 300);
            })),
            IdentityError::Expired,
        ),
        (
            "nbf",
            iss.sign(&with(&|c| c["nbf"] = json!(now + 600))),
            IdentityError::NotYetValid,
        ),
        (
            "old",
            iss.sign(&with(&|c| {
                c["iat"] = json!(now - 7300);
                c["nbf"] = json!(now - 7300);
            })),
            IdentityError::TooOld,
        ),
        (
            "future iat",
            iss.sign(&with(&|c| c["iat"] = json!(now + 600))),
            IdentityError::Invalid("iat is in the future"),
        ),
        (
            "sub mismatch",
            iss.sign(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:kube-system:admin")
            })),
            IdentityError::Invalid("sub does not match the service account"),
        ),
        (
            "own issuer",
            iss.sign(&with(&|c| c["iss"] = json!("https://tollgate.example"))),
            IdentityError::WrongTokenType,
        ),
        (
            "at+jwt",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}),
                &good,
                KeyChoice::Rsa,
            ),
            IdentityError::WrongTokenType,
        ),
        (
            "crit",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
                &good,
                KeyChoice::Rsa,
            ),
            IdentityError::Invalid("crit header"),
        ),
        (
            "unknown kid",
            iss.sign_with_header(
                &json!({"alg": "RS256", "kid": "nope"}),
                &good,
                KeyChoice::Rsa,
            ),
            IdentityError::UnknownKey,
        ),
        (
            "alg/key mismatch",
            iss.sign_with_header(
                &json!({"alg": "ES256", "kid": "rsa-1"}),
                &good,
                KeyChoice::Ec,
            ),
            IdentityError::UnknownKey,
        ),
        ("oversized", "a".repeat(20_000), IdentityError::Malformed),
        ("garbage", "x.y.z".into(), IdentityError::Malformed),
    ];
    for (what, token, want) in cases {
        assert_eq!(v.verify(&token).await.unwrap_err(), want, "{what}");
    }
    let signed = iss.sign(&good);
    let mut parts: Vec<&str> = signed.split('.').collect();
    let tampered_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(with(&|c| c["kubernetes.io"]["namespace"] = json!("x")).to_string());
    parts[1] = &tampered_payload;
    assert_eq!(
        v.verify(&parts.join(".")).await.unwrap_err(),
        IdentityError::BadSignature
    );
    assert!(v.verify(&signed).await.is_ok());
}

#[tokio::test]
async fn issuer_key_rotation_is_picked_up_on_an_unknown_kid() {
    let iss = TestIssuer::start().await;
    let v = verifier(&iss, Duration::ZERO);
    v.prefetch().await;
    let before = iss.jwks_hits();
    iss.add_key();
    let w = v
        .verify(&iss.sign_es256(&iss.claims("a", "b")))
        .await
        .unwrap();
    assert_eq!(w.service_account.as_deref(), Some("b"));
    assert_eq!(iss.jwks_hits(), before + 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_issuer_at_most_one_fetch() {
    let iss = TestIssuer::start().await;
    let v = Arc::new(verifier(&iss, Duration::from_secs(30)));
    v.prefetch().await;
    let before = iss.jwks_hits();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let v = Arc::clone(&v);
        let t = iss.sign_with_header(
            &json!({"alg": "RS256", "kid": format!("random-{i}")}),
            &iss.claims("a", "b"),
            KeyChoice::Rsa,
        );
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), IdentityError::UnknownKey);
    }
    assert!(
        iss.jwks_hits() - before <= 1,
        "{} fetches",
        iss.jwks_hits() - before
    );
}

#[tokio::test]
async fn static_jwks_file_works_and_cached_keys_survive_its_loss() {
    let iss = TestIssuer::start().await;
    let jwks = reqwest::get(format!("{}/jwks.json", iss.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    let cfg: IssuerConfig =
        serde_json::from_value(json!({"name": "air", "issuer": iss.url, "jwks_file": path}))
            .unwrap();
    let v = IdentityVerifier::new(vec![cfg], vec![], reqwest::Client::new()).unwrap();
    v.prefetch().await;
    std::fs::remove_file(&path).unwrap();
    assert!(
        v.verify(&iss.service_account_token("a", "b")).await.is_ok(),
        "cached keys keep verifying"
    );
}

#[test]
fn config_errors_name_the_field() {
    let c = |v: serde_json::Value| serde_json::from_value::<IssuerConfig>(v).unwrap();
    let dup = vec![
        c(json!({"name": "a", "issuer": "https://x"})),
        c(json!({"name": "a", "issuer": "https://y"})),
    ];
    let e = IdentityVerifier::new(dup, vec![], reqwest::Client::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("issuers[1].name"), "{e}");
    let both = vec![c(
        json!({"name": "a", "issuer": "https://x", "jwks_file": "/x", "jwks_uri": "https://x/j"}),
    )];
    let e = IdentityVerifier::new(both, vec![], reqwest::Client::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("jwks_file"), "{e}");
    let noaud = vec![c(
        json!({"name": "a", "issuer": "https://x", "audiences": []}),
    )];
    assert!(IdentityVerifier::new(noaud, vec![], reqwest::Client::new()).is_err());
    for (bad, why) in [
        (
            json!({"name": "a", "issuer": "https://x", "jwks_file": "/x", "bearer_token_file": "/t"}),
            "nothing to authenticate",
        ),
        (
            json!({"name": "a", "issuer": "http://issuer.example", "bearer_token_file": "/t"}),
            "only sent over https",
        ),
        (
            json!({"name": "a", "issuer": "https://x", "jwks_uri": "http://10.0.0.1/jwks", "bearer_token_file": "/t"}),
            "http://10.0.0.1",
        ),
    ] {
        let e = IdentityVerifier::new(vec![c(bad.clone())], vec![], reqwest::Client::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("issuers[0].bearer_token_file") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[tokio::test]
async fn an_issuer_that_wants_a_bearer_gets_the_token_file_re_read_on_every_fetch() {
    let iss = TestIssuer::start().await;
    iss.require_bearer(Some("sa-token-1"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "sa-token-1\n").unwrap();

    // Without the token file the issuer's documents are refused: no keys, no verification.
    let anonymous = verifier(&iss, Duration::ZERO);
    assert!(
        anonymous
            .verify(&iss.service_account_token("a", "b"))
            .await
            .is_err()
    );
    assert_eq!(iss.auth_seen(), vec![None]);

    let mut cfg = cfg(&iss);
    cfg.bearer_token_file = Some(file.clone());
    let v = IdentityVerifier::new(vec![cfg], vec![], reqwest::Client::new())
        .unwrap()
        .with_refresh_min_interval(Duration::ZERO);
    v.verify(&iss.service_account_token("a", "b"))
        .await
        .unwrap();
    let seen = iss.auth_seen();
    assert_eq!(
        seen[1..],
        [
            Some("Bearer sa-token-1".to_owned()),
            Some("Bearer sa-token-1".to_owned())
        ],
        "discovery and JWKS both authenticated"
    );

    // The kubelet rotates the token; the next fetch (an unknown kid) presents the new one.
    std::fs::write(&file, "sa-token-2").unwrap();
    iss.require_bearer(Some("sa-token-2"));
    iss.add_key();
    let r = v.verify(&iss.sign_es256(&iss.claims("a", "b"))).await;
    assert!(r.is_ok(), "{r:?} {:?}", iss.auth_seen());
    assert_eq!(
        iss.auth_seen().last().unwrap().as_deref(),
        Some("Bearer sa-token-2")
    );
}

#[tokio::test]
async fn the_bearer_never_goes_to_a_jwks_uri_the_discovery_document_names_elsewhere() {
    let iss = TestIssuer::start().await;
    let elsewhere = TestIssuer::start().await;
    iss.point_jwks_to(&format!("{}/jwks.json", elsewhere.url));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "sa-token").unwrap();
    let mut cfg = cfg(&iss);
    cfg.bearer_token_file = Some(file);
    let v = IdentityVerifier::new(vec![cfg], vec![], reqwest::Client::new()).unwrap();
    // Whether the other origin's keys verify the token does not matter here: who saw it does.
    let _ = v.verify(&iss.service_account_token("a", "b")).await;
    assert_eq!(iss.auth_seen(), vec![Some("Bearer sa-token".to_owned())]);
    assert_eq!(elsewhere.auth_seen(), vec![None]);
}

#[test]
fn an_iat_that_is_no_numeric_date_is_refused_not_an_overflow() {
    // fuzz/regressions/workload_jwt/iat-i64-min: `now - iat` overflowed, a panic in debug
    // builds and in release builds a wrapped (negative) age that passed `max_token_age`.
    let cfg: IssuerConfig =
        serde_json::from_value(json!({"name": "k8s", "issuer": "https://issuer.example"})).unwrap();
    let claims = json!({
        "iss": "https://issuer.example",
        "sub": "system:serviceaccount:ns:sa",
        "aud": ["tollgate"],
        "exp": 4_102_444_800u64,
        "iat": i64::MIN,
        "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "sa"}},
    });
    assert_eq!(
        workload(&cfg, claims.clone()).unwrap_err(),
        IdentityError::Invalid("iat")
    );
    // Nor may one slip past the age checks by not being an i64.
    for iat in [
        json!(1.5e9),
        json!("1700000000"),
        json!(u64::MAX),
        json!(-1),
    ] {
        let mut c = claims.clone();
        c["iat"] = iat.clone();
        assert!(
            matches!(workload(&cfg, c), Err(IdentityError::Invalid(_))),
            "iat {iat}"
        );
    }
}

#[test]
fn dev_issuer_mints_tokens_its_jwks_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let a = DevIssuer::load_or_create(dir.path()).unwrap();
    let b = DevIssuer::load_or_create(dir.path()).unwrap();
    assert_eq!(a.jwks(), b.jwks(), "the keys persist");
    let keys = a.jwks()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    for (alg, jws, file) in [
        (
            DevAlgorithm::Rs256,
            jsonwebtoken::Algorithm::RS256,
            "dev-issuer-rsa.pem",
        ),
        (
            DevAlgorithm::Es256,
            jsonwebtoken::Algorithm::ES256,
            "dev-issuer.pem",
        ),
    ] {
        let t = a
            .mint_service_account_token(
                "http://dev",
                "demo",
                "app",
                "tollgate",
                Duration::from_secs(60),
                alg,
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, jws);
        let jwk = keys
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .expect("the token's kid is in the JWKS");
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let mut val = jsonwebtoken::Validation::new(jws);
        val.set_audience(&["tollgate"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &val,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "system:serviceaccount:demo:app");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "private key file is not readable by others"
            );
        }
    }
    // A damaged key file is an error, never a silently regenerated key.
    std::fs::write(
        dir.path().join("dev-issuer-rsa.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n",
    )
    .unwrap();
    assert!(DevIssuer::load_or_create(dir.path()).is_err());
}
