//! Wall-clock helpers: Tollgate stores and compares times as unix milliseconds / seconds.
//!
//! Two readings: [`now_ms`] is the wall clock (tokens, leases of signing keys, caches); the
//! *ledger* clock [`ledger_ms`] dates what money and limits are counted against — budget days
//! and windows, per-minute rate windows, spend rows, alerts, the anomaly guard. They are the
//! same instant unless a drill or a test shifts the ledger ([`shift_ledger`]) to cross a window
//! boundary without waiting for it; tokens keep verifying against the real time meanwhile.

use std::sync::atomic::{AtomicI64, Ordering};
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

static LEDGER_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Now on the ledger clock, unix milliseconds.
pub fn ledger_ms() -> i64 {
    now_ms().saturating_add(LEDGER_OFFSET_MS.load(Ordering::Relaxed))
}

/// Move the ledger clock of this process so that it reads `at_ms` now (and runs on from
/// there). For tests and drills that cross a budget window; never needed in operation. Every
/// replica in the process moves together.
pub fn shift_ledger(at_ms: i64) {
    LEDGER_OFFSET_MS.store(at_ms - now_ms(), Ordering::Relaxed);
}

/// Unix milliseconds as RFC 3339 in UTC, always with milliseconds (the admin API's time
/// format); times before the epoch clamp to it.
pub fn to_rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// An RFC 3339 timestamp (any offset) as unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_reads_offsets() {
        assert_eq!(to_rfc3339(1_780_000_000_123), "2026-05-28T20:26:40.123Z");
        assert_eq!(to_rfc3339(1_780_000_000_000), "2026-05-28T20:26:40.000Z");
        assert_eq!(
            parse_rfc3339("2026-05-28T20:26:40.123Z"),
            Some(1_780_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2026-05-28T22:26:40.123+02:00"),
            Some(1_780_000_000_123)
        );
        assert_eq!(parse_rfc3339("2026-05-28"), None);
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
