//! The rows the store reads and writes.

use super::StoreError;

/// A token-signing key (private part sealed by the caller).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SigningKeyRecord {
    /// Key id.
    pub kid: String,
    /// Unique, increasing.
    pub generation: i64,
    /// `EdDSA` or `ES256`.
    pub algorithm: String,
    /// Public JWK (JSON).
    pub public_jwk: String,
    /// Sealed PKCS#8.
    pub sealed_private_key: Vec<u8>,
    /// Creation time.
    pub created_at: i64,
    /// Signs from.
    pub sign_from: i64,
    /// Signs until.
    pub sign_until: i64,
    /// Published in the JWKS until.
    pub publish_until: i64,
}

/// A minted token in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedTokenRecord {
    /// Token id.
    pub jti: String,
    /// Workload subject.
    pub subject: String,
    /// Trusted issuer name.
    pub issuer: String,
    /// Team.
    pub team: String,
    /// Pool.
    pub pool: String,
    /// Policy binding.
    pub binding: String,
    /// Granted models.
    pub models: Vec<String>,
    /// Issued (unix ms).
    pub issued_at: i64,
    /// Expires (unix ms).
    pub expires_at: i64,
    /// Pod uid, when known.
    pub pod_uid: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct IssuedTokenRow {
    jti: String,
    subject: String,
    issuer: String,
    team: String,
    pool: String,
    binding: String,
    models: String,
    issued_at: i64,
    expires_at: i64,
    pod_uid: Option<String>,
}

impl IssuedTokenRow {
    pub(super) fn into_record(self) -> Result<IssuedTokenRecord, StoreError> {
        let models = serde_json::from_str(&self.models).map_err(|e| StoreError::Corrupt {
            table: "tokens_issued",
            reason: e.to_string(),
        })?;
        Ok(IssuedTokenRecord {
            jti: self.jti,
            subject: self.subject,
            issuer: self.issuer,
            team: self.team,
            pool: self.pool,
            binding: self.binding,
            models,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            pod_uid: self.pod_uid,
        })
    }
}

/// What a revocation applies to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One token.
    Jti,
    /// Every token of a workload subject.
    Subject,
    /// Every token of a team.
    Team,
    /// Every token of a pool.
    Pool,
    /// Every token vouched for by a trusted issuer.
    Issuer,
    /// Every token of a pod.
    PodUid,
    /// A provider key (disabled).
    ProviderKey,
}

impl RevocationKind {
    /// Stored / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Subject => "subject",
            RevocationKind::Team => "team",
            RevocationKind::Pool => "pool",
            RevocationKind::Issuer => "issuer",
            RevocationKind::PodUid => "pod_uid",
            RevocationKind::ProviderKey => "provider_key",
        }
    }

    /// Parse a stored / wire name.
    pub fn parse(s: &str) -> Option<RevocationKind> {
        Some(match s {
            "jti" => RevocationKind::Jti,
            "subject" => RevocationKind::Subject,
            "team" => RevocationKind::Team,
            "pool" => RevocationKind::Pool,
            "issuer" => RevocationKind::Issuer,
            "pod_uid" => RevocationKind::PodUid,
            "provider_key" => RevocationKind::ProviderKey,
            _ => return None,
        })
    }
}

/// A revocation to record.
#[derive(Clone, Debug)]
pub struct NewRevocation {
    /// Kind.
    pub kind: RevocationKind,
    /// The revoked value (jti, subject, team, …).
    pub value: String,
    /// Why.
    pub reason: String,
    /// When (unix ms); tokens issued at or before it are refused.
    pub created_at: i64,
    /// When it lapses (unix ms), if ever.
    pub expires_at: Option<i64>,
    /// Who.
    pub created_by: String,
}

/// A stored revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: RevocationKind,
    /// Value.
    pub value: String,
    /// Reason.
    pub reason: String,
    /// Created (unix ms).
    pub created_at: i64,
    /// Expiry (unix ms).
    pub expires_at: Option<i64>,
    /// Who.
    pub created_by: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct RevocationRow {
    id: i64,
    kind: String,
    value: String,
    reason: String,
    created_at: i64,
    expires_at: Option<i64>,
    created_by: String,
}

impl RevocationRow {
    pub(super) fn into_record(self) -> Result<RevocationRecord, StoreError> {
        let kind = RevocationKind::parse(&self.kind).ok_or_else(|| StoreError::Corrupt {
            table: "revocations",
            reason: format!("unknown kind {:?}", self.kind),
        })?;
        Ok(RevocationRecord {
            id: self.id,
            kind,
            value: self.value,
            reason: self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
            created_by: self.created_by,
        })
    }
}

/// One proxied request.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct SpendRecord {
    /// Tollgate's request id (idempotency key).
    pub request_id: String,
    /// When (unix ms).
    pub at: i64,
    /// Token id.
    pub jti: String,
    /// Workload subject.
    pub subject: String,
    /// Team.
    pub team: String,
    /// Pool.
    pub pool: String,
    /// Billing owner.
    pub billing_owner: String,
    /// Provider id.
    pub provider: String,
    /// Provider key id (`mock` for the mock provider).
    pub provider_key_id: String,
    /// Policy model that served (the one asked for unless the budget moved the request to a
    /// fallback or the cheapest model).
    pub model: String,
    /// Model sent upstream.
    pub upstream_model: String,
    /// Model the client asked for (`None` in rows written before it was recorded).
    #[serde(default)]
    pub requested_model: Option<String>,
    /// Deployment of `model` that answered, or the last one tried when none did.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Endpoint path.
    pub endpoint: String,
    /// Streamed?
    pub stream: bool,
    /// Input tokens (cached included).
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Cost in micro-dollars.
    pub cost_micro_usd: i64,
    /// HTTP status of the outcome (499: client went away).
    pub status: i32,
    /// Latency until settlement.
    pub latency_ms: i64,
    /// SHA-256 of the prompt (never the prompt): finds every request that sent one.
    pub prompt_sha256: Option<String>,
    /// Store version of the provider key that served it (rotation compares versions).
    pub provider_key_version: Option<String>,
}
