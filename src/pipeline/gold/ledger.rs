//! The visit ledger: gold's own record of every visit's winning event (the latest by
//! [`OrderKey`](super::input::OrderKey)). It is what makes gold a function of the set of events: a
//! build merges new events into the ledger rows of the patients it sees and recomputes those
//! patients' SCD2 versions and facts from them, without reading other patients' history.
//!
//! The ledger is a list of **segments**, oldest first. Each build that changes patients appends one
//! segment holding the whole visit set of each patient it changed, sorted by
//! [`keys::patient_key`](super::keys::patient_key). A patient's visits are those of the newest
//! segment that holds the patient (older segments may keep stale copies until compaction drops
//! them). Next to each segment, a sidecar file lists its
//! distinct patient keys, sorted: a build finds the patients it must read by merging its own sorted
//! keys with each sidecar (8 bytes per patient, the one part of a build that reads all of history),
//! then decodes only the segments that hold some of them.
//!
//! Internal to gold (loaders never read it); timestamps are plain µs integers.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{ArrayBuilder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, DictionaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::input::{NONE, Record, Visit, Visits, column};
use crate::model::schema::with_text_dictionaries;
use crate::pipeline::Result;
use crate::storage::parquet::{Codec, Layout};

/// Segments with fewer records than this are small: [`MAX_SMALL_SEGMENTS`] small segments in a
/// row at the end of the list are merged into one by the next build.
pub const SMALL_SEGMENT_ROWS: usize = 64 * 1024;

/// See [`SMALL_SEGMENT_ROWS`].
pub const MAX_SMALL_SEGMENTS: usize = 8;

/// The ledger's schema.
pub static LEDGER: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("patient_key", DataType::Int64, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
        Field::new("department", DataType::Utf8, true),
        Field::new("hospital_id", DataType::Int32, true),
        Field::new("bed_id", DataType::Int32, true),
        Field::new("admission_us", DataType::Int64, false),
        Field::new("admission_sent_us", DataType::Int64, true),
        Field::new("discharge_us", DataType::Int64, true),
        Field::new("event_hub", DataType::Utf8, false),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Int64, false),
        Field::new("enqueued_us", DataType::Int64, false),
        Field::new("bronze_file", DataType::Utf8, false),
    ]))
});

/// The ledger as a build writes it from memory: [`LEDGER`] with its text columns as dictionaries
/// of the build's strings, so a record appends five ids instead of copying five strings (a lake
/// path among them). Segments are still written under [`LEDGER`]: parquet's writer takes a
/// dictionary column value by value, so a file's bytes are those of its plain strings (tested).
static LEDGER_IN_MEMORY: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_text_dictionaries(&LEDGER, &["gender", "department", "event_hub", "partition_id", "bronze_file"])
});

/// The schema of a segment's key sidecar.
pub static KEYS: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(vec![Field::new("patient_key", DataType::Int64, false)])));

/// How ledger segments are written. The ledger is gold's own state: a build decodes the segments
/// its key sidecars name, whole, and no reader prunes them, so no statistics. Keys and ids are
/// distinct (PLAIN); ids, keys and the small-domain attributes stay uncompressed, as in the fact
/// files ([`FACT_PATIENT_FLOW_LAYOUT`](crate::model::schema::FACT_PATIENT_FLOW_LAYOUT)). Times and
/// sequence numbers are DELTA_BINARY_PACKED, uncompressed: rows are in key order, so the values are
/// spread over the segment's window, and packing each block of deltas in the bits its spread needs
/// (about 40 of 64 for a few days in µs, 20 for sequence numbers) stores them smaller than Snappy
/// did (0.60–0.89 of PLAIN on a 1M build) for a fraction of its CPU. Only gold reads segments. The
/// event hub and partition (the few a build folds: dictionary indices of a bit or two) and the
/// bronze file (dictionary indices) are left uncompressed too: Snappy kept 0.96–1.09 of them.
pub const LEDGER_LAYOUT: Layout = Layout {
    statistics: false,
    plain: &["patient_key", "patient_id"],
    delta: &["admission_us", "admission_sent_us", "discharge_us", "sequence_number", "enqueued_us"],
    uncompressed: &[
        "patient_key",
        "patient_id",
        "gender",
        "age",
        "department",
        "hospital_id",
        "bed_id",
        "admission_us",
        "admission_sent_us",
        "discharge_us",
        "event_hub",
        "partition_id",
        "sequence_number",
        "enqueued_us",
        "bronze_file",
    ],
    ..Layout::uniform(Codec::Fast)
};

/// How key sidecars are written: distinct keys, read whole, only by gold (see [`LEDGER_LAYOUT`]).
pub const KEYS_LAYOUT: Layout = Layout {
    statistics: false,
    plain: &["patient_key"],
    uncompressed: &["patient_key"],
    ..Layout::uniform(Codec::Fast)
};

/// The key sidecar of a segment file (`…/seg.parquet` → `…/seg.keys.parquet`).
pub fn keys_file(segment: &str) -> String {
    match segment.strip_suffix(".parquet") {
        Some(stem) => format!("{stem}.keys.parquet"),
        None => format!("{segment}.keys"),
    }
}

/// Builds a segment's columns record by record.
pub struct SegmentBuilder {
    key: Int64Builder,
    patient: StringBuilder,
    gender: Int32Builder,
    age: Int32Builder,
    department: Int32Builder,
    hospital: Int32Builder,
    bed: Int32Builder,
    admission: Int64Builder,
    admission_sent: Int64Builder,
    discharge: Int64Builder,
    hub: Int32Builder,
    partition: Int32Builder,
    seq: Int64Builder,
    enqueued: Int64Builder,
    file: Int32Builder,
    keys: Vec<i64>,
    /// The text columns' values: the build's dictionary and then the empty string (see
    /// [`Visits::text_values`]), which the text columns index instead of copying their strings.
    text: ArrayRef,
}

impl SegmentBuilder {
    /// A builder with room for about `n` records of `visits`, whose records must all have been
    /// added (its text values are taken now).
    pub fn with_capacity(n: usize, visits: &Visits) -> Self {
        Self {
            key: Int64Builder::with_capacity(n),
            patient: StringBuilder::with_capacity(n, n * 36),
            gender: Int32Builder::with_capacity(n),
            age: Int32Builder::with_capacity(n),
            department: Int32Builder::with_capacity(n),
            hospital: Int32Builder::with_capacity(n),
            bed: Int32Builder::with_capacity(n),
            admission: Int64Builder::with_capacity(n),
            admission_sent: Int64Builder::with_capacity(n),
            discharge: Int64Builder::with_capacity(n),
            hub: Int32Builder::with_capacity(n),
            partition: Int32Builder::with_capacity(n),
            seq: Int64Builder::with_capacity(n),
            enqueued: Int64Builder::with_capacity(n),
            file: Int32Builder::with_capacity(n),
            keys: Vec::new(),
            text: Arc::new(visits.text_values([""])),
        }
    }

    /// Appends a record of the builder's [`Visits`]; records must come in patient key order.
    pub fn append(&mut self, patient_id: &str, v: &Visit) {
        if self.keys.last() != Some(&v.patient_key) {
            self.keys.push(v.patient_key);
        }
        // A text column holds the record's dictionary id: null stays null where the column may be
        // null, and is the empty string where it may not (what the strings were written as).
        let nullable = |id: u32| (id != NONE).then_some(id as i32);
        let empty = self.text.len() as i32 - 1;
        let text = |id: u32| if id == NONE { empty } else { id as i32 };
        self.key.append_value(v.patient_key);
        self.patient.append_value(patient_id);
        self.gender.append_option(nullable(v.gender));
        self.age.append_option(v.age);
        self.department.append_option(nullable(v.department));
        self.hospital.append_option(v.hospital_id);
        self.bed.append_option(v.bed_id);
        self.admission.append_value(v.admission_us);
        self.admission_sent.append_option(v.admission_sent_us);
        self.discharge.append_option(v.discharge_us);
        self.hub.append_value(text(v.event_hub));
        self.partition.append_value(text(v.partition_id));
        self.seq.append_value(v.sequence_number);
        self.enqueued.append_value(v.enqueued_us);
        self.file.append_value(text(v.bronze_file));
    }

    /// Records appended and not yet taken by [`take_rows`](Self::take_rows).
    pub fn len(&self) -> usize {
        self.key.len()
    }

    /// Whether no record waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct patients appended so far (taken or not).
    pub fn patients(&self) -> usize {
        self.keys.len()
    }

    /// The records appended since the last take, as a batch of the segment; the builder goes on
    /// empty, so a segment can be written in chunks while it is built.
    pub fn take_rows(&mut self) -> Result<RecordBatch> {
        let text = |keys: &mut Int32Builder| -> Result<ArrayRef> {
            Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(keys.finish(), Arc::clone(&self.text))?))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.patient.finish()),
            text(&mut self.gender)?,
            Arc::new(self.age.finish()),
            text(&mut self.department)?,
            Arc::new(self.hospital.finish()),
            Arc::new(self.bed.finish()),
            Arc::new(self.admission.finish()),
            Arc::new(self.admission_sent.finish()),
            Arc::new(self.discharge.finish()),
            text(&mut self.hub)?,
            text(&mut self.partition)?,
            Arc::new(self.seq.finish()),
            Arc::new(self.enqueued.finish()),
            text(&mut self.file)?,
        ];
        Ok(RecordBatch::try_new(Arc::clone(&LEDGER_IN_MEMORY), cols)?)
    }

    /// The segment's key sidecar: every patient appended, in order.
    pub fn finish_keys(self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(Arc::clone(&KEYS), vec![Arc::new(Int64Array::from(self.keys))])?)
    }
}

/// Decodes a key sidecar.
pub fn decode_keys(key: &str, batches: &[RecordBatch]) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(column(b, key, "patient_key", |c| c.as_primitive_opt::<Int64Type>())?.values().iter().copied());
    }
    Ok(out)
}

/// Decodes the rows of a segment whose patient key `wanted` accepts, as known records.
pub fn decode(key: &str, batches: &[RecordBatch], wanted: impl Fn(i64) -> bool, into: &mut Visits) -> Result<()> {
    for b in batches {
        let s = |n| column(b, key, n, |c| c.as_string_opt::<i32>());
        let i32s = |n| column(b, key, n, |c| c.as_primitive_opt::<Int32Type>());
        let i64s = |n| column(b, key, n, |c| c.as_primitive_opt::<Int64Type>());
        let (pkey, patient, gender, age, department) =
            (i64s("patient_key")?, s("patient_id")?, s("gender")?, i32s("age")?, s("department")?);
        let (hospital, bed, admission, sent) =
            (i32s("hospital_id")?, i32s("bed_id")?, i64s("admission_us")?, i64s("admission_sent_us")?);
        let (discharge, hub, partition, seq) =
            (i64s("discharge_us")?, s("event_hub")?, s("partition_id")?, i64s("sequence_number")?);
        let (enqueued, file) = (i64s("enqueued_us")?, s("bronze_file")?);
        fn opt32(a: &arrow_array::Int32Array, i: usize) -> Option<i32> {
            (!a.is_null(i)).then(|| a.value(i))
        }
        fn opt64(a: &Int64Array, i: usize) -> Option<i64> {
            (!a.is_null(i)).then(|| a.value(i))
        }
        fn opts(a: &arrow_array::StringArray, i: usize) -> Option<&str> {
            (!a.is_null(i)).then(|| a.value(i))
        }
        for i in 0..b.num_rows() {
            if !wanted(pkey.value(i)) {
                continue;
            }
            into.push(Record {
                patient_id: patient.value(i),
                gender: opts(gender, i),
                department: opts(department, i),
                event_hub: hub.value(i),
                partition_id: partition.value(i),
                bronze_file: file.value(i),
                visit: Visit {
                    admission_us: admission.value(i),
                    admission_sent_us: opt64(sent, i),
                    discharge_us: opt64(discharge, i),
                    enqueued_us: enqueued.value(i),
                    sequence_number: seq.value(i),
                    age: opt32(age, i),
                    bed_id: opt32(bed, i),
                    hospital_id: opt32(hospital, i),
                    known: true,
                    ..Visit::EMPTY
                },
            });
        }
    }
    Ok(())
}

/// The keys of `sorted_keys` (ascending, distinct) that the sidecar `segment_keys` (ascending,
/// distinct) also holds: a merge of two sorted lists. Each step advances the side(s) holding the
/// smaller key by adding a comparison's outcome, not by branching on it: keys are hashes, so which
/// side advances is a coin toss a branch predictor loses half the time (a lookup merges the build's
/// keys with every sidecar; 250k with 250k keys took 7.0 ns a step branching, 3.5 ns so).
pub fn matching(sorted_keys: &[i64], segment_keys: &[i64]) -> Vec<i64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < sorted_keys.len() && j < segment_keys.len() {
        let (a, b) = (sorted_keys[i], segment_keys[j]);
        if a == b {
            out.push(a);
        }
        i += usize::from(a <= b);
        j += usize::from(b <= a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The merge finds exactly the keys both lists hold (std's set intersection as the oracle),
        /// from lists that share none, some or all of their keys.
        #[test]
        fn matching_is_the_intersection(
            a in proptest::collection::btree_set(-50i64..50, 0..40),
            b in proptest::collection::btree_set(-50i64..50, 0..40),
            far in proptest::collection::btree_set(proptest::num::i64::ANY, 0..40),
        ) {
            for (x, y) in [(&a, &b), (&a, &a), (&far, &b), (&a, &far)] {
                let (xs, ys): (Vec<i64>, Vec<i64>) = (x.iter().copied().collect(), y.iter().copied().collect());
                let want: Vec<i64> = x.intersection(y).copied().collect();
                proptest::prop_assert_eq!(matching(&xs, &ys), want);
            }
        }
    }

    #[test]
    fn a_segment_round_trips() {
        let mut visits = Visits::default();
        visits.push(Record {
            patient_id: "p",
            gender: None,
            department: Some("ICU"),
            event_hub: "h",
            partition_id: "0",
            bronze_file: "f",
            visit: Visit {
                age: Some(3),
                admission_us: -5,
                discharge_us: Some(i64::MAX),
                hospital_id: Some(2),
                sequence_number: 9,
                enqueued_us: 7,
                ..Visit::EMPTY
            },
        });
        let a = *visits.iter().next().unwrap();
        let mut segment = SegmentBuilder::with_capacity(1, &visits);
        segment.append("p", &a);
        let in_memory = segment.take_rows().unwrap();
        assert!(segment.is_empty() && segment.patients() == 1);
        // Written as a build writes it, read as a build reads it.
        let file = crate::storage::parquet::encode_layout(&LEDGER, &[in_memory], &LEDGER_LAYOUT).unwrap();
        let (_, batches) = crate::storage::parquet::decode(file).unwrap();
        let batch = arrow_select::concat::concat_batches(&LEDGER, &batches).unwrap();
        let keys = segment.finish_keys().unwrap();
        assert_eq!(decode_keys("k", &[keys]).unwrap(), [a.patient_key]);
        let mut back = Visits::default();
        decode("k", std::slice::from_ref(&batch), |_| true, &mut back).unwrap();
        let b = *back.iter().next().unwrap();
        assert_eq!(Visit { known: true, ..a }, b);
        let bucket = back.buckets.iter().find(|x| !x.rows.is_empty()).unwrap();
        assert_eq!(bucket.patient_id(&b), "p");
        assert_eq!((back.str(b.department), back.str(b.gender)), (Some("ICU"), None));
        let mut none = Visits::default();
        decode("k", &[batch], |_| false, &mut none).unwrap();
        assert!(none.is_empty());
        assert_eq!(keys_file("builds/x/ledger/seg.parquet"), "builds/x/ledger/seg.keys.parquet");
        assert_eq!(matching(&[1, 3, 5, 9], &[0, 3, 4, 9, 10]), [3, 9]);
    }

    /// A chunk whose text columns index the build's dictionary is written as the bytes of the same
    /// chunk with plain strings (arrow's own cast makes the plain one), nulls and every text column
    /// included: the dictionary is how a build holds the ledger, not what the ledger is.
    #[test]
    fn a_dictionary_chunk_is_written_as_the_bytes_of_its_strings() {
        let mut visits = Visits::default();
        for (i, (gender, department, file)) in [
            (Some("F"), Some("ICU"), "a"),
            (None, Some("ER"), "b"),
            (Some("M"), None, "a"),
            (Some("F"), Some("ER"), "c"),
        ]
        .into_iter()
        .enumerate()
        {
            visits.push(Record {
                patient_id: "p",
                gender,
                department,
                event_hub: "h",
                partition_id: if i % 2 == 0 { "0" } else { "1" },
                bronze_file: file,
                visit: Visit { patient_key: i as i64, fact_id: i as i64, sequence_number: i as i64, ..Visit::EMPTY },
            });
        }
        let mut segment = SegmentBuilder::with_capacity(4, &visits);
        let mut records: Vec<Visit> = visits.iter().copied().collect();
        records.sort_by_key(|v| v.patient_key);
        for v in &records {
            segment.append("p", v);
        }
        let in_memory = segment.take_rows().unwrap();
        let plain = crate::model::schema::cast_to(&in_memory, &LEDGER);
        assert_eq!(plain.column_by_name("gender").unwrap().null_count(), 1);
        let encode = |b: RecordBatch| crate::storage::parquet::encode_layout(&LEDGER, &[b], &LEDGER_LAYOUT).unwrap();
        assert_eq!(encode(in_memory), encode(plain));
    }
}
