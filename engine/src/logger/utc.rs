//! ISO-8601 UTC timestamps with milliseconds (`2026-11-29T22:41:07.123Z`)
//! from unix milliseconds, without a calendar crate: the days since
//! 1970-01-01 become a proleptic Gregorian date by Howard Hinnant's
//! `civil_from_days` (eras of 400 years, each 146,097 days, so leap years
//! need no table).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since 1970-01-01T00:00:00Z now (0 if the clock is before
/// it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The date `(year, month 1..=12, day 1..=31)` that is `days` days after
/// 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01, so a leap day is the last day of its
    // (March-based) year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146_096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year, 0..=365
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` to `out`.
pub fn write_utc(out: &mut String, unix_ms: u64) {
    let secs = unix_ms / 1_000;
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        unix_ms % 1_000
    );
}

/// `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(unix_ms: u64) -> String {
    let mut s = String::with_capacity(24);
    write_utc(&mut s, unix_ms);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unix_ms: u64, expected: &str) {
        assert_eq!(utc(unix_ms), expected, "{unix_ms}");
    }

    #[test]
    fn known_instants() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (999, "1970-01-01T00:00:00.999Z"),
            (86_399_999, "1970-01-01T23:59:59.999Z"),
            (86_400_000, "1970-01-02T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"), // divisible by 400: leap
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            (978_307_199_999, "2000-12-31T23:59:59.999Z"), // day 366 of 2000
            (1_000_000_000_000, "2001-09-09T01:46:40.000Z"),
            (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
            (1_709_251_200_000, "2024-03-01T00:00:00.000Z"),
            (1_677_628_800_000, "2023-03-01T00:00:00.000Z"), // 2023: Feb 28 then Mar 1
            (1_677_542_400_000, "2023-02-28T00:00:00.000Z"),
            (1_795_992_067_123, "2026-11-29T22:41:07.123Z"),
            (4_107_456_000_000, "2100-02-28T00:00:00.000Z"), // divisible by 100: not leap
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, text) in table {
            check(ms, text);
        }
    }

    /// Walks every day from 1970 to 2400 and checks each date follows the
    /// one before: the day advances within a month of the right length,
    /// and months and years roll over.
    #[test]
    fn every_day_follows_the_one_before() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: i64, m: u32| match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap(y) => 29,
            _ => 28,
        };
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        let mut leap_days = 0;
        for days in 1..(430 * 366) {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            if pd < month_len(py, pm) {
                assert_eq!((y, m, d), (py, pm, pd + 1), "day {days}");
            } else if pm < 12 {
                assert_eq!((y, m, d), (py, pm + 1, 1), "day {days}");
            } else {
                assert_eq!((y, m, d), (py + 1, 1, 1), "day {days}");
            }
            if (m, d) == (2, 29) {
                leap_days += 1;
            }
            prev = (y, m, d);
        }
        // The walk ends in November 2400: the leap years 1972..=2400 are
        // the 108 multiples of 4 less 2100, 2200 and 2300 (2000 and 2400,
        // multiples of 400, stay).
        assert_eq!(leap_days, 105);
        // Before 1970 too (a clock set back far is still formatted).
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}
