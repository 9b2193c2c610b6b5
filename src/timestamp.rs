//! RFC 3339 timestamps as upstreams write them (`2021-08-05T10:34:58Z`,
//! `2021-08-05T10:26:08.000Z`, `2021-08-05T12:34:58+02:00`), as Unix seconds.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Unix seconds (with the fraction) of an RFC 3339 timestamp; `None` for anything else,
/// including a date without a time or a time without an offset.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Unix seconds to RFC 3339 UTC with milliseconds, for payloads and sinks that want text.
pub fn format_rfc3339(t: f64) -> String {
    let nanos = (t * 1e9).round() as i128;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Whole Unix seconds to RFC 3339 UTC without a fraction (`2026-02-19T12:00:00Z`), the form
/// GitHub's REST API writes and accepts in `since`/`until`.
pub fn format_rfc3339_secs(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// The UTC day (`YYYY-MM-DD`) of Unix time `t`, as GitHub's report APIs name days.
pub fn format_day(t: i64) -> String {
    format_rfc3339_secs(t)
        .get(..10)
        .unwrap_or_default()
        .to_string()
}

/// Midnight UTC of a `YYYY-MM-DD` day.
pub fn parse_day(day: &str) -> Option<f64> {
    parse_rfc3339(&format!("{}T00:00:00Z", day.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_githubs_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2021-08-05T10:34:58Z"), Some(1_628_159_698.0));
        assert_eq!(
            parse_rfc3339("2021-08-05T10:26:08.500Z"),
            Some(1_628_159_168.5)
        );
        assert_eq!(
            parse_rfc3339("2021-08-05T12:34:58+02:00"),
            Some(1_628_159_698.0)
        );
        for bad in [
            "",
            "2021-08-05",
            "2021-13-05T10:34:58Z",
            "2021-08-05T10:34:58",
            "x021-08-05T10:34:58Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for t in [0.0, 1_628_159_698.0, 1_628_159_168.5, 951_782_400.0] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(1_628_159_698.0), "2021-08-05T10:34:58.000Z");
        assert_eq!(format_rfc3339_secs(1_628_159_698), "2021-08-05T10:34:58Z");
    }
}
