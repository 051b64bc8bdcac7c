//! Pauses of the anomaly guard, and the spend velocity it judges them by. A pause holds until
//! an admin lifts it; the partial unique index keeps one active pause per subject or key, so
//! replicas that detect the same spike at once record it once.

use super::{Db, Store, StoreError, on_db};

/// What a pause stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PauseKind {
    /// A workload (token `sub`): its requests and token exchanges are refused.
    Subject,
    /// A provider key: no request uses it.
    ProviderKey,
}

impl PauseKind {
    /// Both kinds.
    pub const ALL: [PauseKind; 2] = [PauseKind::Subject, PauseKind::ProviderKey];

    /// `subject` / `provider_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Subject => "subject",
            PauseKind::ProviderKey => "provider_key",
        }
    }

    /// The inverse of [`PauseKind::as_str`].
    pub fn parse(s: &str) -> Option<PauseKind> {
        PauseKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The spend column that identifies one.
    fn column(self) -> &'static str {
        match self {
            PauseKind::Subject => "subject",
            PauseKind::ProviderKey => "provider_key_id",
        }
    }
}

/// A stored pause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseRecord {
    /// Id.
    pub id: i64,
    /// Subject or key.
    pub kind: PauseKind,
    /// The subject or the key id.
    pub value: String,
    /// Why (safe to show).
    pub reason: String,
    /// When (unix ms).
    pub created_at: i64,
    /// When an admin lifted it.
    pub lifted_at: Option<i64>,
    /// Who lifted it.
    pub lifted_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PauseRow {
    id: i64,
    kind: String,
    value: String,
    reason: String,
    created_at: i64,
    lifted_at: Option<i64>,
    lifted_by: Option<String>,
}

impl PauseRow {
    fn into_record(self) -> Result<PauseRecord, StoreError> {
        let kind = PauseKind::parse(&self.kind).ok_or_else(|| StoreError::Corrupt {
            table: "pauses",
            reason: format!("unknown kind {:?}", self.kind),
        })?;
        Ok(PauseRecord {
            id: self.id,
            kind,
            value: self.value,
            reason: self.reason,
            created_at: self.created_at,
            lifted_at: self.lifted_at,
            lifted_by: self.lifted_by,
        })
    }
}

/// Spend of one subject or key: in the recent window, and in the busiest window-sized slot of
/// the baseline before it (0 when it spent nothing there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Velocity {
    /// The subject or key id.
    pub id: String,
    /// Micro-dollars in the recent window.
    pub recent_cost: i64,
    /// Input + output tokens in the recent window.
    pub recent_tokens: i64,
    /// Micro-dollars of the baseline's busiest slot.
    pub peak_cost: i64,
    /// Tokens of the baseline's busiest slot (by tokens).
    pub peak_tokens: i64,
}

const COLUMNS: &str = "id, kind, value, reason, created_at, lifted_at, lifted_by";

impl Store {
    /// Pause `value` unless it already is. Returns the new pause, or `None` when an active
    /// one existed (another replica got there first).
    pub async fn pause(
        &self,
        kind: PauseKind,
        value: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<PauseRecord>, StoreError> {
        let sql = format!(
            "INSERT INTO pauses (kind, value, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        );
        let row = on_db!(self, p => sqlx::query_as::<_, PauseRow>(&sql)
            .bind(kind.as_str()).bind(value).bind(reason).bind(now)
            .fetch_optional(p).await?);
        row.map(PauseRow::into_record).transpose()
    }

    /// Pauses in force, oldest first; with `lifted_since`, also those lifted since then.
    pub async fn pauses(&self, lifted_since: Option<i64>) -> Result<Vec<PauseRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM pauses WHERE lifted_at IS NULL OR lifted_at >= $1 ORDER BY id"
        );
        let since = lifted_since.unwrap_or(i64::MAX);
        let rows =
            on_db!(self, p => sqlx::query_as::<_, PauseRow>(&sql).bind(since).fetch_all(p).await?);
        rows.into_iter().map(PauseRow::into_record).collect()
    }

    /// One pause by id, in force or lifted.
    pub async fn pause_by_id(&self, id: i64) -> Result<Option<PauseRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM pauses WHERE id = $1");
        let row = on_db!(self, p => sqlx::query_as::<_, PauseRow>(&sql).bind(id).fetch_optional(p).await?);
        row.map(PauseRow::into_record).transpose()
    }

    /// Lift the pause `id` if it is in force; `false` when it was not (unknown or lifted).
    pub async fn lift_pause_by_id(&self, id: i64, by: &str, now: i64) -> Result<bool, StoreError> {
        let sql =
            "UPDATE pauses SET lifted_at = $2, lifted_by = $3 WHERE id = $1 AND lifted_at IS NULL";
        let n = on_db!(self, p => sqlx::query(sql).bind(id).bind(now).bind(by).execute(p).await?.rows_affected());
        Ok(n > 0)
    }

    /// Lift the active pause of `value`; `false` when there was none.
    pub async fn lift_pause(
        &self,
        kind: PauseKind,
        value: &str,
        by: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE pauses SET lifted_at = $3, lifted_by = $4 \
                   WHERE kind = $1 AND value = $2 AND lifted_at IS NULL";
        let n = on_db!(self, p => sqlx::query(sql).bind(kind.as_str()).bind(value).bind(now).bind(by)
            .execute(p).await?.rows_affected());
        Ok(n > 0)
    }

    /// Subjects or keys that spent at least `min_cost` or `min_tokens` since `recent_from`,
    /// with the busiest `slot_ms`-long slot of each in the baseline `baseline_from..recent_from`.
    /// The recent window is scanned once; the baseline is read by index only for the few over
    /// the floor.
    pub async fn spend_velocity(
        &self,
        kind: PauseKind,
        baseline_from: i64,
        recent_from: i64,
        slot_ms: i64,
        min_cost: i64,
        min_tokens: i64,
    ) -> Result<Vec<Velocity>, StoreError> {
        let col = kind.column();
        let recent = format!(
            "SELECT {col}, CAST(SUM(cost_micro_usd) AS BIGINT), \
               CAST(SUM(input_tokens + output_tokens) AS BIGINT) \
             FROM spend WHERE at >= $1 AND {col} <> 'mock' GROUP BY {col} \
             HAVING SUM(cost_micro_usd) >= $2 OR SUM(input_tokens + output_tokens) >= $3"
        );
        let base = format!(
            "SELECT CAST(COALESCE(MAX(c), 0) AS BIGINT), CAST(COALESCE(MAX(t), 0) AS BIGINT) FROM \
               (SELECT SUM(cost_micro_usd) AS c, SUM(input_tokens + output_tokens) AS t \
                FROM spend WHERE {col} = $1 AND at >= $2 AND at < $3 GROUP BY at / $4) slots"
        );
        let hot: Vec<(String, i64, i64)> = on_db!(self, p => sqlx::query_as(&recent)
            .bind(recent_from).bind(min_cost).bind(min_tokens).fetch_all(p).await?);
        let mut out = Vec::with_capacity(hot.len());
        for (id, recent_cost, recent_tokens) in hot {
            let (peak_cost, peak_tokens): (i64, i64) = on_db!(self, p => sqlx::query_as(&base)
                .bind(&id).bind(baseline_from).bind(recent_from).bind(slot_ms.max(1))
                .fetch_one(p).await?);
            out.push(Velocity {
                id,
                recent_cost,
                recent_tokens,
                peak_cost,
                peak_tokens,
            });
        }
        Ok(out)
    }
}
