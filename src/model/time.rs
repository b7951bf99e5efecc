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

/// [`parse_utc`] as microseconds since the Unix epoch (what Arrow stores). The fast path's forms
/// are counted out directly, without building chrono's date and time (silver parses two
/// timestamps per event).
pub fn parse_utc_micros(s: &str) -> Option<i64> {
    let s = trim(s);
    fixed_fields(s.as_bytes()).and_then(|f| f.micros()).or_else(|| parse_any(s).map(|t| to_micros(&t.trunc_subsecs(6))))
}

/// `s.trim()`, without its look at each end when both ends are ASCII other than whitespace (as
/// nearly every timestamp's are). Whitespace as `trim` has it: `char::is_whitespace`, which counts
/// the vertical tab that `u8::is_ascii_whitespace` does not.
fn trim(s: &str) -> &str {
    let kept = |b: Option<&u8>| b.is_some_and(|&b| b.is_ascii() && !char::from(b).is_whitespace());
    if kept(s.as_bytes().first()) && kept(s.as_bytes().last()) { s } else { s.trim() }
}

/// The fields of a timestamp in the fast path's form (see [`parse_fixed`]).
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    offset_seconds: i64,
}

impl Fields {
    /// Microseconds since the Unix epoch in UTC, sub-microseconds truncated; `None` for a date
    /// that does not exist or a time out of range, which chrono then decides (as after
    /// [`parse_fixed`]).
    fn micros(&self) -> Option<i64> {
        let leap = self.year.is_multiple_of(4) && (!self.year.is_multiple_of(100) || self.year.is_multiple_of(400));
        let month_days = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        if self.day == 0 || self.day > month_days || self.hour > 23 || self.minute > 59 {
            return None;
        }
        // Days since 1970-01-01 in the proleptic Gregorian calendar, counted from 0000-03-01
        // (Hinnant's `days_from_civil`), so that the leap day ends a year.
        let (month, day) = (i64::from(self.month), i64::from(self.day));
        let year = i64::from(self.year) - i64::from(month <= 2);
        let (era, year_of_era) = (year.div_euclid(400), year.rem_euclid(400));
        let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let days = era * 146_097 + day_of_era - 719_468;
        let seconds =
            days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second) - self.offset_seconds;
        Some(seconds * 1_000_000 + i64::from(self.nanos / 1000))
    }
}

/// The fast path of [`parse_utc`]: exactly `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, an optional
/// `.` with 1–9 digits, and an optional `Z` or `±HH:MM` offset (hours ≤ 23). `None` means "not this
/// form, or a value to leave to chrono" (a leap second, an invalid date) — never "not a timestamp":
/// the caller then asks chrono, which decides.
fn parse_fixed(s: &[u8]) -> Option<NaiveDateTime> {
    let f = fixed_fields(s)?;
    let local = chrono::NaiveDate::from_ymd_opt(f.year as i32, f.month, f.day)?
        .and_hms_nano_opt(f.hour, f.minute, f.second, f.nanos)?;
    local.checked_sub_signed(chrono::Duration::seconds(f.offset_seconds))
}

/// The fields of [`parse_fixed`]'s form, each within its digits' range (the calendar is checked
/// by the caller).
fn fixed_fields(s: &[u8]) -> Option<Fields> {
    // The date and time are counted out of fixed positions (silver parses two timestamps per
    // event): the separators checked where they stand, then the first 16 bytes as two words, each
    // byte XOR '0' (a digit becomes its value, 0-9), checked and paired eight at a time.
    let (head, rest) = s.split_first_chunk::<19>()?;
    if head[4] != b'-' || head[7] != b'-' || !matches!(head[10], b'T' | b' ') || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let (date, time) = head.split_at(8);
    let date = digits(date.try_into().ok()?, DATE_DIGITS)?;
    let time = digits(time[..8].try_into().ok()?, TIME_DIGITS)?;
    let (s1, s2) = (head[17].wrapping_sub(b'0'), head[18].wrapping_sub(b'0'));
    if s1 > 9 || s2 > 9 {
        return None;
    }
    // Each byte of a word becomes ten times its digit plus the next byte's digit (both at most 9,
    // so no byte carries): a field's two digits are the value at the field's first byte.
    let pairs = |w: u64| w * 10 + (w >> 8);
    let field = |w: u64, at: u32| ((w >> (8 * at)) & 0xFF) as u32;
    let (date, time) = (pairs(date), pairs(time));
    let year = field(date, 0) * 100 + field(date, 2);
    let (month, day, hour, minute) = (field(date, 5), field(time, 0), field(time, 3), field(time, 6));
    let second = u32::from(s1) * 10 + u32::from(s2);
    if second > 59 {
        return None;
    }
    let (nanos, rest) = match rest {
        [b'.', fraction @ ..] => {
            // One pass over at most ten digits: more than nine is left to chrono.
            let (mut value, mut n) = (0u64, 0);
            for d in fraction.iter().take(10).map(|b| b.wrapping_sub(b'0')).take_while(|&d| d <= 9) {
                value = value * 10 + u64::from(d);
                n += 1;
            }
            if n == 0 || n > 9 {
                return None;
            }
            (value as u32 * FRACTION_SCALE[n], &fraction[n..])
        }
        _ => (0, rest),
    };
    let offset_seconds = match rest {
        [] | [b'Z'] => 0,
        &[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |tens: u8, ones: u8| {
                let (t, o) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
                (t < 10 && o < 10).then(|| u32::from(t) * 10 + u32::from(o))
            };
            let (h, m) = (two(h1, h2)?, two(m1, m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    Some(Fields { year, month, day, hour, minute, second, nanos, offset_seconds })
}

/// The digit bytes of `YYYY-MM-` (all but the dashes) and of `DDTHH:MM` (all but the `T` and colon),
/// as byte masks of a little-endian word.
const DATE_DIGITS: u64 = 0x00FF_FF00_FFFF_FFFF;
const TIME_DIGITS: u64 = 0xFFFF_00FF_FF00_FFFF;

/// What a fraction of `n` digits is multiplied by to give nanoseconds.
const FRACTION_SCALE: [u32; 10] = [0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];

/// The bytes of `word` under `mask` as digit values (the other bytes zero), or `None` if one of
/// them is no ASCII digit. XOR '0' maps '0'-'9' to 0-9 and every other byte to a value whose high
/// nibble is set or that is 10-15; once no high nibble is set, adding 6 to every byte carries
/// into a high nibble exactly for 10-15, and no byte overflows into the next.
fn digits(bytes: [u8; 8], mask: u64) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let d = (u64::from_le_bytes(bytes) ^ 0x3030_3030_3030_3030) & mask;
    (d & HIGH == 0 && (d + 0x0606_0606_0606_0606) & HIGH == 0).then_some(d)
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

    /// The word-at-a-time digit check against the byte-at-a-time definition: every byte value at
    /// every position of a timestamp, read as the plain positional grammar reads it.
    #[test]
    fn every_byte_at_every_position_is_read_as_the_positional_grammar_reads_it() {
        let base = *b"2026-02-05T19:56:03.123148";
        let digit = |b: u8| b.is_ascii_digit().then(|| u32::from(b - b'0'));
        let reference = |s: &[u8; 26]| -> Option<(u32, u32, u32, u32, u32, u32, u32)> {
            let separators = s[4] == b'-' && s[7] == b'-' && matches!(s[10], b'T' | b' ') && s[13] == b':';
            if !separators || s[16] != b':' || s[19] != b'.' {
                return None;
            }
            let n = |i: usize| Some(digit(s[i])? * 10 + digit(s[i + 1])?);
            // The fraction's digits, then nothing or `Z` (a mutated digit can end it early).
            let digits = s[20..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || !matches!(&s[20 + digits..], [] | [b'Z']) {
                return None;
            }
            let fraction = s[20..20 + digits].iter().fold(0, |v, &b| v * 10 + u32::from(b - b'0'));
            let second = n(17).filter(|&s| s <= 59)?;
            let nanos = fraction * 10u32.pow(9 - digits as u32);
            Some((n(0)? * 100 + n(2)?, n(5)?, n(8)?, n(11)?, n(14)?, second, nanos))
        };
        for at in 0..base.len() {
            for b in 0..=u8::MAX {
                let mut s = base;
                s[at] = b;
                let fast = fixed_fields(&s).map(|f| (f.year, f.month, f.day, f.hour, f.minute, f.second, f.nanos));
                assert_eq!(fast, reference(&s), "byte {b:#04x} at {at}");
            }
        }
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

    /// Every day (and the days that do not exist) of years at the calendar's edges — century and
    /// 400-year leap rules, year 0, the epoch, the last year — counted out in microseconds as
    /// chrono counts them, with and without an offset.
    #[test]
    fn microseconds_agree_with_chrono_on_every_day_of_edge_years() {
        for year in [0, 1, 4, 100, 399, 400, 1600, 1899, 1900, 1969, 1970, 2000, 2023, 2024, 2100, 2400, 9999] {
            for month in 0..=13 {
                for day in 0..=32 {
                    for time in ["00:00:00", "23:59:59.999999999", "12:34:56.789012-05:30", "00:00:01+14:00"] {
                        let s = format!("{year:04}-{month:02}-{day:02}T{time}");
                        let chrono = parse_any(&s).map(|t| to_micros(&t.trunc_subsecs(6)));
                        assert_eq!(parse_utc_micros(&s), chrono, "{s}");
                    }
                }
            }
        }
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
                (
                    0..4u8,
                    any::<prop::sample::Index>(),
                    any::<char>(),
                    prop_oneof![Just(""), Just(" "), Just("\t"), Just("\u{b}"), Just("\u{a0}")],
                ),
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

            /// The microseconds counted out directly are chrono's.
            #[test]
            fn in_microseconds_on_strings_near_iso_8601(s in near_iso()) {
                prop_assert_eq!(parse_utc_micros(&s), slow(&s).map(|t| to_micros(&t)), "{:?}", s);
            }

            #[test]
            fn in_microseconds_on_any_string(s in "\\PC{0,40}") {
                prop_assert_eq!(parse_utc_micros(&s), slow(&s).map(|t| to_micros(&t)), "{:?}", s);
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
