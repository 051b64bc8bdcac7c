//! Provider keys from real secret stores: OpenBao (Vault KV v2) and AWS Secrets Manager
//! (moto). Listing with metadata, versions and stages; logins; Tollgate serving traffic with
//! the store's key; outages served from cache; deletions; quarantine; the inventory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::app::{ANTHROPIC_KEY, OPENAI_KEY, Options, POLICY, TestApp, spawn_app_with};
use support::db::TestDbKind;
use support::peers::{Bao, Moto, unique_prefix};
use tollgate::config::{AwsConfig, VaultAuthConfig, VaultConfig};
use tollgate::secrets::{AwsStore, KeyCache, Owner, SecretStore, Stage, VaultStore};

fn vault_config(bao: &Bao, prefix: &str, auth: VaultAuthConfig) -> VaultConfig {
    VaultConfig {
        address: bao.addr.parse().unwrap(),
        mount: "secret".into(),
        prefix: prefix.into(),
        namespace: None,
        ca_cert: None,
        timeout: std::time::Duration::from_secs(5),
        auth,
    }
}

fn token_auth(bao: &Bao) -> VaultAuthConfig {
    VaultAuthConfig::Token {
        token: Some(bao.token.clone().into()),
        token_file: None,
    }
}

fn aws_config(moto: &Moto, prefix: &str) -> AwsConfig {
    AwsConfig {
        region: Some("us-east-1".into()),
        prefix: prefix.into(),
        endpoint_url: Some(moto.endpoint.parse().unwrap()),
        timeout: std::time::Duration::from_secs(5),
        max_attempts: 2,
    }
}

// ---- Vault / OpenBao -------------------------------------------------------------------

#[tokio::test]
async fn vault_keys_are_listed_with_metadata_versions_and_the_pin() {
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/team-a"),
        "sk-team-a-1",
        &[
            ("billing_owner", "team-a"),
            ("allowed_models", "gpt-test, embed-test"),
            ("purpose", "chat"),
            ("max_tokens_default", "128"),
        ],
    )
    .await;
    bao.put_key_with(
        &format!("{p}/anthropic/shared"),
        "sk-ant-shared",
        &[("billing_owner", "*")],
    )
    .await;
    bao.put_key_with(&format!("{p}/openai/ownerless"), "sk-x", &[])
        .await;

    let store = VaultStore::connect(vault_config(&bao, &p, token_auth(&bao)))
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    let mut ids: Vec<&str> = l.keys.iter().map(|k| k.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            format!("{p}/anthropic/shared"),
            format!("{p}/openai/team-a")
        ]
    );
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(k.provider, "openai");
    assert_eq!(k.billing_owner, "team-a");
    assert_eq!(k.secret.expose_secret(), "sk-team-a-1");
    assert_eq!(k.purpose.as_deref(), Some("chat"));
    assert_eq!(k.max_tokens_default, Some(128));
    assert_eq!(k.version, "1");
    assert_eq!(l.invalid.len(), 1, "{:?}", l.invalid);
    assert!(l.invalid[0].reason.contains("billing_owner"));

    // A new version with no pin is served at once; the old one becomes previous.
    bao.put_key(&format!("{p}/openai/team-a"), "sk-team-a-2")
        .await;
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(
        (k.version.as_str(), k.secret.expose_secret()),
        ("2", "sk-team-a-2")
    );
    assert_eq!(
        k.versions.iter().map(|v| v.stage).collect::<Vec<_>>(),
        [Stage::Previous, Stage::Current]
    );

    // Pinned to 2 (what rotation writes), a version 3 is pending and never served.
    bao.put_metadata(
        &format!("{p}/openai/team-a"),
        &[("billing_owner", "team-a"), ("tollgate_version", "2")],
    )
    .await;
    bao.put_key(&format!("{p}/openai/team-a"), "sk-team-a-3")
        .await;
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(
        (k.version.as_str(), k.secret.expose_secret()),
        ("2", "sk-team-a-2")
    );
    assert_eq!(
        k.versions
            .iter()
            .map(|v| (v.id.as_str(), v.stage))
            .collect::<Vec<_>>(),
        [
            ("1", Stage::Previous),
            ("2", Stage::Current),
            ("3", Stage::Pending)
        ]
    );
}

/// A store logged in through a fresh AppRole holding `policy`.
async fn approle_store(bao: &Bao, prefix: &str, policy: &str) -> VaultStore {
    let name = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
    approle_connect(bao, prefix, bao.approle(&name, policy).await).await
}

/// A store logged in with this AppRole's `(role_id, secret_id)`.
async fn approle_connect(
    bao: &Bao,
    prefix: &str,
    (role_id, secret_id): (String, String),
) -> VaultStore {
    VaultStore::connect(vault_config(
        bao,
        prefix,
        VaultAuthConfig::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(secret_id.into()),
            secret_id_file: None,
        },
    ))
    .await
    .unwrap()
}

/// The policy README tells operators to give Tollgate: read + list under its prefix.
const VAULT_POLICY: &str = r#"
path "secret/metadata/tollgate-test/*" { capabilities = ["read", "list"] }
path "secret/data/tollgate-test/*"     { capabilities = ["read"] }
"#;

#[tokio::test]
async fn vault_approle_login_works_with_the_documented_least_privilege_policy() {
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/k1"),
        "sk-approle",
        &[("billing_owner", "team-a")],
    )
    .await;
    let store = approle_store(&bao, &p, VAULT_POLICY).await;
    let l = store.list().await.unwrap();
    assert_eq!(l.keys.len(), 1);
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-approle");
}

#[tokio::test]
async fn an_expired_vault_login_is_replaced_without_an_outage() {
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/k1"),
        "sk-short-lease",
        &[("billing_owner", "team-a")],
    )
    .await;
    let name = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
    let store = approle_connect(
        &bao,
        &p,
        bao.approle_with_ttl(&name, VAULT_POLICY, "2s", "2s").await,
    )
    .await;
    assert_eq!(store.list().await.unwrap().keys.len(), 1);
    // The 2 s lease cannot be renewed past its maximum: Tollgate logs in again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let l = store.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-short-lease");
}

/// A fresh auth mount of `kind` configured with `config`, holding role `tollgate` (`role`, plus
/// a 2-minute token under the documented read policy). Returns the mount's path.
async fn login_mount(
    bao: &Bao,
    kind: &str,
    config: serde_json::Value,
    mut role: serde_json::Value,
) -> String {
    let mount = format!("{kind}-{}", uuid::Uuid::new_v4().simple());
    let policy = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
    bao.api(
        reqwest::Method::POST,
        &format!("sys/auth/{mount}"),
        Some(json!({"type": kind})),
    )
    .await;
    bao.api(
        reqwest::Method::POST,
        &format!("auth/{mount}/config"),
        Some(config),
    )
    .await;
    bao.api(
        reqwest::Method::PUT,
        &format!("sys/policies/acl/{policy}"),
        Some(json!({"policy": VAULT_POLICY})),
    )
    .await;
    role["token_policies"] = json!([policy]);
    role["token_ttl"] = json!("2m");
    bao.api(
        reqwest::Method::POST,
        &format!("auth/{mount}/role/tollgate"),
        Some(role),
    )
    .await;
    mount
}

#[tokio::test]
async fn vault_jwt_login_with_the_pods_service_account_token() {
    // OpenBao verifies Tollgate's own service-account token against the cluster's OIDC
    // issuer (here the loopback test issuer), as JWT auth does in a real cluster.
    let issuer = support::oidc::TestIssuer::start().await;
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/k1"),
        "sk-via-jwt",
        &[("billing_owner", "team-a")],
    )
    .await;
    let mount = login_mount(
        &bao,
        "jwt",
        json!({"jwks_url": format!("{}/jwks.json", issuer.url), "bound_issuer": issuer.url}),
        json!({
            "role_type": "jwt",
            "bound_audiences": ["tollgate"],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:tollgate:tollgate",
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_path = dir.path().join("token");
    let auth = |jwt_path: std::path::PathBuf| VaultAuthConfig::Jwt {
        mount: mount.clone(),
        role: "tollgate".into(),
        jwt_path,
    };

    std::fs::write(
        &jwt_path,
        issuer.service_account_token("tollgate", "tollgate"),
    )
    .unwrap();
    let store = VaultStore::connect(vault_config(&bao, &p, auth(jwt_path.clone())))
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-via-jwt");

    // Another workload's token is not Tollgate's: Vault refuses the login.
    std::fs::write(&jwt_path, issuer.service_account_token("team-a", "app")).unwrap();
    let err = VaultStore::connect(vault_config(&bao, &p, auth(jwt_path.clone())))
        .await
        .err()
        .expect("a token for another service account is refused");
    assert!(err.to_string().contains(&format!("auth/{mount}")), "{err}");
    let missing = dir.path().join("absent");
    let err = VaultStore::connect(vault_config(&bao, &p, auth(missing)))
        .await
        .err()
        .expect("no token file");
    assert!(err.to_string().contains("absent"), "{err}");
}

/// The Kubernetes API's TokenReview endpoint, as Vault's Kubernetes auth calls it: it vouches
/// for the tokens registered as issued by the API server and for nothing else.
async fn token_review_server(issued: Vec<String>) -> String {
    use axum::Json;
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |Json(review): Json<serde_json::Value>| {
            let issued = issued.clone();
            async move {
                let token = review["spec"]["token"].as_str().unwrap_or_default();
                let status = if issued.iter().any(|t| t == token) {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": "system:serviceaccount:tollgate:tollgate",
                            "uid": "0b6d6b2e-0000-4000-8000-000000000001",
                            "groups": ["system:serviceaccounts", "system:serviceaccounts:tollgate"],
                        },
                        "audiences": review["spec"]["audiences"].clone(),
                    })
                } else {
                    json!({"authenticated": false, "error": "token not issued by this cluster"})
                };
                Json(json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "status": status,
                }))
            }
        }),
    );
    serve_loopback(app).await
}

/// Serve `app` on a loopback port for the rest of the test; its base URL.
async fn serve_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The first certificate of the system's CA bundle.
fn any_ca_cert() -> String {
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("the system CA bundle (package ca-certificates)");
    let end = "-----END CERTIFICATE-----";
    let start = bundle
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let stop = bundle[start..].find(end).expect("a whole certificate") + start + end.len();
    bundle[start..stop].to_owned()
}

#[tokio::test]
async fn vault_kubernetes_login_is_checked_by_the_clusters_token_review() {
    // Vault's Kubernetes auth asks the API server (TokenReview) whether the pod's token is
    // real; here a loopback TokenReview endpoint stands in for the API server.
    let issuer = support::oidc::TestIssuer::start().await;
    let ours = issuer.service_account_token("tollgate", "tollgate");
    let k8s = token_review_server(vec![ours.clone()]).await;
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/k1"),
        "sk-via-kubernetes",
        &[("billing_owner", "team-a")],
    )
    .await;
    let mount = login_mount(
        &bao,
        "kubernetes",
        json!({
            "kubernetes_host": k8s,
            "disable_local_ca_jwt": true,
            // Required with disable_local_ca_jwt; unused over the loopback's plain HTTP.
            "kubernetes_ca_cert": any_ca_cert(),
        }),
        json!({
            "bound_service_account_names": ["tollgate"],
            "bound_service_account_namespaces": ["tollgate"],
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_path = dir.path().join("token");
    let auth = || VaultAuthConfig::Kubernetes {
        mount: mount.clone(),
        role: "tollgate".into(),
        jwt_path: jwt_path.clone(),
    };
    std::fs::write(&jwt_path, &ours).unwrap();
    let store = VaultStore::connect(vault_config(&bao, &p, auth()))
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-via-kubernetes");

    // A token of the right shape that the API server did not issue is refused by the review.
    std::fs::write(
        &jwt_path,
        issuer.service_account_token("tollgate", "tollgate") + "x",
    )
    .unwrap();
    let err = VaultStore::connect(vault_config(&bao, &p, auth()))
        .await
        .err()
        .expect("a token the cluster does not vouch for is refused");
    assert!(err.to_string().contains(&format!("auth/{mount}")), "{err}");
    assert!(
        !err.to_string().contains(&ours),
        "the error never carries the token"
    );
}

#[tokio::test]
async fn vault_bad_credentials_fail_start_with_a_clear_error_that_hides_them() {
    let bao = Bao::shared();
    let err = VaultStore::connect(vault_config(
        &bao,
        "tollgate-test/none",
        VaultAuthConfig::Token {
            token: Some("s.not-a-real-token-4242".to_owned().into()),
            token_file: None,
        },
    ))
    .await
    .err()
    .expect("a bad token is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("403") || msg.contains("permission denied"),
        "{msg}"
    );
    assert!(!msg.contains("not-a-real-token-4242"), "{msg}");

    let err = VaultStore::connect(vault_config(
        &bao,
        "tollgate-test/none",
        VaultAuthConfig::Approle {
            mount: "approle".into(),
            role_id: "no-such-role".into(),
            secret_id: Some("secret-id-4242".to_owned().into()),
            secret_id_file: None,
        },
    ))
    .await
    .err()
    .expect("a bad AppRole login is refused");
    assert!(!err.to_string().contains("secret-id-4242"), "{err}");
}

#[tokio::test]
async fn vault_over_tls_with_a_custom_ca_and_a_namespace() {
    let mut bao = Bao::spawn_tls().await;
    bao.api(
        reqwest::Method::POST,
        "sys/namespaces/team-ns",
        Some(json!({})),
    )
    .await;
    bao.namespace = Some("team-ns".into());
    bao.api(
        reqwest::Method::POST,
        "sys/mounts/secret",
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/k1"),
        "sk-in-namespace",
        &[("billing_owner", "team-a")],
    )
    .await;

    let mut cfg = vault_config(&bao, &p, token_auth(&bao));
    cfg.ca_cert = bao.ca_cert.clone();
    cfg.namespace = Some("team-ns".into());
    let store = VaultStore::connect(cfg.clone()).await.unwrap();
    let l = store.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-in-namespace");

    // The root namespace does not hold it.
    let root = VaultStore::connect(VaultConfig {
        namespace: None,
        ..cfg.clone()
    })
    .await
    .unwrap();
    assert!(root.list().await.unwrap().keys.is_empty());

    // Without the CA, the server's certificate is not trusted: a clear start-up error.
    let err = VaultStore::connect(VaultConfig {
        ca_cert: None,
        ..cfg
    })
    .await
    .err()
    .expect("an untrusted certificate is refused");
    assert!(err.to_string().contains("cannot reach Vault"), "{err}");
}

#[tokio::test]
async fn an_empty_vault_prefix_lists_nothing() {
    let bao = Bao::shared();
    let store = VaultStore::connect(vault_config(&bao, &unique_prefix(), token_auth(&bao)))
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    assert!(l.keys.is_empty() && l.invalid.is_empty());
}

// ---- AWS Secrets Manager -----------------------------------------------------------------

#[tokio::test]
async fn aws_secrets_are_listed_with_tags_and_staging_labels() {
    let moto = Moto::shared();
    let p = format!("{}/", unique_prefix());
    moto.create(
        &format!("{p}openai/team-a"),
        r#"{"api_key": "sk-aws-team-a"}"#,
        &[
            ("billing_owner", "team-a"),
            ("allowed_models", "gpt-test embed-test"),
        ],
    )
    .await;
    moto.create(
        &format!("{p}anthropic-main"),
        "sk-aws-plain",
        &[("billing_owner", "*"), ("provider", "anthropic")],
    )
    .await;
    moto.create(&format!("{p}openai/untagged"), "sk-x", &[])
        .await;
    // Outside the prefix: never listed.
    moto.create(
        &format!("elsewhere-{}/openai/k", uuid::Uuid::new_v4().simple()),
        "sk-y",
        &[("billing_owner", "*")],
    )
    .await;

    let store = AwsStore::connect(aws_config(&moto, &p)).await.unwrap();
    let l = store.list().await.unwrap();
    let mut ids: Vec<&str> = l.keys.iter().map(|k| k.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [format!("{p}anthropic-main"), format!("{p}openai/team-a")]
    );
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(k.provider, "openai");
    assert_eq!(k.secret.expose_secret(), "sk-aws-team-a");
    let plain = l
        .keys
        .iter()
        .find(|k| k.id.ends_with("anthropic-main"))
        .unwrap();
    assert_eq!(plain.secret.expose_secret(), "sk-aws-plain");
    assert_eq!(l.invalid.len(), 1, "{:?}", l.invalid);
    assert!(l.invalid[0].reason.contains("billing_owner"));

    // A pending version (what rotation stages) is reported and not served.
    let sm = moto.client();
    sm.put_secret_value()
        .secret_id(format!("{p}openai/team-a"))
        .secret_string(r#"{"api_key": "sk-aws-team-a-next"}"#)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(k.secret.expose_secret(), "sk-aws-team-a");
    let stages: Vec<Stage> = k.versions.iter().map(|v| v.stage).collect();
    assert_eq!(stages, [Stage::Current, Stage::Pending]);

    // A new current version (put without stages) is served; the old one is previous.
    sm.put_secret_value()
        .secret_id(format!("{p}openai/team-a"))
        .secret_string(r#"{"api_key": "sk-aws-team-a-2"}"#)
        .send()
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id.ends_with("team-a")).unwrap();
    assert_eq!(k.secret.expose_secret(), "sk-aws-team-a-2");
    assert!(k.versions.iter().any(|v| v.stage == Stage::Previous));

    // Deleted secrets leave the listing.
    sm.delete_secret()
        .secret_id(format!("{p}anthropic-main"))
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    assert!(!l.keys.iter().any(|k| k.id.ends_with("anthropic-main")));
}

#[tokio::test]
async fn an_unreachable_aws_endpoint_is_a_clear_error() {
    let mut moto = Moto::spawn().await;
    let endpoint = moto.endpoint.clone();
    moto.kill();
    let cfg = AwsConfig {
        endpoint_url: Some(endpoint.parse().unwrap()),
        ..aws_config(&Moto::shared(), "tollgate-test/x/")
    };
    let store = AwsStore::connect(cfg).await.unwrap();
    let err = store.list().await.expect_err("nothing listens there");
    assert!(err.to_string().contains("aws"), "{err}");
}

/// A Secrets Manager endpoint that answers the first `throttle` calls with AWS's
/// `ThrottlingException` (HTTP 400, awsJson1.1 error shape) and forwards the rest to moto.
/// Returns its URL and the number of calls it received.
async fn throttling_proxy(
    moto: &Moto,
    throttle: usize,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let upstream = moto.endpoint.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (seen, upstream, http) = (Arc::clone(&seen), upstream.clone(), http.clone());
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            if n < throttle {
                return axum::response::Response::builder()
                    .status(400)
                    .header("content-type", "application/x-amz-json-1.1")
                    .header("x-amzn-errortype", "ThrottlingException")
                    .body(Body::from(
                        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                    ))
                    .unwrap();
            }
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, 1 << 20).await.unwrap();
            let mut fwd = http.request(parts.method, format!("{upstream}{}", parts.uri));
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    fwd = fwd.header(k, v);
                }
            }
            let r = fwd.body(body).send().await.unwrap();
            let mut out = axum::response::Response::builder().status(r.status().as_u16());
            for (k, v) in r.headers() {
                out = out.header(k, v);
            }
            out.body(Body::from(r.bytes().await.unwrap())).unwrap()
        }
    });
    (serve_loopback(app).await, calls)
}

#[tokio::test]
async fn aws_throttling_is_retried_with_backoff_and_never_forever() {
    use std::sync::atomic::Ordering;
    let moto = Moto::shared();
    let p = team_a_on(&moto).await;

    // Throttled twice, then answered: the listing succeeds on the third attempt.
    let (endpoint, calls) = throttling_proxy(&moto, 2).await;
    let cfg = AwsConfig {
        endpoint_url: Some(endpoint.parse().unwrap()),
        max_attempts: 4,
        ..aws_config(&moto, &p)
    };
    let listing = AwsStore::connect(cfg).await.unwrap().list().await.unwrap();
    assert_eq!(listing.keys.len(), 1);
    assert!(calls.load(Ordering::SeqCst) >= 3);

    // Throttled for good: the call gives up after `max_attempts` and says why.
    let (endpoint, calls) = throttling_proxy(&moto, usize::MAX).await;
    let cfg = AwsConfig {
        endpoint_url: Some(endpoint.parse().unwrap()),
        max_attempts: 3,
        ..aws_config(&moto, &p)
    };
    let err = AwsStore::connect(cfg)
        .await
        .unwrap()
        .list()
        .await
        .expect_err("always throttled");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call, three attempts");
    let msg = err.to_string();
    assert!(msg.contains("aws") && msg.contains("Throttling"), "{msg}");
    assert!(!msg.contains(OPENAI_KEY), "{msg}");
}

// ---- end to end --------------------------------------------------------------------------

async fn app_with_secrets(secrets: String) -> TestApp {
    spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            secrets: Some(secrets),
            ..Options::default()
        },
    )
    .await
}

/// A fresh prefix on `bao` holding team-a's OpenAI key (its `secrets_toml` prefix).
async fn team_a_on_bao(bao: &Bao) -> String {
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/team-a"),
        OPENAI_KEY,
        &[("billing_owner", "team-a")],
    )
    .await;
    p
}

/// A fresh prefix on `moto` holding team-a's OpenAI key (its `secrets_toml` prefix).
async fn team_a_on(moto: &Moto) -> String {
    let p = format!("{}/", unique_prefix());
    moto.create(
        &format!("{p}openai/team-a"),
        &json!({"api_key": OPENAI_KEY}).to_string(),
        &[("billing_owner", "team-a")],
    )
    .await;
    p
}

async fn call(app: &TestApp, token: &str) -> reqwest::Response {
    app.post(
        "/v1/chat/completions",
        token,
        &TestApp::chat("gpt-test", "hello from a pod"),
    )
    .await
}

fn last_key_seen(app: &TestApp) -> Option<String> {
    app.upstream
        .requests()
        .last()
        .and_then(|r| r.header("authorization"))
}

#[tokio::test]
async fn tollgate_serves_with_the_vault_key_and_rides_out_a_vault_outage() {
    let mut bao = Bao::spawn().await;
    let p = team_a_on_bao(&bao).await;
    bao.put_key_with(
        &format!("{p}/anthropic/team-a"),
        ANTHROPIC_KEY,
        &[("billing_owner", "team-a")],
    )
    .await;
    let app = app_with_secrets(bao.secrets_toml(&p)).await;
    let token = app.token_for("team-a").await;
    let r = call(&app, &token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(last_key_seen(&app), Some(format!("Bearer {OPENAI_KEY}")));
    let m = app.metrics().await;
    assert_eq!(
        m.value(r#"tollgate_secret_store_up{backend="vault"}"#),
        Some(1.0)
    );
    assert_eq!(
        m.value(r#"tollgate_provider_keys{backend="vault",provider="openai",state="active"}"#),
        Some(1.0),
        "{}",
        m.0
    );

    bao.kill();
    assert!(app.state.keys.refresh().await.is_err());
    let m = app.metrics().await;
    assert_eq!(
        m.value(r#"tollgate_secret_store_up{backend="vault"}"#),
        Some(0.0)
    );
    assert_eq!(
        m.value(r#"tollgate_secret_store_refresh_failures_total{backend="vault"}"#),
        Some(1.0)
    );
    let age = m.value(r#"tollgate_secret_store_age_seconds{backend="vault"}"#);
    assert!(age.is_some_and(|a| a < 3600.0), "{age:?}");
    assert!(
        !m.0.contains(OPENAI_KEY) && !m.0.contains(&token),
        "{}",
        m.0
    );
    let ready: serde_json::Value = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["secret_store"]["status"], "serving_from_cache");
    let r = call(&app, &token).await;
    assert_eq!(r.status(), 200, "traffic continues from the cache");
    app.stop().await;
}

#[tokio::test]
async fn tollgate_serves_with_the_aws_key_and_rides_out_an_aws_outage() {
    let mut moto = Moto::spawn().await;
    let p = team_a_on(&moto).await;
    let app = app_with_secrets(moto.secrets_toml(&p)).await;
    let token = app.token_for("team-a").await;
    assert_eq!(call(&app, &token).await.status(), 200);
    assert_eq!(last_key_seen(&app), Some(format!("Bearer {OPENAI_KEY}")));

    moto.kill();
    assert!(app.state.keys.refresh().await.is_err());
    assert_eq!(call(&app, &token).await.status(), 200);
    assert!(app.state.keys.health().degraded);
    app.stop().await;
}

/// `n` clients calling in a loop until `stop`: each call's status and how long it took.
fn load(
    app: &TestApp,
    token: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, Duration)>>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (0..n)
        .map(|_| {
            let (http, url, token, stop) = (
                http.clone(),
                format!("{}/v1/chat/completions", app.url),
                token.to_owned(),
                Arc::clone(stop),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let status = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&TestApp::chat("gpt-test", "under load"))
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    seen.push((status, t.elapsed()));
                }
                seen
            })
        })
        .collect()
}

async fn finish(
    stop: &AtomicBool,
    clients: Vec<tokio::task::JoinHandle<Vec<(u16, Duration)>>>,
) -> Vec<(u16, Duration)> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

/// Wait (≤ 20 s) until the series satisfies `ok`.
async fn until_metric(app: &TestApp, series: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.metrics().await;
        if m.value(series).is_some_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never got there:\n{}",
            m.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every call answered 200, none waited on the store (the slowest well under a refresh).
fn assert_all_served(calls: &[(u16, Duration)]) {
    assert!(calls.len() > 40, "only {} calls", calls.len());
    let failed: Vec<_> = calls.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        calls.len()
    );
    let slowest = calls.iter().map(|(_, d)| *d).max().unwrap();
    assert!(
        slowest < Duration::from_millis(750),
        "slowest call {slowest:?}"
    );
}

async fn readiness(app: &TestApp) -> serde_json::Value {
    app.http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_sealed_under_load_fails_no_call_and_unsealing_brings_refreshes_back() {
    let bao = Bao::spawn().await;
    let p = team_a_on_bao(&bao).await;
    let secrets = bao
        .secrets_toml(&p)
        .replace("refresh_interval = \"1h\"", "refresh_interval = \"1s\"");
    let app = app_with_secrets(secrets).await;
    let token = app.token_for("team-a").await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&app, &token, 8, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    bao.seal().await;
    let failures = r#"tollgate_secret_store_refresh_failures_total{backend="vault"}"#;
    until_metric(&app, failures, |n| n >= 2.0).await;
    until_metric(&app, r#"tollgate_secret_store_up{backend="vault"}"#, |v| {
        v == 0.0
    })
    .await;
    let ready = readiness(&app).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(
        ready["secret_store"]["status"], "serving_from_cache",
        "{ready}"
    );
    assert!(!ready.to_string().contains(OPENAI_KEY));

    bao.unseal().await;
    until_metric(&app, r#"tollgate_secret_store_up{backend="vault"}"#, |v| {
        v == 1.0
    })
    .await;
    let calls = finish(&stop, clients).await;
    assert_all_served(&calls);
    assert_eq!(readiness(&app).await["secret_store"]["status"], "ok");
    assert!(
        app.upstream
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {OPENAI_KEY}")))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_endpoint_that_hangs_then_dies_under_load_fails_no_call() {
    let mut moto = Moto::spawn().await;
    let p = team_a_on(&moto).await;
    let secrets = moto
        .secrets_toml(&p)
        .replace("refresh_interval = \"1h\"", "refresh_interval = \"1s\"")
        .replace("timeout = \"2s\"", "timeout = \"500ms\"");
    let app = app_with_secrets(secrets).await;
    let token = app.token_for("team-a").await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&app, &token, 8, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Hung: connections are accepted and never answered, so every listing runs into its
    // timeout while the proxy keeps serving from the cache.
    moto.pause();
    let failures = r#"tollgate_secret_store_refresh_failures_total{backend="aws"}"#;
    until_metric(&app, failures, |n| n >= 2.0).await;
    assert_eq!(
        readiness(&app).await["secret_store"]["status"],
        "serving_from_cache"
    );
    moto.resume();
    until_metric(&app, r#"tollgate_secret_store_up{backend="aws"}"#, |v| {
        v == 1.0
    })
    .await;

    // Gone: connections refused.
    moto.kill();
    let seen = app.metrics().await.value(failures).unwrap();
    until_metric(&app, failures, |n| n >= seen + 2.0).await;
    let calls = finish(&stop, clients).await;
    assert_all_served(&calls);
    assert_eq!(readiness(&app).await["status"], "degraded");
    app.stop().await;
}

#[tokio::test]
async fn shared_keys_serve_only_the_bindings_that_allow_them() {
    let bao = Bao::shared();
    let p = unique_prefix();
    bao.put_key_with(
        &format!("{p}/openai/platform"),
        OPENAI_KEY,
        &[("billing_owner", "*")],
    )
    .await;
    let policy = format!(
        "{POLICY}  - name: own-keys-only\n    match: {{ namespace: own-keys-only }}\n    team: o\n    pool: main\n    shared_keys: false\n    models: [gpt-test]\n"
    );
    let app = spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            secrets: Some(bao.secrets_toml(&p)),
            policy: Some(policy),
            ..Options::default()
        },
    )
    .await;
    // slow-lane pays as its team `s`, which has no key: the shared key stands in.
    let shared_ok = app.token_for("slow-lane").await;
    assert_eq!(call(&app, &shared_ok).await.status(), 200);
    assert_eq!(last_key_seen(&app), Some(format!("Bearer {OPENAI_KEY}")));

    let before = app.upstream.requests().len();
    let own_only = app.token_for("own-keys-only").await;
    let r = call(&app, &own_only).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_provider_key", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("does not allow shared keys"), "{msg}");
    assert_eq!(
        app.upstream.requests().len(),
        before,
        "nothing sent upstream"
    );

    // Security gives the team a key of its own: it serves without a restart.
    bao.put_key_with(
        &format!("{p}/openai/team-o"),
        OPENAI_KEY,
        &[("billing_owner", "o")],
    )
    .await;
    app.state.keys.refresh().await.unwrap();
    assert_eq!(call(&app, &own_only).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_key_stops_serving_at_the_next_refresh() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let path = format!("{p}/openai/team-a");
    bao.put_key_with(&path, OPENAI_KEY, &[("billing_owner", "team-a")])
        .await;
    let app = app_with_secrets(bao.secrets_toml(&p)).await;
    let token = app.token_for("team-a").await;
    assert_eq!(call(&app, &token).await.status(), 200);

    bao.delete_key(&path).await;
    app.state.keys.refresh().await.unwrap();
    let r = call(&app, &token).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_provider_key", "{v}");

    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // spend flush
    tollgate::app::sync_inventory(&app.state.keys, app.store()).await;
    let inv = app.store().provider_keys().await.unwrap();
    let row = inv.iter().find(|r| r.key.id == path).unwrap();
    assert_eq!(row.key.state, "missing");
    assert_eq!(row.requests, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_key_the_provider_refuses_is_quarantined_until_a_new_version_arrives() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let path = format!("{p}/openai/team-a");
    bao.put_key_with(
        &path,
        "sk-revoked-at-openai",
        &[("billing_owner", "team-a")],
    )
    .await;
    let app = app_with_secrets(bao.secrets_toml(&p)).await;
    let token = app.token_for("team-a").await;

    let r = call(&app, &token).await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(!body.contains("sk-revoked-at-openai"), "{body}");
    // Quarantined: Tollgate does not send the refused key again.
    let before = app.upstream.requests().len();
    assert_eq!(call(&app, &token).await.status(), 503);
    assert_eq!(app.upstream.requests().len(), before);
    app.state.keys.refresh().await.unwrap();
    assert_eq!(
        call(&app, &token).await.status(),
        503,
        "same version: still out"
    );
    tollgate::app::sync_inventory(&app.state.keys, app.store()).await;
    let inv = app.store().provider_keys().await.unwrap();
    assert_eq!(
        inv.iter().find(|r| r.key.id == path).unwrap().key.state,
        "quarantined"
    );
    let m = app.metrics().await;
    let quarantined =
        r#"tollgate_provider_keys{backend="vault",provider="openai",state="quarantined"}"#;
    assert_eq!(m.value(quarantined), Some(1.0), "{}", m.0);

    // Security writes a new version: it serves.
    bao.put_key(&path, OPENAI_KEY).await;
    app.state.keys.refresh().await.unwrap();
    assert_eq!(call(&app, &token).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_inventory_mirrors_the_store_with_spend_and_never_the_secret() {
    for kind in support::db::kinds() {
        let bao = Bao::shared();
        let p = unique_prefix();
        bao.put_key_with(
            &format!("{p}/openai/team-a"),
            OPENAI_KEY,
            &[("billing_owner", "team-a"), ("allowed_models", "gpt-test")],
        )
        .await;
        bao.put_key_with(&format!("{p}/openai/broken"), "sk-x", &[])
            .await;
        let app = spawn_app_with(
            kind,
            Options {
                secrets: Some(bao.secrets_toml(&p)),
                ..Options::default()
            },
        )
        .await;
        let token = app.token_for("team-a").await;
        assert_eq!(call(&app, &token).await.status(), 200);
        // Spend rows are flushed every 50 ms in tests.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tollgate::app::sync_inventory(&app.state.keys, app.store()).await;
        let inv = app.store().provider_keys().await.unwrap();
        let ok = inv
            .iter()
            .find(|r| r.key.id == format!("{p}/openai/team-a"))
            .unwrap();
        assert_eq!(
            (
                ok.key.state.as_str(),
                ok.key.provider.as_str(),
                ok.key.billing_owner.as_str()
            ),
            ("active", "openai", "team-a")
        );
        assert_eq!(ok.key.allowed_models, "gpt-test");
        assert_eq!(ok.requests, 1, "{kind:?}");
        assert!(ok.spend_micro_usd > 0 && ok.last_used.is_some());
        let versions: serde_json::Value = serde_json::from_str(&ok.key.versions).unwrap();
        assert_eq!(versions, json!([{"id": "1", "stage": "current"}]));
        let bad = inv
            .iter()
            .find(|r| r.key.id == format!("{p}/openai/broken"))
            .unwrap();
        assert_eq!(bad.key.state, "invalid");
        assert!(
            bad.key
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("billing_owner")
        );
        let dump = format!("{inv:?}");
        assert!(!dump.contains(OPENAI_KEY) && !dump.contains("sk-x\""));
        app.stop().await;
    }
}

#[tokio::test]
async fn a_cache_over_a_real_store_refreshes_changes_without_a_restart() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let store: Arc<dyn SecretStore> = Arc::new(
        VaultStore::connect(vault_config(&bao, &p, token_auth(&bao)))
            .await
            .unwrap(),
    );
    let cache = KeyCache::load(store, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        cache
            .select("openai", "gpt-test", Owner::or_shared("team-a"), |_| true)
            .is_err()
    );
    bao.put_key_with(
        &format!("{p}/openai/new"),
        "sk-new",
        &[("billing_owner", "team-a")],
    )
    .await;
    assert_eq!(cache.refresh().await.unwrap(), 1);
    let k = cache
        .select("openai", "gpt-test", Owner::or_shared("team-a"), |_| true)
        .unwrap();
    assert_eq!(k.secret.expose_secret(), "sk-new");
}

// ---- the break-glass hash from the secret store -----------------------------------------

const BREAK_GLASS_1: &str = "tgbg_first-break-glass-token-for-the-secret-store-test";
const BREAK_GLASS_2: &str = "tgbg_second-break-glass-token-after-it-was-replaced";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

async fn whoami(app: &TestApp, token: &str) -> u16 {
    app.admin(reqwest::Method::GET, "/admin/v1/whoami", Some(token), None)
        .await
        .status()
        .as_u16()
}

/// Wait until `token` gets `status` from whoami (the refresher runs every second).
async fn until_whoami(app: &TestApp, token: &str, status: u16) {
    for _ in 0..100 {
        if whoami(app, token).await == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("whoami never answered {status}");
}

async fn app_with_break_glass_secret(secrets: String, name: &str) -> TestApp {
    spawn_app_with(
        TestDbKind::Sqlite,
        Options {
            secrets: Some(
                secrets.replace("refresh_interval = \"1h\"", "refresh_interval = \"1s\""),
            ),
            admin: Some(format!("break_glass_sha256_secret = \"{name}\"")),
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn the_vault_break_glass_hash_is_replaced_without_a_restart_and_outlives_an_outage() {
    let mut bao = Bao::spawn().await;
    let p = team_a_on_bao(&bao).await;
    // Outside the key prefix: it is no provider key.
    let name = format!("{p}-admin/break-glass");
    let write = |hash: String| {
        let bao = &bao;
        let name = name.clone();
        async move {
            bao.api(
                reqwest::Method::POST,
                &format!("secret/data/{name}"),
                Some(json!({"data": {"sha256": hash}})),
            )
            .await;
        }
    };
    write(sha256_hex(BREAK_GLASS_1)).await;
    let app = app_with_break_glass_secret(bao.secrets_toml(&p), &name).await;
    assert_eq!(whoami(&app, BREAK_GLASS_1).await, 200);
    assert_eq!(whoami(&app, BREAK_GLASS_2).await, 401);
    let (keys, invalid) = app.state.keys.snapshot();
    assert_eq!(
        (keys.len(), invalid.len()),
        (1, 0),
        "the hash is not listed as a key"
    );

    // Security replaces it after a use: the old token stops working on its own.
    write(sha256_hex(BREAK_GLASS_2)).await;
    until_whoami(&app, BREAK_GLASS_2, 200).await;
    assert_eq!(whoami(&app, BREAK_GLASS_1).await, 401);
    // The audit writer batches: wait for the entry to land.
    let mut replaced = Vec::new();
    for _ in 0..50 {
        let page: serde_json::Value = app
            .admin(
                reqwest::Method::GET,
                "/admin/v1/audit?limit=1000",
                Some(BREAK_GLASS_2),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        replaced = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "admin.break_glass.replaced")
            .cloned()
            .collect();
        if !replaced.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(replaced[0]["target"], name.as_str());

    // The credential of outages keeps working while Vault is down.
    bao.kill();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(whoami(&app, BREAK_GLASS_2).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_aws_break_glass_hash_is_read_bare_or_as_json_and_replaced() {
    let moto = Moto::shared();
    let p = team_a_on(&moto).await;
    let name = format!("{}-admin/break-glass", p.trim_end_matches('/'));
    moto.create(&name, &sha256_hex(BREAK_GLASS_1), &[]).await;
    let app = app_with_break_glass_secret(moto.secrets_toml(&p), &name).await;
    assert_eq!(whoami(&app, BREAK_GLASS_1).await, 200);
    let (keys, invalid) = app.state.keys.snapshot();
    assert_eq!(
        (keys.len(), invalid.len()),
        (1, 0),
        "the hash is not listed as a key"
    );
    moto.client()
        .put_secret_value()
        .secret_id(&name)
        .secret_string(json!({"sha256": sha256_hex(BREAK_GLASS_2)}).to_string())
        .send()
        .await
        .unwrap();
    until_whoami(&app, BREAK_GLASS_2, 200).await;
    assert_eq!(whoami(&app, BREAK_GLASS_1).await, 401);
    app.stop().await;
}

#[tokio::test]
async fn an_unusable_break_glass_secret_is_a_clear_error() {
    use tollgate::admin::{AdminAuth, AdminConfig, break_glass};
    let auth = AdminAuth::new(
        &AdminConfig::default(),
        &[],
        Vec::new(),
        reqwest::Client::new(),
    )
    .unwrap();
    let bao = Bao::shared();
    let p = unique_prefix();
    let vault = VaultStore::connect(vault_config(&bao, &p, token_auth(&bao)))
        .await
        .unwrap();
    let err = break_glass::load(&auth, &vault, &format!("{p}-admin/missing"))
        .await
        .unwrap_err();
    assert!(
        err.contains("break_glass_sha256_secret") && err.contains("no such secret"),
        "{err}"
    );
    bao.api(
        reqwest::Method::POST,
        &format!("secret/data/{p}-admin/wrong-field"),
        Some(json!({"data": {"hash": "abc"}})),
    )
    .await;
    let err = break_glass::load(&auth, &vault, &format!("{p}-admin/wrong-field"))
        .await
        .unwrap_err();
    assert!(err.contains("\"sha256\""), "{err}");
    bao.api(
        reqwest::Method::POST,
        &format!("secret/data/{p}-admin/not-hex"),
        Some(json!({"data": {"sha256": "tgbg_the-token-itself-by-mistake"}})),
    )
    .await;
    let err = break_glass::load(&auth, &vault, &format!("{p}-admin/not-hex"))
        .await
        .unwrap_err();
    assert!(err.contains("64 hex digits"), "{err}");
    assert!(
        !err.contains("tgbg_the-token"),
        "the value is never echoed: {err}"
    );

    let moto = Moto::shared();
    let aws = AwsStore::connect(aws_config(&moto, &format!("{p}/")))
        .await
        .unwrap();
    let err = break_glass::load(&auth, &aws, &format!("{p}-admin/missing"))
        .await
        .unwrap_err();
    assert!(err.contains("no such secret"), "{err}");

    let file = tollgate::secrets::FileStore::new(None, false);
    let err = break_glass::load(&auth, &file, "anything")
        .await
        .unwrap_err();
    assert!(err.contains("provider keys only"), "{err}");

    // One source at a time.
    let both = AdminConfig {
        break_glass_sha256: Some(sha256_hex(BREAK_GLASS_1)),
        break_glass_sha256_secret: Some("x".into()),
        ..AdminConfig::default()
    };
    let err = AdminAuth::new(&both, &[], Vec::new(), reqwest::Client::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use one of"), "{err}");
}

// ---- the rotation primitives: read a pending version, move the served one, withdraw one ----

fn stages_of(l: &tollgate::secrets::Listing, id: &str) -> Vec<(String, Stage)> {
    let k = l.keys.iter().find(|k| k.id == id).unwrap();
    k.versions.iter().map(|v| (v.id.clone(), v.stage)).collect()
}

#[tokio::test]
async fn vault_rotation_reads_pending_versions_pins_the_served_one_and_withdraws_rejected_ones() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let id = format!("{p}/openai/team-a");
    bao.put_key_with(
        &id,
        "sk-v1",
        &[("billing_owner", "team-a"), ("purpose", "chat")],
    )
    .await;
    let store = VaultStore::connect(vault_config(&bao, &p, token_auth(&bao)))
        .await
        .unwrap();
    // Pinning the served version first stages every later write.
    store.set_current(&id, "1").await.unwrap();
    bao.put_key(&id, "sk-v2").await;
    bao.put_key(&id, "sk-v3").await;
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id == id).unwrap();
    assert_eq!(k.secret.expose_secret(), "sk-v1");
    assert_eq!(k.purpose.as_deref(), Some("chat"), "other metadata is kept");
    assert_eq!(
        stages_of(&l, &id),
        [
            ("1".into(), Stage::Current),
            ("2".into(), Stage::Pending),
            ("3".into(), Stage::Pending)
        ]
    );
    assert_eq!(
        store.read_version(&id, "2").await.unwrap().expose_secret(),
        "sk-v2"
    );

    // A rolled-back version is withdrawn: not pending, never served, not promotable.
    store.reject_pending(&id, "2").await.unwrap();
    store.reject_pending(&id, "2").await.unwrap();
    let l = store.list().await.unwrap();
    assert_eq!(
        stages_of(&l, &id),
        [("1".into(), Stage::Current), ("3".into(), Stage::Pending)]
    );
    let err = store.set_current(&id, "2").await.unwrap_err().to_string();
    assert!(err.contains("rejected"), "{err}");

    // Promotion moves the pin; twice is the same.
    store.set_current(&id, "3").await.unwrap();
    store.set_current(&id, "3").await.unwrap();
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id == id).unwrap();
    assert_eq!(
        (k.version.as_str(), k.secret.expose_secret()),
        ("3", "sk-v3")
    );
    assert_eq!(
        stages_of(&l, &id),
        [("1".into(), Stage::Previous), ("3".into(), Stage::Current)]
    );
    let err = store
        .reject_pending(&id, "3")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("served"), "{err}");

    // Bad inputs name the problem and never a secret.
    for (v, want) in [("9", "not a live version"), ("x", "not a KV version")] {
        let err = store.set_current(&id, v).await.unwrap_err().to_string();
        assert!(err.contains(want) && !err.contains("sk-v"), "{err}");
    }
    let err = store.read_version(&id, "9").await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = store
        .set_current(&format!("{p}/openai/nope"), "1")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such key"), "{err}");
}

#[tokio::test]
async fn aws_rotation_reads_pending_versions_moves_awscurrent_and_withdraws_rejected_ones() {
    let moto = Moto::shared();
    let p = format!("{}/", unique_prefix());
    let id = format!("{p}openai/team-a");
    moto.create(
        &id,
        r#"{"api_key": "sk-a1"}"#,
        &[("billing_owner", "team-a")],
    )
    .await;
    let store = AwsStore::connect(aws_config(&moto, &p)).await.unwrap();
    let sm = moto.client();
    let stage = |value: &'static str| {
        let sm = sm.clone();
        let id = id.clone();
        async move {
            sm.put_secret_value()
                .secret_id(id)
                .secret_string(json!({"api_key": value}).to_string())
                .version_stages("AWSPENDING")
                .send()
                .await
                .unwrap()
                .version_id()
                .unwrap()
                .to_owned()
        }
    };
    let l = store.list().await.unwrap();
    let v1 = l.keys.iter().find(|k| k.id == id).unwrap().version.clone();
    let v2 = stage("sk-a2").await;
    assert_eq!(
        store.read_version(&id, &v2).await.unwrap().expose_secret(),
        "sk-a2"
    );
    store.reject_pending(&id, &v2).await.unwrap();
    store.reject_pending(&id, &v2).await.unwrap();
    let l = store.list().await.unwrap();
    assert_eq!(stages_of(&l, &id), [(v1.clone(), Stage::Current)]);

    let v3 = stage("sk-a3").await;
    store.set_current(&id, &v3).await.unwrap();
    store.set_current(&id, &v3).await.unwrap();
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id == id).unwrap();
    assert_eq!(
        (k.version.as_str(), k.secret.expose_secret()),
        (v3.as_str(), "sk-a3")
    );
    assert_eq!(
        stages_of(&l, &id),
        [(v1.clone(), Stage::Previous), (v3.clone(), Stage::Current)],
        "AWSPREVIOUS kept on the old version, AWSPENDING gone from the new"
    );
    let err = store
        .reject_pending(&id, &v3)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("AWSCURRENT"), "{err}");
    let err = store
        .set_current(&id, "no-such-version")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not exist") && !err.contains("sk-a"),
        "{err}"
    );
    let err = store
        .set_current(&format!("{p}openai/nope"), &v3)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such secret"), "{err}");

    // A key issuer's new key: written as AWSPENDING, AWSCURRENT untouched.
    let v4 = store
        .write_pending(&id, &SecretString::from("sk-a4".to_owned()))
        .await
        .unwrap();
    let l = store.list().await.unwrap();
    let k = l.keys.iter().find(|k| k.id == id).unwrap();
    assert_eq!(k.secret.expose_secret(), "sk-a3");
    assert!(
        stages_of(&l, &id).contains(&(v4.clone(), Stage::Pending)),
        "{:?}",
        stages_of(&l, &id)
    );
    assert_eq!(
        store.read_version(&id, &v4).await.unwrap().expose_secret(),
        "sk-a4"
    );
}

/// The rotation policy the README documents, on top of [`VAULT_POLICY`].
const VAULT_ROTATE_POLICY: &str = r#"
path "secret/metadata/tollgate-test/*" { capabilities = ["update"] }
path "secret/data/tollgate-test/*"     { capabilities = ["create", "update"] }
"#;

#[tokio::test]
async fn vault_rotation_needs_exactly_the_documented_rotate_policy() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let id = format!("{p}/openai/k1");
    bao.put_key_with(&id, "sk-r1", &[("billing_owner", "team-a")])
        .await;
    bao.put_key(&id, "sk-r2").await;
    let reader = approle_store(&bao, &p, VAULT_POLICY).await;
    let err = reader.set_current(&id, "1").await.unwrap_err().to_string();
    assert!(err.contains("403") || err.contains("permission"), "{err}");
    let rotator = approle_store(&bao, &p, &format!("{VAULT_POLICY}{VAULT_ROTATE_POLICY}")).await;
    rotator.set_current(&id, "1").await.unwrap();
    rotator.reject_pending(&id, "2").await.unwrap();
    let l = rotator.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-r1");
    assert_eq!(stages_of(&l, &id), [("1".into(), Stage::Current)]);
    // A key issuer's new key with the same policy: a new version, pending behind the pin.
    let err = reader
        .write_pending(&id, &SecretString::from("sk-r3".to_owned()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403") || err.contains("permission"), "{err}");
    let v = rotator
        .write_pending(&id, &SecretString::from("sk-r3".to_owned()))
        .await
        .unwrap();
    assert_eq!(v, "3");
    let l = rotator.list().await.unwrap();
    assert_eq!(l.keys[0].secret.expose_secret(), "sk-r1");
    assert_eq!(
        stages_of(&l, &id),
        [("1".into(), Stage::Current), ("3".into(), Stage::Pending)]
    );
}

#[tokio::test]
async fn a_vault_key_without_a_pin_is_pinned_before_an_issued_key_is_written() {
    let bao = Bao::shared();
    let p = unique_prefix();
    let id = format!("{p}/openai/k1");
    bao.put_key_with(&id, "sk-u1", &[("billing_owner", "team-a")])
        .await;
    let store = VaultStore::connect(vault_config(&bao, &p, token_auth(&bao)))
        .await
        .unwrap();
    let v = store
        .write_pending(&id, &SecretString::from("sk-u2".to_owned()))
        .await
        .unwrap();
    assert_eq!(v, "2");
    let l = store.list().await.unwrap();
    assert_eq!(
        l.keys[0].secret.expose_secret(),
        "sk-u1",
        "the old version still serves"
    );
    assert_eq!(
        stages_of(&l, &id),
        [("1".into(), Stage::Current), ("2".into(), Stage::Pending)]
    );
    let err = store
        .write_pending(
            &format!("{p}/openai/nope"),
            &SecretString::from("sk-x".to_owned()),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such key") && !err.contains("sk-x"),
        "{err}"
    );
}
