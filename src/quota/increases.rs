//! Approved budget increases, in memory: the hot path adds them to a pool's cap without a
//! database round trip. A background task replaces the whole map from the store every
//! `revocation_sync_interval`, and the replica that approves one applies it at once.

use super::window_start;
use crate::policy::{BudgetWindow, Pool};
use parking_lot::RwLock;
use std::collections::HashMap;

/// Money added to pools' caps: per pool, (window start in unix ms, micro-dollars).
#[derive(Default)]
pub struct Increases {
    extra: RwLock<HashMap<String, Vec<(i64, i64)>>>,
}

impl Increases {
    /// Replace everything with what the store holds.
    pub fn replace(&self, rows: Vec<(String, i64, i64)>) {
        let mut map: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
        for (pool, start, micros) in rows {
            map.entry(pool).or_default().push((start, micros));
        }
        *self.extra.write() = map;
    }

    /// Add one just approved here (the next sync confirms it).
    pub fn add(&self, pool: &str, window_start: i64, micros: i64) {
        let mut map = self.extra.write();
        let windows = map.entry(pool.to_owned()).or_default();
        match windows.iter_mut().find(|(s, _)| *s == window_start) {
            Some((_, v)) => *v = v.saturating_add(micros),
            None => windows.push((window_start, micros)),
        }
    }

    /// What approved increases add to `pool`'s cap in the window containing `now_ms`.
    pub fn extra(&self, pool: &str, window: &BudgetWindow, now_ms: i64) -> i64 {
        if matches!(window, BudgetWindow::Rolling { .. }) {
            return 0;
        }
        let start = window_start(window, now_ms);
        self.extra
            .read()
            .get(pool)
            .and_then(|w| w.iter().find(|(s, _)| *s == start))
            .map_or(0, |(_, v)| *v)
    }

    /// `pool`'s cap in micro-dollars for the window containing `now_ms`, increases included.
    pub fn cap(&self, pool: &Pool, now_ms: i64) -> Option<i64> {
        pool.budget.as_ref().map(|b| {
            i64::try_from(b.limit_micro_usd)
                .unwrap_or(i64::MAX)
                .saturating_add(self.extra(&pool.name, &b.window, now_ms))
        })
    }
}
