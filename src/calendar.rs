//! The proleptic Gregorian calendar in UTC, by day counts since 1970-01-01
//! (Howard Hinnant's algorithms): what the log line's timestamp and the
//! monthly budget window need, without a date crate.

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count since 1970-01-01 of (year, month, day).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The first second (Unix) of the calendar month holding `secs`, UTC.
pub fn month_start(secs: u64) -> u64 {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, _) = civil_from_days(days);
    u64::try_from(days_from_civil(year, month, 1)).unwrap_or(0) * 86_400
}

/// The first second of the calendar month after the one holding `secs`.
pub fn next_month_start(secs: u64) -> u64 {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, _) = civil_from_days(days);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    u64::try_from(days_from_civil(year, month, 1)).unwrap_or(0) * 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_months_start_on_the_first() {
        for days in [
            -1_000_000i64,
            -1,
            0,
            59,
            60,
            11_016,
            20_000,
            20_793,
            2_932_896,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        // 2026-12-06T05:00:00Z → 2026-12-01, then 2027-01-01.
        assert_eq!(month_start(1_796_533_200), 1_796_083_200);
        assert_eq!(next_month_start(1_796_533_200), 1_798_761_600);
        // A leap February: 2028-02-29 12:00 → 2028-02-01, next 2028-03-01.
        assert_eq!(month_start(1_835_438_400), 1_832_976_000);
        assert_eq!(next_month_start(1_835_438_400), 1_835_481_600);
    }
}
