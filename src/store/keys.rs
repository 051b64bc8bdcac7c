//! The provider-key inventory: what the secret store holds (never the secret), with its
//! versions, state and the spend recorded against each key.

use super::{Db, Store, StoreError, on_db};

/// One inventory entry as a replica saw it in its last listing.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ProviderKeyRecord {
    /// Path / secret name.
    pub id: String,
    /// `vault`, `aws` or `file`.
    pub store: String,
    /// Provider id.
    pub provider: String,
    /// Billing owner (`*`: shared).
    pub billing_owner: String,
    /// `*` or space-separated model names.
    pub allowed_models: String,
    /// Metadata `purpose`.
    pub purpose: Option<String>,
    /// Version served.
    pub version: String,
    /// JSON array of `{"id", "stage"}`.
    pub versions: String,
    /// `active`, `quarantined`, `invalid` or `missing`.
    pub state: String,
    /// Why an entry is invalid.
    pub reason: Option<String>,
}

/// An inventory row with its history and spend.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ProviderKeyInventory {
    /// What the last listing saw.
    #[sqlx(flatten)]
    pub key: ProviderKeyRecord,
    /// First listed (unix ms).
    pub first_seen: i64,
    /// Last listed (unix ms).
    pub last_seen: i64,
    /// Last request served with it (unix ms).
    pub last_used: Option<i64>,
    /// Requests served with it.
    pub requests: i64,
    /// Spend to date, micro-dollars.
    pub spend_micro_usd: i64,
}

impl Store {
    /// Record what one listing of `store` found at `now`; entries of that store not in
    /// `rows` become `missing`.
    pub async fn sync_provider_keys(
        &self,
        store: &str,
        rows: &[ProviderKeyRecord],
        now: i64,
    ) -> Result<(), StoreError> {
        let upsert = "INSERT INTO provider_keys (id, store, provider, billing_owner, allowed_models, purpose, version, versions, state, reason, first_seen, last_seen) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
                      ON CONFLICT (id) DO UPDATE SET store = excluded.store, provider = excluded.provider, \
                      billing_owner = excluded.billing_owner, allowed_models = excluded.allowed_models, \
                      purpose = excluded.purpose, version = excluded.version, versions = excluded.versions, \
                      state = excluded.state, reason = excluded.reason, last_seen = excluded.last_seen";
        let missing = "UPDATE provider_keys SET state = 'missing', reason = NULL \
                       WHERE store = $1 AND last_seen < $2 AND state <> 'missing'";
        on_db!(self, p => {
            let mut tx = p.begin().await?;
            for r in rows {
                sqlx::query(upsert)
                    .bind(&r.id).bind(&r.store).bind(&r.provider).bind(&r.billing_owner)
                    .bind(&r.allowed_models).bind(&r.purpose).bind(&r.version).bind(&r.versions)
                    .bind(&r.state).bind(&r.reason).bind(now)
                    .execute(&mut *tx).await?;
            }
            sqlx::query(missing).bind(store).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The whole inventory with last use and spend to date, by provider then id.
    pub async fn provider_keys(&self) -> Result<Vec<ProviderKeyInventory>, StoreError> {
        let sql = "SELECT k.id, k.store, k.provider, k.billing_owner, k.allowed_models, k.purpose, \
                   k.version, k.versions, k.state, k.reason, k.first_seen, k.last_seen, \
                   s.last_used, COALESCE(s.requests, 0) AS requests, COALESCE(s.spend, 0) AS spend_micro_usd \
                   FROM provider_keys k LEFT JOIN ( \
                     SELECT provider_key_id, MAX(at) AS last_used, COUNT(*) AS requests, \
                            CAST(SUM(cost_micro_usd) AS BIGINT) AS spend \
                     FROM spend GROUP BY provider_key_id) s ON s.provider_key_id = k.id \
                   ORDER BY k.provider, k.id";
        Ok(on_db!(self, p => sqlx::query_as::<_, ProviderKeyInventory>(sql).fetch_all(p).await?))
    }
}
