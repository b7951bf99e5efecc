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
///
/// The forms the host and the seed send (`YYYY-MM-DDTHH:MM:SS[.f…][Z|±HH:MM]`) take a fixed-width
/// fast path; anything else goes through chrono's parsers, with the same result (a property test
/// holds the two paths to each other).
pub fn parse_utc(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    parse_fixed(s.as_bytes()).or_else(|| parse_any(s)).map(|t| t.trunc_subsecs(6))
}

/// [`parse_utc`] as microseconds since the Unix epoch (what Arrow stores).
pub fn parse_utc_micros(s: &str) -> Option<i64> {
    parse_utc(s).map(|t| to_micros(&t))
}

/// The fast path of [`parse_utc`]: exactly `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, an optional
/// `.` with 1–9 digits, and an optional `Z` or `±HH:MM` offset (hours ≤ 23). `None` means "not this
/// form, or a value to leave to chrono" (a leap second, an invalid date) — never "not a timestamp":
/// the caller then asks chrono, which decides.
fn parse_fixed(s: &[u8]) -> Option<NaiveDateTime> {
    if s.len() < 19 {
        return None;
    }
    let digit = |i: usize| -> Option<u32> {
        let d = s[i].wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let two = |i: usize| -> Option<u32> { Some(digit(i)? * 10 + digit(i + 1)?) };
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b' ') || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let (month, day, hour, minute, second) = (two(5)?, two(8)?, two(11)?, two(14)?, two(17)?);
    if second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = s.get(i).and_then(|_| digit(i)) {
            if i - start == 9 {
                return None;
            }
            nanos = nanos * 10 + d;
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        nanos *= 10u32.pow(9 - n as u32);
    }
    let offset_seconds = match &s[i..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (two(i + 1)?, two(i + 4)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let local =
        chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_nano_opt(hour, minute, second, nanos)?;
    local.checked_sub_signed(chrono::Duration::seconds(offset_seconds))
}

fn parse_any(s: &str) -> Option<NaiveDateTime> {
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
    fn the_host_and_seed_forms_take_the_fast_path() {
        for s in [
            "2026-02-05T19:56:03.123148",
            "2026-02-05T19:56:03",
            "2024-06-01T10:15:02.25",
            "2024-06-01T10:15:03.1234567Z",
            "2026-02-05T20:56:03.123148+01:00",
            "2026-02-05 19:56:03.123148-00:30",
        ] {
            let fast = parse_fixed(s.as_bytes()).map(|t| t.trunc_subsecs(6));
            assert!(fast.is_some(), "{s}");
            assert_eq!(fast, parse_any(s).map(|t| t.trunc_subsecs(6)), "{s}");
        }
        // Left to chrono: a leap second, ten fraction digits, an offset without a colon, an invalid date.
        for s in [
            "2016-12-31T23:59:60Z",
            "2026-02-05T19:56:03.1234567891",
            "2026-02-05T19:56:03+0100",
            "2026-02-30T00:00:00",
        ] {
            assert_eq!(parse_fixed(s.as_bytes()), None, "{s}");
        }
        assert_eq!(parse_utc("2026-02-30T00:00:00"), None);
    }

    mod fast_path_agrees_with_chrono {
        use super::*;
        use proptest::prelude::*;

        fn slow(s: &str) -> Option<NaiveDateTime> {
            parse_any(s.trim()).map(|t| t.trunc_subsecs(6))
        }

        /// Strings near the fast path's grammar: every field in and just out of range, every
        /// separator, fraction length and offset form, then a random edit or none.
        fn near_iso() -> impl Strategy<Value = String> {
            let fraction = prop_oneof![
                Just(String::new()),
                (0..12usize, any::<u64>()).prop_map(|(n, d)| {
                    let digits: String = format!("{d:020}").chars().take(n).collect();
                    format!(".{digits}")
                })
            ];
            let suffix = prop_oneof![
                Just(String::new()),
                Just("Z".to_string()),
                Just("z".to_string()),
                Just(" UTC".to_string()),
                (prop_oneof![Just('+'), Just('-')], 0..26u32, 0..62u32)
                    .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
                (prop_oneof![Just('+'), Just('-')], 0..26u32, 0..62u32)
                    .prop_map(|(s, h, m)| format!("{s}{h:02}{m:02}")),
            ];
            let separator = prop_oneof![Just('T'), Just(' '), Just('t'), Just('_')];
            (
                (0..10_000u32, 0..14u32, 0..33u32),
                (0..26u32, 0..62u32, 0..62u32),
                separator,
                fraction,
                suffix,
                (0..4u8, any::<prop::sample::Index>(), any::<char>(), prop_oneof![Just(""), Just(" "), Just("\t")]),
            )
                .prop_map(|((y, mo, d), (h, mi, s), sep, frac, suffix, (edit, at, c, pad))| {
                    let mut t = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{suffix}");
                    let mut chars: Vec<char> = t.chars().collect();
                    let i = at.index(chars.len());
                    match edit {
                        1 => chars[i] = c,
                        2 => {
                            chars.remove(i);
                        }
                        3 => chars.insert(i, if c.is_ascii_digit() { c } else { '0' }),
                        _ => {}
                    }
                    t = chars.into_iter().collect();
                    format!("{pad}{t}{pad}")
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn on_strings_near_iso_8601(s in near_iso()) {
                prop_assert_eq!(parse_utc(&s), slow(&s), "{:?}", s);
            }

            #[test]
            fn on_any_string(s in "\\PC{0,40}") {
                prop_assert_eq!(parse_utc(&s), slow(&s), "{:?}", s);
            }
        }
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
