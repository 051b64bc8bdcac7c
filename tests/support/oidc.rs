//! A test OIDC issuer on loopback: discovery + JWKS over real HTTP, and builders for the
//! tokens a Kubernetes API server mints — and for the forgeries an attacker would try.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fixed RSA-2048 test key (generated for these tests only).
const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCdQfgTt1TJhO7H\nniWttp/02YqOFrjoJCSzBM1L+J7yRBaHLpiZZYiPd25amc2qRgydibzVkaHcueHo\nDxC2NyjtDt4cEEOpDT442LlrHzqTTLWFGrh4DmundTBzw2DFM+4tGrpP7/i0tO5H\nU4JPWm6HbNwRMrxR1iyn/1idOmdJNX/2/p1Kw8MIBY02jMV1z1szKaYoG3iyOWSN\ngAFzSGDChThwvJ0utfd/m/e9QZrYt0iD+/P4wweDG5ToLNbkX5gzWbFnum9axkIQ\noChTU42/iUvdEZaZvT+zv29hiVHB3Ze5JqEVsBsChW9HlsKagMUne8S7wGjBLMfp\nhTk1ptj1AgMBAAECggEAE8pDBXwrW+byQ8XHuRpD/ATKdoIuh+xQgATpLxfdLODb\nsuxuwNMxwdhGV3mGk9iX6tV0Ia5fn872uoT21e+QI3EdC4wSb7pea7n+b5gw/2uG\nZndL4rPx4VOSoubiDT8xSJTWAIxTEK66U9iTDBh1024kLbfkUioxWXz9cl/wspop\n/aFKp1jInTGiX834xL1ZAfwCSjZnaptBAPD4cGzDsZ5OwDiPm+Q+Xj39tKb825Y1\nnF8uP04Oxz8G2rqVLk4i+f6v1YFVpyrojAp3RyiFM4JC7Cny2Lu/h5A+EWFjsTsl\nem7/UG6g+SH8LRiSTl9Fhbw29+O81voIYSHRgzvqOwKBgQDJft1yzdnZqrnV9Icp\nQNHVRDFWHFWnGZq/acRJzxx/0M/QQeCbT27xtUws8RfMnrhBeV4STS9HekdDvyDf\nurVi05f1Qkkxe2i6NoIiC/sVIdiIe5s91TpE1NMSa4vopnYaAKWlBXJdQzwTtrgw\njvDYSLz6ga45+HM0Pgjk4OL1BwKBgQDHy7nrSWu4iifsyauTxe04OxQtheB+TQBu\nqKlgaE4UrOyxV76aO2hpzPhO8dLwzW7Ho+2mXorqsGs2pP2A946TDD1HPqgpWu66\nTwMuSPdGULKYv/9q84SxyyxwxqPf0I6YOeTFBEbyiaK+EWGzZioqNFB76REG9Bdi\nIBiAUBCfIwKBgH3qE4R8cth8waicKCJ1aSr2dEY1aqkDbRqUg58EF/Efkd24bR1g\n5BmTi8jB2Hd77/SqXUjeht8J4KLLO0XULSlWxKz1ATw0vFsxWNzh08N+5QtVAsv/\nBWyh+kyWfFWkQEU7hke7QZ5aN56yHiPqD0N5IO8CPtfnFEbfRTuR9QHdAoGAC1Wt\neIGz0MZVuYM/bqS97oC7hlGgCMpJif2bjlKci2O8EduOfqV8KPRt6dyiQPMGo+DS\n7KtUajgT/QejMhvZRNJe75nIZIA6JuuwnIGbNawCVdQeo2ypTITgQo2iYmIslMpE\nBkFV3RCd4PaPemQDZF2Pa1gvlRtn8DMt8KmaJ80CgYEAhUX6qPJ6U+KzUtQstWeK\nUyQKjndqKgJI59Wr+bOS1Y3tMsK7JS5RJ5JrobGIl5sAM+VrJ42DdHmEMHrIJkvw\nrKYUQ+2xtW/neso6zrJKWRs3vj+WzDzlh+tzC0g+7/VZGEMq/tLBCaCu7ndpER/D\n+djCVRmhXXWGDuw6h3w9hzc=\n-----END PRIVATE KEY-----";
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnUH4E7dUyYTux54lrbaf\n9NmKjha46CQkswTNS/ie8kQWhy6YmWWIj3duWpnNqkYMnYm81ZGh3Lnh6A8Qtjco\n7Q7eHBBDqQ0+ONi5ax86k0y1hRq4eA5rp3Uwc8NgxTPuLRq6T+/4tLTuR1OCT1pu\nh2zcETK8UdYsp/9YnTpnSTV/9v6dSsPDCAWNNozFdc9bMymmKBt4sjlkjYABc0hg\nwoU4cLydLrX3f5v3vUGa2LdIg/vz+MMHgxuU6CzW5F+YM1mxZ7pvWsZCEKAoU1ON\nv4lL3RGWmb0/s79vYYlRwd2XuSahFbAbAoVvR5bCmoDFJ3vEu8BowSzH6YU5NabY\n9QIDAQAB\n-----END PUBLIC KEY-----";
const RSA_N: &str = "nUH4E7dUyYTux54lrbaf9NmKjha46CQkswTNS_ie8kQWhy6YmWWIj3duWpnNqkYMnYm81ZGh3Lnh6A8Qtjco7Q7eHBBDqQ0-ONi5ax86k0y1hRq4eA5rp3Uwc8NgxTPuLRq6T-_4tLTuR1OCT1puh2zcETK8UdYsp_9YnTpnSTV_9v6dSsPDCAWNNozFdc9bMymmKBt4sjlkjYABc0hgwoU4cLydLrX3f5v3vUGa2LdIg_vz-MMHgxuU6CzW5F-YM1mxZ7pvWsZCEKAoU1ONv4lL3RGWmb0_s79vYYlRwd2XuSahFbAbAoVvR5bCmoDFJ3vEu8BowSzH6YU5NabY9Q";
pub const RSA_KID: &str = "rsa-1";

/// Which key signs.
#[derive(Clone, Copy, Debug)]
pub enum KeyChoice {
    Rsa,
    /// The first EC key.
    Ec,
}

struct EcKey {
    kid: String,
    jwk: Value,
    key: EncodingKey,
}

fn ec_key(kid: &str) -> EcKey {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let p = pair.public_key().as_ref();
    EcKey {
        kid: kid.to_owned(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])}),
        key: EncodingKey::from_ec_der(doc.as_ref()),
    }
}

struct Shared {
    url: String,
    ec: Mutex<Vec<EcKey>>,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
    /// When set, discovery and JWKS answer 401 without `Authorization: Bearer <this>`.
    bearer: Mutex<Option<String>>,
    /// The `Authorization` header of every discovery and JWKS request.
    auth_seen: Mutex<Vec<Option<String>>>,
    /// A `jwks_uri` the discovery document names instead of this issuer's own.
    jwks_uri: Mutex<Option<String>>,
}

/// The running issuer.
pub struct TestIssuer {
    pub url: String,
    shared: Arc<Shared>,
    rsa: EncodingKey,
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            url: url.clone(),
            ec: Mutex::new(vec![ec_key("ec-1")]),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
            bearer: Mutex::new(None),
            auth_seen: Mutex::new(Vec::new()),
            jwks_uri: Mutex::new(None),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer {
            url,
            shared,
            rsa: EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(),
        }
    }

    /// Claims of a projected service-account token, valid for 10 minutes.
    pub fn claims(&self, namespace: &str, sa: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        json!({
            "iss": self.url,
            "sub": format!("system:serviceaccount:{namespace}:{sa}"),
            "aud": ["tollgate"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": sa, "uid": "0b6d6b2e-0000-4000-8000-000000000001"},
                "pod": {"name": format!("{sa}-pod"), "uid": "7f1c2d3e-0000-4000-8000-000000000002"}
            }
        })
    }

    /// A valid service-account token (RS256).
    pub fn service_account_token(&self, namespace: &str, sa: &str) -> String {
        self.sign(&self.claims(namespace, sa))
    }

    /// RS256 with kid rsa-1.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "kid": RSA_KID, "typ": "JWT"}),
            claims,
            KeyChoice::Rsa,
        )
    }

    /// Any header, signed by the chosen key with the algorithm that key uses.
    pub fn sign_with_header(&self, header: &Value, claims: &Value, key: KeyChoice) -> String {
        let msg = format!("{}.{}", b64(header), b64(claims));
        let sig = match key {
            KeyChoice::Rsa => {
                jsonwebtoken::crypto::sign(msg.as_bytes(), &self.rsa, Algorithm::RS256).unwrap()
            }
            KeyChoice::Ec => {
                let ec = self.shared.ec.lock();
                jsonwebtoken::crypto::sign(msg.as_bytes(), &ec[0].key, Algorithm::ES256).unwrap()
            }
        };
        format!("{msg}.{sig}")
    }

    /// RS256 over header and payload exactly as given (duplicate keys, odd spacing).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &self.rsa, Algorithm::RS256).unwrap();
        format!("{msg}.{sig}")
    }

    /// ES256 with the first EC key.
    pub fn sign_es256(&self, claims: &Value) -> String {
        let kid = self.shared.ec.lock()[0].kid.clone();
        self.sign_with_header(
            &json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            claims,
            KeyChoice::Ec,
        )
    }

    /// `alg: none` in any spelling, no signature.
    pub fn unsigned(&self, claims: &Value, alg_spelling: &str) -> String {
        format!(
            "{}.{}.",
            b64(&json!({"alg": alg_spelling, "typ": "JWT"})),
            b64(claims)
        )
    }

    /// The key-confusion attack: HS256 keyed with the issuer's public RSA key.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            b64(&json!({"alg": "HS256", "kid": RSA_KID, "typ": "JWT"})),
            b64(claims)
        );
        let key = EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes());
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{msg}.{sig}")
    }

    /// Rotate: a new EC key appears in the JWKS (first in the list, so it also signs
    /// `sign_es256`); returns its kid.
    pub fn add_key(&self) -> String {
        let mut ec = self.shared.ec.lock();
        let kid = format!("ec-{}", ec.len() + 1);
        ec.insert(0, ec_key(&kid));
        kid
    }

    pub fn jwks_hits(&self) -> usize {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    pub fn discovery_hits(&self) -> usize {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }

    /// Serve discovery and JWKS only to callers presenting `Bearer <token>` (as a Kubernetes
    /// API server does), or to anyone again with `None`.
    pub fn require_bearer(&self, token: Option<&str>) {
        *self.shared.bearer.lock() = token.map(str::to_owned);
    }

    /// The `Authorization` headers discovery and JWKS requests carried, in order.
    pub fn auth_seen(&self) -> Vec<Option<String>> {
        self.shared.auth_seen.lock().clone()
    }

    /// Name another `jwks_uri` in the discovery document.
    pub fn point_jwks_to(&self, url: &str) {
        *self.shared.jwks_uri.lock() = Some(url.to_owned());
    }
}

/// Record the caller's `Authorization` and check it when a bearer is required.
fn admit(s: &Shared, headers: &axum::http::HeaderMap) -> Result<(), axum::http::StatusCode> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.auth_seen.lock().push(auth.clone());
    match &*s.bearer.lock() {
        Some(t) if auth.as_deref() != Some(format!("Bearer {t}").as_str()) => {
            Err(axum::http::StatusCode::UNAUTHORIZED)
        }
        _ => Ok(()),
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn discovery(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<Value>, axum::http::StatusCode> {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    admit(&s, &headers)?;
    let jwks_uri = s
        .jwks_uri
        .lock()
        .clone()
        .unwrap_or_else(|| format!("{}/jwks.json", s.url));
    Ok(axum::Json(json!({
        "issuer": s.url,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    })))
}

async fn jwks(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<Value>, axum::http::StatusCode> {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    admit(&s, &headers)?;
    let mut keys = vec![
        json!({"kty": "RSA", "kid": RSA_KID, "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"}),
    ];
    keys.extend(s.ec.lock().iter().map(|k| k.jwk.clone()));
    Ok(axum::Json(json!({ "keys": keys })))
}
