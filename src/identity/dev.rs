//! The development issuer of `tollgate dev`: two keys kept in the data directory that sign
//! Kubernetes-shaped service-account tokens, so a laptop can play the cluster. RS256 is the
//! default because it is what most clusters' API servers sign with (kind, EKS, GKE, AKS);
//! ES256 is there for clusters configured with an EC key. Never configured by
//! `tollgate serve`.

use crate::token::keys::SigningKey;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

/// The algorithm a dev workload token is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DevAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over RSA-2048: the Kubernetes default.
    #[default]
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA over P-256 with SHA-256.
    #[value(name = "ES256")]
    Es256,
}

impl DevAlgorithm {
    fn key_file(self) -> &'static str {
        match self {
            DevAlgorithm::Rs256 => "dev-issuer-rsa.pem",
            DevAlgorithm::Es256 => "dev-issuer.pem",
        }
    }

    fn jws_name(self) -> &'static str {
        match self {
            DevAlgorithm::Rs256 => "RS256",
            DevAlgorithm::Es256 => "ES256",
        }
    }

    fn jws(self) -> Algorithm {
        match self {
            DevAlgorithm::Rs256 => Algorithm::RS256,
            DevAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

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

struct IssuerKey {
    kid: String,
    jwk: Value,
    key: SigningKey,
}

/// The dev issuer's signing keys.
pub struct DevIssuer {
    rsa: IssuerKey,
    ec: IssuerKey,
}

impl DevIssuer {
    /// Load the keys under `dir` (`dev-issuer-rsa.pem`, `dev-issuer.pem`), creating the
    /// missing ones (mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<DevIssuer, DevIssuerError> {
        std::fs::create_dir_all(dir)?;
        Ok(DevIssuer {
            rsa: load_key(dir, DevAlgorithm::Rs256)?,
            ec: load_key(dir, DevAlgorithm::Es256)?,
        })
    }

    fn key(&self, alg: DevAlgorithm) -> &IssuerKey {
        match alg {
            DevAlgorithm::Rs256 => &self.rsa,
            DevAlgorithm::Es256 => &self.ec,
        }
    }

    /// The public JWKS (both keys).
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.rsa.jwk, self.ec.jwk]})
    }

    /// OIDC discovery document.
    pub fn discovery_document(&self, issuer_url: &str, jwks_url: &str) -> Value {
        json!({
            "issuer": issuer_url,
            "jwks_uri": jwks_url,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
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
        alg: DevAlgorithm,
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
        let k = self.key(alg);
        let mut header = Header::new(alg.jws());
        header.kid = Some(k.kid.clone());
        k.key
            .sign_jwt(&header, &claims)
            .map_err(|_| DevIssuerError::Key)
    }
}

impl DevIssuer {
    /// Any claims, signed as this issuer signs (the fuzz targets reach claim validation with
    /// a valid signature through this).
    pub fn sign_claims(&self, claims: &Value, alg: DevAlgorithm) -> Result<String, DevIssuerError> {
        let k = self.key(alg);
        let mut header = Header::new(alg.jws());
        header.kid = Some(k.kid.clone());
        k.key
            .sign_jwt(&header, claims)
            .map_err(|_| DevIssuerError::Key)
    }

    /// A person's token as a company IdP would mint it (`sub`, `groups`), RS256: what the
    /// admin API accepts from the dev admin issuer.
    pub fn mint_person_token(
        &self,
        issuer_url: &str,
        subject: &str,
        groups: &[String],
        audience: &str,
        ttl: Duration,
    ) -> Result<String, DevIssuerError> {
        let now = crate::clock::now_secs();
        let claims = json!({
            "iss": issuer_url,
            "sub": subject,
            "email": subject,
            "groups": groups,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs() as i64,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let k = self.key(DevAlgorithm::Rs256);
        let mut header = Header::new(DevAlgorithm::Rs256.jws());
        header.kid = Some(k.kid.clone());
        k.key
            .sign_jwt(&header, &claims)
            .map_err(|_| DevIssuerError::Key)
    }
}

/// Read the PKCS#8 key of `alg` under `dir`, or generate and store one.
fn load_key(dir: &Path, alg: DevAlgorithm) -> Result<IssuerKey, DevIssuerError> {
    let path = dir.join(alg.key_file());
    let der = match std::fs::read_to_string(&path) {
        Ok(pem) => {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            Zeroizing::new(
                STANDARD
                    .decode(body.trim())
                    .map_err(|_| DevIssuerError::Key)?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der = Zeroizing::new(generate(alg)?);
            write_pem(&path, &der)?;
            der
        }
        Err(e) => return Err(e.into()),
    };
    let core = match alg {
        DevAlgorithm::Rs256 => {
            let pair = RsaKeyPair::from_pkcs8(&der).map_err(|_| DevIssuerError::Key)?;
            let public = pair.public_key();
            let b64 = |p: aws_lc_rs::io::Positive<'_>| {
                URL_SAFE_NO_PAD.encode(p.big_endian_without_leading_zero())
            };
            json!({"e": b64(public.exponent()), "kty": "RSA", "n": b64(public.modulus())})
        }
        DevAlgorithm::Es256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| DevIssuerError::Key)?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err(DevIssuerError::Key);
            }
            json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
        }
    };
    // The members in lexicographic order, as RFC 7638 thumbprints hash them.
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(core.to_string().as_bytes())[..16]);
    let mut jwk = core;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.jws_name());
    jwk["use"] = json!("sig");
    let key = SigningKey::from_pkcs8(alg.jws(), &der).map_err(|_| DevIssuerError::Key)?;
    Ok(IssuerKey { kid, jwk, key })
}

fn generate(alg: DevAlgorithm) -> Result<Vec<u8>, DevIssuerError> {
    match alg {
        DevAlgorithm::Rs256 => RsaKeyPair::generate(KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| DevIssuerError::Key),
        DevAlgorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| DevIssuerError::Key)
        }
    }
}

/// Write `der` as a PKCS#8 PEM file readable by its owner only; never over an existing file.
fn write_pem(path: &Path, der: &[u8]) -> Result<(), DevIssuerError> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(pem.as_bytes())?;
    Ok(())
}
