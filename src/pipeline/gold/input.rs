//! The gold build's input: every visit record a build works on — new silver rows and the ledger rows
//! of the patients they concern — as fixed-size rows ([`Visit`]) whose strings live once in the
//! table ([`Visits`]): the few distinct genders, departments, hubs, partitions and file names in a
//! dictionary, patient ids in byte arenas. Records are filed on arrival into buckets by their
//! patient key's top bits, so a patient's records share a bucket, buckets are in key order, and a
//! build sorts and walks each small bucket in cache instead of gathering from a million rows at
//! random (which costs a cache and TLB miss per row).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use rustc_hash::FxHashMap;

use super::keys;
use crate::model::schema::gold_precision;
use crate::pipeline::{Error, Result};

/// "No value" in a [`Dict`] id column.
pub const NONE: u32 = u32::MAX;

/// The distinct short strings of a build (genders, departments, hubs, partitions, file names), each
/// stored once and named by a `u32` id.
#[derive(Debug, Default)]
pub struct Dict {
    ids: FxHashMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
    /// The last id of each [`Field`].
    last: [Option<u32>; Field::COUNT],
}

/// The record fields a [`Dict`] holds, each with its own last value.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// Gender.
    Gender,
    /// Department.
    Department,
    /// Event hub.
    EventHub,
    /// Partition.
    Partition,
    /// Bronze file.
    BronzeFile,
}

impl Field {
    const COUNT: usize = 5;
}

impl Dict {
    /// The id of `s` (a value of `field`), adding it if new. Consecutive rows mostly repeat a
    /// field's value (one file, one partition), so the field's previous id is tried before hashing.
    pub fn id(&mut self, field: Field, s: &str) -> u32 {
        if let Some(l) = self.last[field as usize]
            && &*self.values[l as usize] == s
        {
            return l;
        }
        let id = match self.ids.get(s) {
            Some(&id) => id,
            None => {
                let id = self.values.len() as u32;
                let value: Arc<str> = Arc::from(s);
                self.values.push(Arc::clone(&value));
                self.ids.insert(value, id);
                id
            }
        };
        self.last[field as usize] = Some(id);
        id
    }

    /// The id of a nullable value ([`NONE`] for null).
    pub fn opt(&mut self, field: Field, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.id(field, s))
    }

    /// The string of an id (`None` for [`NONE`]).
    pub fn get(&self, id: u32) -> Option<&str> {
        self.values.get(id as usize).map(|s| &**s)
    }

    /// The shared string of an id.
    pub fn arc(&self, id: u32) -> Option<&Arc<str>> {
        self.values.get(id as usize)
    }

    /// Each id's rank in string order, so rows compare by string without touching the strings.
    pub fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.values[a as usize].cmp(&self.values[b as usize]));
        let mut ranks = vec![0; order.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        ranks
    }
}

/// One visit record: a silver row, or a ledger row (a visit's winning event so far).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Visit {
    /// [`keys::patient_key`] of the patient id.
    pub patient_key: i64,
    /// The FactPatientFlow row the record belongs to (see [`keys::fact_id`]).
    pub fact_id: i64,
    /// Admission time (imputed when missing or future), µs floored to gold's milliseconds.
    pub admission_us: i64,
    /// Admission time as sent, µs (part of the visit's natural key: kept at full precision).
    pub admission_sent_us: Option<i64>,
    /// Discharge time, µs floored to gold's milliseconds.
    pub discharge_us: Option<i64>,
    /// Enqueued time, µs floored to gold's milliseconds.
    pub enqueued_us: i64,
    /// Sequence number.
    pub sequence_number: i64,
    /// Age (capped).
    pub age: Option<i32>,
    /// Bed id.
    pub bed_id: Option<i32>,
    /// Hospital id.
    pub hospital_id: Option<i32>,
    /// Where the patient id starts in its bucket's arena.
    pub patient_at: u32,
    /// The patient id's length in bytes.
    pub patient_len: u32,
    /// Arrival order among the build's records (the first copy of an event wins a tie).
    pub input: u32,
    /// Gender ([`Dict`] id).
    pub gender: u32,
    /// Department ([`Dict`] id).
    pub department: u32,
    /// Event hub ([`Dict`] id).
    pub event_hub: u32,
    /// Event Hubs partition ([`Dict`] id).
    pub partition_id: u32,
    /// Bronze file ([`Dict`] id).
    pub bronze_file: u32,
    /// From the ledger (the winner so far), not from new silver.
    pub known: bool,
}

/// Which of two events for the same visit wins: the later enqueued one (then partition, sequence
/// number and event hub), so the result does not depend on the order files are folded in. Unique
/// per event: equal keys mean the same event delivered twice.
pub type OrderKey = (i64, u32, i64, u32);

/// How many buckets records are filed into (by the top bits of the patient key).
const BUCKET_BITS: u32 = 10;

/// The records of the patients whose key starts with one bucket's bits.
#[derive(Debug, Default)]
pub struct Bucket {
    /// The records.
    pub rows: Vec<Visit>,
    patient_bytes: Vec<u8>,
}

impl Bucket {
    /// The patient id of a record of this bucket.
    pub fn patient_id(&self, v: &Visit) -> &str {
        let (at, len) = (v.patient_at as usize, v.patient_len as usize);
        // The arena holds whole `&str`s back to back, so every slot is valid UTF-8.
        self.patient_bytes.get(at..at + len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    /// Sorts the bucket's records by (patient key, fact id, arrival): a patient's records, then
    /// a visit's, become neighbours.
    pub fn sort(&mut self) {
        self.rows.sort_unstable_by_key(|v| (v.patient_key, v.fact_id, v.input));
    }
}

/// The visit records of a build, with their strings.
#[derive(Debug)]
pub struct Visits {
    /// The records, by patient key.
    pub buckets: Vec<Bucket>,
    /// Short strings.
    pub dict: Dict,
    ranks: Vec<u32>,
    len: u32,
    department_sks: std::sync::Mutex<FxHashMap<(u32, i32), i64>>,
}

impl Default for Visits {
    fn default() -> Self {
        Self {
            buckets: (0..1 << BUCKET_BITS).map(|_| Bucket::default()).collect(),
            dict: Dict::default(),
            ranks: Vec::new(),
            len: 0,
            department_sks: Default::default(),
        }
    }
}

/// The silver columns gold reads (see `SilverColumns`); a build decodes only these. The others —
/// quality flags, and the bronze file's name repeated on every row (74 bytes), which was the
/// largest column decoded — gold does not use.
pub const SILVER_COLUMNS: [&str; 13] = [
    "patient_id",
    "gender",
    "age",
    "department",
    "admission_time",
    "admission_time_sent",
    "discharge_time",
    "bed_id",
    "hospital_id",
    "event_hub",
    "partition_id",
    "sequence_number",
    "enqueued_time",
];

/// Silver as a build reads it: its schema with the few-valued text columns (gender, department,
/// event hub, partition) as dictionaries, which silver's files store them as: a build interns each
/// distinct value of a batch once, not every row's (see [`Visits::add_silver_file`]).
pub static SILVER_AS_READ: std::sync::LazyLock<arrow_schema::SchemaRef> = std::sync::LazyLock::new(|| {
    let silver = &crate::model::schema::SILVER;
    crate::model::schema::with_text_dictionaries(silver, &["gender", "department", "event_hub", "partition_id"])
});

/// A text column of silver: plain, or dictionary-encoded (see [`SILVER_AS_READ`]).
#[derive(Clone, Copy)]
enum Text<'a> {
    Plain(&'a arrow_array::StringArray),
    Dictionary(&'a arrow_array::Int32Array, &'a arrow_array::StringArray),
}

impl<'a> Text<'a> {
    fn of(batch: &'a RecordBatch, key: &str, name: &str) -> Result<Self> {
        let col = column(batch, key, name, Some)?;
        let text = match col.as_dictionary_opt::<Int32Type>() {
            Some(d) => d.values().as_string_opt::<i32>().map(|values| Text::Dictionary(d.keys(), values)),
            None => col.as_string_opt::<i32>().map(Text::Plain),
        };
        text.ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            detail: format!("`{name}` is {}, not the type gold writes", col.data_type()),
        })
    }

    /// Row `i`'s value.
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Text::Plain(a) => (!a.is_null(i)).then(|| a.value(i)),
            // Arrow checks a dictionary's keys when it builds the array; the bound only keeps a
            // corrupt one from panicking.
            Text::Dictionary(keys, values) => {
                let k = keys.value(i) as usize;
                (keys.is_valid(i) && k < values.len()).then(|| values.value(k))
            }
        }
    }
}

/// A text column of a batch with its dictionary's values interned (see [`Visits::add_silver_file`]).
struct Interned<'a> {
    text: Text<'a>,
    field: Field,
    /// Each dictionary value's id in the build's [`Dict`] (empty for a plain column).
    ids: Vec<u32>,
}

impl<'a> Interned<'a> {
    fn new(text: Text<'a>, field: Field, dict: &mut Dict) -> Self {
        let ids = match text {
            Text::Plain(_) => Vec::new(),
            Text::Dictionary(_, values) => values.iter().map(|v| dict.opt(field, v)).collect(),
        };
        Self { text, field, ids }
    }

    /// Row `i`'s id in `dict` ([`NONE`] for null).
    fn id(&self, i: usize, dict: &mut Dict) -> u32 {
        match self.text {
            Text::Plain(_) => dict.opt(self.field, self.text.get(i)),
            Text::Dictionary(keys, _) if keys.is_null(i) => NONE,
            Text::Dictionary(keys, _) => self.ids.get(keys.value(i) as usize).copied().unwrap_or(NONE),
        }
    }
}

/// The silver columns gold reads, looked up once per batch with their types checked.
struct SilverColumns<'a> {
    patient: &'a arrow_array::StringArray,
    gender: Text<'a>,
    age: &'a arrow_array::Int32Array,
    department: Text<'a>,
    admission: &'a arrow_array::TimestampMicrosecondArray,
    admission_sent: &'a arrow_array::TimestampMicrosecondArray,
    discharge: &'a arrow_array::TimestampMicrosecondArray,
    bed: &'a arrow_array::Int32Array,
    hospital: &'a arrow_array::Int32Array,
    hub: Text<'a>,
    partition: Text<'a>,
    seq: &'a arrow_array::Int64Array,
    enqueued: &'a arrow_array::TimestampMicrosecondArray,
}

/// A column of `batch` by name, of the expected type, or [`Error::Corrupt`] naming the file.
pub fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    key: &str,
    name: &str,
    cast: impl FnOnce(&'a ArrayRef) -> Option<&'a T>,
) -> Result<&'a T> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Corrupt { key: key.to_string(), detail: format!("no `{name}` column") })?;
    cast(col).ok_or_else(|| Error::Corrupt {
        key: key.to_string(),
        detail: format!("`{name}` is {}, not the type gold writes", col.data_type()),
    })
}

impl<'a> SilverColumns<'a> {
    /// Row `i` as a record of the silver file `key`.
    fn record(&self, i: usize, key: &'a str) -> Record<'a> {
        Record {
            patient_id: self.patient.value(i),
            gender: self.gender.get(i),
            department: self.department.get(i),
            event_hub: self.hub.get(i).unwrap_or_default(),
            partition_id: self.partition.get(i).unwrap_or_default(),
            bronze_file: key,
            visit: self.numbers(i),
        }
    }

    /// Row `i`'s numbers, its text fields left empty (see [`Visits::add_silver_file`]).
    fn numbers(&self, i: usize) -> Visit {
        Visit {
            admission_us: gold_precision(self.admission.value(i)),
            admission_sent_us: opt(self.admission_sent, i),
            discharge_us: opt(self.discharge, i).map(gold_precision),
            enqueued_us: gold_precision(self.enqueued.value(i)),
            sequence_number: self.seq.value(i),
            age: opt(self.age, i),
            bed_id: opt(self.bed, i),
            hospital_id: opt(self.hospital, i),
            ..Visit::EMPTY
        }
    }

    fn of(batch: &'a RecordBatch, key: &str) -> Result<Self> {
        let s = |n| column(batch, key, n, |c| c.as_string_opt::<i32>());
        let i32s = |n| column(batch, key, n, |c| c.as_primitive_opt::<Int32Type>());
        let ts = |n| column(batch, key, n, |c| c.as_primitive_opt::<TimestampMicrosecondType>());
        Ok(Self {
            patient: s("patient_id")?,
            gender: Text::of(batch, key, "gender")?,
            age: i32s("age")?,
            department: Text::of(batch, key, "department")?,
            admission: ts("admission_time")?,
            admission_sent: ts("admission_time_sent")?,
            discharge: ts("discharge_time")?,
            bed: i32s("bed_id")?,
            hospital: i32s("hospital_id")?,
            hub: Text::of(batch, key, "event_hub")?,
            partition: Text::of(batch, key, "partition_id")?,
            seq: column(batch, key, "sequence_number", |c| c.as_primitive_opt::<Int64Type>())?,
            enqueued: ts("enqueued_time")?,
        })
    }
}

fn opt<T: arrow_array::ArrowPrimitiveType>(a: &arrow_array::PrimitiveArray<T>, i: usize) -> Option<T::Native> {
    (!a.is_null(i)).then(|| a.value(i))
}

/// The fields of a record as strings and numbers, before they are stored.
pub struct Record<'a> {
    /// Patient id.
    pub patient_id: &'a str,
    /// Gender.
    pub gender: Option<&'a str>,
    /// Department.
    pub department: Option<&'a str>,
    /// Event hub.
    pub event_hub: &'a str,
    /// Partition.
    pub partition_id: &'a str,
    /// Bronze file.
    pub bronze_file: &'a str,
    /// The numbers (strings ids and patient slot are filled in by [`Visits::push`]).
    pub visit: Visit,
}

/// A record's (patient key, fact id).
fn record_keys(r: &Record<'_>) -> (i64, i64) {
    let v = &r.visit;
    let fact_id = match v.admission_sent_us {
        Some(sent) => keys::fact_id(
            r.patient_id,
            r.department.unwrap_or(keys::UNKNOWN_DEPARTMENT),
            v.hospital_id.unwrap_or(keys::UNKNOWN_HOSPITAL),
            Some(sent),
        ),
        None => keys::fact_id_at_position(r.event_hub, r.partition_id, v.sequence_number),
    };
    (keys::patient_key(r.patient_id), fact_id)
}

/// A decoded silver file with each row's (patient key, fact id), hashed where it was decoded (a
/// blocking thread) rather than on the build's own thread.
pub struct SilverFile {
    /// The file's rows.
    batches: Vec<RecordBatch>,
    /// Each row's keys, in order; `None` if the columns are not as gold writes them (then
    /// [`Visits::add_silver_file`] reports what is wrong).
    keys: Option<Vec<(i64, i64)>>,
}

impl SilverFile {
    /// `batches` of the silver file `key`, with their rows' keys.
    pub fn new(key: &str, batches: Vec<RecordBatch>) -> Self {
        let keys = || -> Result<Vec<(i64, i64)>> {
            let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
            for batch in &batches {
                let c = SilverColumns::of(batch, key)?;
                out.extend((0..batch.num_rows()).map(|i| record_keys(&c.record(i, key))));
            }
            Ok(out)
        };
        let keys = keys().ok();
        Self { batches, keys }
    }
}

impl Visits {
    /// Adds a record; computes its patient key and fact id.
    pub fn push(&mut self, r: Record<'_>) {
        let keys = record_keys(&r);
        self.push_keyed(r, keys);
    }

    /// [`Visits::push`] of a record whose (patient key, fact id) are known.
    fn push_keyed(&mut self, r: Record<'_>, keys: (i64, i64)) {
        let mut v = r.visit;
        v.gender = self.dict.opt(Field::Gender, r.gender);
        v.department = self.dict.opt(Field::Department, r.department);
        v.event_hub = self.dict.id(Field::EventHub, r.event_hub);
        v.partition_id = self.dict.id(Field::Partition, r.partition_id);
        v.bronze_file = self.dict.id(Field::BronzeFile, r.bronze_file);
        self.push_interned(v, r.patient_id, keys);
    }

    /// [`Visits::push_keyed`] of a record whose strings are interned (`v`'s ids are set).
    fn push_interned(&mut self, mut v: Visit, patient_id: &str, (patient_key, fact_id): (i64, i64)) {
        v.patient_key = patient_key;
        v.fact_id = fact_id;
        v.input = self.len;
        self.len += 1;
        // Patient keys are non-negative 63-bit hashes: their top bits spread evenly.
        let bucket = &mut self.buckets[(v.patient_key as u64 >> (63 - BUCKET_BITS)) as usize];
        v.patient_at = bucket.patient_bytes.len() as u32;
        v.patient_len = patient_id.len() as u32;
        bucket.patient_bytes.extend_from_slice(patient_id.as_bytes());
        bucket.rows.push(v);
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every record, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Visit> {
        self.buckets.iter().flat_map(|b| &b.rows)
    }

    /// Adds the rows of a silver file, with the keys computed when it was decoded (a row without
    /// them, which cannot happen as both walk the same batches, is hashed here). Fails on the first
    /// batch whose columns are not as silver writes them.
    pub fn add_silver_file(&mut self, key: &str, file: &SilverFile) -> Result<()> {
        let mut keys = file.keys.iter().flatten();
        let bronze_file = self.dict.id(Field::BronzeFile, key);
        for batch in &file.batches {
            let c = SilverColumns::of(batch, key)?;
            // Each distinct value of the batch's text columns interned once.
            let texts = [
                (c.gender, Field::Gender),
                (c.department, Field::Department),
                (c.hub, Field::EventHub),
                (c.partition, Field::Partition),
            ]
            .map(|(text, field)| Interned::new(text, field, &mut self.dict));
            // The text fields go in as the ids of their interned values, never as strings.
            for i in 0..batch.num_rows() {
                let k = keys.next().copied().unwrap_or_else(|| record_keys(&c.record(i, key)));
                let [gender, department, event_hub, partition_id] = texts.each_ref().map(|t| t.id(i, &mut self.dict));
                let visit = Visit { gender, department, event_hub, partition_id, bronze_file, ..c.numbers(i) };
                self.push_interned(visit, c.patient.value(i), k);
            }
        }
        Ok(())
    }

    /// A record's string field.
    pub fn str(&self, id: u32) -> Option<&str> {
        self.dict.get(id)
    }

    /// Every string of the dictionary, at its id, followed by `extra`: the values of a dictionary
    /// array whose keys are the records' ids.
    pub fn text_values<'a>(&'a self, extra: impl IntoIterator<Item = &'a str>) -> arrow_array::StringArray {
        arrow_array::StringArray::from_iter_values(self.dict.values.iter().map(|s| &**s).chain(extra))
    }

    /// Ranks the dictionary so [`Visits::order_key`] works; call after the last record is added.
    pub fn rank(&mut self) {
        self.ranks = self.dict.ranks();
    }

    /// The record's [`OrderKey`] (after [`Visits::rank`]).
    pub fn order_key(&self, v: &Visit) -> OrderKey {
        (v.enqueued_us, self.ranks[v.partition_id as usize], v.sequence_number, self.ranks[v.event_hub as usize])
    }

    /// [`keys::department_sk`] of a department (by its dictionary id and name) and hospital,
    /// hashed once per distinct pair.
    pub fn department_sk(&self, id: u32, hospital: i32, department: &str) -> i64 {
        let mut cache = self.department_sks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache.entry((id, hospital)).or_insert_with(|| keys::department_sk(department, hospital))
    }

    /// The department and hospital a visit is filed under (unknown members for nulls).
    pub fn department_of(&self, v: &Visit) -> (&str, i32) {
        (self.str(v.department).unwrap_or(keys::UNKNOWN_DEPARTMENT), v.hospital_id.unwrap_or(keys::UNKNOWN_HOSPITAL))
    }
}

impl Visit {
    /// A record with every field empty (for struct update syntax).
    pub const EMPTY: Visit = Visit {
        patient_key: 0,
        fact_id: 0,
        admission_us: 0,
        admission_sent_us: None,
        discharge_us: None,
        enqueued_us: 0,
        sequence_number: 0,
        age: None,
        bed_id: None,
        hospital_id: None,
        patient_at: 0,
        patient_len: 0,
        input: 0,
        gender: NONE,
        department: NONE,
        event_hub: NONE,
        partition_id: NONE,
        bronze_file: NONE,
        known: false,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::{SILVER, SILVER_LAYOUT};
    use crate::model::time::parse_utc;
    use crate::pipeline::bronze::{EventBatch, RawEvent, to_record_batch};
    use crate::storage::parquet;

    /// Every record of `visits` with its strings, in key order.
    fn records(visits: &Visits) -> Vec<(Visit, [Option<String>; 5], String)> {
        let text = |id: u32| visits.str(id).map(str::to_string);
        let mut out = Vec::new();
        for bucket in &visits.buckets {
            for v in &bucket.rows {
                let strings =
                    [text(v.gender), text(v.department), text(v.event_hub), text(v.partition_id), text(v.bronze_file)];
                let ids = Visit { gender: 0, department: 0, event_hub: 0, partition_id: 0, bronze_file: 0, ..*v };
                out.push((ids, strings, bucket.patient_id(v).to_string()));
            }
        }
        out
    }

    /// A silver file read with its text columns as dictionaries (as a build reads it) gives the
    /// records it gives read as plain strings (as a file of another layout is read): silver's own
    /// refine writes the file, from events with repeated, distinct and missing genders and departments.
    #[test]
    fn silver_read_as_dictionaries_gives_the_records_of_its_plain_strings() {
        let t = parse_utc("2026-11-24T12:00:00").unwrap();
        let genders = ["\"Male\"", "\"Female\"", "null", "\"Female\""];
        let departments = ["\"Oncology\"", "\"Surgery\"", "\"Emergency\"", "null", "\"Surgery\""];
        let events: Vec<RawEvent> = (0..40)
            .map(|i| RawEvent {
                body: bytes::Bytes::from(format!(
                    r#"{{"patient_id":"p{}","gender":{},"age":{},"department":{},"admission_time":"2026-11-2{}T0{}:{:02}:00","bed_id":{},"hospital_id":{}}}"#,
                    i % 17,
                    genders[i % 4],
                    20 + i,
                    departments[i % 5],
                    i % 3,
                    i % 9,
                    i,
                    1 + i,
                    1 + i % 3
                )),
                sequence_number: 1000 + i as i64,
                offset: None,
                enqueued_time: t,
                partition_key: None,
                properties: None,
            })
            .collect();
        let key = "patient-flow/partition=2/00000000000000001000-00000000000000001039.parquet";
        let bronze = to_record_batch(&EventBatch::from_events("patient-flow", "2", t, &events)).unwrap();
        let refined = crate::pipeline::silver::refine_batches(key, &[bronze]).unwrap();
        assert_eq!(refined.silver.num_rows(), 40);
        let bytes = parquet::encode_layout(&SILVER, &[refined.silver], &SILVER_LAYOUT).unwrap();

        let as_read = parquet::decode_columns_as(bytes.clone(), &SILVER_COLUMNS, &SILVER_AS_READ).unwrap();
        let gender = as_read[0].column_by_name("gender").unwrap();
        assert!(matches!(gender.data_type(), arrow_schema::DataType::Dictionary(..)), "{}", gender.data_type());
        let (_, plain) = parquet::decode_columns(bytes, &SILVER_COLUMNS).unwrap();
        assert_eq!(*plain[0].column_by_name("gender").unwrap().data_type(), arrow_schema::DataType::Utf8);

        let mut dictionaries = Visits::default();
        dictionaries.add_silver_file(key, &SilverFile::new(key, as_read)).unwrap();
        let mut strings = Visits::default();
        strings.add_silver_file(key, &SilverFile::new(key, plain)).unwrap();
        let (a, b) = (records(&dictionaries), records(&strings));
        assert_eq!(a.len(), 40);
        assert!(a.iter().any(|(_, s, _)| s[0].is_none()) && a.iter().any(|(_, s, _)| s[1].is_none()), "nulls are read");
        assert_eq!(a, b);
    }
}
