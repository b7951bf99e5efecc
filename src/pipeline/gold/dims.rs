//! The dimensions: DimDepartment, DimPatient (SCD type 2) and DimTime, with their parquet encoding.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use chrono::{Datelike, Timelike};

use super::input::{Visit, Visits};
use super::keys;
use crate::model::schema::{DIM_DEPARTMENT, DIM_PATIENT, DIM_TIME, GOLD_TZ, gold_column_micros, to_gold_ms};
use crate::pipeline::{Error, Result};

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::Corrupt { key: "gold".into(), detail: format!("no `{name}` column") })
}

/// DimDepartment rows: (department, hospital) → key. A BTreeMap keeps the file bytes deterministic.
pub type Departments = BTreeMap<(String, i32), i64>;

/// Adds the departments of the records; returns how many were new.
pub fn add_departments(departments: &mut Departments, visits: &Visits) -> usize {
    let before = departments.len();
    let mut seen: rustc_hash::FxHashSet<(u32, Option<i32>)> = rustc_hash::FxHashSet::default();
    for v in visits.iter() {
        if seen.insert((v.department, v.hospital_id)) {
            let (d, h) = visits.department_of(v);
            departments.entry((d.to_string(), h)).or_insert_with(|| keys::department_sk(d, h));
        }
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

/// What a build did to DimPatient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScdStats {
    /// Patients seen for the first time.
    pub new_patients: u64,
    /// Versions closed (net): how many more closed versions DimPatient holds after the build.
    pub versions_closed: u64,
    /// Facts whose patient version changed though their own event did not: a late record
    /// reshaped the patient's history and the facts it covers were re-pointed.
    pub facts_repointed: u64,
}

/// A patient's SCD2 versions, a function of the set of the patient's visit records (each visit's
/// winning event): records sort by admission time, and at one instant the latest record (by
/// [`OrderKey`](super::input::OrderKey)) holds; consecutive instants with equal attribute hashes are
/// one version. A version starts at its first record's admission and ends where the next begins, so
/// versions never overlap, and its key derives from its content (patient, start, attributes).
///
/// `records` are sorted in place by (admission, order key). The versions go into `out`, cleared
/// first, so a build reuses one buffer for every patient.
pub fn versions(visits: &Visits, patient_id: &str, records: &mut [&Visit], out: &mut Vec<PatientVersion>) {
    // The order key is unique per event: an unstable sort is deterministic.
    records.sort_unstable_by_key(|v| (v.admission_us, visits.order_key(v)));
    out.clear();
    for (n, v) in records.iter().enumerate() {
        if records.get(n + 1).is_some_and(|next| next.admission_us == v.admission_us) {
            continue; // a later record at the same instant holds
        }
        let gender = visits.dict.arc(v.gender);
        let hash = keys::attr_hash(gender.map(|g| &**g), v.age);
        let from = v.admission_us;
        match out.last_mut() {
            Some(last) if last.attr_hash == hash => continue,
            Some(last) => last.effective_to = Some(from),
            None => {}
        }
        out.push(PatientVersion {
            patient_sk: keys::patient_sk(patient_id, from, hash),
            gender: gender.cloned(),
            age: v.age,
            attr_hash: hash,
            effective_from: from,
            effective_to: None,
        });
    }
}

/// The surrogate key of the version valid at `t` (the first version for instants before it).
pub fn patient_sk_at(versions: &[PatientVersion], t: i64) -> Option<i64> {
    let i = versions.partition_point(|v| v.effective_from <= t);
    versions.get(i.saturating_sub(1)).map(|v| v.patient_sk)
}

/// Builds DimPatient rows patient by patient.
pub struct PatientsBuilder {
    sk: Int64Builder,
    id: StringBuilder,
    gender: StringBuilder,
    age: Int32Builder,
    hash: Int64Builder,
    from: TimestampMillisecondBuilder,
    to: TimestampMillisecondBuilder,
    current: BooleanBuilder,
}

impl PatientsBuilder {
    /// A builder with room for about `n` versions.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            sk: Int64Builder::with_capacity(n),
            id: StringBuilder::with_capacity(n, n * 36),
            gender: StringBuilder::with_capacity(n, n * 6),
            age: Int32Builder::with_capacity(n),
            hash: Int64Builder::with_capacity(n),
            from: TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ),
            to: TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ),
            current: BooleanBuilder::with_capacity(n),
        }
    }

    /// Appends a patient's versions.
    pub fn append(&mut self, patient_id: &str, versions: &[PatientVersion]) {
        for v in versions {
            self.sk.append_value(v.patient_sk);
            self.id.append_value(patient_id);
            self.gender.append_option(v.gender.as_deref());
            self.age.append_option(v.age);
            self.hash.append_value(v.attr_hash);
            self.from.append_value(to_gold_ms(v.effective_from));
            self.to.append_option(v.effective_to.map(to_gold_ms));
            self.current.append_value(v.effective_to.is_none());
        }
    }

    /// Versions appended and not yet taken.
    pub fn len(&self) -> usize {
        self.sk.len()
    }

    /// Whether no version waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The versions appended since the last take; the builder goes on empty.
    pub fn take_rows(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.sk.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.gender.finish()),
            Arc::new(self.age.finish()),
            Arc::new(self.hash.finish()),
            Arc::new(self.from.finish()),
            Arc::new(self.to.finish()),
            Arc::new(self.current.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::clone(&DIM_PATIENT), cols)?)
    }
}

/// DimPatient rows as (patient id, version), for tests and checks.
pub fn read_patients(batches: &[RecordBatch]) -> Result<Vec<(String, PatientVersion)>> {
    let mut out = Vec::new();
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
            out.push((
                id.value(i).to_string(),
                PatientVersion {
                    patient_sk: sk.value(i),
                    gender: (!gender.is_null(i)).then(|| Arc::from(gender.value(i))),
                    age: (!age.is_null(i)).then(|| age.value(i)),
                    attr_hash: hash.value(i),
                    effective_from: from.value(i),
                    effective_to: (!to.is_null(i)).then(|| to.value(i)),
                },
            ));
        }
    }
    Ok(out)
}

/// DimTime: the days (since the epoch) whose hours facts reference; every hour of each is a row.
pub type Days = BTreeSet<i32>;

/// Encodes DimTime: the 24 hours of every day that can be keyed (see [`keys::time_key`]).
pub fn time_batch(days: &Days) -> Result<RecordBatch> {
    let hours: Vec<i32> = days.iter().flat_map(|&d| keys::day_hours(d)).collect();
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
    for k in hours {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipeline::gold::input::Record;

    fn versions(visits: &Visits, patient_id: &str, records: &mut [&Visit]) -> Vec<PatientVersion> {
        let mut out = Vec::new();
        super::versions(visits, patient_id, records, &mut out);
        out
    }

    fn visit(visits: &mut Visits, id: &str, at: i64, age: i32) -> u32 {
        let n = visits.len() as u32;
        visits.push(Record {
            patient_id: id,
            gender: Some("Female"),
            department: Some("ICU"),
            event_hub: "h",
            partition_id: "0",
            bronze_file: "f",
            visit: Visit {
                age: Some(age),
                admission_us: at,
                admission_sent_us: Some(at),
                bed_id: Some(1),
                hospital_id: Some(1),
                sequence_number: at,
                enqueued_us: at,
                ..Visit::EMPTY
            },
        });
        n
    }

    /// The records of `visits` by arrival.
    fn records(visits: &Visits) -> Vec<Visit> {
        let mut all: Vec<Visit> = visits.iter().copied().collect();
        all.sort_by_key(|v| v.input);
        all
    }

    fn pick<'a>(all: &'a [Visit], ids: &[u32]) -> Vec<&'a Visit> {
        ids.iter().map(|&i| &all[i as usize]).collect()
    }

    #[test]
    fn scd2_opens_a_version_per_change_with_its_own_key() {
        let mut visits = Visits::default();
        let ids =
            vec![visit(&mut visits, "a", 10, 40), visit(&mut visits, "a", 20, 40), visit(&mut visits, "a", 30, 41)];
        visits.rank();
        let all = records(&visits);
        let v = versions(&visits, "a", &mut pick(&all, &ids));
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].effective_from, v[0].effective_to), (10, Some(30)));
        assert_eq!((v[1].effective_from, v[1].effective_to, v[1].age), (30, None, Some(41)));
        assert_ne!(v[0].patient_sk, v[1].patient_sk);
        assert_eq!(patient_sk_at(&v, 25), Some(v[0].patient_sk));
        assert_eq!(patient_sk_at(&v, 30), Some(v[1].patient_sk));
        assert_eq!(patient_sk_at(&v, 5), Some(v[0].patient_sk));

        // A late record inside the first version splits it: history is a function of the set.
        let mut visits = Visits::default();
        let more: Vec<u32> =
            [(10, 40), (20, 40), (30, 41), (15, 39)].into_iter().map(|(t, a)| visit(&mut visits, "a", t, a)).collect();
        visits.rank();
        let all = records(&visits);
        let v = versions(&visits, "a", &mut pick(&all, &more));
        let spans: Vec<_> = v.iter().map(|x| (x.effective_from, x.effective_to, x.age)).collect();
        assert_eq!(
            spans,
            [(10, Some(15), Some(40)), (15, Some(20), Some(39)), (20, Some(30), Some(40)), (30, None, Some(41))]
        );
    }

    #[test]
    fn scd2_does_not_depend_on_arrival_order_and_the_latest_record_holds_at_an_instant() {
        let mut visits = Visits::default();
        let mut ids: Vec<u32> =
            [(10_000, 40), (30_000, 41)].into_iter().map(|(t, a)| visit(&mut visits, "a", t, a)).collect();
        ids.push(visit(&mut visits, "a", 10_000, 41));
        ids.push(visit(&mut visits, "a", 20_000, 40));
        visits.rank();
        let mut all = records(&visits);
        // The third record is sent later than the others (a late event about the same instant).
        all[2].enqueued_us = 99_000;
        all[2].sequence_number = 99;
        let forward = versions(&visits, "a", &mut pick(&all, &ids));
        let backward: Vec<u32> = ids.iter().rev().copied().collect();
        assert_eq!(forward, versions(&visits, "a", &mut pick(&all, &backward)));
        // Millisecond-aligned, as gold's input is, so the encoded file round-trips exactly.
        // At 10 the later-sent record (age 41) holds; 20 (age 40) then differs; 30 differs again.
        let spans: Vec<_> = forward.iter().map(|x| (x.effective_from, x.age)).collect();
        assert_eq!(spans, [(10_000, Some(41)), (20_000, Some(40)), (30_000, Some(41))]);
        let mut builder = PatientsBuilder::with_capacity(3);
        builder.append("a", &forward);
        let batch = builder.take_rows().unwrap();
        assert!(builder.is_empty());
        let back = read_patients(&[batch]).unwrap();
        assert_eq!(back, forward.into_iter().map(|v| ("a".to_string(), v)).collect::<Vec<_>>());
    }

    #[test]
    fn dim_time_rows() {
        let day = |s: &str| {
            keys::epoch_days(
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .unwrap()
                    .and_hms_opt(18, 0, 0)
                    .unwrap()
                    .and_utc()
                    .timestamp_micros(),
            )
        };
        let b = time_batch(&Days::from([day("2026-11-23"), day("2026-11-29"), day("9999-12-31")])).unwrap();
        assert_eq!(b.num_rows(), 48, "every hour of each day; a day past the keyable years has none");
        let dow = b.column_by_name("day_of_week").unwrap().as_primitive::<Int32Type>();
        let weekend = b.column_by_name("is_weekend").unwrap().as_boolean();
        // 2026-11-23 is a Monday, 2026-11-29 a Sunday.
        assert_eq!((dow.value(0), weekend.value(0)), (1, false));
        assert_eq!((dow.value(24), weekend.value(24)), (7, true));
        let q = b.column_by_name("quarter").unwrap().as_primitive::<Int32Type>();
        assert_eq!(q.value(0), 4);
    }
}
