//! Fleet-wide per-minute windows (DESIGN.md "Quotas across replicas"): replicas lease units of
//! a limit's UTC-minute window with one atomic statement that never takes the window's total
//! past the limit. Nothing is handed back: a window lasts a minute, and what a replica leased
//! and did not use (or held when it died) is lost for that minute only — never over the limit.

use super::{Backend, Db, Store, StoreError, on_db};

/// Windows leased per statement by [`Store::acquire_rates`] (four parameters each, well
/// under either database's limit).
pub const RATE_BATCH: usize = 1000;

/// One window to lease units of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateAsk {
    /// The limit's key (`requests:pool:main`).
    pub scope: String,
    /// The window (unix minute).
    pub minute: i64,
    /// What the fleet may be granted for it in all.
    pub limit: u64,
    /// Units wanted.
    pub want: u64,
}

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
        let got = self
            .acquire_rates(&[RateAsk {
                scope: scope.to_owned(),
                minute,
                limit,
                want,
            }])
            .await?;
        Ok(got.into_iter().next().unwrap_or((0, 0)))
    }

    /// [`Store::acquire_rate`] for many windows in as few statements as possible (one per
    /// [`RATE_BATCH`] windows). Returns `(granted, total)` in the order asked. A window asked
    /// twice is leased once, for the larger `want`.
    pub async fn acquire_rates(&self, asks: &[RateAsk]) -> Result<Vec<(u64, u64)>, StoreError> {
        let (least, greatest) = if self.backend() == Backend::Postgres {
            ("LEAST", "GREATEST")
        } else {
            ("MIN", "MAX")
        };
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut unique: Vec<&RateAsk> = Vec::with_capacity(asks.len());
        let mut index: std::collections::HashMap<(&str, i64), usize> =
            std::collections::HashMap::with_capacity(asks.len());
        for a in asks {
            match index.get(&(a.scope.as_str(), a.minute)) {
                Some(&i) if unique[i].want >= a.want => {}
                Some(&i) => unique[i] = a,
                None => {
                    index.insert((a.scope.as_str(), a.minute), unique.len());
                    unique.push(a);
                }
            }
        }
        // What each distinct window got, in `unique`'s order.
        let mut granted = vec![(0_u64, 0_u64); unique.len()];
        for chunk in unique.chunks(RATE_BATCH) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 4;
                    format!(
                        "(${}, ${}, {least}(${}, ${}), {least}(${}, ${}), ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 3,
                        p + 4,
                        p + 4
                    )
                })
                .collect();
            // Every SET expression reads the row as it was before the update, and the row lock
            // (PostgreSQL) / the write lock (SQLite) serialises concurrent leases; the inserted
            // row's `granted` is min(want, limit), so the update grants min(that, room left).
            let sql = format!(
                "INSERT INTO rate_windows (scope, minute, granted, last_grant, limit_units) \
                 VALUES {} \
                 ON CONFLICT (scope, minute) DO UPDATE SET \
                   last_grant = {least}(excluded.granted, {greatest}(0, excluded.limit_units - rate_windows.granted)), \
                   granted = rate_windows.granted + {least}(excluded.granted, {greatest}(0, excluded.limit_units - rate_windows.granted)), \
                   limit_units = excluded.limit_units \
                 RETURNING scope, minute, last_grant, granted",
                values.join(", ")
            );
            let rows: Vec<(String, i64, i64, i64)> = on_db!(self, p => {
                let mut q = sqlx::query_as(&sql);
                for a in chunk {
                    q = q.bind(a.scope.as_str()).bind(a.minute).bind(clamp(a.want)).bind(clamp(a.limit));
                }
                q.fetch_all(p).await?
            });
            // RETURNING does not promise the VALUES order: match rows by window.
            for (scope, minute, got, total) in rows {
                if let Some(&i) = index.get(&(scope.as_str(), minute)) {
                    granted[i] = (
                        u64::try_from(got).unwrap_or(0),
                        u64::try_from(total).unwrap_or(0),
                    );
                }
            }
        }
        // Only the ask that was sent gets the grant; a duplicate sees the window's total.
        let mut sent = vec![false; unique.len()];
        Ok(asks
            .iter()
            .map(|a| {
                let i = index[&(a.scope.as_str(), a.minute)];
                let (got, total) = granted[i];
                if std::mem::replace(&mut sent[i], true) {
                    (0, total)
                } else {
                    (got, total)
                }
            })
            .collect())
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
