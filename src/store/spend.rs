//! Spend rows.

use super::{Db, SpendRecord, Store, StoreError, on_db};

/// What spend is summed per.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendGroupBy {
    /// Team.
    Team,
    /// Budget pool.
    Pool,
    /// Workload subject.
    Subject,
    /// Provider key id.
    Key,
    /// Policy model name.
    Model,
    /// Deployment of a policy model (`model/deployment`; the model alone for rows written
    /// before deployments were recorded).
    Deployment,
    /// UTC day (the key is the unix day number).
    Day,
}

impl SpendGroupBy {
    /// Every grouping.
    pub const ALL: [SpendGroupBy; 7] = [
        SpendGroupBy::Team,
        SpendGroupBy::Pool,
        SpendGroupBy::Subject,
        SpendGroupBy::Key,
        SpendGroupBy::Model,
        SpendGroupBy::Deployment,
        SpendGroupBy::Day,
    ];

    /// `team`, `pool`, `subject`, `key`, `model`, `deployment`, `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendGroupBy::Team => "team",
            SpendGroupBy::Pool => "pool",
            SpendGroupBy::Subject => "subject",
            SpendGroupBy::Key => "key",
            SpendGroupBy::Model => "model",
            SpendGroupBy::Deployment => "deployment",
            SpendGroupBy::Day => "day",
        }
    }

    /// The inverse of [`SpendGroupBy::as_str`].
    pub fn parse(s: &str) -> Option<SpendGroupBy> {
        SpendGroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }

    fn expression(self) -> &'static str {
        match self {
            SpendGroupBy::Team => "team",
            SpendGroupBy::Pool => "pool",
            SpendGroupBy::Subject => "subject",
            SpendGroupBy::Key => "provider_key_id",
            SpendGroupBy::Model => "model",
            SpendGroupBy::Deployment => "COALESCE(model || '/' || deployment, model)",
            SpendGroupBy::Day => "CAST(at / 86400000 AS TEXT)",
        }
    }
}

/// Spend summed over one group.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SpendGroup {
    /// The team, pool, subject, key id, model, or unix day.
    pub key: String,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_micro_usd: i64,
}

/// Rows per statement of a spend batch.
const SPEND_CHUNK: usize = 64;

const COLUMNS: &str = "request_id, at, jti, subject, team, pool, billing_owner, provider, provider_key_id, \
     model, upstream_model, endpoint, stream, input_tokens, output_tokens, cached_input_tokens, \
     cost_micro_usd, status, latency_ms, prompt_sha256, provider_key_version, requested_model, deployment";

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
                        .push_bind(r.status).push_bind(r.latency_ms).push_bind(&r.prompt_sha256)
                        .push_bind(&r.provider_key_version).push_bind(&r.requested_model)
                        .push_bind(&r.deployment);
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

    /// Spend at `since..until` (unix ms) summed per `by`, largest cost first.
    pub async fn spend_grouped(
        &self,
        by: SpendGroupBy,
        since: i64,
        until: i64,
    ) -> Result<Vec<SpendGroup>, StoreError> {
        // `by` is one of a closed set of column expressions, never caller text.
        let key = by.expression();
        let sql = format!(
            "SELECT {key} AS key, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT) AS cached_input_tokens, \
             CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) AS cost_micro_usd \
             FROM spend WHERE at >= $1 AND at < $2 GROUP BY {key} ORDER BY cost_micro_usd DESC, key"
        );
        Ok(on_db!(self, p => sqlx::query_as::<_, SpendGroup>(&sql)
            .bind(since).bind(until).fetch_all(p).await?))
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
