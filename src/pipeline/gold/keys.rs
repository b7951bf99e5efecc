//! Stable keys: 63-bit xxh3 hashes of length-prefixed parts, identical on every machine and in any
//! order of arrival, so the same input always yields the same surrogate keys.

use chrono::{Datelike, Timelike};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::model::time::from_micros;

/// The department of rows that have none.
pub const UNKNOWN_DEPARTMENT: &str = "Unknown";
/// The hospital id of rows that have none.
pub const UNKNOWN_HOSPITAL: i32 = -1;

/// xxh3 of the length-prefixed parts, shifted to be non-negative (so it fits BIGINT everywhere and
/// sorts sanely). The parts are laid out in one stack buffer and hashed in one call — the same value
/// as streaming them, without the streaming state — unless they are too long for it.
fn hash(parts: &[&[u8]]) -> i64 {
    let mut buf = [0u8; 256];
    let mut len = 0;
    for p in parts {
        let end = len + 8 + p.len();
        if end > buf.len() {
            return hash_streaming(parts);
        }
        buf[len..len + 8].copy_from_slice(&(p.len() as u64).to_le_bytes());
        buf[len + 8..end].copy_from_slice(p);
        len = end;
    }
    (xxh3_64(&buf[..len]) >> 1) as i64
}

fn hash_streaming(parts: &[&[u8]]) -> i64 {
    let mut h = Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    (h.digest() >> 1) as i64
}

/// An optional integer as a key part: its 8 little-endian bytes, or `-` when absent — on the stack
/// (keys are computed for every row; an allocation each was most of `attr_hash`'s time).
struct OptI64([u8; 8], usize);

impl OptI64 {
    fn of(v: Option<i64>) -> Self {
        match v {
            Some(x) => Self(x.to_le_bytes(), 8),
            None => Self(*b"-\0\0\0\0\0\0\0", 1),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// DimDepartment key.
pub fn department_sk(department: &str, hospital_id: i32) -> i64 {
    hash(&[b"dept", department.as_bytes(), &hospital_id.to_le_bytes()])
}

/// Hash of the SCD2-tracked patient attributes.
pub fn attr_hash(gender: Option<&str>, age: Option<i32>) -> i64 {
    hash(&[b"attrs", gender.map_or(b"-".as_slice(), str::as_bytes), OptI64::of(age.map(i64::from)).bytes()])
}

/// DimPatient key: one per version.
pub fn patient_sk(patient_id: &str, effective_from_us: i64, attr_hash: i64) -> i64 {
    hash(&[b"patient", patient_id.as_bytes(), &effective_from_us.to_le_bytes(), &attr_hash.to_le_bytes()])
}

/// FactPatientFlow key of a visit with an admission time: its natural key (patient, department,
/// hospital, admission time as sent), so every event about the visit lands on one row.
pub fn fact_id(patient_id: &str, department: &str, hospital_id: i32, admission_sent_us: Option<i64>) -> i64 {
    hash(&[
        b"visit",
        patient_id.as_bytes(),
        department.as_bytes(),
        &hospital_id.to_le_bytes(),
        OptI64::of(admission_sent_us).bytes(),
    ])
}

/// FactPatientFlow key of a visit sent without an admission time: it has no natural key, so the
/// event is its own visit, keyed by its position (event hub, partition, sequence number). A
/// redelivery keeps its position, so it lands on the same row; two such visits never merge.
pub fn fact_id_at_position(event_hub: &str, partition_id: &str, sequence_number: i64) -> i64 {
    hash(&[b"visit-at", event_hub.as_bytes(), partition_id.as_bytes(), &sequence_number.to_le_bytes()])
}

/// A patient's key in the visit ledger (what ledger segments are sorted and looked up by), and the
/// embedded warehouse's durable key of a patient (`DimPatient.patient_key`, one for every version).
pub fn patient_key(patient_id: &str) -> i64 {
    hash(&[b"bucket", patient_id.as_bytes()])
}

/// A build's file-name nonce: a hash of its inputs (the silver folded so far and its clock), so a
/// retried build writes the same names and a racing build with other inputs writes other names.
pub fn build_nonce(folded: &super::manifest::Folded, as_of_us: i64) -> i64 {
    let mut h = Xxh3::new();
    for (partition, ranges) in folded.ranges() {
        h.update(&(partition.len() as u64).to_le_bytes());
        h.update(partition.as_bytes());
        h.update(&(ranges.len() as u64).to_le_bytes());
        for [first, last] in ranges {
            h.update(&first.to_le_bytes());
            h.update(&last.to_le_bytes());
        }
    }
    h.update(&as_of_us.to_le_bytes());
    (h.digest() >> 1) as i64
}

/// The last year whose `yyyymmddhh` key fits an `i32` (2146123123 < 2^31).
pub const MAX_TIME_KEY_YEAR: i32 = 2146;

/// The `admission_time_key` of an admission outside the years DimTime can key (0 to
/// [`MAX_TIME_KEY_YEAR`]); it has no DimTime row. Silver quarantines such timestamps, so gold only
/// meets it if that rule is bypassed; the build goes on either way.
pub const UNKNOWN_TIME_KEY: i32 = -1;

/// DimTime key `yyyymmddhh` of a timestamp; `None` outside the years 0 to [`MAX_TIME_KEY_YEAR`]
/// (the arithmetic never overflows).
pub fn time_key(us: i64) -> Option<i32> {
    let t = from_micros(us)?;
    if !(0..=MAX_TIME_KEY_YEAR).contains(&t.year()) {
        return None;
    }
    Some(t.year() * 1_000_000 + t.month() as i32 * 10_000 + t.day() as i32 * 100 + t.hour() as i32)
}

/// [`time_key`] for many instants, mostly of the same few days (a fact file's admissions share
/// one day): the day's key is computed when the day changes, its hour added to it.
#[derive(Debug, Default)]
pub struct TimeKeys {
    /// The last day seen (days since the epoch) and its first hour's key.
    last: Option<(i64, Option<i32>)>,
}

impl TimeKeys {
    /// [`time_key`] of `us`.
    pub fn key(&mut self, us: i64) -> Option<i32> {
        const DAY_US: i64 = 86_400_000_000;
        let day = us.div_euclid(DAY_US);
        let midnight = match self.last {
            Some((last, key)) if last == day => key,
            _ => {
                // A day whose midnight is out of i64's range has no key (its year is far out).
                let key = day.checked_mul(DAY_US).and_then(time_key);
                self.last = Some((day, key));
                key
            }
        };
        midnight.map(|k| k + (us.rem_euclid(DAY_US) / 3_600_000_000) as i32)
    }
}

/// Whether the instants of a day (days since the epoch) have DimTime keys: [`time_key`] is
/// `Some` for every instant of the day or for none (its year decides).
pub fn is_keyable_day(day: i32) -> bool {
    i64::from(day).checked_mul(86_400_000_000).and_then(time_key).is_some()
}

/// The DimTime keys of the 24 hours of a day (days since the epoch); empty when the day cannot be
/// keyed.
pub fn day_hours(day: i32) -> Vec<i32> {
    let Some(start) = i64::from(day).checked_mul(86_400_000_000) else { return Vec::new() };
    (0..24i64).filter_map(|h| start.checked_add(h * 3_600_000_000).and_then(time_key)).collect()
}

/// Days since the Unix epoch (Arrow `Date32`).
pub fn epoch_days(us: i64) -> i32 {
    us.div_euclid(86_400_000_000) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::{parse_utc, to_micros};

    proptest::proptest! {
        /// A day is keyable exactly when each of its instants has a DimTime key, near the ends of
        /// the keyed years (0 and MAX_TIME_KEY_YEAR) and anywhere in i64's range.
        #[test]
        fn a_day_is_keyable_exactly_when_its_instants_are(
            us in proptest::prop_oneof![
                proptest::num::i64::ANY,
                -62_200_000_000_000_000i64..-62_100_000_000_000_000,
                5_550_000_000_000_000i64..5_620_000_000_000_000,
            ],
        ) {
            proptest::prop_assert_eq!(is_keyable_day(epoch_days(us)), time_key(us).is_some());
        }
    }

    proptest::proptest! {
        /// Keys taken through the day memo are the keys: any instants, in any order, near and far.
        #[test]
        fn memoised_time_keys_are_time_keys(
            instants in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::i64::ANY,
                proptest::strategy::Just(i64::MIN),
                proptest::strategy::Just(i64::MAX),
                -62_200_000_000_000_000i64..-62_100_000_000_000_000,
                1_700_000_000_000_000i64..1_700_300_000_000_000,
                5_550_000_000_000_000i64..5_620_000_000_000_000,
            ], 1..40),
        ) {
            let mut memo = TimeKeys::default();
            for us in instants {
                proptest::prop_assert_eq!(memo.key(us), time_key(us));
            }
        }
    }

    /// Optional parts are hashed as their 8 little-endian bytes, or `-` when absent: the layout the
    /// keys of every existing warehouse were made with, here streamed part by part.
    #[test]
    fn optional_parts_keep_their_layout() {
        let parts = |age: &[u8]| hash_streaming(&[b"attrs", b"Male", age]);
        assert_eq!(attr_hash(Some("Male"), Some(40)), parts(&40i64.to_le_bytes()));
        assert_eq!(attr_hash(Some("Male"), None), parts(b"-"));
        let visit = |admission: &[u8]| hash_streaming(&[b"visit", b"p", b"ICU", &3i32.to_le_bytes(), admission]);
        assert_eq!(fact_id("p", "ICU", 3, Some(-7)), visit(&(-7i64).to_le_bytes()));
        assert_eq!(fact_id("p", "ICU", 3, None), visit(b"-"));
    }

    /// Surrogate keys are the values of every existing lake and warehouse: pinned to XXH3-64 as
    /// the `xxhash` Python package (the reference C implementation, not the crate we hash with)
    /// computes it over the length-prefixed parts, shifted right by one. Computed with:
    /// `xxhash.xxh3_64_intdigest(b"".join(struct.pack("<Q", len(p)) + p for p in parts)) >> 1`.
    #[test]
    fn keys_are_the_reference_xxh3_of_their_parts() {
        let pid = "7f2c1e9a-3b4d-4e5f-8a6b-1c2d3e4f5a6b";
        assert_eq!(department_sk("ICU", 3), 7457559573243380303);
        assert_eq!(attr_hash(Some("Male"), Some(40)), 2204876344916307705);
        assert_eq!(attr_hash(None, None), 8484905528414366802);
        assert_eq!(patient_sk(pid, 1_790_000_000_000_000, 123_456_789), 2667857942576220307);
        assert_eq!(fact_id(pid, "Cardiology", 2, Some(1_790_000_000_000_000)), 4964679925787112209);
        assert_eq!(fact_id(pid, "Cardiology", 2, None), 7554349323309411652);
        assert_eq!(fact_id_at_position("patient-flow", "3", 42), 1907155290056729125);
        assert_eq!(patient_key(pid), 3130391175700804879);
        assert_eq!(patient_key(&"x".repeat(300)), 2213798056676574681, "past the one-shot buffer");
        assert_eq!(patient_key("Zoë-Ünïcødé"), 1651986279838206754);
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        // A change of hashing would silently re-key every warehouse: the values are pinned above.
        assert_eq!(department_sk("ICU", 3), department_sk("ICU", 3));
        assert_ne!(department_sk("ICU", 3), department_sk("ICU", 4));
        assert_ne!(department_sk("IC", 3), department_sk("ICU", 3));
        assert_ne!(fact_id("a", "b", 1, None), fact_id("a", "b", 1, Some(0)));
        assert!(department_sk("ICU", 3) >= 0);
        assert_eq!(attr_hash(Some("Male"), Some(40)), attr_hash(Some("Male"), Some(40)));
        assert_ne!(attr_hash(Some("Male"), Some(40)), attr_hash(Some("Male"), Some(41)));
        assert_ne!(attr_hash(None, Some(40)), attr_hash(Some("-"), Some(40)).wrapping_add(1));
    }

    #[test]
    fn one_shot_hashing_equals_streaming() {
        let long = "x".repeat(300);
        for parts in [&[b"a".as_slice(), b"".as_slice(), b"ccc".as_slice()][..], &[long.as_bytes(), b"y"], &[]] {
            assert_eq!(hash(parts), hash_streaming(parts));
        }
    }

    #[test]
    fn time_keys_are_yyyymmddhh() {
        let t = to_micros(&parse_utc("2026-02-05T19:56:03.123148").unwrap());
        assert_eq!(time_key(t), Some(2026020519));
        assert_eq!(epoch_days(0), 0);
        assert_eq!(epoch_days(-1), -1);
        assert_eq!(day_hours(epoch_days(t)).len(), 24);
        assert_eq!(day_hours(epoch_days(t))[0], 2026020500);
    }

    #[test]
    fn time_keys_never_overflow() {
        // The "still admitted" placeholder, the last keyable hour, and the ends of the range.
        let placeholder = to_micros(&parse_utc("9999-12-31T00:00:00").unwrap());
        assert_eq!(time_key(placeholder), None);
        let last = to_micros(&parse_utc("2146-12-31T23:59:59").unwrap());
        assert_eq!(time_key(last), Some(2146123123));
        assert_eq!(time_key(to_micros(&parse_utc("2147-01-01T00:00:00").unwrap())), None);
        for us in [i64::MIN, i64::MAX, i64::MIN / 2, i64::MAX / 2, 0, -1] {
            let _ = time_key(us);
            let _ = day_hours(epoch_days(us));
        }
        assert!(day_hours(epoch_days(placeholder)).is_empty());
        assert!(day_hours(i32::MAX).is_empty() && day_hours(i32::MIN).is_empty());
    }
}
