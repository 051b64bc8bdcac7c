//! Signing keys shared through the store: every replica signs with the same key, the
//! successor is published before it signs, and a rotated-out key stays in the JWKS (and keeps
//! verifying) until its last token has expired. Both stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;
use support::db::{TestDb, kinds};
use tollgate::config::SigningAlgorithm;
use tollgate::store::Store;
use tollgate::token::keys::Kek;
use tollgate::token::{Grant, Keyring, TokenService};

const KEK: &str = "3q2+78r+ur7erb7v3q2+78r+ur7erb7v3q2+78r+ur4=";

fn grant() -> Grant {
    Grant {
        team: "a".into(),
        pool: "p".into(),
        billing_owner: "a".into(),
        shared_keys: true,
        binding: "b".into(),
        issuer: "k8s".into(),
        pod_uid: None,
        models: vec!["m".into()],
        rpm: None,
        tpm: None,
        concurrency: None,
        max_tokens: 10,
        default_max_tokens: 5,
        max_request_usd: None,
    }
}

async fn service(store: &Store, alg: SigningAlgorithm, rotate_every: Duration) -> TokenService {
    let ring = Keyring::start(
        store.clone(),
        Kek::from_base64(KEK).unwrap(),
        alg,
        rotate_every,
    )
    .await
    .unwrap();
    TokenService::new(
        ring,
        "https://tollgate.test".into(),
        "tollgate".into(),
        Duration::from_secs(5),
    )
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn jwks_kids(s: &TokenService) -> Vec<String> {
    s.keyring().jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_signing_key_through_the_store() {
    for kind in kinds() {
        let db = TestDb::new(kind).await;
        let store = Store::connect(&db.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        for alg in [SigningAlgorithm::EdDSA] {
            let a = service(&store, alg, Duration::from_secs(3600)).await;
            let b = service(&store, alg, Duration::from_secs(3600)).await;
            let t = a
                .mint(
                    "system:serviceaccount:a:b",
                    grant(),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            let token = secrecy::ExposeSecret::expose_secret(&t.token).to_owned();
            let claims = b.verify(&token).await.unwrap();
            assert_eq!(claims.sub, "system:serviceaccount:a:b");
            assert_eq!(
                jwks_kids(&a),
                jwks_kids(&b),
                "{kind:?}: one key for the fleet"
            );
            assert_eq!(jwks_kids(&a).len(), 1);
            // The private key is sealed: its bytes are not a PKCS#8 document in the clear.
            let row = &store.signing_keys(0).await.unwrap()[0];
            assert_eq!(row.sealed_private_key[0], 1, "sealed format version");
            assert!(!row.public_jwk.contains("\"d\""));
        }
        // A wrong key-encryption key cannot open the stored key.
        let other = Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap();
        assert!(
            Keyring::start(
                store.clone(),
                other,
                SigningAlgorithm::EdDSA,
                Duration::from_secs(3600)
            )
            .await
            .is_err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_the_successor_first_and_keeps_the_old_key_verifying() {
    for kind in kinds() {
        let db = TestDb::new(kind).await;
        let store = Store::connect(&db.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        // 4 s keys: the successor is created 1 s before the switch.
        let s = service(&store, SigningAlgorithm::ES256, Duration::from_secs(4)).await;
        let old = s
            .mint("sub", grant(), Duration::from_secs(600))
            .await
            .unwrap();
        let old_token = secrecy::ExposeSecret::expose_secret(&old.token).to_owned();
        let old_kid = kid(&old_token);
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        s.keyring().maintain().await.unwrap();
        let published = jwks_kids(&s);
        assert_eq!(
            published.len(),
            2,
            "{kind:?}: successor published before it signs"
        );
        let still = s
            .mint("sub", grant(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            kid(secrecy::ExposeSecret::expose_secret(&still.token)),
            old_kid
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let new = s
            .mint("sub", grant(), Duration::from_secs(60))
            .await
            .unwrap();
        let new_kid = kid(secrecy::ExposeSecret::expose_secret(&new.token));
        assert_ne!(
            new_kid, old_kid,
            "{kind:?}: the successor signs after the switch"
        );
        assert!(published.contains(&new_kid));
        s.keyring().maintain().await.unwrap();
        assert!(jwks_kids(&s).contains(&old_kid), "old key stays published");
        assert!(
            s.verify(&old_token).await.is_ok(),
            "tokens of the old key still verify"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tokens_are_cached_until_they_expire() {
    let db = TestDb::new(kinds()[0]).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let ring = Keyring::start(
        store,
        Kek::from_base64(KEK).unwrap(),
        SigningAlgorithm::EdDSA,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let s = TokenService::new(
        ring,
        "https://tollgate.test".into(),
        "tollgate".into(),
        Duration::ZERO,
    );
    let t = s
        .mint("sub", grant(), Duration::from_secs(1))
        .await
        .unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&t.token).to_owned();
    let first = s.verify(&token).await.unwrap();
    let second = s.verify(&token).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &second),
        "second check answered from the cache"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        s.verify(&token).await.unwrap_err(),
        tollgate::token::TokenError::Expired,
        "a cached token is still refused once expired"
    );
}
