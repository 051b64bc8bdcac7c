//! Budget windows in UTC: where the current window started.

use crate::policy::BudgetWindow;

/// Milliseconds per UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Start (unix ms) of the window containing `now_ms`.
pub fn window_start(w: &BudgetWindow, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS);
    match w {
        BudgetWindow::Daily => day * DAY_MS,
        // 1970-01-01 was a Thursday: (day + 3) mod 7 is the weekday, Monday = 0.
        BudgetWindow::Weekly { start } => {
            (day - (day + 3 - i64::from(*start)).rem_euclid(7)) * DAY_MS
        }
        BudgetWindow::Monthly { start } => {
            let (y, m, d) = civil_from_days(day);
            let start = u32::from(*start).clamp(1, 28);
            let (y, m) = match (d >= start, m) {
                (true, _) => (y, m),
                (false, 1) => (y - 1, 12),
                (false, m) => (y, m - 1),
            };
            days_from_civil(y, m, start) * DAY_MS
        }
        BudgetWindow::Rolling { days } => now_ms - i64::from(*days) * DAY_MS,
    }
}

/// The first UTC day (unix day number) of the window containing `now_ms`: budgets are
/// leased per day, and a window is the range of its days.
pub fn first_day(w: &BudgetWindow, now_ms: i64) -> i64 {
    match w {
        BudgetWindow::Rolling { days } => now_ms.div_euclid(DAY_MS) - i64::from(*days).max(1) + 1,
        _ => window_start(w, now_ms).div_euclid(DAY_MS),
    }
}

// Howard Hinnant's civil-calendar algorithms (public domain), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-24T02:33:00Z (a Tuesday)
    const NOW: i64 = 1_795_487_580_000;

    #[test]
    fn calendar_windows_start_at_utc_boundaries() {
        assert_eq!(civil_from_days(NOW / DAY_MS), (2026, 11, 24));
        let d = window_start(&BudgetWindow::Daily, NOW);
        assert_eq!(civil_from_days(d / DAY_MS), (2026, 11, 24));
        assert_eq!(d % DAY_MS, 0);
        let w = window_start(&BudgetWindow::Weekly { start: 0 }, NOW);
        assert_eq!(civil_from_days(w / DAY_MS), (2026, 11, 23), "Monday");
        let m = window_start(&BudgetWindow::Monthly { start: 1 }, NOW);
        assert_eq!(civil_from_days(m / DAY_MS), (2026, 11, 1));
        let r = window_start(&BudgetWindow::Rolling { days: 7 }, NOW);
        assert_eq!(NOW - r, 7 * DAY_MS);
    }

    #[test]
    fn anchored_windows_start_on_their_day() {
        let start = |w: BudgetWindow, now: i64| civil_from_days(window_start(&w, now) / DAY_MS);
        // Tuesday 2026-11-24: the week from Sunday the 22nd, from Tuesday the 24th itself.
        assert_eq!(
            start(BudgetWindow::Weekly { start: 6 }, NOW),
            (2026, 11, 22)
        );
        assert_eq!(
            start(BudgetWindow::Weekly { start: 1 }, NOW),
            (2026, 11, 24)
        );
        assert_eq!(
            start(BudgetWindow::Weekly { start: 2 }, NOW),
            (2026, 11, 18)
        );
        // Billing months from the 15th; before the 25th it is still October's cycle.
        assert_eq!(
            start(BudgetWindow::Monthly { start: 15 }, NOW),
            (2026, 11, 15)
        );
        assert_eq!(
            start(BudgetWindow::Monthly { start: 25 }, NOW),
            (2026, 10, 25)
        );
        assert_eq!(
            start(BudgetWindow::Monthly { start: 24 }, NOW),
            (2026, 11, 24)
        );
        // January before the anchor goes back to December of the year before.
        let jan_3 = days_from_civil(2027, 1, 3) * DAY_MS + 5;
        assert_eq!(
            start(BudgetWindow::Monthly { start: 10 }, jan_3),
            (2026, 12, 10)
        );
        // Every day of four years lies in exactly one window, starting on the anchor.
        for w in [
            BudgetWindow::Weekly { start: 4 },
            BudgetWindow::Monthly { start: 28 },
        ] {
            let mut prev = window_start(&w, days_from_civil(2026, 1, 1) * DAY_MS);
            for d in days_from_civil(2026, 1, 1)..days_from_civil(2030, 1, 1) {
                let s = window_start(&w, d * DAY_MS + 1);
                assert!(s <= d * DAY_MS && s >= prev, "{w:?} on day {d}");
                if s != prev {
                    assert_eq!(
                        s,
                        d * DAY_MS,
                        "a new window starts on the day it is entered"
                    );
                    prev = s;
                }
                match w {
                    BudgetWindow::Weekly { start } => {
                        assert_eq!((s / DAY_MS + 3).rem_euclid(7), i64::from(start));
                    }
                    BudgetWindow::Monthly { start } => {
                        assert_eq!(civil_from_days(s / DAY_MS).2, u32::from(start));
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn civil_round_trips_over_four_centuries() {
        for z in (-200_000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
