//! Silver: each bronze file becomes typed, validated rows (same stem, so replays are idempotent), and
//! whatever cannot be a patient-flow row goes to quarantine with its raw bytes, lineage and a reason.
//!
//! The rules (DESIGN.md §3): timestamps parsed (naive UTC, `Z` or offsets); a missing or future
//! `admission_time` becomes the event's enqueued time (so a replay gives the same row), flagged; an
//! age over 100 becomes 90, flagged; missing fields become null and are listed; unknown fields are
//! ignored; discharge before admission is flagged; duplicates within the file (same sequence number,
//! or same natural key) are kept once — the latest by sequence number; a visit sent without an
//! admission time has no natural key and is never merged with another. Events that another silver
//! file of the same partition already covers (the host re-delivered them in a batch with other
//! boundaries) are dropped as `redelivered`, so each (partition, sequence number) reaches silver and
//! quarantine once. Every invocation balances:
//! `rows_in = rows_out + quarantined + duplicates_dropped + redelivered`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BinaryBuilder, BooleanBuilder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, DictionaryArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use object_store::path::Path;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Error, Result};
use crate::model::event::{CAPPED_AGE, FIELDS, MAX_AGE, MAX_STAY_DAYS, MAX_TIMESTAMP_YEAR, MIN_TIMESTAMP_YEAR};
use crate::model::schema::{QUARANTINE, QUARANTINE_LAYOUT, SILVER, SILVER_LAYOUT, with_text_dictionaries};
use crate::model::time::{from_micros, parse_utc_micros, to_micros};
use crate::storage::keys::BatchStem;
use crate::storage::{Container, Lake, PutOutcome, parquet};

/// Why an event went to quarantine. A closed set: dashboards and alerts key on these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The body is not JSON (truncated, binary, not UTF-8).
    InvalidJson,
    /// The body is JSON but not an object.
    NotAnObject,
    /// `patient_id` is absent, null or empty.
    MissingPatientId,
    /// A field has a value of the wrong JSON type (e.g. `"age": "unknown"`).
    WrongType,
    /// A timestamp field is a string that is not an ISO-8601 timestamp.
    InvalidTimestamp,
    /// A value is outside its domain: a negative age, a bed or hospital id below 1 or above 2^31, a
    /// timestamp before 1900 or after 2100, or a stay longer than [`MAX_STAY_DAYS`].
    OutOfRange,
}

impl Reason {
    /// Every reason, in a stable order.
    pub const ALL: [Reason; 6] = [
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingPatientId,
        Reason::WrongType,
        Reason::InvalidTimestamp,
        Reason::OutOfRange,
    ];

    /// The code stored in the `reason` column.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingPatientId => "missing_patient_id",
            Reason::WrongType => "wrong_type",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::OutOfRange => "out_of_range",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A JSON value as far as silver cares: its type, and its content when scalar. A field the body
/// leaves out reads as [`Scalar::Null`], as the rules treat an absent field and a null alike.
#[derive(Debug, Clone, PartialEq, Default)]
enum Scalar<'a> {
    #[default]
    Null,
    Bool,
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Composite,
}

impl Scalar<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool => "a boolean",
            Scalar::Int(_) | Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Composite => "an object or array",
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Bool)
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The body as parsed: every expected field optional (absent reads as null), unknown fields ignored.
#[derive(Debug, serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    patient_id: Scalar<'a>,
    #[serde(borrow, default)]
    gender: Scalar<'a>,
    #[serde(borrow, default)]
    age: Scalar<'a>,
    #[serde(borrow, default)]
    department: Scalar<'a>,
    #[serde(borrow, default)]
    admission_time: Scalar<'a>,
    #[serde(borrow, default)]
    discharge_time: Scalar<'a>,
    #[serde(borrow, default)]
    bed_id: Scalar<'a>,
    #[serde(borrow, default)]
    hospital_id: Scalar<'a>,
}

/// The expected fields (other than `patient_id`) that an event left out or sent as null: a set of
/// indexes into [`FIELDS`], listed in the seed's field order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MissingFields(u8);

impl MissingFields {
    fn insert(&mut self, field: &str) {
        if let Some(i) = FIELDS.iter().position(|f| *f == field) {
            self.0 |= 1 << i;
        }
    }

    /// Whether every expected field was there.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The field names, in the seed's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        FIELDS.iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, f)| *f)
    }
}

impl fmt::Display for MissingFields {
    /// Comma-separated names (the `missing_fields` column).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// One typed silver row (lineage is added from the bronze columns). Text borrows from the event
/// body where the body's JSON string has no escapes; timestamps are UTC microseconds since the
/// epoch, as the silver columns store them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    /// Patient id.
    pub patient_id: Cow<'a, str>,
    /// Gender, null when missing.
    pub gender: Option<Cow<'a, str>>,
    /// Age after capping.
    pub age: Option<i32>,
    /// Department.
    pub department: Option<Cow<'a, str>>,
    /// Admission time after imputation (µs).
    pub admission_time: i64,
    /// Admission time as sent (null when absent). Part of the natural key, so a re-sent event whose
    /// admission was imputed still matches its original.
    pub admission_time_sent: Option<i64>,
    /// Discharge time as sent (µs).
    pub discharge_time: Option<i64>,
    /// Bed id.
    pub bed_id: Option<i32>,
    /// Hospital id.
    pub hospital_id: Option<i32>,
    /// Age was over 100 and was set to 90.
    pub age_capped: bool,
    /// Admission time was missing or after the enqueued time and was set to the enqueued time.
    pub admission_imputed: bool,
    /// Discharge time is before admission time.
    pub discharge_before_admission: bool,
    /// Expected fields that were absent or null.
    pub missing: MissingFields,
}

impl Row<'_> {
    /// The `missing_fields` column's value: the names, comma-separated, or null.
    pub fn missing_fields(&self) -> Option<String> {
        (!self.missing.is_empty()).then(|| self.missing.to_string())
    }

    /// The row with its text copied out of the body.
    pub fn into_owned(self) -> Row<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Row {
            patient_id: own(self.patient_id),
            gender: self.gender.map(own),
            department: self.department.map(own),
            age: self.age,
            admission_time: self.admission_time,
            admission_time_sent: self.admission_time_sent,
            discharge_time: self.discharge_time,
            bed_id: self.bed_id,
            hospital_id: self.hospital_id,
            age_capped: self.age_capped,
            admission_imputed: self.admission_imputed,
            discharge_before_admission: self.discharge_before_admission,
            missing: self.missing,
        }
    }
}

/// A rejected event: the reason code and a short detail that never contains field values.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The reason code.
    pub reason: Reason,
    /// A short explanation naming the field (never its value: this is health data).
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection { reason, detail: detail.into() }
}

fn wrong_type(field: &str, expected: &str, got: &Scalar<'_>) -> Rejection {
    reject(Reason::WrongType, format!("{field} must be {expected}, got {}", got.type_name()))
}

fn text<'a>(
    field: &'static str,
    v: Scalar<'a>,
    missing: &mut MissingFields,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match v {
        Scalar::Null => {
            missing.insert(field);
            Ok(None)
        }
        Scalar::Str(s) => Ok(Some(s)),
        other => Err(wrong_type(field, "a string", &other)),
    }
}

fn integer(
    field: &'static str,
    v: Scalar<'_>,
    missing: &mut MissingFields,
    min: i64,
) -> Result<Option<i64>, Rejection> {
    let n = match v {
        Scalar::Null => {
            missing.insert(field);
            return Ok(None);
        }
        Scalar::Int(n) => n,
        // Some producers write 87.0; an integral float is the same number.
        Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => f as i64,
        other => return Err(wrong_type(field, "an integer", &other)),
    };
    if n < min || n > i64::from(i32::MAX) {
        return Err(reject(Reason::OutOfRange, format!("{field} must be between {min} and {}", i32::MAX)));
    }
    Ok(Some(n))
}

/// The accepted timestamps, in µs: from 1900-01-01T00:00:00 (inclusive) to 2101-01-01T00:00:00
/// (exclusive), i.e. years [`MIN_TIMESTAMP_YEAR`] to [`MAX_TIMESTAMP_YEAR`].
static TIMESTAMP_RANGE: LazyLock<std::ops::Range<i64>> = LazyLock::new(|| {
    let start = |year: i32| {
        chrono::NaiveDate::from_ymd_opt(year, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(i64::MAX, |t| to_micros(&t))
    };
    start(MIN_TIMESTAMP_YEAR)..start(MAX_TIMESTAMP_YEAR + 1)
});

fn timestamp(field: &'static str, v: Scalar<'_>, missing: &mut MissingFields) -> Result<Option<i64>, Rejection> {
    match v {
        Scalar::Null => {
            missing.insert(field);
            Ok(None)
        }
        Scalar::Str(s) => {
            let t = parse_utc_micros(&s)
                .ok_or_else(|| reject(Reason::InvalidTimestamp, format!("{field} is not an ISO-8601 timestamp")))?;
            if !TIMESTAMP_RANGE.contains(&t) {
                return Err(reject(
                    Reason::OutOfRange,
                    format!("{field} must be between {MIN_TIMESTAMP_YEAR}-01-01 and {MAX_TIMESTAMP_YEAR}-12-31"),
                ));
            }
            Ok(Some(t))
        }
        other => Err(wrong_type(field, "an ISO-8601 string", &other)),
    }
}

/// The longest accepted stay, in µs.
const MAX_STAY_MICROS: i64 = MAX_STAY_DAYS * 86_400 * 1_000_000;

/// Applies the silver rules to one body. `enqueued_us` is the event's enqueued time in µs (the
/// reference clock for future admissions, so a replay gives the same row). The row borrows its text
/// from `body`.
pub fn refine(body: &[u8], enqueued_us: i64) -> Result<Row<'_>, Rejection> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => reject(Reason::NotAnObject, "the body is JSON but not an object"),
            Err(e) => reject(Reason::InvalidJson, format!("not JSON ({})", json_error_kind(&e))),
        });
    }
    // A body that is UTF-8 throughout (nearly all) is checked once, not string by string as
    // `from_slice` does (a call per key and value: 3 % of a run's instructions); any other body
    // goes to `from_slice`, whose error names what is wrong. Both read valid text the same way.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str::<Body<'_>>(text),
        Err(_) => serde_json::from_slice::<Body<'_>>(body),
    };
    let b = parsed
        .map_err(|e| reject(Reason::InvalidJson, format!("not a valid JSON object ({})", json_error_kind(&e))))?;

    let mut missing = MissingFields::default();
    let patient_id = match b.patient_id {
        Scalar::Null => return Err(reject(Reason::MissingPatientId, "patient_id is absent or null")),
        Scalar::Str(s) if s.trim().is_empty() => {
            return Err(reject(Reason::MissingPatientId, "patient_id is empty"));
        }
        Scalar::Str(s) => s,
        other => return Err(wrong_type("patient_id", "a string", &other)),
    };
    let gender = text("gender", b.gender, &mut missing)?;
    let age = integer("age", b.age, &mut missing, 0)?;
    let department = text("department", b.department, &mut missing)?;
    let admission = timestamp("admission_time", b.admission_time, &mut missing)?;
    let discharge_time = timestamp("discharge_time", b.discharge_time, &mut missing)?;
    let bed_id = integer("bed_id", b.bed_id, &mut missing, 1)?;
    let hospital_id = integer("hospital_id", b.hospital_id, &mut missing, 1)?;

    let age_capped = age.is_some_and(|a| a > MAX_AGE);
    let age = age.map(|a| if a > MAX_AGE { CAPPED_AGE } else { a as i32 });
    let (admission_time, admission_imputed) = match admission {
        Some(t) if t <= enqueued_us => (t, false),
        _ => (enqueued_us, true),
    };
    if discharge_time.is_some_and(|d| d.saturating_sub(admission_time) > MAX_STAY_MICROS) {
        return Err(reject(
            Reason::OutOfRange,
            format!("discharge_time is more than {MAX_STAY_DAYS} days after admission_time"),
        ));
    }
    let discharge_before_admission = discharge_time.is_some_and(|d| d < admission_time);
    Ok(Row {
        patient_id,
        gender,
        age,
        department,
        admission_time,
        admission_time_sent: admission,
        discharge_time,
        bed_id: bed_id.map(|v| v as i32),
        hospital_id: hospital_id.map(|v| v as i32),
        age_capped,
        admission_imputed,
        discharge_before_admission,
        missing,
    })
}

/// serde_json's error category, without the message (which can quote the body).
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "ends early",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Io => "unreadable",
    }
}

/// Correction rules, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Correction {
    /// Age over 100 set to 90.
    AgeCapped,
    /// Missing or future admission time set to the enqueued time.
    AdmissionImputed,
    /// Discharge before admission (flagged, not changed).
    DischargeBeforeAdmission,
}

/// What one silver invocation did. Always balances:
/// `rows_in = rows_out + quarantined + duplicates_dropped + redelivered`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SilverMetrics {
    /// The bronze file read.
    pub bronze_file: String,
    /// The silver file written.
    pub silver_file: String,
    /// Events in the bronze file.
    pub rows_in: u64,
    /// Rows in the silver file.
    pub rows_out: u64,
    /// Events quarantined, by reason code.
    pub quarantined: BTreeMap<String, u64>,
    /// Events dropped as duplicates within the file.
    pub duplicates_dropped: u64,
    /// Events dropped because another silver file of the same partition already covers their
    /// sequence number (a re-delivery with other batch boundaries).
    #[serde(default)]
    pub redelivered: u64,
    /// Rows corrected or flagged, by rule.
    pub corrected: BTreeMap<String, u64>,
    /// Rows with at least one missing expected field.
    pub rows_with_missing_fields: u64,
    /// `false` when the silver file already existed (a replay): nothing was written.
    pub created: bool,
}

impl SilverMetrics {
    /// Total events quarantined.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.values().sum()
    }

    /// Whether `rows_in = rows_out + quarantined + duplicates_dropped + redelivered`.
    pub fn balances(&self) -> bool {
        self.rows_in == self.rows_out + self.quarantined_total() + self.duplicates_dropped + self.redelivered
    }

    /// A one-line summary for the invocation's `Logs` (counts only, no patient data).
    pub fn summary(&self) -> String {
        format!(
            "silver {}: in={} out={} quarantined={} {:?} duplicates={} redelivered={} corrected={:?}",
            self.silver_file,
            self.rows_in,
            self.rows_out,
            self.quarantined_total(),
            self.quarantined,
            self.duplicates_dropped,
            self.redelivered,
            self.corrected
        )
    }
}

/// The bronze columns silver reads (the others are not decompressed).
const BRONZE_COLUMNS: [&str; 5] = ["event_hub", "partition_id", "sequence_number", "enqueued_time", "body"];

/// Bronze columns silver needs, borrowed from a decoded bronze batch.
struct BronzeView<'a> {
    event_hub: &'a arrow_array::StringArray,
    partition: &'a arrow_array::StringArray,
    seq: &'a arrow_array::PrimitiveArray<Int64Type>,
    enqueued: &'a arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    body: &'a arrow_array::BinaryArray,
}

fn view<'a>(key: &str, batch: &'a RecordBatch) -> Result<BronzeView<'a>> {
    let corrupt = |what: &str| Error::Corrupt { key: key.to_string(), detail: format!("not a bronze file: {what}") };
    let col = |name: &str, ty: &DataType| -> Result<&'a ArrayRef> {
        let c = batch.column_by_name(name).ok_or_else(|| corrupt(&format!("no `{name}` column")))?;
        if c.data_type() != ty {
            return Err(corrupt(&format!("`{name}` is {}, expected {ty}", c.data_type())));
        }
        Ok(c)
    };
    Ok(BronzeView {
        event_hub: col("event_hub", &DataType::Utf8)?.as_string::<i32>(),
        partition: col("partition_id", &DataType::Utf8)?.as_string::<i32>(),
        seq: col("sequence_number", &DataType::Int64)?.as_primitive::<Int64Type>(),
        enqueued: col("enqueued_time", &crate::model::schema::TS)?.as_primitive::<TimestampMicrosecondType>(),
        body: col("body", &DataType::Binary)?.as_binary::<i32>(),
    })
}

struct Lineage<'a> {
    event_hub: &'a str,
    partition: &'a str,
    seq: i64,
    enqueued_us: i64,
}

/// The result of refining one bronze file in memory.
pub struct Refined {
    /// The silver rows (may be empty).
    pub silver: RecordBatch,
    /// The quarantined events (may be empty).
    pub quarantine: RecordBatch,
    /// Accounting.
    pub metrics: SilverMetrics,
}

/// A visit's natural key — patient, department, hospital and admission time as sent — of a row,
/// hashed once: the map compares the hash, and the fields only when two hashes are equal.
struct NaturalKey<'r, 'a> {
    hash: u64,
    row: &'r Row<'a>,
}

impl<'r, 'a> NaturalKey<'r, 'a> {
    fn new(row: &'r Row<'a>) -> Self {
        let mut h = FxHasher::default();
        (row.patient_id.as_ref(), row.department.as_deref(), row.hospital_id, row.admission_time_sent).hash(&mut h);
        Self { hash: h.finish(), row }
    }
}

impl Hash for NaturalKey<'_, '_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for NaturalKey<'_, '_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.row, other.row);
        self.hash == other.hash
            && a.patient_id == b.patient_id
            && a.department == b.department
            && a.hospital_id == b.hospital_id
            && a.admission_time_sent == b.admission_time_sent
    }
}

impl Eq for NaturalKey<'_, '_> {}

/// Sequence numbers of one partition that other silver files already cover: their names carry
/// (partition, first, last), and a silver file exists only once its bronze file was fully refined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Covered {
    /// The partition the ranges belong to.
    pub partition: String,
    /// Inclusive (first, last) sequence-number ranges.
    pub ranges: Vec<(i64, i64)>,
}

/// Index buckets a refine lists at most; a wider range (a pathological batch) lists the partition's
/// whole index instead.
const MAX_INDEX_BUCKETS: i64 = 16;

impl Covered {
    /// Whether another file already holds `(partition, seq)`.
    pub fn contains(&self, partition: &str, seq: i64) -> bool {
        !self.ranges.is_empty()
            && partition == self.partition
            && self.ranges.iter().any(|&(first, last)| first <= seq && seq <= last)
    }

    /// The ranges of the finished silver files of `stem`'s partition, other than `stem`'s own, that
    /// overlap its sequence numbers.
    ///
    /// The cost follows the file, not the partition's history: instead of listing every silver file
    /// of the partition, it lists the sequence index's bucket(s) that `stem`'s range touches (one
    /// folder of a dozen markers, two across a bucket boundary) and the partition's `meta` folder
    /// (the `complete` marker, and the rare wide ranges); see [`BatchStem::index_neighbourhood`].
    /// Each overlapping marker is confirmed by its silver file's existence. This finds the files a
    /// full listing of the partition would find (the argument is on [`process`]). A partition whose
    /// index is not known complete (a lake written before the index existed, or a partition's first
    /// file) is listed whole once, its markers written, and its `complete` marker set.
    pub async fn for_stem(lake: &Lake, stem: &BatchStem) -> Result<Self> {
        let complete = BatchStem::index_complete(&stem.partition);
        let folders = stem
            .index_neighbourhood(MAX_INDEX_BUCKETS)
            .unwrap_or_else(|| vec![BatchStem::index_partition(&stem.partition)]);
        let mut listings = Vec::with_capacity(folders.len());
        for folder in &folders {
            listings.push(lake.list(Container::Silver, folder));
        }
        let markers: Vec<_> = futures::future::try_join_all(listings).await?.into_iter().flatten().collect();
        if !markers.iter().any(|m| m.location == complete) {
            return Self::index_partition(lake, stem).await;
        }
        let candidates: Vec<BatchStem> = markers
            .iter()
            .filter_map(|m| BatchStem::parse_index_key(m.location.as_ref()))
            .filter(|other| overlaps(stem, other))
            .collect();
        // A marker is written before its silver file: only a silver file that exists counts.
        let keys: Vec<Path> = candidates.iter().map(BatchStem::key).collect();
        let mut ranges: Vec<(i64, i64)> = candidates
            .iter()
            .zip(lake.exist_each(Container::Silver, &keys).await?)
            .filter(|(_, exists)| *exists)
            .map(|(other, _)| (other.first_seq, other.last_seq))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        Ok(Self { partition: stem.partition.clone(), ranges })
    }

    /// The partition's index is not known complete: list its silver files (one prefix listing, as
    /// before the index existed), write a marker for each, then the `complete` marker. The ranges
    /// come from that listing.
    async fn index_partition(lake: &Lake, stem: &BatchStem) -> Result<Self> {
        let prefix = BatchStem::partition_prefix(&stem.partition);
        let files: Vec<BatchStem> = lake
            .list(Container::Silver, &prefix)
            .await?
            .iter()
            .filter_map(|m| BatchStem::parse_key(m.location.as_ref()))
            .filter(|other| other.partition == stem.partition)
            .collect();
        let markers: Vec<Path> = files.iter().flat_map(BatchStem::index_keys).collect();
        for chunk in markers.chunks(16) {
            let mut puts = Vec::with_capacity(chunk.len());
            for marker in chunk {
                puts.push(lake.put_if_absent(Container::Silver, marker, Bytes::new()));
            }
            futures::future::try_join_all(puts).await?;
        }
        lake.put_if_absent(Container::Silver, &BatchStem::index_complete(&stem.partition), Bytes::new()).await?;
        if !files.is_empty() {
            tracing::info!(partition = %stem.partition, files = files.len(), "Silver sequence index built for a partition.");
        }
        let mut ranges: Vec<(i64, i64)> =
            files.iter().filter(|other| overlaps(stem, other)).map(|o| (o.first_seq, o.last_seq)).collect();
        ranges.sort_unstable();
        Ok(Self { partition: stem.partition.clone(), ranges })
    }
}

/// Whether `other` is another file of `stem`'s partition whose range overlaps `stem`'s.
fn overlaps(stem: &BatchStem, other: &BatchStem) -> bool {
    other.partition == stem.partition
        && other != stem
        && other.first_seq <= stem.last_seq
        && other.last_seq >= stem.first_seq
}

/// Refines decoded bronze batches (pure: no I/O).
pub fn refine_batches(bronze_key: &str, batches: &[RecordBatch]) -> Result<Refined> {
    refine_batches_excluding(bronze_key, batches, &Covered::default())
}

/// Refines decoded bronze batches, dropping events `covered` by other silver files (pure: no I/O).
pub fn refine_batches_excluding(bronze_key: &str, batches: &[RecordBatch], covered: &Covered) -> Result<Refined> {
    let mut metrics = SilverMetrics { bronze_file: bronze_key.to_string(), ..Default::default() };
    let views = batches.iter().map(|b| view(bronze_key, b)).collect::<Result<Vec<_>>>()?;
    let n: usize = views.iter().map(|v| v.body.len()).sum();
    let mut rows: Vec<(Lineage<'_>, Row<'_>)> = Vec::with_capacity(n);
    let mut rejected: Vec<(Lineage<'_>, Rejection, &[u8])> = Vec::new();
    let mut seen_seq: FxHashSet<(&str, i64)> = FxHashSet::default();
    seen_seq.reserve(n);
    for v in &views {
        for i in 0..v.body.len() {
            metrics.rows_in += 1;
            let lineage = Lineage {
                event_hub: v.event_hub.value(i),
                partition: v.partition.value(i),
                seq: v.seq.value(i),
                enqueued_us: v.enqueued.value(i),
            };
            if !seen_seq.insert((lineage.partition, lineage.seq)) {
                metrics.duplicates_dropped += 1;
                continue;
            }
            if covered.contains(lineage.partition, lineage.seq) {
                metrics.redelivered += 1;
                continue;
            }
            if from_micros(lineage.enqueued_us).is_none() {
                return Err(Error::Corrupt {
                    key: bronze_key.to_string(),
                    detail: "enqueued_time out of range".into(),
                });
            }
            let body = v.body.value(i);
            match refine(body, lineage.enqueued_us) {
                Ok(row) => rows.push((lineage, row)),
                Err(r) => rejected.push((lineage, r, body)),
            }
        }
    }

    // Same visit sent twice (or re-sent with an update): keep the latest by sequence number. A
    // visit sent without an admission time has no natural key to match on (two such visits of one
    // patient in one department are two visits): each is kept; a re-delivery of the same event is
    // still caught by its sequence number above.
    let mut latest: FxHashMap<NaturalKey<'_, '_>, usize> = FxHashMap::default();
    latest.reserve(rows.len());
    let mut kept = vec![false; rows.len()];
    for (i, (lineage, row)) in rows.iter().enumerate() {
        if row.admission_time_sent.is_none() {
            kept[i] = true;
            continue;
        }
        match latest.entry(NaturalKey::new(row)) {
            Entry::Occupied(mut j) => {
                if rows[*j.get()].0.seq < lineage.seq {
                    j.insert(i);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }
    for i in latest.into_values() {
        kept[i] = true;
    }
    // Rows in (partition, sequence number) order. A bronze file holds one partition's events in
    // the order the hub numbered them, so the rows kept, taken in arrival order, nearly always are
    // in that order already; they are sorted only when they are not.
    let mut keep: Vec<usize> = (0..rows.len()).filter(|&i| kept[i]).collect();
    let one_partition = rows.first().is_none_or(|(first, _)| rows.iter().all(|(l, _)| l.partition == first.partition));
    if one_partition {
        if !keep.is_sorted_by_key(|&i| rows[i].0.seq) {
            keep.sort_unstable_by_key(|&i| rows[i].0.seq);
        }
    } else {
        keep.sort_unstable_by_key(|&i| (rows[i].0.partition, rows[i].0.seq));
    }
    metrics.duplicates_dropped += (rows.len() - keep.len()) as u64;

    let silver = silver_batch(bronze_key, &rows, &keep, &mut metrics)?;
    let quarantine = quarantine_batch(bronze_key, &rejected, &mut metrics)?;
    if !metrics.balances() {
        return Err(Error::Internal(format!("silver accounting does not balance: {}", metrics.summary())));
    }
    Ok(Refined { silver, quarantine, metrics })
}

fn silver_batch(
    bronze_key: &str,
    rows: &[(Lineage<'_>, Row<'_>)],
    keep: &[usize],
    m: &mut SilverMetrics,
) -> Result<RecordBatch> {
    let n = keep.len();
    let text_bytes = |f: fn(&Row<'_>) -> usize| keep.iter().map(|&i| f(&rows[i].1)).sum::<usize>();
    let mut patient = StringBuilder::with_capacity(n, text_bytes(|r| r.patient_id.len()));
    let mut gender = StringBuilder::with_capacity(n, text_bytes(|r| r.gender.as_ref().map_or(0, |g| g.len())));
    let mut age = Int32Builder::with_capacity(n);
    let mut dept = StringBuilder::with_capacity(n, text_bytes(|r| r.department.as_ref().map_or(0, |d| d.len())));
    let mut adm = TimestampMicrosecondBuilder::with_capacity(n);
    let mut adm_sent = TimestampMicrosecondBuilder::with_capacity(n);
    let mut dis = TimestampMicrosecondBuilder::with_capacity(n);
    let mut bed = Int32Builder::with_capacity(n);
    let mut hosp = Int32Builder::with_capacity(n);
    let mut capped = BooleanBuilder::with_capacity(n);
    let mut imputed = BooleanBuilder::with_capacity(n);
    let mut backwards = BooleanBuilder::with_capacity(n);
    let mut missing = StringBuilder::with_capacity(n, 0);
    let mut hub = LineageColumn::with_capacity(n);
    let mut part = LineageColumn::with_capacity(n);
    let mut seq = arrow_array::builder::Int64Builder::with_capacity(n);
    let mut enq = TimestampMicrosecondBuilder::with_capacity(n);
    let mut corrected: [u64; 3] = [0; 3];
    for &i in keep {
        let (l, r) = &rows[i];
        patient.append_value(&r.patient_id);
        gender.append_option(r.gender.as_deref());
        age.append_option(r.age);
        dept.append_option(r.department.as_deref());
        adm.append_value(r.admission_time);
        adm_sent.append_option(r.admission_time_sent);
        dis.append_option(r.discharge_time);
        bed.append_option(r.bed_id);
        hosp.append_option(r.hospital_id);
        capped.append_value(r.age_capped);
        imputed.append_value(r.admission_imputed);
        backwards.append_value(r.discharge_before_admission);
        if r.missing.is_empty() {
            missing.append_null();
        } else {
            let _ = write!(missing, "{}", r.missing);
            missing.append_value("");
        }
        hub.append(l.event_hub);
        part.append(l.partition);
        seq.append_value(l.seq);
        enq.append_value(l.enqueued_us);
        corrected[0] += u64::from(r.age_capped);
        corrected[1] += u64::from(r.admission_imputed);
        corrected[2] += u64::from(r.discharge_before_admission);
        m.rows_with_missing_fields += u64::from(!r.missing.is_empty());
    }
    m.rows_out = n as u64;
    for (name, count) in ["age_capped", "admission_imputed", "discharge_before_admission"].into_iter().zip(corrected) {
        m.corrected.insert(name.to_string(), count);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(patient.finish()),
        Arc::new(gender.finish()),
        Arc::new(age.finish()),
        Arc::new(dept.finish()),
        Arc::new(adm.finish()),
        Arc::new(adm_sent.finish()),
        Arc::new(dis.finish()),
        Arc::new(bed.finish()),
        Arc::new(hosp.finish()),
        Arc::new(capped.finish()),
        Arc::new(imputed.finish()),
        Arc::new(backwards.finish()),
        Arc::new(missing.finish()),
        hub.finish()?,
        part.finish()?,
        Arc::new(seq.finish()),
        Arc::new(enq.finish()),
        Arc::new(DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![0; n]),
            Arc::new(StringArray::from(vec![bronze_key])),
        )?),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&SILVER_IN_MEMORY), columns)?)
}

/// Silver as a refine builds it: [`SILVER`] with the lineage's text columns (one event hub,
/// partition and bronze file a file, nearly always) as dictionaries, so a row appends an id
/// instead of copying the strings (the bronze file is a 74-byte lake path). Files are written
/// under [`SILVER`]: parquet's writer takes a dictionary column value by value, so a file's bytes
/// are those of its plain strings (tested).
static SILVER_IN_MEMORY: LazyLock<SchemaRef> =
    LazyLock::new(|| with_text_dictionaries(&SILVER, &["event_hub", "partition_id", "bronze_file"]));

/// A lineage text column built as a dictionary of the distinct values met, in order of first
/// appearance; a value equal to the row before's is not looked up again.
struct LineageColumn<'a> {
    keys: Int32Builder,
    values: Vec<&'a str>,
    last: Option<(&'a str, i32)>,
}

impl<'a> LineageColumn<'a> {
    /// An empty column with room for `n` rows.
    fn with_capacity(n: usize) -> Self {
        Self { keys: Int32Builder::with_capacity(n), values: Vec::new(), last: None }
    }

    fn append(&mut self, value: &'a str) {
        let key = match self.last {
            Some((last, key)) if last == value => key,
            _ => {
                let key = match self.values.iter().position(|v| *v == value) {
                    Some(i) => i as i32,
                    None => {
                        self.values.push(value);
                        self.values.len() as i32 - 1
                    }
                };
                self.last = Some((value, key));
                key
            }
        };
        self.keys.append_value(key);
    }

    fn finish(mut self) -> Result<ArrayRef> {
        let values = Arc::new(StringArray::from(self.values));
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(self.keys.finish(), values)?))
    }
}

fn quarantine_batch(
    bronze_key: &str,
    rejected: &[(Lineage<'_>, Rejection, &[u8])],
    m: &mut SilverMetrics,
) -> Result<RecordBatch> {
    let mut reason = StringBuilder::new();
    let mut detail = StringBuilder::new();
    let mut body = BinaryBuilder::new();
    let mut hub = StringBuilder::new();
    let mut part = StringBuilder::new();
    let mut seq = arrow_array::builder::Int64Builder::new();
    let mut enq = TimestampMicrosecondBuilder::new();
    let mut file = StringBuilder::new();
    for r in Reason::ALL {
        m.quarantined.insert(r.code().to_string(), 0);
    }
    for (l, r, raw) in rejected {
        reason.append_value(r.reason.code());
        detail.append_value(&r.detail);
        body.append_value(raw);
        hub.append_value(l.event_hub);
        part.append_value(l.partition);
        seq.append_value(l.seq);
        enq.append_value(l.enqueued_us);
        file.append_value(bronze_key);
        *m.quarantined.entry(r.reason.code().to_string()).or_default() += 1;
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(reason.finish()),
        Arc::new(detail.finish()),
        Arc::new(body.finish()),
        Arc::new(hub.finish()),
        Arc::new(part.finish()),
        Arc::new(seq.finish()),
        Arc::new(enq.finish()),
        Arc::new(file.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&QUARANTINE), columns)?)
}

/// Refines one bronze file already in memory (blob-trigger content) and writes silver and quarantine.
///
/// Events whose (partition, sequence number) another finished silver file covers are dropped as
/// `redelivered` (counted, so the accounting balances): the host re-delivers after a restart or a
/// rebalance with other batch boundaries, which makes a new bronze file (bronze is the archive of
/// what was delivered) but must not make new silver rows.
///
/// Order of writes: the quarantine file and this file's markers in the sequence index (all
/// create-if-absent, at once), then the silver file. So a silver file's presence means its bronze
/// file is done, and its markers exist whenever it does.
///
/// Why the index finds what one listing of the partition's silver files would ([`Covered::for_stem`]):
/// - *Nothing is dropped that no silver file holds.* An event is dropped only if a silver file that
///   exists covers it (each marker found is confirmed by the silver file's existence, and silver
///   files are never deleted), so every delivered event reaches silver or quarantine at least once.
/// - *Every file finished before this refine lists is seen.* Its markers were written before it.
///   A file of at most `SEQ_BUCKET` numbers that overlaps this one shares a sequence number with
///   it, and has a marker in that number's bucket, which this refine lists; a wider file has its
///   marker in the `meta` folder, which it lists too; a file written before the index existed got
///   its marker before the partition's `complete` marker, which this refine found (else it lists
///   the partition whole, as before).
/// - *Racing refines* of overlapping files (a file that finishes while this one runs) can both keep
///   an event, exactly as with one listing of the partition: a listing is also a moment, before or
///   after the other's write. That race is closed downstream: gold keeps one winning event per
///   visit, and quarantine counts distinct (event hub, partition, sequence number).
pub async fn process(lake: &Lake, stem: &BatchStem, bronze: Bytes) -> Result<SilverMetrics> {
    let key = stem.key();
    let (_, batches) = parquet::decode_columns(bronze, &BRONZE_COLUMNS)
        .map_err(|e| Error::Corrupt { key: key.to_string(), detail: e.to_string() })?;
    let covered = Covered::for_stem(lake, stem).await?;
    let refined = refine_batches_excluding(key.as_ref(), &batches, &covered)?;
    drop(batches);
    let mut metrics = refined.metrics;
    metrics.silver_file = key.to_string();
    let silver = parquet::encode_layout(&SILVER, &[refined.silver], &SILVER_LAYOUT)?;
    let quarantine = async {
        if refined.quarantine.num_rows() > 0 {
            let file = parquet::encode_layout(&QUARANTINE, &[refined.quarantine], &QUARANTINE_LAYOUT)?;
            lake.put_if_absent(Container::Quarantine, &key, file).await?;
        }
        Ok::<_, Error>(())
    };
    let markers = async {
        for marker in stem.index_keys() {
            lake.put_if_absent(Container::Silver, &marker, Bytes::new()).await?;
        }
        Ok(())
    };
    futures::future::try_join(quarantine, markers).await?;
    metrics.created = lake.put_if_absent(Container::Silver, &key, silver).await? == PutOutcome::Created;
    Ok(metrics)
}

/// Reads a bronze file from the lake (deferred binding: the host sent only its name) and processes it.
pub async fn process_from_lake(lake: &Lake, stem: &BatchStem) -> Result<SilverMetrics> {
    let bytes = lake.get(Container::Bronze, &stem.key()).await?;
    process(lake, stem, bytes).await
}

/// Lists every silver file's key.
pub async fn list_files(lake: &Lake) -> Result<Vec<Path>> {
    let items = lake.list(Container::Silver, &crate::storage::keys::patient_flow_prefix()).await?;
    Ok(items.into_iter().map(|m| m.location).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::time::parse_utc;
    use chrono::NaiveDateTime;

    fn t(s: &str) -> NaiveDateTime {
        parse_utc(s).unwrap()
    }

    /// A timestamp in µs, as rows hold them.
    fn us(s: &str) -> i64 {
        to_micros(&t(s))
    }

    const ENQ: &str = "2026-11-24T12:00:00";

    fn ok(body: &str) -> Row<'static> {
        refine(body.as_bytes(), us(ENQ)).unwrap().into_owned()
    }

    fn bad(body: &[u8]) -> Reason {
        refine(body, us(ENQ)).unwrap_err().reason
    }

    const CLEAN: &str = r#"{"patient_id":"p1","gender":"Female","age":87,"department":"Cardiology","admission_time":"2026-11-23T19:56:03.123148","discharge_time":"2026-11-24T20:56:03.123148","bed_id":63,"hospital_id":5}"#;

    #[test]
    fn a_clean_event_is_typed_as_sent() {
        let r = ok(CLEAN);
        assert_eq!(r.patient_id, "p1");
        assert_eq!(r.age, Some(87));
        assert_eq!(r.admission_time, us("2026-11-23T19:56:03.123148"));
        assert_eq!(r.discharge_time, Some(us("2026-11-24T20:56:03.123148")));
        assert_eq!((r.bed_id, r.hospital_id), (Some(63), Some(5)));
        assert!(!r.age_capped && !r.admission_imputed && !r.discharge_before_admission);
        assert_eq!(r.missing_fields(), None);
    }

    #[test]
    fn over_age_is_capped_and_future_or_missing_admission_is_imputed() {
        let r = ok(&CLEAN.replace("87", "131"));
        assert_eq!((r.age, r.age_capped), (Some(90), true));
        let r = ok(&CLEAN.replace("2026-11-23T19:56:03.123148", "2026-11-25T01:00:00Z"));
        assert_eq!((r.admission_time, r.admission_imputed), (us(ENQ), true));
        let r = ok(r#"{"patient_id":"p1","age":40}"#);
        assert!(r.admission_imputed);
        assert_eq!(r.admission_time, us(ENQ));
        assert_eq!(
            r.missing_fields().as_deref(),
            Some("gender,department,admission_time,discharge_time,bed_id,hospital_id")
        );
    }

    #[test]
    fn offsets_are_converted_and_extra_fields_ignored() {
        let r =
            ok(r#"{"patient_id":"p1","admission_time":"2026-11-24T10:00:00+02:00","ward":"7B","nested":{"a":[1,2]}}"#);
        assert_eq!(r.admission_time, us("2026-11-24T08:00:00"));
        assert!(!r.admission_imputed);
    }

    #[test]
    fn discharge_before_admission_is_flagged() {
        let r = ok(&CLEAN.replace("2026-11-24T20:56:03.123148", "2026-11-22T00:00:00"));
        assert!(r.discharge_before_admission);
    }

    #[test]
    fn what_cannot_be_a_row_gets_a_reason() {
        assert_eq!(bad(&CLEAN.as_bytes()[..40]), Reason::InvalidJson);
        assert_eq!(bad(b"\xff\xfe\x80"), Reason::InvalidJson);
        assert_eq!(bad(b""), Reason::InvalidJson);
        assert_eq!(bad(format!("[{CLEAN}]").as_bytes()), Reason::NotAnObject);
        assert_eq!(bad(b"42"), Reason::NotAnObject);
        assert_eq!(bad(br#"{"age":3}"#), Reason::MissingPatientId);
        assert_eq!(bad(br#"{"patient_id":"  "}"#), Reason::MissingPatientId);
        assert_eq!(bad(br#"{"patient_id":12}"#), Reason::WrongType);
        assert_eq!(bad(br#"{"patient_id":"p","age":"unknown"}"#), Reason::WrongType);
        assert_eq!(bad(br#"{"patient_id":"p","discharge_time":true}"#), Reason::WrongType);
        assert_eq!(bad(br#"{"patient_id":"p","admission_time":"soon"}"#), Reason::InvalidTimestamp);
        assert_eq!(bad(br#"{"patient_id":"p","bed_id":0}"#), Reason::OutOfRange);
        assert_eq!(bad(br#"{"patient_id":"p","hospital_id":99999999999}"#), Reason::OutOfRange);
        assert_eq!(bad(br#"{"patient_id":"p","age":-1}"#), Reason::OutOfRange);
        assert_eq!(bad(br#"{"patient_id":"p","patient_id":"q"}"#), Reason::InvalidJson);
    }

    #[test]
    fn timestamps_outside_1900_2100_and_overlong_stays_are_out_of_range_naming_the_field() {
        let e =
            refine(CLEAN.replace("2026-11-24T20:56:03.123148", "9999-12-31T00:00:00").as_bytes(), us(ENQ)).unwrap_err();
        assert_eq!(e.reason, Reason::OutOfRange);
        assert!(e.detail.starts_with("discharge_time "), "{}", e.detail);
        let e =
            refine(CLEAN.replace("2026-11-23T19:56:03.123148", "1899-12-31T23:59:59").as_bytes(), us(ENQ)).unwrap_err();
        assert_eq!(e.reason, Reason::OutOfRange);
        assert!(e.detail.starts_with("admission_time "), "{}", e.detail);
        assert_eq!(bad(br#"{"patient_id":"p","discharge_time":"2101-01-01T00:00:00Z"}"#), Reason::OutOfRange);
        // The edges of the range are accepted.
        ok(r#"{"patient_id":"p","admission_time":"1900-01-01T00:00:00","discharge_time":"1900-01-02T00:00:00"}"#);
        let edge = |s: &str| timestamp("discharge_time", Scalar::Str(Cow::Borrowed(s)), &mut MissingFields::default());
        assert!(edge("2100-12-31T23:59:59.999999").is_ok());
        assert_eq!(edge("2101-01-01T00:00:00").unwrap_err().reason, Reason::OutOfRange);
        // A stay of exactly the bound is kept; one microsecond more is not.
        let stay = |discharge: &str| {
            refine(
                format!(
                    r#"{{"patient_id":"p","admission_time":"2026-01-01T00:00:00","discharge_time":"{discharge}"}}"#
                )
                .as_bytes(),
                us(ENQ),
            )
            .map(Row::into_owned)
        };
        assert!(stay("2027-01-01T00:00:00").is_ok(), "365 days");
        let e = stay("2027-01-01T00:00:00.000001").unwrap_err();
        assert_eq!(e.reason, Reason::OutOfRange);
        assert!(e.detail.contains("discharge_time") && e.detail.contains("365"), "{}", e.detail);
    }

    fn bronze(first_seq: i64, bodies: &[&str]) -> RecordBatch {
        use crate::pipeline::bronze::{EventBatch, RawEvent, to_record_batch};
        let events: Vec<RawEvent> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| RawEvent {
                body: Bytes::copy_from_slice(b.as_bytes()),
                sequence_number: first_seq + i as i64,
                offset: None,
                enqueued_time: t(ENQ),
                partition_key: None,
                properties: None,
            })
            .collect();
        to_record_batch(&EventBatch::from_events("patient-flow", "3", t(ENQ), &events)).unwrap()
    }

    /// Silver as a refine builds it (lineage text as dictionaries) is written as the bytes of the
    /// same rows with plain strings (arrow's own cast makes those), here with two partitions in one
    /// refine, so a partition's id is met again after another's.
    #[test]
    fn the_lineage_dictionaries_are_written_as_the_bytes_of_their_strings() {
        use crate::pipeline::bronze::{EventBatch, RawEvent, to_record_batch};
        let body = r#"{"patient_id":"p","gender":"F","admission_time":"2026-11-24T01:00:00"}"#;
        let in_partition = |p: &str, first: i64| {
            let events: Vec<RawEvent> = (0..6)
                .map(|i| RawEvent {
                    body: Bytes::from(body.replace("\"p\"", &format!("\"p{}\"", first + i))),
                    sequence_number: first + i,
                    offset: None,
                    enqueued_time: t(ENQ),
                    partition_key: None,
                    properties: None,
                })
                .collect();
            to_record_batch(&EventBatch::from_events("patient-flow", p, t(ENQ), &events)).unwrap()
        };
        let r = refine_batches("k", &[in_partition("5", 0), in_partition("3", 10), in_partition("5", 20)]).unwrap();
        assert_eq!(r.silver.num_rows(), 18);
        let plain = crate::model::schema::cast_to(&r.silver, &SILVER);
        let strings = |name: &str| -> Vec<String> {
            plain.column_by_name(name).unwrap().as_string::<i32>().iter().map(|v| v.unwrap().to_string()).collect()
        };
        assert_eq!(strings("partition_id"), [["3"; 6], ["5"; 6], ["5"; 6]].concat(), "sorted by partition");
        assert!(
            strings("bronze_file").iter().all(|f| f == "k") && strings("event_hub").iter().all(|h| h == "patient-flow")
        );
        let encode = |b: RecordBatch| parquet::encode_layout(&SILVER, &[b], &SILVER_LAYOUT).unwrap();
        assert_eq!(encode(r.silver), encode(plain));
    }

    #[test]
    fn visits_without_an_admission_time_are_never_merged_but_resent_visits_are() {
        let no_admission = r#"{"patient_id":"p","department":"ICU","hospital_id":1,"bed_id":2}"#;
        let with = r#"{"patient_id":"p","department":"ICU","hospital_id":1,"admission_time":"2026-11-24T01:00:00"}"#;
        let update = r#"{"patient_id":"p","department":"ICU","hospital_id":1,"admission_time":"2026-11-24T01:00:00","discharge_time":"2026-11-24T05:00:00"}"#;
        let r = refine_batches("k", &[bronze(0, &[no_admission, no_admission, with, update])]).unwrap();
        assert_eq!((r.metrics.rows_out, r.metrics.duplicates_dropped), (3, 1), "{:?}", r.metrics);
        let seqs = r.silver.column_by_name("sequence_number").unwrap().as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(seqs, [0, 1, 3], "both admission-less visits, and the update over its original");
    }

    #[test]
    fn events_other_files_cover_are_counted_as_redelivered() {
        let body = r#"{"patient_id":"p","admission_time":"2026-11-24T01:00:00"}"#;
        let bodies: Vec<String> = (0..10).map(|i| body.replace("\"p\"", &format!("\"p{i}\""))).collect();
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let covered = Covered { partition: "3".into(), ranges: vec![(95, 102), (108, 200)] };
        let r = refine_batches_excluding("k", &[bronze(100, &bodies)], &covered).unwrap();
        assert_eq!((r.metrics.rows_in, r.metrics.rows_out, r.metrics.redelivered), (10, 5, 5));
        assert!(r.metrics.balances());
        let other_partition = Covered { partition: "4".into(), ranges: vec![(0, 1000)] };
        let r = refine_batches_excluding("k", &[bronze(100, &bodies)], &other_partition).unwrap();
        assert_eq!((r.metrics.rows_out, r.metrics.redelivered), (10, 0));
    }

    mod sequence_index {
        use super::*;
        use crate::model::schema::{BRONZE, BRONZE_LAYOUT};
        use crate::storage::StorageConfig;
        use crate::storage::keys::SEQ_BUCKET;

        fn bodies(n: usize) -> Vec<String> {
            (0..n).map(|i| format!(r#"{{"patient_id":"p{i}","admission_time":"2026-11-24T01:00:00"}}"#)).collect()
        }

        fn stem(first: i64, n: usize) -> BatchStem {
            BatchStem { partition: "3".into(), first_seq: first, last_seq: first + n as i64 - 1 }
        }

        /// Refines `n` events from `first` on partition 3, as the blob trigger would.
        async fn refine_file(lake: &Lake, first: i64, n: usize) -> SilverMetrics {
            let b = bodies(n);
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            let file = parquet::encode_layout(&BRONZE, &[bronze(first, &b)], &BRONZE_LAYOUT).unwrap();
            process(lake, &stem(first, n), file).await.unwrap()
        }

        async fn memory() -> Lake {
            Lake::open(&StorageConfig::memory()).await.unwrap()
        }

        #[tokio::test]
        async fn markers_are_written_and_overlaps_found_across_a_bucket_boundary() {
            let lake = memory().await;
            let edge = SEQ_BUCKET - 5;
            assert_eq!(refine_file(&lake, edge, 10).await.redelivered, 0);
            for marker in stem(edge, 10).index_keys() {
                assert!(lake.exists(Container::Silver, &marker).await.unwrap(), "{marker}");
            }
            // Overlaps on either side of the boundary, and one that only touches the next bucket.
            assert_eq!(refine_file(&lake, edge - 3, 5).await.redelivered, 2);
            assert_eq!(refine_file(&lake, SEQ_BUCKET + 2, 10).await.redelivered, 3);
            assert_eq!(refine_file(&lake, SEQ_BUCKET + 12, 10).await.redelivered, 0, "adjacent, not overlapping");
        }

        #[tokio::test]
        async fn a_wide_file_is_found_through_the_meta_folder() {
            let lake = memory().await;
            // One event at each end of a range wider than a bucket: a batch with a gap.
            let b = bodies(2);
            let file = {
                let mut batch = bronze(0, &[b[0].as_str(), b[1].as_str()]);
                let seq = arrow_array::Int64Array::from(vec![10, 10 + 3 * SEQ_BUCKET]);
                let mut columns = batch.columns().to_vec();
                columns[2] = Arc::new(seq);
                batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
                parquet::encode_layout(&BRONZE, &[batch], &BRONZE_LAYOUT).unwrap()
            };
            let wide = BatchStem { partition: "3".into(), first_seq: 10, last_seq: 10 + 3 * SEQ_BUCKET };
            process(&lake, &wide, file).await.unwrap();
            assert!(wide.index_keys()[0].as_ref().contains("/meta/"));
            assert_eq!(refine_file(&lake, 2 * SEQ_BUCKET, 10).await.redelivered, 10, "inside the wide range");
        }

        #[tokio::test]
        async fn a_marker_without_its_silver_file_covers_nothing() {
            let lake = memory().await;
            refine_file(&lake, 0, 10).await;
            // A refine that wrote its markers and died before its silver file.
            for marker in stem(100, 10).index_keys() {
                lake.put_if_absent(Container::Silver, &marker, Bytes::new()).await.unwrap();
            }
            assert_eq!(refine_file(&lake, 105, 10).await.redelivered, 0);
        }

        #[tokio::test]
        async fn a_lake_older_than_the_index_is_indexed_once_then_read_through_the_index() {
            let lake = memory().await;
            // Silver files written before the index existed: no markers, no `complete`.
            let refined = |first: i64| {
                let b = bodies(10);
                let b: Vec<&str> = b.iter().map(String::as_str).collect();
                refine_batches("k", &[bronze(first, &b)]).unwrap().silver
            };
            for first in [0, 10, 20] {
                let file = parquet::encode_layout(&SILVER, &[refined(first)], &SILVER_LAYOUT).unwrap();
                lake.put(Container::Silver, &stem(first, 10).key(), file).await.unwrap();
            }
            assert_eq!(refine_file(&lake, 15, 10).await.redelivered, 10, "found by the one full listing");
            assert!(lake.exists(Container::Silver, &BatchStem::index_complete("3")).await.unwrap());
            for first in [0, 10, 20] {
                assert!(lake.exists(Container::Silver, &stem(first, 10).index_keys()[0]).await.unwrap());
            }
            // From now on the index answers: a silver file put behind its back (no marker) is not
            // listed, which shows the lookup no longer lists the partition's files.
            let file = parquet::encode_layout(&SILVER, &[refined(40)], &SILVER_LAYOUT).unwrap();
            lake.put(Container::Silver, &stem(40, 10).key(), file).await.unwrap();
            assert_eq!(refine_file(&lake, 25, 10).await.redelivered, 5, "20–29 through its marker");
            assert_eq!(refine_file(&lake, 45, 10).await.redelivered, 0, "40–49 has no marker");
        }
    }

    #[test]
    fn details_never_quote_values() {
        let e = refine(br#"{"patient_id":"secret-id","age":"seventy-two"}"#, us(ENQ)).unwrap_err();
        assert!(!e.detail.contains("seventy") && !e.detail.contains("secret"), "{}", e.detail);
        let e = refine(br#"{"patient_id":"secret-id""#, us(ENQ)).unwrap_err();
        assert!(!e.detail.contains("secret"), "{}", e.detail);
    }

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(ok(r#"{"patient_id":"p","bed_id":12.0}"#).bed_id, Some(12));
        assert_eq!(bad(br#"{"patient_id":"p","bed_id":12.5}"#), Reason::WrongType);
    }
}
