//! The visit ledger: gold's own record of every visit's winning event (the latest by
//! [`Visit::order_key`]), split into buckets by patient. It is what makes gold a function of the set
//! of events: a build merges new events into the ledger of the patients it sees and recomputes
//! those patients' SCD2 versions and facts from it, without reading other patients' history.
//!
//! Internal to gold (loaders never read it); timestamps are plain µs integers.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::input::{Interner, Visit};
use crate::pipeline::{Error, Result};

/// The ledger's schema.
pub static LEDGER: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
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

/// The name of bucket `b` (`bucket=007`).
pub fn bucket_name(b: u16) -> String {
    format!("bucket={b:03}")
}

/// Encodes a bucket's visits (in the given order).
pub fn encode(visits: &[&Visit]) -> Result<RecordBatch> {
    let n = visits.len();
    let mut patient = StringBuilder::with_capacity(n, n * 36);
    let mut gender = StringBuilder::new();
    let mut age = Int32Builder::with_capacity(n);
    let mut department = StringBuilder::new();
    let mut hospital = Int32Builder::with_capacity(n);
    let mut bed = Int32Builder::with_capacity(n);
    let mut admission = Int64Builder::with_capacity(n);
    let mut admission_sent = Int64Builder::with_capacity(n);
    let mut discharge = Int64Builder::with_capacity(n);
    let mut hub = StringBuilder::new();
    let mut partition = StringBuilder::new();
    let mut seq = Int64Builder::with_capacity(n);
    let mut enqueued = Int64Builder::with_capacity(n);
    let mut file = StringBuilder::new();
    for v in visits {
        patient.append_value(&*v.patient_id);
        gender.append_option(v.gender.as_deref());
        age.append_option(v.age);
        department.append_option(v.department.as_deref());
        hospital.append_option(v.hospital_id);
        bed.append_option(v.bed_id);
        admission.append_value(v.admission_us);
        admission_sent.append_option(v.admission_sent_us);
        discharge.append_option(v.discharge_us);
        hub.append_value(&*v.event_hub);
        partition.append_value(&*v.partition_id);
        seq.append_value(v.sequence_number);
        enqueued.append_value(v.enqueued_us);
        file.append_value(&*v.bronze_file);
    }
    let cols: Vec<ArrayRef> = vec![
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

/// Decodes a bucket file into visits.
pub fn decode(key: &str, batches: &[RecordBatch], out: &mut Vec<Visit>, strings: &mut Interner) -> Result<()> {
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::Corrupt { key: key.to_string(), detail: format!("no `{name}` column") })
        };
        let patient = col("patient_id")?.as_string::<i32>();
        let gender = col("gender")?.as_string::<i32>();
        let age = col("age")?.as_primitive::<Int32Type>();
        let department = col("department")?.as_string::<i32>();
        let hospital = col("hospital_id")?.as_primitive::<Int32Type>();
        let bed = col("bed_id")?.as_primitive::<Int32Type>();
        let admission = col("admission_us")?.as_primitive::<Int64Type>();
        let admission_sent = col("admission_sent_us")?.as_primitive::<Int64Type>();
        let discharge = col("discharge_us")?.as_primitive::<Int64Type>();
        let hub = col("event_hub")?.as_string::<i32>();
        let partition = col("partition_id")?.as_string::<i32>();
        let seq = col("sequence_number")?.as_primitive::<Int64Type>();
        let enqueued = col("enqueued_us")?.as_primitive::<Int64Type>();
        let file = col("bronze_file")?.as_string::<i32>();
        out.reserve(b.num_rows());
        for i in 0..b.num_rows() {
            out.push(Visit {
                patient_id: strings.get(patient.value(i)),
                gender: (!gender.is_null(i)).then(|| strings.get(gender.value(i))),
                age: (!age.is_null(i)).then(|| age.value(i)),
                department: (!department.is_null(i)).then(|| strings.get(department.value(i))),
                admission_us: admission.value(i),
                admission_sent_us: (!admission_sent.is_null(i)).then(|| admission_sent.value(i)),
                discharge_us: (!discharge.is_null(i)).then(|| discharge.value(i)),
                bed_id: (!bed.is_null(i)).then(|| bed.value(i)),
                hospital_id: (!hospital.is_null(i)).then(|| hospital.value(i)),
                event_hub: strings.get(hub.value(i)),
                partition_id: strings.get(partition.value(i)),
                sequence_number: seq.value(i),
                enqueued_us: enqueued.value(i),
                bronze_file: strings.get(file.value(i)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_round_trips() {
        let mut strings = Interner::default();
        let v = Visit {
            patient_id: strings.get("p"),
            gender: None,
            age: Some(3),
            department: Some(strings.get("ICU")),
            admission_us: -5,
            admission_sent_us: None,
            discharge_us: Some(i64::MAX),
            bed_id: None,
            hospital_id: Some(2),
            event_hub: strings.get("h"),
            partition_id: strings.get("0"),
            sequence_number: 9,
            enqueued_us: 7,
            bronze_file: strings.get("f"),
        };
        let batch = encode(&[&v]).unwrap();
        let mut back = Vec::new();
        decode("k", &[batch], &mut back, &mut strings).unwrap();
        assert_eq!(back, [v]);
        assert_eq!(bucket_name(7), "bucket=007");
    }
}
