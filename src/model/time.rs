//! Timestamps: the seed's naive ISO-8601 (UTC) format, parsing of offsets and `Z`, and conversions to
//! the microsecond integers Arrow stores.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serializer;

/// The seed's wire format: `2026-02-05T19:56:03.123148` (Python's `isoformat()` of a naive datetime).
pub const NAIVE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f";

/// Formats a naive UTC timestamp the way the seed's producer did.
pub fn format_naive(t: &NaiveDateTime) -> String {
    t.format(NAIVE_FORMAT).to_string()
}

/// serde helper for [`format_naive`].
pub fn serialize_naive<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.format(NAIVE_FORMAT))
}

/// Parses an ISO-8601 timestamp: naive (taken as UTC, the seed's form), or with `Z` or an offset
/// (converted to UTC). Accepts a space instead of `T`. Sub-microsecond digits (the host sends seven)
/// are truncated: every stored timestamp has microsecond precision. Returns `None` when it is not a
/// timestamp.
pub fn parse_utc(s: &str) -> Option<NaiveDateTime> {
    parse_any(s).map(|t| t.trunc_subsecs(6))
}

fn parse_any(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.naive_utc());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t);
        }
    }
    // Offsets without a colon (`+0100`) or with a space separator.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.naive_utc());
        }
    }
    None
}

/// Microseconds since the Unix epoch, as Arrow's `Timestamp(Microsecond)` stores them.
pub fn to_micros(t: &NaiveDateTime) -> i64 {
    t.and_utc().timestamp_micros()
}

/// The inverse of [`to_micros`]; `None` outside chrono's range.
pub fn from_micros(us: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_micros(us).map(|t| t.naive_utc())
}

/// RFC 3339 with `Z`, for logs, manifests and envelopes.
pub fn rfc3339(t: &NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The current time, truncated to microseconds (what every stored timestamp holds).
pub fn now_utc() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    from_micros(to_micros(&now)).unwrap_or(now)
}

/// Parses a `--now` style argument: any form [`parse_utc`] accepts, or a bare date (midnight UTC).
pub fn parse_clock(s: &str) -> Result<NaiveDateTime, String> {
    if let Some(t) = parse_utc(s) {
        return Ok(t);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default());
    }
    Err(format!(
        "`{s}` is not a timestamp; use ISO-8601 such as 2026-11-24T12:00:00 (UTC), 2026-11-24T12:00:00Z or 2026-11-24"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_format_offsets_and_z() {
        let naive = parse_utc("2026-02-05T19:56:03.123148").unwrap();
        assert_eq!(format_naive(&naive), "2026-02-05T19:56:03.123148");
        assert_eq!(parse_utc("2026-02-05T19:56:03.123148Z"), Some(naive));
        assert_eq!(parse_utc("2026-02-05T20:56:03.123148+01:00"), Some(naive));
        assert_eq!(parse_utc("2026-02-05T20:56:03.123148+0100"), Some(naive));
        assert_eq!(parse_utc("2026-02-05 19:56:03.123148"), Some(naive));
        assert_eq!(parse_utc("2026-02-05T19:56:03").map(|t| to_micros(&t)), Some(to_micros(&naive) - 123_148));
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc("2026-13-05T19:56:03"), None);
    }

    #[test]
    fn micros_round_trip() {
        let t = parse_utc("2026-02-05T19:56:03.123148").unwrap();
        assert_eq!(from_micros(to_micros(&t)), Some(t));
        assert_eq!(rfc3339(&t), "2026-02-05T19:56:03.123148Z");
    }

    #[test]
    fn clock_accepts_dates_and_names_the_fix() {
        assert_eq!(format_naive(&parse_clock("2026-11-24").unwrap()), "2026-11-24T00:00:00.000000");
        let err = parse_clock("noon").unwrap_err();
        assert!(err.contains("ISO-8601"), "{err}");
    }
}
