//! The audit log's rows. Appends are idempotent on (chain, seq), so a batch retried after an
//! ambiguous failure never forks a chain; reads walk one chain in `seq` order, page by page,
//! so verifying a long history holds one page in memory.

use super::{Db, Store, StoreError, on_db};

/// One stored audit entry.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// The chain (one per Tollgate process).
    pub chain_id: String,
    /// Position in the chain, from 0.
    pub seq: i64,
    /// When (unix ms).
    pub at: i64,
    /// Who: a workload subject, an admin, or `tollgate`.
    pub actor: String,
    /// What, e.g. `token.issued`.
    pub action: String,
    /// On what: a jti, a revocation id, a key id, a pool.
    pub target: String,
    /// JSON object with the rest, hashed as stored.
    pub detail: String,
    /// The previous entry's hash (hex; zeros at seq 0).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
}

/// The last entry of a chain.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditHead {
    /// The chain.
    pub chain_id: String,
    /// Its last seq.
    pub seq: i64,
    /// That entry's hash.
    pub hash: String,
}

const COLUMNS: &str = "chain_id, seq, at, actor, action, target, detail, prev_hash, hash";

impl Store {
    /// Append entries (idempotent on chain and seq).
    pub async fn insert_audit(&self, rows: &[AuditRecord]) -> Result<u64, StoreError> {
        let mut n = 0;
        for chunk in rows.chunks(500) {
            n += on_db!(self, p => {
                let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO audit_log ({COLUMNS}) "));
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.chain_id).push_bind(r.seq).push_bind(r.at).push_bind(&r.actor)
                        .push_bind(&r.action).push_bind(&r.target).push_bind(&r.detail)
                        .push_bind(&r.prev_hash).push_bind(&r.hash);
                });
                qb.push(" ON CONFLICT (chain_id, seq) DO NOTHING");
                qb.build().execute(p).await?.rows_affected()
            });
        }
        Ok(n)
    }

    /// Every chain, oldest first (by its earliest entry).
    pub async fn audit_chains(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT chain_id FROM audit_log GROUP BY chain_id ORDER BY MIN(at), chain_id";
        Ok(on_db!(self, p => sqlx::query_scalar::<_, String>(sql).fetch_all(p).await?))
    }

    /// Up to `limit` entries of `chain_id` with `seq > after`, in seq order.
    pub async fn audit_chain_page(
        &self,
        chain_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        Ok(on_db!(self, p => sqlx::query_as::<_, AuditRecord>(&sql)
            .bind(chain_id).bind(after).bind(i64::from(limit)).fetch_all(p).await?))
    }

    /// The entries that anchor other chains (`chain.start`, `chain.anchor`).
    pub async fn audit_anchor_entries(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE action IN ('chain.start', 'chain.anchor') \
             ORDER BY at, chain_id, seq"
        );
        Ok(on_db!(self, p => sqlx::query_as::<_, AuditRecord>(&sql).fetch_all(p).await?))
    }

    /// The last entry of every chain that appended at or after `since` (unix ms).
    pub async fn audit_heads(&self, since: i64) -> Result<Vec<AuditHead>, StoreError> {
        let sql = "SELECT a.chain_id, a.seq, a.hash FROM audit_log a \
                   JOIN (SELECT chain_id, MAX(seq) AS seq FROM audit_log WHERE at >= $1 GROUP BY chain_id) h \
                   ON a.chain_id = h.chain_id AND a.seq = h.seq ORDER BY a.chain_id";
        Ok(on_db!(self, p => sqlx::query_as::<_, AuditHead>(sql).bind(since).fetch_all(p).await?))
    }

    /// Entries in time order from `since` to `until` (unix ms, end exclusive), after the
    /// cursor `(at, chain_id, seq)` of the previous page, at most `limit`.
    pub async fn audit_entries(
        &self,
        since: i64,
        until: i64,
        after: Option<(i64, &str, i64)>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (a_at, a_chain, a_seq) = after.unwrap_or((i64::MIN, "", -1));
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE at >= $1 AND at < $2 \
             AND (at > $3 OR (at = $3 AND (chain_id > $4 OR (chain_id = $4 AND seq > $5)))) \
             ORDER BY at, chain_id, seq LIMIT $6"
        );
        Ok(on_db!(self, p => sqlx::query_as::<_, AuditRecord>(&sql)
            .bind(since).bind(until).bind(a_at).bind(a_chain).bind(a_seq).bind(i64::from(limit))
            .fetch_all(p).await?))
    }
}
