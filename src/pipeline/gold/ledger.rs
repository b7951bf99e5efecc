//! The visit ledger: gold's own record of every visit's winning event (the latest by
//! [`OrderKey`](super::input::OrderKey)). It is what makes gold a function of the set of events: a
//! build merges new events into the ledger rows of the patients it sees and recomputes those
//! patients' SCD2 versions and facts from them, without reading other patients' history.
//!
//! The ledger is a list of **segments**, oldest first. Each build that changes patients appends one
//! segment holding the whole visit set of each patient it changed, sorted by [`keys::patient_key`].
//! A patient's visits are those of the newest segment that holds the patient (older segments may
//! keep stale copies until compaction drops them). Next to each segment, a sidecar file lists its
//! distinct patient keys, sorted: a build finds the patients it must read by merging its own sorted
//! keys with each sidecar (8 bytes per patient, the one part of a build that reads all of history),
//! then decodes only the segments that hold some of them.
//!
//! Internal to gold (loaders never read it); timestamps are plain µs integers.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::input::{Record, Visit, Visits, column};
use crate::pipeline::Result;

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

/// The schema of a segment's key sidecar.
pub static KEYS: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(vec![Field::new("patient_key", DataType::Int64, false)])));

/// The key sidecar of a segment file (`…/seg.parquet` → `…/seg.keys.parquet`).
pub fn keys_file(segment: &str) -> String {
    match segment.strip_suffix(".parquet") {
        Some(stem) => format!("{stem}.keys.parquet"),
        None => format!("{segment}.keys"),
    }
}

/// Encodes a segment's records (in the given order).
pub fn encode(visits: &Visits, rows: &[u32]) -> Result<RecordBatch> {
    let n = rows.len();
    let mut key = Int64Builder::with_capacity(n);
    let mut patient = StringBuilder::with_capacity(n, n * 36);
    let mut gender = StringBuilder::with_capacity(n, n * 6);
    let mut age = Int32Builder::with_capacity(n);
    let mut department = StringBuilder::with_capacity(n, n * 12);
    let mut hospital = Int32Builder::with_capacity(n);
    let mut bed = Int32Builder::with_capacity(n);
    let mut admission = Int64Builder::with_capacity(n);
    let mut admission_sent = Int64Builder::with_capacity(n);
    let mut discharge = Int64Builder::with_capacity(n);
    let mut hub = StringBuilder::with_capacity(n, n * 12);
    let mut partition = StringBuilder::with_capacity(n, n * 2);
    let mut seq = Int64Builder::with_capacity(n);
    let mut enqueued = Int64Builder::with_capacity(n);
    let mut file = StringBuilder::with_capacity(n, n * 80);
    for &i in rows {
        let v = &visits.rows[i as usize];
        key.append_value(v.patient_key);
        patient.append_value(visits.patient_id(v));
        gender.append_option(visits.str(v.gender));
        age.append_option(v.age);
        department.append_option(visits.str(v.department));
        hospital.append_option(v.hospital_id);
        bed.append_option(v.bed_id);
        admission.append_value(v.admission_us);
        admission_sent.append_option(v.admission_sent_us);
        discharge.append_option(v.discharge_us);
        hub.append_value(visits.str(v.event_hub).unwrap_or_default());
        partition.append_value(visits.str(v.partition_id).unwrap_or_default());
        seq.append_value(v.sequence_number);
        enqueued.append_value(v.enqueued_us);
        file.append_value(visits.str(v.bronze_file).unwrap_or_default());
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(patient.finish()),
        Arc::new(gender.finish()),
        Arc::new(age.finish()),
        Arc::new(department.finish()),
        Arc::new(hospital.finish()),
        Arc::new(bed.finish()),
        Arc::new(admission.finish()),
        Arc::new(admission_sent.finish()),
        Arc::new(discharge.finish()),
        Arc::new(hub.finish()),
        Arc::new(partition.finish()),
        Arc::new(seq.finish()),
        Arc::new(enqueued.finish()),
        Arc::new(file.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&LEDGER), cols)?)
}

/// The key sidecar of a segment: its distinct patient keys, ascending.
pub fn encode_keys(visits: &Visits, rows: &[u32]) -> Result<RecordBatch> {
    let mut keys: Vec<i64> = rows.iter().map(|&i| visits.rows[i as usize].patient_key).collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(RecordBatch::try_new(Arc::clone(&KEYS), vec![Arc::new(Int64Array::from(keys))])?)
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
/// distinct) also holds: a merge of two sorted lists.
pub fn matching(sorted_keys: &[i64], segment_keys: &[i64]) -> Vec<i64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < sorted_keys.len() && j < segment_keys.len() {
        match sorted_keys[i].cmp(&segment_keys[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(sorted_keys[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let batch = encode(&visits, &[0]).unwrap();
        let mut back = Visits::default();
        decode("k", &[batch.clone()], |_| true, &mut back).unwrap();
        let (a, b) = (visits.rows[0], back.rows[0]);
        assert_eq!(Visit { known: true, ..a }, b);
        assert_eq!(back.patient_id(&b), "p");
        assert_eq!((back.str(b.department), back.str(b.gender)), (Some("ICU"), None));
        let mut none = Visits::default();
        decode("k", &[batch], |_| false, &mut none).unwrap();
        assert!(none.rows.is_empty());
        assert_eq!(keys_file("builds/x/ledger/seg.parquet"), "builds/x/ledger/seg.keys.parquet");
        assert_eq!(matching(&[1, 3, 5, 9], &[0, 3, 4, 9, 10]), [3, 9]);
    }
}
