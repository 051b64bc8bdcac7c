//! Tollgate tokens: signing keys shared through the store, minting, local verification (no
//! I/O on the hot path), the JWKS and RFC 8414 metadata documents, and the RFC 8693 exchange.

mod claims;
pub mod exchange;
mod keyring;
pub mod keys;

pub use claims::{Claims, Grant, MAX_TTL_SECS, TOKEN_TYPE};
pub use keyring::{Keyring, KeyringError};

use crate::clock::now_secs;
use jsonwebtoken::{Header, Validation};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// Largest token the verifier will even parse.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a presented Tollgate token is refused. Display is safe for the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or oversized.
    #[error("token is malformed")]
    Malformed,
    /// Wrong `typ`: e.g. a workload token presented to the proxy.
    #[error("token is not a Tollgate access token (typ must be at+jwt)")]
    WrongType,
    /// `alg` not one Tollgate signs with.
    #[error("token algorithm is not accepted")]
    Algorithm,
    /// `kid` not in the keyring.
    #[error("token was signed by an unknown key")]
    UnknownKey,
    /// Signature, issuer, audience or time checks failed.
    #[error("token is invalid: {0}")]
    Invalid(&'static str),
    /// Expired.
    #[error("token has expired")]
    Expired,
    /// Minting failed for lack of a signing key.
    #[error("no signing key available")]
    NoSigningKey,
}

/// Most verified tokens remembered at once; past it, expired entries are dropped first and
/// the cache is cleared if that is not enough (a flood of fresh tokens only costs
/// re-verification, never memory).
const MAX_CACHED_TOKENS: usize = 100_000;

/// Mints and verifies Tollgate tokens.
pub struct TokenService {
    keyring: Arc<Keyring>,
    issuer: String,
    audience: String,
    leeway: Duration,
    /// Tokens whose signature and claims were verified, by the exact token text. A signature
    /// check costs tens of µs; a token is typically presented many times in its 15 minutes.
    /// Expiry is re-checked on every hit; revocation is checked by the caller every time.
    verified: parking_lot::RwLock<std::collections::HashMap<Box<str>, Arc<Claims>>>,
}

/// A freshly minted token.
pub struct Minted {
    /// The JWT. Handed to the caller once; never logged or stored.
    pub token: SecretString,
    /// Its id.
    pub jti: String,
    /// Issued at (unix s).
    pub iat: i64,
    /// Expiry (unix s).
    pub exp: i64,
}

impl TokenService {
    /// A service issuing as `issuer` for `audience`.
    pub fn new(keyring: Arc<Keyring>, issuer: String, audience: String, leeway: Duration) -> Self {
        TokenService {
            keyring,
            issuer,
            audience,
            leeway,
            verified: parking_lot::RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// The broker's issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience of Tollgate tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The keyring (JWKS, maintenance).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Mint a token for `subject` with `grant`, valid `ttl` (capped at 15 minutes).
    pub async fn mint(
        &self,
        subject: &str,
        grant: Grant,
        ttl: Duration,
    ) -> Result<Minted, TokenError> {
        let signer = match self.keyring.signer() {
            Some(s) => s,
            None => {
                self.keyring.reload_if_stale(Duration::ZERO).await;
                self.keyring.signer().ok_or(TokenError::NoSigningKey)?
            }
        };
        let iat = now_secs();
        let ttl = i64::try_from(ttl.as_secs())
            .unwrap_or(MAX_TTL_SECS)
            .clamp(1, MAX_TTL_SECS);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            iat,
            nbf: iat,
            exp: iat + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
            tollgate: grant,
        };
        let mut header = Header::new(signer.alg);
        header.kid = Some(signer.kid.clone());
        header.typ = Some(TOKEN_TYPE.to_owned());
        let jwt = signer
            .key
            .sign_jwt(&header, &claims)
            .map_err(|_| TokenError::NoSigningKey)?;
        Ok(Minted {
            token: SecretString::from(jwt),
            jti: claims.jti,
            iat,
            exp: claims.exp,
        })
    }

    /// Verify a presented token. No I/O unless the `kid` is unknown (then one rate-limited
    /// keyring reload: another replica may have just published a key). A token verified before
    /// is answered from memory until it expires.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let now = now_secs();
        if let Some(c) = self.verified.read().get(token) {
            return if now <= c.exp + self.leeway.as_secs() as i64 {
                Ok(Arc::clone(c))
            } else {
                Err(TokenError::Expired)
            };
        }
        let claims = Arc::new(self.verify_uncached(token).await?);
        let mut cache = self.verified.write();
        if cache.len() >= MAX_CACHED_TOKENS {
            let leeway = self.leeway.as_secs() as i64;
            cache.retain(|_, c| now <= c.exp + leeway);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(token.into(), Arc::clone(&claims));
        Ok(claims)
    }

    /// Verify the signature and claims of `token` without the verified-token cache (what the
    /// first use of each token costs; measured by `benches/hot_path.rs`).
    pub async fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header
            .typ
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(TOKEN_TYPE)
        {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let found = self.lookup(&kid, header.alg);
        let (alg, key) = match found {
            Some(k) => k,
            None => {
                if self.keyring.reload_if_stale(Duration::from_secs(5)).await {
                    self.lookup(&kid, header.alg)
                        .ok_or(TokenError::UnknownKey)?
                } else {
                    return Err(TokenError::UnknownKey);
                }
            }
        };
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        // `exp` and `nbf` are checked below against the fleet's clock (crate::clock), which
        // every replica shares; jsonwebtoken would read this host's.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidSignature => TokenError::Invalid("bad signature"),
                K::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                K::InvalidAudience => TokenError::Invalid("wrong audience"),
                K::ImmatureSignature => TokenError::Invalid("not valid yet"),
                K::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                K::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Invalid("claims do not parse"),
            }
        })?;
        let c = data.claims;
        let (now, leeway) = (now_secs(), self.leeway.as_secs() as i64);
        if c.exp < now - leeway {
            return Err(TokenError::Expired);
        }
        if c.nbf > now + leeway {
            return Err(TokenError::Invalid("not valid yet"));
        }
        if c.exp.saturating_sub(c.iat) > MAX_TTL_SECS || c.iat > now + leeway {
            return Err(TokenError::Invalid("lifetime out of bounds"));
        }
        Ok(c)
    }

    fn lookup(
        &self,
        kid: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> Option<(jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey)> {
        let set = self.keyring.set.load();
        let (key_alg, key) = set.verifiers.get(kid)?;
        // The key decides the algorithm; a header claiming another one is refused.
        (*key_alg == alg).then(|| (*key_alg, key.clone()))
    }

    /// RFC 8414 authorization server metadata.
    pub fn metadata(&self) -> serde_json::Value {
        let base = self.issuer.trim_end_matches('/');
        serde_json::json!({
            "issuer": self.issuer,
            "token_endpoint": format!("{base}/v1/token"),
            "revocation_endpoint": format!("{base}/v1/token/revoke"),
            "revocation_endpoint_auth_methods_supported": ["none"],
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "grant_types_supported": [exchange::GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "ES256"],
            "scopes_supported": [],
        })
    }
}
