//! Spend rows.

use super::{Db, SpendRecord, Store, StoreError, on_db};

/// Rows per statement of a spend batch.
const SPEND_CHUNK: usize = 64;

const COLUMNS: &str = "request_id, at, jti, subject, team, pool, billing_owner, provider, provider_key_id, \
     model, upstream_model, endpoint, stream, input_tokens, output_tokens, cached_input_tokens, \
     cost_micro_usd, status, latency_ms";

impl Store {
    /// Insert a batch, idempotent on `request_id` (a replayed batch never double counts).
    /// Returns the rows actually inserted.
    ///
    /// One transaction (one commit for the batch), written in statements of at most
    /// [`SPEND_CHUNK`] rows: a statement's binding (PostgreSQL, on the async runtime) or
    /// execution (SQLite, on its worker thread) then never holds a core for more than a
    /// fraction of a millisecond, so request tail latency does not wait on a batch; and the
    /// few statement shapes stay in the prepared-statement cache.
    pub async fn insert_spend(&self, rows: &[SpendRecord]) -> Result<u64, StoreError> {
        let mut n = 0;
        on_db!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in rows.chunks(SPEND_CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO spend ({COLUMNS}) "));
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.request_id).push_bind(r.at).push_bind(&r.jti).push_bind(&r.subject)
                        .push_bind(&r.team).push_bind(&r.pool).push_bind(&r.billing_owner)
                        .push_bind(&r.provider).push_bind(&r.provider_key_id).push_bind(&r.model)
                        .push_bind(&r.upstream_model).push_bind(&r.endpoint).push_bind(r.stream)
                        .push_bind(r.input_tokens).push_bind(r.output_tokens)
                        .push_bind(r.cached_input_tokens).push_bind(r.cost_micro_usd)
                        .push_bind(r.status).push_bind(r.latency_ms);
                });
                qb.push(" ON CONFLICT (request_id) DO NOTHING");
                n += qb.build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
        });
        Ok(n)
    }

    /// Total cost of a pool's requests at or after `since`.
    pub async fn spend_since(&self, pool: &str, since: i64) -> Result<i64, StoreError> {
        let sql = "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) FROM spend WHERE pool = $1 AND at >= $2";
        Ok(
            on_db!(self, p => sqlx::query_scalar::<_, i64>(sql).bind(pool).bind(since).fetch_one(p).await?),
        )
    }

    /// Total cost per pool at or after `since`.
    pub async fn spend_by_pool_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT pool, CAST(SUM(cost_micro_usd) AS BIGINT) FROM spend WHERE at >= $1 GROUP BY pool ORDER BY pool";
        Ok(
            on_db!(self, p => sqlx::query_as::<_, (String, i64)>(sql).bind(since).fetch_all(p).await?),
        )
    }

    /// One request's row.
    pub async fn spend_record(&self, request_id: &str) -> Result<Option<SpendRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM spend WHERE request_id = $1");
        Ok(
            on_db!(self, p => sqlx::query_as::<_, SpendRecord>(&sql).bind(request_id).fetch_optional(p).await?),
        )
    }

    /// The newest rows first.
    pub async fn recent_spend(&self, limit: i64) -> Result<Vec<SpendRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM spend ORDER BY at DESC, request_id LIMIT $1");
        Ok(
            on_db!(self, p => sqlx::query_as::<_, SpendRecord>(&sql).bind(limit).fetch_all(p).await?),
        )
    }
}
