//! The gold build's input: every visit record a build works on — new silver rows and the ledger rows
//! of the patients they concern — in one table of fixed-size rows ([`Visit`]) whose strings live
//! once in the table ([`Visits`]): patient ids in one byte arena, the few distinct genders,
//! departments, hubs, partitions and file names in a dictionary. Sorting and grouping a million
//! visits then moves small plain rows, never strings, and needs no allocation per row.

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
    last: Option<u32>,
}

impl Dict {
    /// The id of `s`, adding it if new. Consecutive rows mostly repeat a value (one file, one
    /// partition), so the previous id is tried before hashing.
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(l) = self.last
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
        self.last = Some(id);
        id
    }

    /// The id of a nullable value ([`NONE`] for null).
    pub fn opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.id(s))
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
    /// The patient id's slot in [`Visits`].
    pub patient: u32,
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

/// The visit records of a build, with their strings.
#[derive(Debug, Default)]
pub struct Visits {
    /// The records.
    pub rows: Vec<Visit>,
    patient_bytes: Vec<u8>,
    patient_ends: Vec<u32>,
    /// Short strings.
    pub dict: Dict,
    ranks: Vec<u32>,
}

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

impl Visits {
    /// Adds a record; computes its patient key and fact id.
    pub fn push(&mut self, r: Record<'_>) {
        let mut v = r.visit;
        v.patient_key = keys::patient_key(r.patient_id);
        v.fact_id = match v.admission_sent_us {
            Some(sent) => keys::fact_id(
                r.patient_id,
                r.department.unwrap_or(keys::UNKNOWN_DEPARTMENT),
                v.hospital_id.unwrap_or(keys::UNKNOWN_HOSPITAL),
                Some(sent),
            ),
            None => keys::fact_id_at_position(r.event_hub, r.partition_id, v.sequence_number),
        };
        self.patient_bytes.extend_from_slice(r.patient_id.as_bytes());
        self.patient_ends.push(self.patient_bytes.len() as u32);
        v.patient = self.patient_ends.len() as u32 - 1;
        v.gender = self.dict.opt(r.gender);
        v.department = self.dict.opt(r.department);
        v.event_hub = self.dict.id(r.event_hub);
        v.partition_id = self.dict.id(r.partition_id);
        v.bronze_file = self.dict.id(r.bronze_file);
        self.rows.push(v);
    }

    /// Adds the rows of a silver file.
    pub fn add_silver(&mut self, key: &str, batches: &[RecordBatch]) -> Result<()> {
        for batch in batches {
            let c = SilverColumns::of(batch, key)?;
            self.rows.reserve(batch.num_rows());
            for i in 0..batch.num_rows() {
                self.push(Record {
                    patient_id: c.patient.value(i),
                    gender: opt_str(c.gender, i),
                    department: opt_str(c.department, i),
                    event_hub: c.hub.value(i),
                    partition_id: c.partition.value(i),
                    bronze_file: key,
                    visit: Visit {
                        admission_us: gold_precision(c.admission.value(i)),
                        admission_sent_us: opt(c.admission_sent, i),
                        discharge_us: opt(c.discharge, i).map(gold_precision),
                        enqueued_us: gold_precision(c.enqueued.value(i)),
                        sequence_number: c.seq.value(i),
                        age: opt(c.age, i),
                        bed_id: opt(c.bed, i),
                        hospital_id: opt(c.hospital, i),
                        ..Visit::EMPTY
                    },
                });
            }
        }
        Ok(())
    }

    /// The patient id of a record.
    pub fn patient_id(&self, v: &Visit) -> &str {
        let end = self.patient_ends[v.patient as usize] as usize;
        let start = if v.patient == 0 { 0 } else { self.patient_ends[v.patient as usize - 1] as usize };
        // The arena holds whole `&str`s back to back, so every slot is valid UTF-8.
        std::str::from_utf8(&self.patient_bytes[start..end]).unwrap_or_default()
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

    /// The department and hospital a visit is filed under (unknown members for nulls).
    pub fn department_of(&self, v: &Visit) -> (&str, i32) {
        (
            self.str(v.department).unwrap_or(keys::UNKNOWN_DEPARTMENT),
            v.hospital_id.unwrap_or(keys::UNKNOWN_HOSPITAL),
        )
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
        patient: 0,
        gender: NONE,
        department: NONE,
        event_hub: NONE,
        partition_id: NONE,
        bronze_file: NONE,
        known: false,
    };
}
