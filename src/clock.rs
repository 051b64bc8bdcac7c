//! Wall-clock helpers: Tollgate stores and compares times as unix milliseconds / seconds.
//!
//! Every time Tollgate reads is the *fleet's* time: this host's clock corrected by how far the
//! store's clock is from it ([`follow_store`], measured at start and every few seconds by
//! `app::fleet_clock`). Replicas of one fleet share one database, so replicas whose own clocks
//! disagree by minutes still mint and verify each other's tokens with the ordinary leeway, date
//! a revocation cut-off and the tokens it refuses on one scale, count a request into the same
//! rate minute and roll a budget day over together. A single node on SQLite reads its own
//! clock through the store, so there the correction is zero.
//!
//! Two readings: [`now_ms`] is that wall clock (tokens, revocations, signing keys, caches); the
//! *ledger* clock [`ledger_ms`] dates what money and limits are counted against — budget days
//! and windows, per-minute rate windows, spend rows, alerts, the anomaly guard. They are the
//! same instant unless a drill or a test shifts the ledger ([`shift_ledger`]) to cross a window
//! boundary without waiting for it; tokens keep verifying against the real time meanwhile.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// This host's own clock, unix milliseconds: only for measuring it against the store's.
pub fn host_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now on the fleet's clock, unix milliseconds.
pub fn now_ms() -> i64 {
    host_ms().saturating_add(STORE_OFFSET_MS.load(Ordering::Relaxed))
}

/// Now on the fleet's clock, unix seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

static LEDGER_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static STORE_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Differences from the store's clock below this are left alone: they are within what one
/// measurement can tell (a round trip), and a clock that jittered by milliseconds at every
/// reading would move requests across a minute boundary for nothing.
pub const STORE_SKEW_TOLERANCE_MS: i64 = 1_000;

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

/// How far the store's clock is ahead of this host's, as the fleet's clock uses it (ms).
pub fn store_offset_ms() -> i64 {
    STORE_OFFSET_MS.load(Ordering::Relaxed)
}

/// The store's clock read as `store_ms` by a query sent at host time `sent_ms` and answered
/// at `received_ms`: how far it is ahead of this host, taking the reading as made halfway.
pub fn offset_of(sent_ms: i64, store_ms: i64, received_ms: i64) -> i64 {
    let midpoint = sent_ms.saturating_add(received_ms.saturating_sub(sent_ms) / 2);
    store_ms.saturating_sub(midpoint)
}

/// Follow the store's clock, `offset_ms` ahead of this host's (a measurement). Returns whether
/// the fleet's clock moved: only when the measurement differs from what it follows by at
/// least [`STORE_SKEW_TOLERANCE_MS`].
pub fn follow_store(offset_ms: i64) -> bool {
    let current = STORE_OFFSET_MS.load(Ordering::Relaxed);
    if !moves(current, offset_ms) {
        return false;
    }
    STORE_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
    true
}

fn moves(current: i64, measured: i64) -> bool {
    measured.saturating_sub(current).saturating_abs() >= STORE_SKEW_TOLERANCE_MS
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
    fn the_ledger_follows_the_store_only_past_the_tolerance() {
        assert!(!moves(0, 0));
        assert!(!moves(0, 999));
        assert!(!moves(0, -999));
        assert!(moves(0, 1_000));
        assert!(moves(0, -120_000));
        assert!(!moves(-120_000, -120_400), "noise around a known skew");
        assert!(moves(-120_000, 0), "a clock that was fixed");
        assert!(moves(i64::MIN, i64::MAX));
    }

    #[test]
    fn a_reading_is_taken_as_made_halfway_through_the_round_trip() {
        assert_eq!(offset_of(1_000, 1_050, 1_100), 0);
        assert_eq!(offset_of(1_000, 121_050, 1_100), 120_000);
        assert_eq!(offset_of(1_000, -118_950, 1_100), -120_000);
        assert_eq!(offset_of(1_000, 1_000, 1_000), 0);
    }

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
