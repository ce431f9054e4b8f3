//! Wall-clock time: milliseconds since the Unix epoch, and the UTC time stamps that name
//! run folders (`YYYYMMDD-HHMMSS`).
use time::macros::format_description;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch; 0 for a clock set before it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `YYYYMMDD-HHMMSS` in UTC for `unix_s` seconds since the Unix epoch (proleptic
/// Gregorian calendar), e.g. `20261123-150102`.
pub fn utc_stamp(unix_s: u64) -> String {
    let format = format_description!("[year][month][day]-[hour][minute][second]");
    i64::try_from(unix_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        // Past the year 9999 `time` has no date: the last second it has.
        .unwrap_or(time::macros::datetime!(9999-12-31 23:59:59 UTC))
        .format(format)
        .expect("a date of years 0-9999 formats")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_704_110_400), "20240101-120000");
        assert_eq!(utc_stamp(1_795_446_062), "20261123-150102");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
