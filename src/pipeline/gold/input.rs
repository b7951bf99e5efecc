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

/// The silver columns gold reads (see [`SilverColumns`]); a build decodes only these. The others —
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

/// The silver columns gold reads, looked up once per batch with their types checked.
struct SilverColumns<'a> {
    patient: &'a arrow_array::StringArray,
    gender: &'a arrow_array::StringArray,
    age: &'a arrow_array::Int32Array,
    department: &'a arrow_array::StringArray,
    admission: &'a arrow_array::TimestampMicrosecondArray,
    admission_sent: &'a arrow_array::TimestampMicrosecondArray,
    discharge: &'a arrow_array::TimestampMicrosecondArray,
    bed: &'a arrow_array::Int32Array,
    hospital: &'a arrow_array::Int32Array,
    hub: &'a arrow_array::StringArray,
    partition: &'a arrow_array::StringArray,
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
            gender: opt_str(self.gender, i),
            department: opt_str(self.department, i),
            event_hub: self.hub.value(i),
            partition_id: self.partition.value(i),
            bronze_file: key,
            visit: Visit {
                admission_us: gold_precision(self.admission.value(i)),
                admission_sent_us: opt(self.admission_sent, i),
                discharge_us: opt(self.discharge, i).map(gold_precision),
                enqueued_us: gold_precision(self.enqueued.value(i)),
                sequence_number: self.seq.value(i),
                age: opt(self.age, i),
                bed_id: opt(self.bed, i),
                hospital_id: opt(self.hospital, i),
                ..Visit::EMPTY
            },
        }
    }

    fn of(batch: &'a RecordBatch, key: &str) -> Result<Self> {
        let s = |n| column(batch, key, n, |c| c.as_string_opt::<i32>());
        let i32s = |n| column(batch, key, n, |c| c.as_primitive_opt::<Int32Type>());
        let ts = |n| column(batch, key, n, |c| c.as_primitive_opt::<TimestampMicrosecondType>());
        Ok(Self {
            patient: s("patient_id")?,
            gender: s("gender")?,
            age: i32s("age")?,
            department: s("department")?,
            admission: ts("admission_time")?,
            admission_sent: ts("admission_time_sent")?,
            discharge: ts("discharge_time")?,
            bed: i32s("bed_id")?,
            hospital: i32s("hospital_id")?,
            hub: s("event_hub")?,
            partition: s("partition_id")?,
            seq: column(batch, key, "sequence_number", |c| c.as_primitive_opt::<Int64Type>())?,
            enqueued: ts("enqueued_time")?,
        })
    }
}

fn opt<T: arrow_array::ArrowPrimitiveType>(a: &arrow_array::PrimitiveArray<T>, i: usize) -> Option<T::Native> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn opt_str(a: &arrow_array::StringArray, i: usize) -> Option<&str> {
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
    fn push_keyed(&mut self, r: Record<'_>, (patient_key, fact_id): (i64, i64)) {
        let mut v = r.visit;
        v.patient_key = patient_key;
        v.fact_id = fact_id;
        v.gender = self.dict.opt(Field::Gender, r.gender);
        v.department = self.dict.opt(Field::Department, r.department);
        v.event_hub = self.dict.id(Field::EventHub, r.event_hub);
        v.partition_id = self.dict.id(Field::Partition, r.partition_id);
        v.bronze_file = self.dict.id(Field::BronzeFile, r.bronze_file);
        v.input = self.len;
        self.len += 1;
        // Patient keys are non-negative 63-bit hashes: their top bits spread evenly.
        let bucket = &mut self.buckets[(v.patient_key as u64 >> (63 - BUCKET_BITS)) as usize];
        v.patient_at = bucket.patient_bytes.len() as u32;
        v.patient_len = r.patient_id.len() as u32;
        bucket.patient_bytes.extend_from_slice(r.patient_id.as_bytes());
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
        for batch in &file.batches {
            let c = SilverColumns::of(batch, key)?;
            for i in 0..batch.num_rows() {
                let record = c.record(i, key);
                match keys.next() {
                    Some(&k) => self.push_keyed(record, k),
                    None => self.push(record),
                }
            }
        }
        Ok(())
    }

    /// A record's string field.
    pub fn str(&self, id: u32) -> Option<&str> {
        self.dict.get(id)
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
