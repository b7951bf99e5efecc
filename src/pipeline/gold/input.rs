//! Reads silver files into visits, the gold build's input rows.

use rustc_hash::FxHashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};

use super::keys;
use crate::model::schema::gold_precision;
use crate::pipeline::{Error, Result};

/// Shares one allocation per distinct string (patient ids, genders, departments, partitions, file
/// names): a build holds a million visits of far fewer distinct values.
#[derive(Debug, Default)]
pub struct Interner(FxHashSet<Arc<str>>);

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        match self.0.get(s) {
            Some(a) => Arc::clone(a),
            None => {
                let a: Arc<str> = Arc::from(s);
                self.0.insert(Arc::clone(&a));
                a
            }
        }
    }
}

/// One silver row, as the gold build needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    /// Patient id.
    pub patient_id: Arc<str>,
    /// Gender.
    pub gender: Option<Arc<str>>,
    /// Age (capped).
    pub age: Option<i32>,
    /// Department.
    pub department: Option<Arc<str>>,
    /// Admission time (imputed when missing or future), µs floored to gold's milliseconds.
    pub admission_us: i64,
    /// Admission time as sent, µs (part of the visit's natural key: kept at full precision).
    pub admission_sent_us: Option<i64>,
    /// Discharge time, µs floored to gold's milliseconds.
    pub discharge_us: Option<i64>,
    /// Bed id.
    pub bed_id: Option<i32>,
    /// Hospital id.
    pub hospital_id: Option<i32>,
    /// Event hub.
    pub event_hub: Arc<str>,
    /// Event Hubs partition.
    pub partition_id: Arc<str>,
    /// Sequence number.
    pub sequence_number: i64,
    /// Enqueued time, µs floored to gold's milliseconds.
    pub enqueued_us: i64,
    /// Bronze file.
    pub bronze_file: Arc<str>,
}

impl Visit {
    /// Which of two events for the same visit wins: the later enqueued one (then partition,
    /// sequence number and event hub), so the result does not depend on the order files are folded
    /// in. Unique per event: equal keys mean the same event delivered twice.
    pub fn order_key(&self) -> (i64, &str, i64, &str) {
        (self.enqueued_us, &self.partition_id, self.sequence_number, &self.event_hub)
    }

    /// The FactPatientFlow row this event belongs to: the visit's natural key, or — without an
    /// admission time as sent — the event's own position (see [`keys::fact_id_at_position`]).
    pub fn fact_id(&self) -> i64 {
        match self.admission_sent_us {
            Some(_) => {
                let (department, hospital) = super::dims::department_of(self);
                keys::fact_id(&self.patient_id, department, hospital, self.admission_sent_us)
            }
            None => keys::fact_id_at_position(&self.event_hub, &self.partition_id, self.sequence_number),
        }
    }
}

/// Converts silver record batches into visits.
pub fn visits(key: &str, batches: &[RecordBatch], out: &mut Vec<Visit>, strings: &mut Interner) -> Result<()> {
    for batch in batches {
        let col = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| Error::Corrupt {
                key: key.to_string(),
                detail: format!("not a silver file: no `{name}` column"),
            })
        };
        let patient = col("patient_id")?.as_string::<i32>();
        let gender = col("gender")?.as_string::<i32>();
        let age = col("age")?.as_primitive::<Int32Type>();
        let department = col("department")?.as_string::<i32>();
        let admission = col("admission_time")?.as_primitive::<TimestampMicrosecondType>();
        let admission_sent = col("admission_time_sent")?.as_primitive::<TimestampMicrosecondType>();
        let discharge = col("discharge_time")?.as_primitive::<TimestampMicrosecondType>();
        let bed = col("bed_id")?.as_primitive::<Int32Type>();
        let hospital = col("hospital_id")?.as_primitive::<Int32Type>();
        let hub = col("event_hub")?.as_string::<i32>();
        let partition = col("partition_id")?.as_string::<i32>();
        let seq = col("sequence_number")?.as_primitive::<Int64Type>();
        let enqueued = col("enqueued_time")?.as_primitive::<TimestampMicrosecondType>();
        let file = strings.get(key);
        out.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            let gender = (!gender.is_null(i)).then(|| strings.get(gender.value(i)));
            let department = (!department.is_null(i)).then(|| strings.get(department.value(i)));
            out.push(Visit {
                patient_id: strings.get(patient.value(i)),
                gender,
                age: (!age.is_null(i)).then(|| age.value(i)),
                department,
                admission_us: gold_precision(admission.value(i)),
                admission_sent_us: (!admission_sent.is_null(i)).then(|| admission_sent.value(i)),
                discharge_us: (!discharge.is_null(i)).then(|| gold_precision(discharge.value(i))),
                bed_id: (!bed.is_null(i)).then(|| bed.value(i)),
                hospital_id: (!hospital.is_null(i)).then(|| hospital.value(i)),
                event_hub: strings.get(hub.value(i)),
                partition_id: strings.get(partition.value(i)),
                sequence_number: seq.value(i),
                enqueued_us: gold_precision(enqueued.value(i)),
                bronze_file: Arc::clone(&file),
            });
        }
    }
    Ok(())
}
