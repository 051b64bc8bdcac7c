//! Budget increase requests. A decision is one conditional update (`state = 'pending'` and not
//! expired), so two approvers racing on one request decide it once.

use super::{Db, Store, StoreError, on_db};

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncreaseState {
    /// Waiting for a second person (or expired, once `expires_at` passed).
    Pending,
    /// Raises the cap of its window.
    Approved,
    /// Refused.
    Denied,
}

impl IncreaseState {
    /// `pending`, `approved`, `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncreaseState::Pending => "pending",
            IncreaseState::Approved => "approved",
            IncreaseState::Denied => "denied",
        }
    }

    fn parse(s: &str) -> Option<IncreaseState> {
        [
            IncreaseState::Pending,
            IncreaseState::Approved,
            IncreaseState::Denied,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A new request.
#[derive(Clone, Debug)]
pub struct NewIncrease {
    /// The pool.
    pub pool: String,
    /// Start of the window it raises (unix ms).
    pub window_start: i64,
    /// How much, micro-dollars.
    pub amount_micro_usd: i64,
    /// Why.
    pub reason: String,
    /// Who asks.
    pub requested_by: String,
    /// When (unix ms).
    pub requested_at: i64,
    /// Approvable until (unix ms).
    pub expires_at: i64,
}

/// A stored request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncreaseRecord {
    /// Id.
    pub id: i64,
    /// The pool.
    pub pool: String,
    /// Start of the window it raises (unix ms).
    pub window_start: i64,
    /// How much, micro-dollars.
    pub amount_micro_usd: i64,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: i64,
    /// Approvable until.
    pub expires_at: i64,
    /// Where it stands.
    pub state: IncreaseState,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<i64>,
    /// Why (the approver's or denier's words).
    pub decision_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct IncreaseRow {
    id: i64,
    pool: String,
    window_start: i64,
    amount_micro_usd: i64,
    reason: String,
    requested_by: String,
    requested_at: i64,
    expires_at: i64,
    state: String,
    decided_by: Option<String>,
    decided_at: Option<i64>,
    decision_reason: Option<String>,
}

impl IncreaseRow {
    fn into_record(self) -> Result<IncreaseRecord, StoreError> {
        let state = IncreaseState::parse(&self.state).ok_or_else(|| StoreError::Corrupt {
            table: "budget_increases",
            reason: format!("unknown state {:?}", self.state),
        })?;
        Ok(IncreaseRecord {
            id: self.id,
            pool: self.pool,
            window_start: self.window_start,
            amount_micro_usd: self.amount_micro_usd,
            reason: self.reason,
            requested_by: self.requested_by,
            requested_at: self.requested_at,
            expires_at: self.expires_at,
            state,
            decided_by: self.decided_by,
            decided_at: self.decided_at,
            decision_reason: self.decision_reason,
        })
    }
}

const COLUMNS: &str = "id, pool, window_start, amount_micro_usd, reason, requested_by, requested_at, \
     expires_at, state, decided_by, decided_at, decision_reason";

impl Store {
    /// Record a pending request.
    pub async fn insert_increase(&self, r: &NewIncrease) -> Result<IncreaseRecord, StoreError> {
        let sql = "INSERT INTO budget_increases (pool, window_start, amount_micro_usd, reason, \
                   requested_by, requested_at, expires_at, state) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending') RETURNING id";
        let id: i64 = on_db!(self, p => sqlx::query_scalar(sql)
            .bind(&r.pool).bind(r.window_start).bind(r.amount_micro_usd).bind(&r.reason)
            .bind(&r.requested_by).bind(r.requested_at).bind(r.expires_at)
            .fetch_one(p).await?);
        Ok(IncreaseRecord {
            id,
            pool: r.pool.clone(),
            window_start: r.window_start,
            amount_micro_usd: r.amount_micro_usd,
            reason: r.reason.clone(),
            requested_by: r.requested_by.clone(),
            requested_at: r.requested_at,
            expires_at: r.expires_at,
            state: IncreaseState::Pending,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
        })
    }

    /// One request.
    pub async fn increase(&self, id: i64) -> Result<Option<IncreaseRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM budget_increases WHERE id = $1");
        let row = on_db!(self, p => sqlx::query_as::<_, IncreaseRow>(&sql).bind(id).fetch_optional(p).await?);
        row.map(IncreaseRow::into_record).transpose()
    }

    /// Requests made at or after `since`, newest first (at most 1000).
    pub async fn increases(&self, since: i64) -> Result<Vec<IncreaseRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM budget_increases WHERE requested_at >= $1 ORDER BY id DESC LIMIT 1000"
        );
        let rows = on_db!(self, p => sqlx::query_as::<_, IncreaseRow>(&sql).bind(since).fetch_all(p).await?);
        rows.into_iter().map(IncreaseRow::into_record).collect()
    }

    /// Decide a pending, unexpired request; `false` when it was not (any more) pending or had
    /// expired at `at`.
    pub async fn decide_increase(
        &self,
        id: i64,
        state: IncreaseState,
        by: &str,
        at: i64,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE budget_increases SET state = $1, decided_by = $2, decided_at = $3, \
                   decision_reason = $4 WHERE id = $5 AND state = 'pending' AND expires_at > $3";
        let n = on_db!(self, p => sqlx::query(sql)
            .bind(state.as_str()).bind(by).bind(at).bind(reason).bind(id)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Approved increases of windows starting at or after `since`: (pool, window start, sum).
    pub async fn approved_increases(
        &self,
        since: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let sql = "SELECT pool, window_start, CAST(SUM(amount_micro_usd) AS BIGINT) FROM budget_increases \
                   WHERE state = 'approved' AND window_start >= $1 GROUP BY pool, window_start";
        Ok(
            on_db!(self, p => sqlx::query_as::<_, (String, i64, i64)>(sql).bind(since).fetch_all(p).await?),
        )
    }
}
