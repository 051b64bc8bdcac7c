//! Wall-clock helpers: Tollgate stores and compares times as unix milliseconds / seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, unix seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}
