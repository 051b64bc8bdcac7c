//! Signing key material: generation, the public JWK, and sealing of private keys at rest.
//!
//! Private keys leave memory only sealed with the key-encryption key (AES-256-GCM, random
//! 96-bit nonce, the `kid` as associated data so a sealed blob cannot be swapped onto another
//! key's row). The KEK itself comes from config, env or a mounted file and is never stored.

use crate::config::SigningAlgorithm;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SEAL_VERSION: u8 = 1;

/// Errors of key handling. Messages never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The KEK is not 32 bytes of base64.
    #[error("key-encryption key must be base64 of exactly 32 bytes")]
    BadKek,
    /// A sealed key does not open with this KEK (wrong KEK, or tampered row).
    #[error("sealed signing key {kid} cannot be opened with the configured key-encryption key")]
    Unseal {
        /// The key that failed.
        kid: String,
    },
    /// The crypto library refused an operation.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// A stored public JWK is unusable.
    #[error("stored public key {kid} is invalid: {reason}")]
    BadPublicKey {
        /// The key.
        kid: String,
        /// Why.
        reason: String,
    },
}

/// The key-encryption key.
pub struct Kek(SecretBox<[u8; 32]>);

impl Kek {
    /// Parse base64 (standard or URL-safe, padding optional, surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Kek, KeyError> {
        let t = text.trim();
        let bytes = Zeroizing::new(
            STANDARD
                .decode(t)
                .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
                .map_err(|_| KeyError::BadKek)?,
        );
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::BadKek)?;
        Ok(Kek(SecretBox::new(Box::new(arr))))
    }

    /// A fresh random KEK, base64-encoded (for `tollgate dev` and for operators' first setup).
    pub fn generate_base64() -> Result<String, KeyError> {
        let mut b = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(b.as_mut())
            .map_err(|_| KeyError::Crypto("rng"))?;
        Ok(STANDARD.encode(b.as_ref()))
    }

    fn aead(&self) -> Result<LessSafeKey, KeyError> {
        let k = UnboundKey::new(&AES_256_GCM, self.0.expose_secret())
            .map_err(|_| KeyError::Crypto("aead key"))?;
        Ok(LessSafeKey::new(k))
    }

    /// Seal `plain` for the key `kid`: `version || nonce || ciphertext+tag`.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Crypto("rng"))?;
        let mut buf = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Crypto("seal"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    /// Open a blob made by [`Kek::seal`] for the same `kid`.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let fail = || KeyError::Unseal {
            kid: kid.to_owned(),
        };
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(fail());
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().map_err(|_| fail())?;
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let plain_len = self
            .aead()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                buf.as_mut_slice(),
            )
            .map_err(|_| fail())?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// A freshly generated key pair, before it is sealed and stored.
pub struct NewKey {
    /// RFC 7638 thumbprint-derived key id.
    pub kid: String,
    /// JWS algorithm name (`EdDSA`, `ES256`).
    pub algorithm: &'static str,
    /// Public JWK (JSON text) including `kid`, `alg`, `use`.
    pub public_jwk: String,
    /// PKCS#8 DER of the private key.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

/// Generate a key pair for `alg`.
pub fn generate(alg: SigningAlgorithm) -> Result<NewKey, KeyError> {
    let rng = SystemRandom::new();
    let (pkcs8, jwk_core, algorithm) = match alg {
        SigningAlgorithm::EdDSA => {
            let doc =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Crypto("ed25519"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| KeyError::Crypto("ed25519"))?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            (
                Zeroizing::new(doc.as_ref().to_vec()),
                serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": x}),
                "EdDSA",
            )
        }
        SigningAlgorithm::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Crypto("p256"))?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|_| KeyError::Crypto("p256"))?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err(KeyError::Crypto("p256 public point"));
            }
            let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
            (
                Zeroizing::new(doc.as_ref().to_vec()),
                serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y}),
                "ES256",
            )
        }
    };
    // RFC 7638: SHA-256 over the required members in lexicographic order (serde_json's map
    // is ordered, so `to_string` of `jwk_core` is the canonical form).
    let thumb = Sha256::digest(jwk_core.to_string().as_bytes());
    let kid = URL_SAFE_NO_PAD.encode(&thumb[..16]);
    let mut jwk = jwk_core;
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), kid.clone().into());
        o.insert("alg".into(), algorithm.into());
        o.insert("use".into(), "sig".into());
    }
    Ok(NewKey {
        kid,
        algorithm,
        public_jwk: jwk.to_string(),
        pkcs8,
    })
}

/// JWS algorithm from its name; only the two Tollgate signs with.
pub fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    match name {
        "EdDSA" => Some(Algorithm::EdDSA),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

/// A private signing key parsed once. `jsonwebtoken::encode` re-parses the PKCS#8 of its
/// `EncodingKey` on every call, which cost as much as the Ed25519 signature itself; the
/// keyring keeps one of these per signing key instead and signs the JWS with it directly.
pub enum SigningKey {
    /// EdDSA over Ed25519.
    Ed25519(Ed25519KeyPair),
    /// ES256: ECDSA over P-256 with SHA-256, fixed-width `r || s` signatures (RFC 7518 §3.4).
    P256(EcdsaKeyPair),
    /// RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3). Tollgate never mints its own
    /// tokens with RSA; the dev issuer signs workload tokens with it, as most clusters do.
    Rsa(RsaKeyPair),
}

impl SigningKey {
    /// Parse the PKCS#8 DER of a key of `alg`.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<SigningKey, KeyError> {
        match alg {
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .map(SigningKey::Ed25519)
                .map_err(|_| KeyError::Crypto("Ed25519 private key does not parse")),
            Algorithm::ES256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .map(SigningKey::P256)
                .map_err(|_| KeyError::Crypto("P-256 private key does not parse")),
            Algorithm::RS256 => RsaKeyPair::from_pkcs8(pkcs8)
                .map(SigningKey::Rsa)
                .map_err(|_| KeyError::Crypto("RSA private key does not parse")),
            _ => Err(KeyError::Crypto("unsupported signing algorithm")),
        }
    }

    /// The compact JWS of `claims` under `header` (RFC 7515 §7.1).
    pub fn sign_jwt<T: serde::Serialize>(
        &self,
        header: &jsonwebtoken::Header,
        claims: &T,
    ) -> Result<String, KeyError> {
        let unserializable = |_| KeyError::Crypto("token does not serialize");
        let mut jws = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).map_err(unserializable)?);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(claims).map_err(unserializable)?,
            &mut jws,
        );
        let signature = match self {
            SigningKey::Ed25519(k) => k.sign(jws.as_bytes()).as_ref().to_vec(),
            SigningKey::P256(k) => k
                .sign(&SystemRandom::new(), jws.as_bytes())
                .map_err(|_| KeyError::Crypto("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    jws.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| KeyError::Crypto("RSA signing failed"))?;
                sig
            }
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }
}

/// Verification key from the stored public JWK.
pub fn decoding_key(kid: &str, public_jwk: &str) -> Result<DecodingKey, KeyError> {
    let bad = |reason: String| KeyError::BadPublicKey {
        kid: kid.to_owned(),
        reason,
    };
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_str(public_jwk).map_err(|e| bad(e.to_string()))?;
    DecodingKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_base64(&Kek::generate_base64().unwrap()).unwrap()
    }

    #[test]
    fn sealed_key_opens_only_with_same_kek_and_kid() {
        let k = kek();
        let sealed = k.seal("kid-1", b"private").unwrap();
        assert_eq!(k.open("kid-1", &sealed).unwrap().as_slice(), b"private");
        assert!(k.open("kid-2", &sealed).is_err(), "kid is bound as AAD");
        assert!(kek().open("kid-1", &sealed).is_err(), "other KEK");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.open("kid-1", &tampered).is_err());
        assert!(k.open("kid-1", &[1, 2, 3]).is_err());
    }

    #[test]
    fn kek_must_be_32_bytes_of_base64() {
        assert!(Kek::from_base64("not base64!").is_err());
        assert!(Kek::from_base64(&STANDARD.encode([0u8; 16])).is_err());
        assert!(Kek::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(Kek::from_base64(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
    }

    #[test]
    fn generated_keys_sign_and_verify_through_their_jwk() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let k = generate(alg).unwrap();
            let a = algorithm_from_name(k.algorithm).unwrap();
            // jsonwebtoken's own signer, as a cross-check of `SigningKey`.
            let enc = match a {
                Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_der(&k.pkcs8),
                _ => jsonwebtoken::EncodingKey::from_ec_der(&k.pkcs8),
            };
            let mut header = jsonwebtoken::Header::new(a);
            header.kid = Some(k.kid.clone());
            let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
            let parsed = SigningKey::from_pkcs8(a, &k.pkcs8).unwrap();
            let dec = decoding_key(&k.kid, &k.public_jwk).unwrap();
            let mut v = jsonwebtoken::Validation::new(a);
            v.required_spec_claims.clear();
            for token in [
                jsonwebtoken::encode(&header, &claims, &enc).unwrap(),
                parsed.sign_jwt(&header, &claims).unwrap(),
            ] {
                let data = jsonwebtoken::decode::<serde_json::Value>(&token, &dec, &v).unwrap();
                assert_eq!(data.claims["sub"], "x");
                assert_eq!(
                    jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
                    Some(k.kid.as_str())
                );
            }
            assert!(SigningKey::from_pkcs8(a, b"not a key").is_err());
            assert!(
                !k.public_jwk.contains("\"d\""),
                "public JWK carries no private part"
            );
        }
    }
}
