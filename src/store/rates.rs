//! Fleet-wide per-minute windows (DESIGN.md "Quotas across replicas"): replicas lease units of
//! a limit's UTC-minute window with one atomic statement that never takes the window's total
//! past the limit. Nothing is handed back: a window lasts a minute, and what a replica leased
//! and did not use (or held when it died) is lost for that minute only — never over the limit.

use super::{Backend, Db, Store, StoreError, on_db};

impl Store {
    /// Lease up to `want` units of `scope`'s window `minute`, whose fleet total may reach
    /// `limit`. Returns `(granted now, the window's total after the grant)`.
    pub async fn acquire_rate(
        &self,
        scope: &str,
        minute: i64,
        limit: u64,
        want: u64,
    ) -> Result<(u64, u64), StoreError> {
        let least = if self.backend() == Backend::Postgres {
            "LEAST"
        } else {
            "MIN"
        };
        let greatest = if self.backend() == Backend::Postgres {
            "GREATEST"
        } else {
            "MAX"
        };
        // Every SET expression reads the row as it was before the update, and the row lock
        // (PostgreSQL) / the write lock (SQLite) serialises concurrent leases.
        let sql = format!(
            "INSERT INTO rate_windows (scope, minute, granted, last_grant) \
             VALUES ($1, $2, {least}($3, $4), {least}($3, $4)) \
             ON CONFLICT (scope, minute) DO UPDATE SET \
               last_grant = {least}($3, {greatest}(0, $4 - rate_windows.granted)), \
               granted = rate_windows.granted + {least}($3, {greatest}(0, $4 - rate_windows.granted)) \
             RETURNING last_grant, granted"
        );
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (got, total): (i64, i64) = on_db!(self, p => {
            sqlx::query_as(&sql).bind(scope).bind(minute).bind(want).bind(limit)
                .fetch_one(p).await?
        });
        Ok((
            u64::try_from(got).unwrap_or(0),
            u64::try_from(total).unwrap_or(0),
        ))
    }

    /// Forget windows of minutes before `minute`.
    pub async fn forget_rate_windows(&self, minute: i64) -> Result<u64, StoreError> {
        let n = on_db!(self, p => {
            sqlx::query("DELETE FROM rate_windows WHERE minute < $1").bind(minute)
                .execute(p).await?.rows_affected()
        });
        Ok(n)
    }
}
