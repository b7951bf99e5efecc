//! The dimensions: DimDepartment, DimPatient (SCD type 2) and DimTime, with their parquet encoding.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use chrono::{Datelike, Timelike};

use super::input::{Interner, Visit};
use super::keys::{self, UNKNOWN_DEPARTMENT, UNKNOWN_HOSPITAL};
use crate::model::schema::{DIM_DEPARTMENT, DIM_PATIENT, DIM_TIME, GOLD_TZ, gold_column_micros, to_gold_ms};
use crate::pipeline::{Error, Result};

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::Corrupt { key: "gold".into(), detail: format!("no `{name}` column") })
}

/// DimDepartment rows: (department, hospital) → key. A BTreeMap keeps the file bytes deterministic.
pub type Departments = BTreeMap<(String, i32), i64>;

/// The department and hospital a visit is filed under (unknown members for nulls).
pub fn department_of(v: &Visit) -> (&str, i32) {
    (v.department.as_deref().unwrap_or(UNKNOWN_DEPARTMENT), v.hospital_id.unwrap_or(UNKNOWN_HOSPITAL))
}

/// Adds the departments of `visits`; returns how many were new.
pub fn add_departments<'a>(departments: &mut Departments, visits: impl IntoIterator<Item = &'a Visit>) -> usize {
    let before = departments.len();
    for v in visits {
        let (d, h) = department_of(v);
        departments.entry((d.to_string(), h)).or_insert_with(|| keys::department_sk(d, h));
    }
    departments.len() - before
}

/// Encodes DimDepartment.
pub fn departments_batch(departments: &Departments) -> Result<RecordBatch> {
    let mut sk = Int64Builder::new();
    let mut name = StringBuilder::new();
    let mut hospital = Int32Builder::new();
    for ((d, h), k) in departments {
        sk.append_value(*k);
        name.append_value(d);
        hospital.append_value(*h);
    }
    let cols: Vec<ArrayRef> = vec![Arc::new(sk.finish()), Arc::new(name.finish()), Arc::new(hospital.finish())];
    Ok(RecordBatch::try_new(Arc::clone(&DIM_DEPARTMENT), cols)?)
}

/// Decodes DimDepartment.
pub fn read_departments(batches: &[RecordBatch], into: &mut Departments) -> Result<()> {
    for b in batches {
        let sk = column(b, "department_sk")?.as_primitive::<Int64Type>();
        let name = column(b, "department")?.as_string::<i32>();
        let hospital = column(b, "hospital_id")?.as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            into.insert((name.value(i).to_string(), hospital.value(i)), sk.value(i));
        }
    }
    Ok(())
}

/// One version of a patient's attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientVersion {
    /// Surrogate key of this version.
    pub patient_sk: i64,
    /// Gender.
    pub gender: Option<Arc<str>>,
    /// Age.
    pub age: Option<i32>,
    /// Hash of the tracked attributes.
    pub attr_hash: i64,
    /// Start of validity, µs.
    pub effective_from: i64,
    /// End of validity (exclusive), µs; `None` for the current version.
    pub effective_to: Option<i64>,
}

/// DimPatient: every patient's versions, oldest first. The last version is the current one.
pub type Patients = FxHashMap<Arc<str>, Vec<PatientVersion>>;

/// What an SCD2 pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScdStats {
    /// Patients seen for the first time.
    pub new_patients: u64,
    /// Versions closed because the attributes changed.
    pub versions_closed: u64,
    /// Records older than the patient's current version with other attributes: history is not
    /// rewritten for late arrivals (their facts still point at the version valid at admission).
    pub late_changes_ignored: u64,
}

/// Folds visits into DimPatient, SCD type 2: per patient, in order of admission time, a changed
/// attribute hash closes the current version and opens a new one with its own surrogate key.
pub fn apply_scd2<'a>(patients: &mut Patients, visits: impl IntoIterator<Item = &'a Visit>) -> ScdStats {
    let mut stats = ScdStats::default();
    let mut order: Vec<&Visit> = visits.into_iter().collect();
    // The key ends in (partition, sequence number), unique per event: an unstable sort is deterministic.
    order.sort_unstable_by(|a, b| {
        (&*a.patient_id, a.admission_us, a.order_key()).cmp(&(&*b.patient_id, b.admission_us, b.order_key()))
    });
    for v in order {
        let hash = keys::attr_hash(v.gender.as_deref(), v.age);
        let open = |from: i64| PatientVersion {
            patient_sk: keys::patient_sk(&v.patient_id, from, hash),
            gender: v.gender.clone(),
            age: v.age,
            attr_hash: hash,
            effective_from: from,
            effective_to: None,
        };
        match patients.get_mut(&*v.patient_id) {
            None => {
                stats.new_patients += 1;
                patients.insert(Arc::clone(&v.patient_id), vec![open(v.admission_us)]);
            }
            Some(versions) => {
                let Some(current) = versions.last_mut() else { continue };
                if current.attr_hash == hash {
                    continue;
                }
                if v.admission_us < current.effective_from {
                    // Older than the current version: a change only if it disagrees with the
                    // version valid then (a re-sent record agrees and is no news at all).
                    let i = versions.partition_point(|x| x.effective_from <= v.admission_us).saturating_sub(1);
                    if versions[i].attr_hash != hash {
                        stats.late_changes_ignored += 1;
                    }
                    continue;
                }
                current.effective_to = Some(v.admission_us);
                stats.versions_closed += 1;
                versions.push(open(v.admission_us));
            }
        }
    }
    stats
}

/// The surrogate key of the version valid at `t` (the first version for records older than it).
pub fn patient_sk_at(versions: &[PatientVersion], t: i64) -> Option<i64> {
    let i = versions.partition_point(|v| v.effective_from <= t);
    versions.get(i.saturating_sub(1)).map(|v| v.patient_sk)
}

/// Encodes DimPatient, ordered by patient id then version.
pub fn patients_batch(patients: &Patients) -> Result<RecordBatch> {
    let mut ids: Vec<&Arc<str>> = patients.keys().collect();
    ids.sort_unstable();
    let n: usize = patients.values().map(Vec::len).sum();
    let mut sk = Int64Builder::with_capacity(n);
    let mut id = StringBuilder::with_capacity(n, n * 36);
    let mut gender = StringBuilder::with_capacity(n, n * 6);
    let mut age = Int32Builder::with_capacity(n);
    let mut hash = Int64Builder::with_capacity(n);
    let mut from = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    let mut to = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    let mut current = BooleanBuilder::with_capacity(n);
    for pid in ids {
        for v in &patients[pid] {
            sk.append_value(v.patient_sk);
            id.append_value(&**pid);
            gender.append_option(v.gender.as_deref());
            age.append_option(v.age);
            hash.append_value(v.attr_hash);
            from.append_value(to_gold_ms(v.effective_from));
            to.append_option(v.effective_to.map(to_gold_ms));
            current.append_value(v.effective_to.is_none());
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(sk.finish()),
        Arc::new(id.finish()),
        Arc::new(gender.finish()),
        Arc::new(age.finish()),
        Arc::new(hash.finish()),
        Arc::new(from.finish()),
        Arc::new(to.finish()),
        Arc::new(current.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&DIM_PATIENT), cols)?)
}

/// Decodes DimPatient.
pub fn read_patients(batches: &[RecordBatch], into: &mut Patients, strings: &mut Interner) -> Result<()> {
    for b in batches {
        let sk = column(b, "patient_sk")?.as_primitive::<Int64Type>();
        let id = column(b, "patient_id")?.as_string::<i32>();
        let gender = column(b, "gender")?.as_string::<i32>();
        let age = column(b, "age")?.as_primitive::<Int32Type>();
        let hash = column(b, "attr_hash")?.as_primitive::<Int64Type>();
        let ts = |name: &str| {
            gold_column_micros(column(b, name)?.as_ref()).ok_or_else(|| Error::Corrupt {
                key: "gold".into(),
                detail: format!("`{name}` is not a millisecond or microsecond timestamp"),
            })
        };
        let from = ts("effective_from")?;
        let to = ts("effective_to")?;
        for i in 0..b.num_rows() {
            into.entry(strings.get(id.value(i))).or_default().push(PatientVersion {
                patient_sk: sk.value(i),
                gender: (!gender.is_null(i)).then(|| strings.get(gender.value(i))),
                age: (!age.is_null(i)).then(|| age.value(i)),
                attr_hash: hash.value(i),
                effective_from: from.value(i),
                effective_to: (!to.is_null(i)).then(|| to.value(i)),
            });
        }
    }
    Ok(())
}

/// DimTime: the hour keys facts reference.
pub type Hours = BTreeSet<i32>;

/// Encodes DimTime.
pub fn time_batch(hours: &Hours) -> Result<RecordBatch> {
    let n = hours.len();
    let mut key = Int32Builder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    let (mut year, mut quarter, mut month, mut day, mut hour, mut dow) = (
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
    );
    let mut weekend = BooleanBuilder::with_capacity(n);
    for &k in hours {
        let (y, m, d, h) = (k / 1_000_000, (k / 10_000) % 100, (k / 100) % 100, k % 100);
        let Some(t) =
            chrono::NaiveDate::from_ymd_opt(y, m as u32, d as u32).and_then(|x| x.and_hms_opt(h as u32, 0, 0))
        else {
            return Err(Error::Internal(format!("time key {k} is not a valid hour")));
        };
        key.append_value(k);
        date.append_value(keys::epoch_days(t.and_utc().timestamp_micros()));
        year.append_value(t.year());
        quarter.append_value((t.month0() / 3 + 1) as i32);
        month.append_value(t.month() as i32);
        day.append_value(t.day() as i32);
        hour.append_value(t.hour() as i32);
        let w = t.weekday().number_from_monday() as i32;
        dow.append_value(w);
        weekend.append_value(w >= 6);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(date.finish()),
        Arc::new(year.finish()),
        Arc::new(quarter.finish()),
        Arc::new(month.finish()),
        Arc::new(day.finish()),
        Arc::new(hour.finish()),
        Arc::new(dow.finish()),
        Arc::new(weekend.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&DIM_TIME), cols)?)
}

/// Decodes DimTime's keys.
pub fn read_hours(batches: &[RecordBatch], into: &mut Hours) -> Result<()> {
    for b in batches {
        let key = column(b, "time_key")?.as_primitive::<Int32Type>();
        into.extend(key.values().iter().copied());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(id: &str, at: i64, age: i32) -> Visit {
        Visit {
            patient_id: Arc::from(id),
            gender: Some(Arc::from("Female")),
            age: Some(age),
            department: Some(Arc::from("ICU")),
            admission_us: at,
            admission_sent_us: Some(at),
            discharge_us: None,
            bed_id: Some(1),
            hospital_id: Some(1),
            partition_id: Arc::from("0"),
            sequence_number: at,
            enqueued_us: at,
            bronze_file: Arc::from("f"),
        }
    }

    #[test]
    fn scd2_opens_a_version_per_change_with_its_own_key() {
        let mut p = Patients::default();
        let s = apply_scd2(&mut p, &[visit("a", 10, 40), visit("a", 20, 40), visit("a", 30, 41)]);
        assert_eq!(s, ScdStats { new_patients: 1, versions_closed: 1, late_changes_ignored: 0 });
        let v = &p["a"];
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].effective_from, v[0].effective_to), (10, Some(30)));
        assert_eq!((v[1].effective_from, v[1].effective_to, v[1].age), (30, None, Some(41)));
        assert_ne!(v[0].patient_sk, v[1].patient_sk);
        assert_eq!(patient_sk_at(v, 25), Some(v[0].patient_sk));
        assert_eq!(patient_sk_at(v, 30), Some(v[1].patient_sk));
        assert_eq!(patient_sk_at(v, 5), Some(v[0].patient_sk));

        // A later build: the same patient ages again; a late record is not versioned.
        let s = apply_scd2(&mut p, &[visit("a", 50, 42), visit("a", 15, 39)]);
        assert_eq!(s, ScdStats { new_patients: 0, versions_closed: 1, late_changes_ignored: 1 });
        assert_eq!(p["a"].len(), 3);
    }

    #[test]
    fn scd2_within_a_build_does_not_depend_on_arrival_order() {
        // Millisecond-aligned, as gold's input is: the encoded file round-trips exactly.
        let visits = [visit("a", 10_000, 40), visit("a", 30_000, 41), visit("b", 5_000, 7), visit("a", 20_000, 40)];
        let mut p1 = Patients::default();
        apply_scd2(&mut p1, &visits[..]);
        let mut reversed = visits.to_vec();
        reversed.reverse();
        let mut p2 = Patients::default();
        apply_scd2(&mut p2, &reversed[..]);
        assert_eq!(p1, p2);
        let batch = patients_batch(&p1).unwrap();
        let mut back = Patients::default();
        read_patients(&[batch], &mut back, &mut Interner::default()).unwrap();
        assert_eq!(back, p1);
    }

    #[test]
    fn dim_time_rows() {
        let b = time_batch(&Hours::from([2026112318, 2026112900])).unwrap();
        assert_eq!(b.num_rows(), 2);
        let dow = b.column_by_name("day_of_week").unwrap().as_primitive::<Int32Type>();
        let weekend = b.column_by_name("is_weekend").unwrap().as_boolean();
        // 2026-11-23 is a Monday, 2026-11-29 a Sunday.
        assert_eq!((dow.value(0), weekend.value(0)), (1, false));
        assert_eq!((dow.value(1), weekend.value(1)), (7, true));
        let q = b.column_by_name("quarter").unwrap().as_primitive::<Int32Type>();
        assert_eq!(q.value(0), 4);
    }
}
