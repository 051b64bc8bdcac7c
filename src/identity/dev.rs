//! The development issuer of `tollgate dev`: an ES256 key kept in the data directory that
//! signs Kubernetes-shaped service-account tokens, so a laptop can play the cluster. Never
//! configured by `tollgate serve`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const KEY_FILE: &str = "dev-issuer.pem";

/// Dev issuer failures.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// File system.
    #[error("dev issuer key file: {0}")]
    Io(#[from] std::io::Error),
    /// Key material.
    #[error("dev issuer key is invalid")]
    Key,
}

/// The dev issuer's signing key.
pub struct DevIssuer {
    kid: String,
    jwk: Value,
    key: EncodingKey,
}

impl DevIssuer {
    /// Load `<dir>/dev-issuer.pem` or create it (mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<DevIssuer, DevIssuerError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(KEY_FILE);
        let der = match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                STANDARD
                    .decode(body.trim())
                    .map_err(|_| DevIssuerError::Key)?
            }
            Err(_) => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| DevIssuerError::Key)?;
                let der = doc.as_ref().to_vec();
                let b64 = STANDARD.encode(&der);
                let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
                for chunk in b64.as_bytes().chunks(64) {
                    pem.push_str(&String::from_utf8_lossy(chunk));
                    pem.push('\n');
                }
                pem.push_str("-----END PRIVATE KEY-----\n");
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                opts.open(&path)?.write_all(pem.as_bytes())?;
                der
            }
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| DevIssuerError::Key)?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(DevIssuerError::Key);
        }
        let core = json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(core.to_string().as_bytes())[..16]);
        let mut jwk = core;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        Ok(DevIssuer {
            kid,
            jwk,
            key: EncodingKey::from_ec_der(&der),
        })
    }

    /// The public JWKS.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// OIDC discovery document.
    pub fn discovery_document(&self, issuer_url: &str, jwks_url: &str) -> Value {
        json!({
            "issuer": issuer_url,
            "jwks_uri": jwks_url,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// A projected service-account token as the Kubernetes API server would mint it.
    pub fn mint_service_account_token(
        &self,
        issuer_url: &str,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, DevIssuerError> {
        let now = crate::clock::now_secs();
        let pod = format!("{service_account}-dev");
        let claims = json!({
            "iss": issuer_url,
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs() as i64,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{namespace}/{service_account}").as_bytes()).to_string()},
                "pod": {"name": pod, "uid": uuid::Uuid::new_v4().to_string()},
            },
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|_| DevIssuerError::Key)
    }
}
