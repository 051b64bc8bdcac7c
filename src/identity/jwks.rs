//! One issuer's signing keys: fetched by OIDC discovery, a JWKS URL or a static file, cached,
//! refreshed periodically and on an unknown `kid` — single-flight and rate-limited, so a flood
//! of tokens with random kids costs the issuer at most one fetch per interval.

use super::IssuerConfig;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A verification key and what it may verify.
pub(super) struct Key {
    kid: Option<String>,
    family: Family,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 => Some(Family::P256),
        ES384 => Some(Family::P384),
        EdDSA => Some(Family::Ed25519),
        HS256 | HS384 | HS512 => None,
    }
}

/// The cached key set of one issuer.
pub(super) struct IssuerKeys {
    pub cfg: IssuerConfig,
    http: reqwest::Client,
    keys: ArcSwap<Vec<Key>>,
    refresh_lock: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

/// Why keys could not be fetched (safe to log).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// HTTP failure.
    #[error("{0}")]
    Http(String),
    /// The document is not what it should be.
    #[error("{0}")]
    Document(String),
}

impl IssuerKeys {
    pub(super) fn new(cfg: IssuerConfig, http: reqwest::Client, min_interval: Duration) -> Self {
        IssuerKeys {
            cfg,
            http,
            keys: ArcSwap::from_pointee(Vec::new()),
            refresh_lock: tokio::sync::Mutex::new(None),
            min_interval,
        }
    }

    pub(super) fn set_min_interval(&mut self, d: Duration) {
        self.min_interval = d;
    }

    /// A key for (kid, alg) from the cache.
    pub(super) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let fam = family_of(alg)?;
        let keys = self.keys.load();
        let usable = |k: &&Key| k.family == fam && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .iter()
                .filter(usable)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            // Without a kid, only an unambiguous key will do.
            None => {
                let mut it = keys.iter().filter(usable);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k.key.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Refresh unless one happened within the minimum interval (then `Ok(false)`).
    /// Concurrent callers wait for the one fetch in flight rather than starting their own.
    pub(super) async fn refresh_if_allowed(&self) -> Result<bool, FetchError> {
        let mut last = self.refresh_lock.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        self.keys.store(Arc::new(keys));
        Ok(true)
    }

    /// Refresh now (start-up and periodic refresh).
    pub(super) async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last = self.refresh_lock.lock().await;
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    async fn fetch(&self) -> Result<Vec<Key>, FetchError> {
        let doc = if let Some(path) = &self.cfg.jwks_file {
            std::fs::read(path)
                .map_err(|e| FetchError::Document(format!("{}: {e}", path.display())))?
        } else {
            let jwks_uri = match &self.cfg.jwks_uri {
                Some(u) => u.clone(),
                None => self.discover().await?,
            };
            self.get(&jwks_uri).await?
        };
        let set: JwkSet = serde_json::from_slice(&doc)
            .map_err(|e| FetchError::Document(format!("JWKS does not parse: {e}")))?;
        Ok(set.keys.iter().filter_map(to_key).collect())
    }

    async fn discover(&self) -> Result<String, FetchError> {
        let url = self.cfg.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.cfg.issuer.trim_end_matches('/')
            )
        });
        let doc: serde_json::Value = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| FetchError::Document(format!("discovery document does not parse: {e}")))?;
        if doc["issuer"].as_str() != Some(self.cfg.issuer.as_str()) {
            return Err(FetchError::Document(
                "discovery document names another issuer".into(),
            ));
        }
        doc["jwks_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| FetchError::Document("discovery document has no jwks_uri".into()))
    }

    /// The bearer token for `url`, when one is configured and `url` is one of the origins it
    /// may be sent to.
    fn bearer_for(&self, url: &str) -> Result<Option<secrecy::SecretString>, FetchError> {
        let Some(path) = &self.cfg.bearer_token_file else {
            return Ok(None);
        };
        let origin = url::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if !self.cfg.bearer_origins().contains(&origin) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            FetchError::Document(format!("bearer_token_file {}: {e}", path.display()))
        })?;
        Ok(Some(secrecy::SecretString::from(text.trim().to_owned())))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let mut req = self.http.get(url).timeout(Duration::from_secs(5));
        if let Some(token) = self.bearer_for(url)? {
            req = req.bearer_auth(secrecy::ExposeSecret::expose_secret(&token));
        }
        let resp = req.send().await.map_err(|e| {
            FetchError::Http(format!(
                "GET {url}: {}",
                if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                }
            ))
        })?;
        if !resp.status().is_success() {
            return Err(FetchError::Http(format!(
                "GET {url}: status {}",
                resp.status()
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOCUMENT_BYTES)
        {
            return Err(FetchError::Document(format!(
                "GET {url}: document too large"
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|_| FetchError::Http(format!("GET {url}: body failed")))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::Document(format!(
                "GET {url}: document too large"
            )));
        }
        Ok(body.to_vec())
    }
}

/// Keep only asymmetric signature keys whose declared algorithm fits their type.
fn to_key(jwk: &Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        // Symmetric ("oct") keys are never accepted: that is the HS256 key-confusion door.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            let a = key_algorithm(ka)?;
            if family_of(a) != Some(family) {
                return None;
            }
            Some(a)
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key,
    })
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
