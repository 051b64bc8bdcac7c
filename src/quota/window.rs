//! Budget windows in UTC: where the current window started.

use crate::policy::BudgetWindow;

/// Milliseconds per UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Start (unix ms) of the window containing `now_ms`.
pub fn window_start(w: &BudgetWindow, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS);
    match w {
        BudgetWindow::Daily => day * DAY_MS,
        // 1970-01-01 was a Thursday; ISO weeks start on Monday.
        BudgetWindow::Weekly => (day - (day + 3).rem_euclid(7)) * DAY_MS,
        BudgetWindow::Monthly => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
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
        let w = window_start(&BudgetWindow::Weekly, NOW);
        assert_eq!(civil_from_days(w / DAY_MS), (2026, 11, 23), "Monday");
        let m = window_start(&BudgetWindow::Monthly, NOW);
        assert_eq!(civil_from_days(m / DAY_MS), (2026, 11, 1));
        let r = window_start(&BudgetWindow::Rolling { days: 7 }, NOW);
        assert_eq!(NOW - r, 7 * DAY_MS);
    }

    #[test]
    fn civil_round_trips_over_four_centuries() {
        for z in (-200_000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
