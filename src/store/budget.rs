//! Fleet-wide budget leases (DESIGN.md "Quotas across replicas"): replicas acquire money for a
//! pool-day with one atomic statement, return what they do not need, report what they hold at
//! every heartbeat, and reclaim what a dead replica promised not to use. Every statement keeps
//! `Σ granted over a window ≤ cap` whatever the interleaving.

use super::{Backend, Db, Store, StoreError, on_db};

/// Milliseconds per UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// What a replica reports for one of its leases at a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseReport {
    /// Pool.
    pub pool: String,
    /// Unix day of the lease.
    pub day: i64,
    /// Money neither reserved nor spent.
    pub available: i64,
    /// The most the replica may newly reserve before its next heartbeat.
    pub allowance: i64,
    /// What the replica holds of the lease in all (available + reserved + spent): when the
    /// store's grant is less, the difference was reclaimed while the replica was thought dead.
    pub held: i64,
}

/// A lease row (tests, admin).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRecord {
    /// Pool.
    pub pool: String,
    /// Unix day.
    pub day: i64,
    /// Replica id.
    pub replica: String,
    /// Money granted to it.
    pub granted_micro_usd: i64,
    /// Last reported available.
    pub available_micro_usd: i64,
    /// Last reported allowance.
    pub allowance_micro_usd: i64,
}

impl Store {
    /// Acquire up to `want` for `pool` on `day`, where the window spans `first_day..=day` and
    /// may hold `cap` in all. Returns what was granted (0 when the window is exhausted). The
    /// day's row starts from the spend already recorded that day, so turning leases on never
    /// forgets earlier spend.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire_budget(
        &self,
        replica: &str,
        pool: &str,
        first_day: i64,
        day: i64,
        cap: i64,
        want: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let pg = self.backend() == Backend::Postgres;
        let seed = "INSERT INTO budget_days (pool, day, granted_micro_usd, last_grant_micro_usd) \
                    SELECT $1, $2, CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT), 0 FROM spend \
                    WHERE pool = $1 AND at >= $3 AND at < $4 \
                    ON CONFLICT (pool, day) DO NOTHING";
        // One statement decides and records the grant from the row's own values (the row lock
        // serialises concurrent acquires); earlier days of the window only ever shrink
        // (returns, reclaims), so reading them unlocked can only under-grant.
        let (least, greatest) = if pg {
            ("LEAST", "GREATEST")
        } else {
            ("MIN", "MAX")
        };
        let grant = format!(
            "UPDATE budget_days SET \
               last_grant_micro_usd = {least}($3, {greatest}(0, $4 - granted_micro_usd - \
                 (SELECT CAST(COALESCE(SUM(o.granted_micro_usd), 0) AS BIGINT) FROM budget_days o \
                  WHERE o.pool = $1 AND o.day >= $5 AND o.day < $2))), \
               granted_micro_usd = granted_micro_usd + {least}($3, {greatest}(0, $4 - granted_micro_usd - \
                 (SELECT CAST(COALESCE(SUM(o.granted_micro_usd), 0) AS BIGINT) FROM budget_days o \
                  WHERE o.pool = $1 AND o.day >= $5 AND o.day < $2))) \
             WHERE pool = $1 AND day = $2 RETURNING last_grant_micro_usd"
        );
        // Money granted since the replica's last report may all be spent before the next one:
        // it joins the allowance, so a reclaim never takes it back (and grants it twice).
        let lease = "INSERT INTO budget_leases (pool, day, replica, granted_micro_usd, available_micro_usd, allowance_micro_usd, reported_at) \
                     VALUES ($1, $2, $3, $4, $4, $4, $5) \
                     ON CONFLICT (pool, day, replica) DO UPDATE SET \
                       granted_micro_usd = budget_leases.granted_micro_usd + excluded.granted_micro_usd, \
                       available_micro_usd = budget_leases.available_micro_usd + excluded.granted_micro_usd, \
                       allowance_micro_usd = budget_leases.allowance_micro_usd + excluded.granted_micro_usd";
        let got = on_db!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(seed).bind(pool).bind(day).bind(day * DAY_MS).bind((day + 1) * DAY_MS)
                .execute(&mut *tx).await?;
            let got: i64 = sqlx::query_scalar(&grant)
                .bind(pool).bind(day).bind(want.max(0)).bind(cap).bind(first_day)
                .fetch_one(&mut *tx).await?;
            if got > 0 {
                sqlx::query(lease).bind(pool).bind(day).bind(replica).bind(got).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            got
        });
        Ok(got)
    }

    /// Give `amount` of a replica's lease back to the pool-day (never more than it holds).
    pub async fn return_budget(
        &self,
        replica: &str,
        pool: &str,
        day: i64,
        amount: i64,
    ) -> Result<i64, StoreError> {
        let held = "SELECT granted_micro_usd FROM budget_leases WHERE pool = $1 AND day = $2 AND replica = $3";
        let lease = "UPDATE budget_leases SET granted_micro_usd = granted_micro_usd - $4, \
                     available_micro_usd = CASE WHEN available_micro_usd > $4 THEN available_micro_usd - $4 ELSE 0 END \
                     WHERE pool = $1 AND day = $2 AND replica = $3";
        let days = "UPDATE budget_days SET granted_micro_usd = granted_micro_usd - $3 WHERE pool = $1 AND day = $2";
        let back = on_db!(self, p => {
            let mut tx = p.begin().await?;
            // A no-op write first takes SQLite's write lock before the read.
            sqlx::query(days).bind(pool).bind(day).bind(0_i64).execute(&mut *tx).await?;
            let held: Option<i64> = sqlx::query_scalar(held).bind(pool).bind(day).bind(replica)
                .fetch_optional(&mut *tx).await?;
            let back = amount.clamp(0, held.unwrap_or(0));
            if back > 0 {
                sqlx::query(lease).bind(pool).bind(day).bind(replica).bind(back).execute(&mut *tx).await?;
                sqlx::query(days).bind(pool).bind(day).bind(back).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            back
        });
        Ok(back)
    }

    /// Read the store's clock (unix ms), which the ledger of every replica follows.
    pub async fn clock_ms(&self) -> Result<i64, StoreError> {
        let sql = format!("SELECT {}", self.db_now_ms());
        Ok(on_db!(self, p => sqlx::query_scalar::<_, i64>(&sql).fetch_one(p).await?))
    }

    /// The store's clock in unix ms: replicas judge each other's liveness by it, never by
    /// their own clocks, so skew between replicas (or a shifted ledger clock) cannot make a
    /// live replica look dead.
    pub(super) fn db_now_ms(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Record a heartbeat: the replica is alive now (by the store's clock) and reports its
    /// leases. Returns, per reported lease, what the store still grants it; a lease reclaimed
    /// while the replica looked dead is reported with that much less available, and the
    /// replica must drop the difference (see [`LeaseReport::held`]).
    pub async fn heartbeat(
        &self,
        replica: &str,
        reports: &[LeaseReport],
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let now = self.db_now_ms();
        let (least, greatest) = if self.backend() == Backend::Postgres {
            ("LEAST", "GREATEST")
        } else {
            ("MIN", "MAX")
        };
        let alive = format!(
            "INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, {now}, {now}) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
        );
        let kept = format!("{greatest}(0, $4 - {greatest}(0, $6 - granted_micro_usd))");
        let report = format!(
            "UPDATE budget_leases SET available_micro_usd = {kept}, \
               allowance_micro_usd = {least}($5, {kept}), reported_at = {now} \
             WHERE pool = $1 AND day = $2 AND replica = $3 RETURNING granted_micro_usd"
        );
        let granted = on_db!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(&alive).bind(replica).execute(&mut *tx).await?;
            let mut out = Vec::with_capacity(reports.len());
            for r in reports {
                let g: Option<i64> = sqlx::query_scalar(&report).bind(&r.pool).bind(r.day).bind(replica)
                    .bind(r.available.max(0)).bind(r.allowance.max(0)).bind(r.held)
                    .fetch_optional(&mut *tx).await?;
                out.extend(g.map(|g| (r.pool.clone(), r.day, g)));
            }
            tx.commit().await?;
            out
        });
        Ok(granted)
    }

    /// Reclaim, from every replica silent for longer than `ttl_ms` (by the store's clock), the
    /// money it reported as available beyond its allowance. Idempotent: a reclaimed lease
    /// reports `available = allowance`. Returns the total reclaimed.
    pub async fn reclaim_expired(&self, ttl_ms: i64) -> Result<i64, StoreError> {
        let pg = self.backend() == Backend::Postgres;
        let select = format!(
            "SELECT l.pool, l.day, l.replica, l.available_micro_usd - l.allowance_micro_usd \
             FROM budget_leases l JOIN replicas r ON r.id = l.replica \
             WHERE r.heartbeat_at < {} - $1 AND l.available_micro_usd > l.allowance_micro_usd{}",
            self.db_now_ms(),
            if pg { " FOR UPDATE OF l" } else { "" }
        );
        let lease = "UPDATE budget_leases SET granted_micro_usd = granted_micro_usd - $4, \
                     available_micro_usd = available_micro_usd - $4 \
                     WHERE pool = $1 AND day = $2 AND replica = $3";
        let days = "UPDATE budget_days SET granted_micro_usd = granted_micro_usd - $3 WHERE pool = $1 AND day = $2";
        let total = on_db!(self, p => {
            let mut tx = p.begin().await?;
            // Take SQLite's write lock first (no-op write), so the read below is not stale.
            sqlx::query("UPDATE replicas SET heartbeat_at = heartbeat_at WHERE id = ''").execute(&mut *tx).await?;
            let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(&select).bind(ttl_ms)
                .fetch_all(&mut *tx).await?;
            let mut total = 0;
            for (pool, day, replica, amount) in rows {
                sqlx::query(lease).bind(&pool).bind(day).bind(&replica).bind(amount).execute(&mut *tx).await?;
                sqlx::query(days).bind(&pool).bind(day).bind(amount).execute(&mut *tx).await?;
                total += amount;
            }
            tx.commit().await?;
            total
        });
        Ok(total)
    }

    /// Total granted for `pool` over `first_day..=last_day`.
    pub async fn budget_granted(
        &self,
        pool: &str,
        first_day: i64,
        last_day: i64,
    ) -> Result<i64, StoreError> {
        let sql = "SELECT CAST(COALESCE(SUM(granted_micro_usd), 0) AS BIGINT) FROM budget_days \
                   WHERE pool = $1 AND day >= $2 AND day <= $3";
        Ok(
            on_db!(self, p => sqlx::query_scalar::<_, i64>(sql).bind(pool).bind(first_day).bind(last_day).fetch_one(p).await?),
        )
    }

    /// A pool's lease rows (tests, admin).
    pub async fn budget_leases(&self, pool: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        let sql = "SELECT pool, day, replica, granted_micro_usd, available_micro_usd, allowance_micro_usd \
                   FROM budget_leases WHERE pool = $1 ORDER BY day, replica";
        Ok(on_db!(self, p => sqlx::query_as::<_, LeaseRecord>(sql).bind(pool).fetch_all(p).await?))
    }
}

impl Store {
    /// Claim the alert for `threshold` percent of `pool` in the window starting on
    /// `window_start` (unix day). `true` for exactly one caller across the fleet.
    pub async fn claim_budget_alert(
        &self,
        pool: &str,
        window_start: i64,
        threshold: u8,
        spent: i64,
        cap: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = "INSERT INTO budget_alerts (pool, window_start, threshold, fired_at, spent_micro_usd, cap_micro_usd) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pool, window_start, threshold) DO NOTHING";
        let n = on_db!(self, p => sqlx::query(sql)
            .bind(pool).bind(window_start).bind(i32::from(threshold)).bind(now).bind(spent).bind(cap)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}
