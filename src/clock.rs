//! Time sources: the one place that reads the real clock (`SystemClock`) and a
//! manual clock tests drive by hand. Nothing else in the crate may call
//! `Instant::now` or `SystemTime::now`.

// The one module allowed to read the real clock (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of monotonic milliseconds and wall-clock time.
pub trait Clock {
    /// Monotonic milliseconds since the clock was created; never goes backwards.
    fn now_ms(&self) -> u64;
    /// Wall-clock microseconds since the Unix epoch (for event timestamps and logs).
    fn unix_micros(&self) -> u64;
}

/// The real clock, for the reactor.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // `Instant` is monotonic, so this never goes backwards; u64 ms outlasts
        // any process, the saturation only keeps the cast honest.
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_micros(&self) -> u64 {
        unix_micros_now()
    }
}

/// Wall-clock microseconds since the Unix epoch, read from the system clock.
/// For the logger, which has no `Clock` handed to it. A system clock set
/// before 1970 reads as 0 rather than failing: a log line must never panic.
pub fn unix_micros_now() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => u64::try_from(since.as_micros()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// A clock that moves only when a test says so.
pub struct ManualClock {
    now_ms: Cell<u64>,
    unix_micros: Cell<u64>,
}

impl ManualClock {
    /// Starts at `now_ms` = 0 and the given wall time.
    pub fn new(unix_micros: u64) -> ManualClock {
        ManualClock {
            now_ms: Cell::new(0),
            unix_micros: Cell::new(unix_micros),
        }
    }

    /// Moves both the monotonic and the wall clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get().saturating_add(ms));
        self.unix_micros
            .set(self.unix_micros.get().saturating_add(ms.saturating_mul(1000)));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    fn unix_micros(&self) -> u64 {
        self.unix_micros.get()
    }
}

const SECS_PER_DAY: u64 = 86_400;

/// A UTC calendar date and time of day, split from Unix seconds.
struct Civil {
    year: u64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    /// 0 = Sunday.
    weekday: u64,
}

impl Civil {
    fn from_unix_secs(unix_secs: u64) -> Civil {
        let days = unix_secs / SECS_PER_DAY;
        let secs_of_day = unix_secs % SECS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day % 3600 / 60,
            second: secs_of_day % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4) % 7,
        }
    }
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar. Howard Hinnant's `civil_from_days`, restricted to
/// non-negative days (u64 Unix time cannot precede the epoch), which keeps
/// every step in unsigned arithmetic. Eras are 400-year blocks of exactly
/// 146097 days, so the leap-year rules collapse into the divisions below.
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    // Shift the epoch to 0000-03-01 so the leap day ends the (March-based) year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097; // [0, 146096]
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    // Both are bounded above by 31 and 12; the casts cannot truncate.
    (year, month as u32, day as u32)
}

/// The `x-amz-date` form of Unix seconds (ISO 8601 basic, UTC):
/// `20260115T103000Z`.
pub fn amz_date(unix_secs: u64) -> String {
    let c = Civil::from_unix_secs(unix_secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Formats Unix microseconds as RFC 3339 UTC with microseconds:
/// `2026-01-15T10:30:00.123456Z`.
pub fn rfc3339_utc(unix_micros: u64) -> String {
    let c = Civil::from_unix_secs(unix_micros / 1_000_000);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        unix_micros % 1_000_000
    )
}

/// (year >= 1970, month 1..=12, day 1..=31) to days since 1970-01-01: the
/// inverse of `civil_from_days` (Howard Hinnant's `days_from_civil`), in
/// unsigned arithmetic because the year is never before the epoch.
fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    // March-based years, as in `civil_from_days`: the leap day ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400; // [0, 399]
    let month_from_march = u64::from((month + 9) % 12); // [0, 11]
    let day_of_year = (153 * month_from_march + 2) / 5 + u64::from(day) - 1; // [0, 365]
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const WEEKDAYS_LONG: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses an HTTP-date (RFC 9110 section 5.6.7) into Unix seconds: the
/// IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, and the two obsolete forms
/// recipients must also accept, `Sunday, 06-Nov-94 08:49:37 GMT` (RFC 850)
/// and `Sun Nov  6 08:49:37 1994` (asctime). `None` for anything else, a
/// date that does not exist, or one before 1970. The RFC 850 form's
/// two-digit year is read as 20yy below 70 and 19yy from 70 (the POSIX
/// pivot), where the RFC asks for "not more than 50 years ahead": the same
/// answer until 2020 + 50, and no clock is needed to parse.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split(' ').collect();
    let (day, month, year, time) = match fields.as_slice() {
        // IMF-fixdate: every field fixed-width, so the split is exact.
        [weekday, day, month, year, time, "GMT"] => {
            let weekday = weekday.strip_suffix(',')?;
            if !WEEKDAYS.contains(&weekday) || day.len() != 2 || year.len() != 4 {
                return None;
            }
            (*day, *month, digits(year)?, *time)
        }
        [weekday, date, time, "GMT"] => {
            let weekday = weekday.strip_suffix(',')?;
            let [day, month, year] = date.split('-').collect::<Vec<_>>()[..] else {
                return None;
            };
            if !WEEKDAYS_LONG.contains(&weekday) || day.len() != 2 || year.len() != 2 {
                return None;
            }
            let year = digits(year)?;
            (
                day,
                month,
                if year < 70 { 2000 + year } else { 1900 + year },
                *time,
            )
        }
        // asctime: a day below 10 is padded with a space, which splits into
        // an empty field.
        [weekday, month, "", day, time, year] | [weekday, month, day, time, year]
            if WEEKDAYS.contains(weekday) =>
        {
            let padded = fields.len() == 6;
            if (padded && day.len() != 1) || (!padded && day.len() != 2) || year.len() != 4 {
                return None;
            }
            (*day, *month, digits(year)?, *time)
        }
        _ => return None,
    };
    let month = MONTHS.iter().position(|name| *name == month)? as u32 + 1;
    let day = u32::try_from(digits(day)?).ok()?;
    let [hour, minute, second] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    if [hour, minute, second].iter().any(|part| part.len() != 2) {
        return None;
    }
    let (hour, minute, second) = (digits(hour)?, digits(minute)?, digits(second)?);
    // Second 60 is a leap second (RFC 5322 section 3.3 allows it).
    if year < 1970 || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second)
}

/// A run of ASCII digits (at most four: every HTTP-date field is shorter).
/// Seconds since the epoch of an RFC 3339 UTC time as S3 writes them
/// (`2026-12-03T02:44:09.515Z`; fractions are dropped).
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.split('-');
    let year = digits(date_parts.next()?)?;
    let month = u32::try_from(digits(date_parts.next()?)?).ok()?;
    let day = u32::try_from(digits(date_parts.next()?)?).ok()?;
    let time = time.strip_suffix('Z')?;
    let time = time.split('.').next()?;
    let mut time_parts = time.split(':');
    let hour = digits(time_parts.next()?)?;
    let minute = digits(time_parts.next()?)?;
    let second = digits(time_parts.next()?)?;
    if date_parts.next().is_some() || time_parts.next().is_some() {
        return None;
    }
    if year < 1970 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second)
}

fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn days_in_month(year: u64, month: u32) -> u32 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Formats Unix seconds as an IMF-fixdate for the HTTP `Date` header:
/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 section 5.6.7).
pub fn http_date(unix_secs: u64) -> String {
    let c = Civil::from_unix_secs(unix_secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[c.weekday as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_times_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339_utc("2024-02-29T12:00:00.5Z"), Some(1_709_208_000));
        assert_eq!(parse_rfc3339_utc("2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("2023-11-14 22:13:20Z"), None);
        assert_eq!(parse_rfc3339_utc("2023-11-14T22:13:20+01:00"), None);
    }

    fn is_leap(year: u64) -> bool {
        (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
    }

    fn days_in_month(year: u64, month: u32) -> u32 {
        match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(year) => 29,
            2 => 28,
            _ => unreachable!(),
        }
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_walk() {
        // Walks the calendar one day at a time from the epoch through 2500,
        // covering 2000 (leap, divisible by 400) and 2100/2200/2300 (not leap).
        let (mut year, mut month, mut day) = (1970u64, 1u32, 1u32);
        let mut days = 0u64;
        while year < 2500 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            days += 1;
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(1_768_473_000_123_456), "2026-01-15T10:30:00.123456Z");
        assert_eq!(rfc3339_utc(951_825_599_999_999), "2000-02-29T11:59:59.999999Z");
        assert_eq!(rfc3339_utc(4_107_542_400_000_001), "2100-03-01T00:00:00.000001Z");
        assert_eq!(rfc3339_utc(1_000_000), "1970-01-01T00:00:01.000000Z");
    }

    #[test]
    fn rfc3339_extreme_input_does_not_panic() {
        let s = rfc3339_utc(u64::MAX);
        assert!(s.ends_with('Z'), "{s}");
    }

    #[test]
    fn http_date_known_values() {
        // The example from RFC 9110 section 5.6.7.
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_768_473_000), "Thu, 15 Jan 2026 10:30:00 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        for days in (0..200_000).step_by(7).chain([0, 1, 59, 60, 11_016, 10_957]) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
        }
    }

    #[test]
    fn http_dates_parse_in_all_three_forms() {
        // RFC 9110 section 5.6.7's example, in each form.
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(784_111_777), "{text}");
        }
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Wed Dec 31 23:59:59 2099"), Some(4_102_444_799));
        assert_eq!(
            parse_http_date("Thursday, 15-Jan-26 10:30:00 GMT"),
            Some(1_768_473_000)
        );
        // What we format parses back, over a wide range.
        for secs in (0..5_000_000_000u64).step_by(86_399_999) {
            assert_eq!(parse_http_date(&http_date(secs)), Some(secs));
        }
    }

    #[test]
    fn malformed_http_dates_are_refused() {
        for text in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT ",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 23:60:00 GMT",
            "Sun, 06 Nov 1969 23:59:59 GMT",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:3x GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov  06 08:49:37 1994",
            "Sun Nov 16 08:49:37 94",
        ] {
            assert_eq!(parse_http_date(text), None, "{text:?}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000_000);
        assert_eq!(clock.now_ms(), 0);
        assert_eq!(clock.unix_micros(), 1_000_000);
        clock.advance_ms(1500);
        assert_eq!(clock.now_ms(), 1500);
        assert_eq!(clock.unix_micros(), 2_500_000);
    }

    #[test]
    fn system_clock_is_monotonic_and_after_2020() {
        let clock = SystemClock::new();
        let a = clock.now_ms();
        let b = clock.now_ms();
        assert!(b >= a);
        // 2020-01-01T00:00:00Z; a wall clock before that is misconfigured.
        assert!(clock.unix_micros() > 1_577_836_800_000_000);
    }
}
