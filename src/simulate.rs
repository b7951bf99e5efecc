//! The hospital simulator: the seed's `patient_flow_generator.py`, done properly.
//!
//! Seeded ([`ChaCha8Rng`]) and anchored to an injected clock, so the same [`SimulationConfig`] always
//! yields the same bytes. Besides the seed's dirty data (over-age patients, future admissions) it can
//! inject what real feeds bring — malformed JSON, missing fields, wrong types, duplicates — and it
//! keeps a pool of returning patients whose age changes between visits (so DimPatient has history).
//! Every injected fault is counted in a [`Tally`], which is what tests compare the silver step against.

use chrono::{Duration, NaiveDateTime};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use crate::model::event::{DEPARTMENTS, FIELDS, GENDERS, PatientEvent};

/// How many distinct returning patients the simulator remembers (bounds its memory).
const PATIENT_POOL: usize = 20_000;
const HOUR_US: i64 = 3_600_000_000;

/// Probabilities of each kind of dirt, each in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirtRates {
    /// Age 101–150 (the seed: 5%). Silver caps it to 90.
    pub old_age: f64,
    /// Admission 1–72 h in the future (the seed: 5%). Silver replaces it with the enqueued time.
    pub future_admission: f64,
    /// A body that is not a JSON object at all (truncated JSON, binary garbage, or a JSON array).
    pub malformed: f64,
    /// One of the eight fields left out.
    pub missing_field: f64,
    /// One field with a value of the wrong JSON type.
    pub wrong_type: f64,
    /// An exact re-send of the previous clean event.
    pub duplicate: f64,
    /// The event is a new visit of a patient seen before.
    pub returning: f64,
}

impl Default for DirtRates {
    fn default() -> Self {
        Self {
            old_age: 0.05,
            future_admission: 0.05,
            malformed: 0.0,
            missing_field: 0.0,
            wrong_type: 0.0,
            duplicate: 0.0,
            returning: 0.2,
        }
    }
}

impl DirtRates {
    /// Checks every rate is a probability and the exclusive kinds (malformed, missing field, wrong
    /// type, duplicate) add up to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("--old-age-rate", self.old_age),
            ("--future-rate", self.future_admission),
            ("--malformed-rate", self.malformed),
            ("--missing-rate", self.missing_field),
            ("--wrong-type-rate", self.wrong_type),
            ("--duplicate-rate", self.duplicate),
            ("--returning-rate", self.returning),
        ];
        for (name, rate) in named {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} is {rate}; give a probability between 0 and 1"));
            }
        }
        let exclusive = self.malformed + self.missing_field + self.wrong_type + self.duplicate;
        if exclusive > 1.0 {
            return Err(format!(
                "--malformed-rate + --missing-rate + --wrong-type-rate + --duplicate-rate is {exclusive}; an event gets at most one of them, so their sum must be at most 1"
            ));
        }
        Ok(())
    }
}

/// Everything that determines the simulator's output.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationConfig {
    /// Random seed.
    pub seed: u64,
    /// The clock every timestamp is anchored to.
    pub now: NaiveDateTime,
    /// Hospitals are numbered `1..=hospitals`.
    pub hospitals: i64,
    /// Beds are numbered `1..=beds` in each hospital.
    pub beds: i64,
    /// Dirty-data rates.
    pub dirt: DirtRates,
}

/// What kind of malformed body was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A strict prefix of a JSON object: never valid JSON.
    Truncated,
    /// Random bytes, not UTF-8 text.
    Garbage,
    /// Valid JSON, but an array rather than an object.
    NotAnObject,
}

/// What the simulator did to one event — the ground truth silver is tested against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Truth {
    /// The body is not a JSON object.
    pub malformed: Option<Malformed>,
    /// Index into [`FIELDS`] of a left-out field.
    pub missing_field: Option<usize>,
    /// Index into [`FIELDS`] of a field with a wrong-typed value.
    pub wrong_type: Option<usize>,
    /// An exact re-send of the previous clean event.
    pub duplicate: bool,
    /// The age (present in the body) is over 100.
    pub old_age: bool,
    /// The admission time (present in the body) is in the future.
    pub future_admission: bool,
    /// A returning patient.
    pub returning: bool,
}

/// One simulated event: its body bytes, the partition key a producer would send it with, and the truth.
#[derive(Debug, Clone)]
pub struct SimulatedEvent {
    /// The event body (one NDJSON line without its newline).
    pub body: Vec<u8>,
    /// Partition key (the patient id), so one patient's events stay in order in one partition.
    pub partition_key: String,
    /// What was injected.
    pub truth: Truth,
}

/// Counts of everything the simulator injected.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Events emitted.
    pub events: u64,
    /// Truncated-JSON bodies.
    pub truncated_json: u64,
    /// Non-UTF-8 garbage bodies.
    pub garbage: u64,
    /// JSON arrays instead of objects.
    pub not_an_object: u64,
    /// Missing fields, by field name (seed order).
    pub missing: [u64; 8],
    /// Wrong-typed fields, by field name (seed order).
    pub wrong_type: [u64; 8],
    /// Exact duplicates.
    pub duplicates: u64,
    /// Over-age values present in rows that silver keeps (duplicates not counted).
    pub old_age: u64,
    /// Future admission times present in rows that silver keeps (duplicates not counted).
    pub future_admission: u64,
    /// Returning-patient visits.
    pub returning: u64,
}

impl Tally {
    fn add(&mut self, t: &Truth) {
        self.events += 1;
        match t.malformed {
            Some(Malformed::Truncated) => self.truncated_json += 1,
            Some(Malformed::Garbage) => self.garbage += 1,
            Some(Malformed::NotAnObject) => self.not_an_object += 1,
            None => {}
        }
        if let Some(f) = t.missing_field {
            self.missing[f] += 1;
        }
        if let Some(f) = t.wrong_type {
            self.wrong_type[f] += 1;
        }
        self.duplicates += u64::from(t.duplicate);
        let row = t.malformed.is_none() && t.wrong_type.is_none() && !t.duplicate;
        let row = row && t.missing_field != Some(0);
        self.old_age += u64::from(row && t.old_age);
        self.future_admission += u64::from(row && t.future_admission);
        self.returning += u64::from(t.returning);
    }
}

#[derive(Debug, Clone)]
struct Patient {
    id: String,
    gender: &'static str,
    age: i64,
}

/// An endless, deterministic stream of simulated events; use `.take(n)`.
#[derive(Debug)]
pub struct Simulator {
    rng: ChaCha8Rng,
    config: SimulationConfig,
    pool: Vec<Patient>,
    last_clean: Option<(Vec<u8>, String)>,
    tally: Tally,
}

impl Simulator {
    /// A simulator for `config` (validate the rates first with [`DirtRates::validate`]).
    pub fn new(config: SimulationConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            pool: Vec::new(),
            last_clean: None,
            tally: Tally::default(),
        }
    }

    /// What has been injected so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    fn patient(&mut self, truth: &mut Truth) -> Patient {
        if !self.pool.is_empty() && self.rng.random_bool(self.config.dirt.returning) {
            truth.returning = true;
            let i = self.rng.random_range(0..self.pool.len());
            // A birthday between visits changes the patient's attributes: a new DimPatient version.
            if self.rng.random_bool(0.5) && self.pool[i].age < 100 {
                self.pool[i].age += 1;
            }
            return self.pool[i].clone();
        }
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid().to_string();
        let patient = Patient {
            id,
            gender: GENDERS[self.rng.random_range(0..GENDERS.len())],
            age: self.rng.random_range(1..=100),
        };
        if self.pool.len() < PATIENT_POOL {
            self.pool.push(patient.clone());
        } else {
            let i = self.rng.random_range(0..PATIENT_POOL);
            self.pool[i] = patient.clone();
        }
        patient
    }

    fn clean_event(&mut self, truth: &mut Truth) -> PatientEvent {
        let patient = self.patient(truth);
        let mut age = patient.age;
        if self.rng.random_bool(self.config.dirt.old_age) {
            truth.old_age = true;
            age = self.rng.random_range(101..=150);
        }
        let now = self.config.now;
        let admission_time = if self.rng.random_bool(self.config.dirt.future_admission) {
            truth.future_admission = true;
            now + Duration::microseconds(self.rng.random_range(HOUR_US..=72 * HOUR_US))
        } else {
            now - Duration::microseconds(self.rng.random_range(0..=72 * HOUR_US))
        };
        let stay = Duration::microseconds(self.rng.random_range(HOUR_US..=72 * HOUR_US));
        PatientEvent {
            patient_id: patient.id,
            gender: patient.gender.to_string(),
            age,
            department: DEPARTMENTS[self.rng.random_range(0..DEPARTMENTS.len())].to_string(),
            admission_time,
            discharge_time: admission_time + stay,
            bed_id: self.rng.random_range(1..=self.config.beds),
            hospital_id: self.rng.random_range(1..=self.config.hospitals),
        }
    }

    fn next_event(&mut self) -> SimulatedEvent {
        let dirt = self.config.dirt;
        let roll: f64 = self.rng.random();
        let mut truth = Truth::default();

        let duplicate_at = dirt.malformed + dirt.missing_field + dirt.wrong_type;
        if roll >= duplicate_at
            && roll < duplicate_at + dirt.duplicate
            && let Some((body, key)) = self.last_clean.clone()
        {
            truth.duplicate = true;
            return SimulatedEvent { body, partition_key: key, truth };
        }

        let event = self.clean_event(&mut truth);
        let key = event.patient_id.clone();
        let body = if roll < dirt.malformed {
            self.malformed(&event, &mut truth)
        } else if roll < dirt.malformed + dirt.missing_field {
            let field = self.rng.random_range(0..FIELDS.len());
            truth.missing_field = Some(field);
            truth.old_age &= field != 2;
            truth.future_admission &= field != 4;
            let mut object = to_object(&event);
            object.remove(FIELDS[field]);
            json_bytes(&Value::Object(object))
        } else if roll < duplicate_at {
            let field = self.rng.random_range(0..FIELDS.len());
            truth.wrong_type = Some(field);
            let mut object = to_object(&event);
            object.insert(FIELDS[field].to_string(), wrong_value(field));
            json_bytes(&Value::Object(object))
        } else {
            let body = json_bytes(&event);
            self.last_clean = Some((body.clone(), key.clone()));
            body
        };
        SimulatedEvent { body, partition_key: key, truth }
    }

    fn malformed(&mut self, event: &PatientEvent, truth: &mut Truth) -> Vec<u8> {
        let clean = json_bytes(event);
        let kind = match self.rng.random_range(0..3) {
            0 => Malformed::Truncated,
            1 => Malformed::Garbage,
            _ => Malformed::NotAnObject,
        };
        truth.malformed = Some(kind);
        truth.old_age = false;
        truth.future_admission = false;
        match kind {
            Malformed::Truncated => clean[..self.rng.random_range(1..clean.len())].to_vec(),
            Malformed::Garbage => {
                let len = self.rng.random_range(8..64);
                // 0x80..=0xFF bytes: never valid UTF-8 on their own and never a newline, so the NDJSON
                // framing survives.
                (0..len).map(|_| self.rng.random_range(0x80..=0xFFu8)).collect()
            }
            Malformed::NotAnObject => {
                let mut array = b"[".to_vec();
                array.extend_from_slice(&clean);
                array.push(b']');
                array
            }
        }
    }
}

impl Iterator for Simulator {
    type Item = SimulatedEvent;

    fn next(&mut self) -> Option<SimulatedEvent> {
        let event = self.next_event();
        self.tally.add(&event.truth);
        Some(event)
    }
}

fn to_object(event: &PatientEvent) -> Map<String, Value> {
    match serde_json::to_value(event) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("PatientEvent serializes to an object"),
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A value of the wrong JSON type for field `i` of [`FIELDS`].
fn wrong_value(i: usize) -> Value {
    match FIELDS[i] {
        "patient_id" => json!(48213),
        "gender" => json!(1),
        "age" => json!("unknown"),
        "department" => json!(7),
        "admission_time" => json!(1_767_225_600),
        "discharge_time" => json!(true),
        "bed_id" => json!("B-12"),
        _ => json!("H5"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::parse_utc;

    fn config(seed: u64, dirt: DirtRates) -> SimulationConfig {
        SimulationConfig { seed, now: parse_utc("2026-11-24T12:00:00").unwrap(), hospitals: 7, beds: 500, dirt }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a: Vec<_> = Simulator::new(config(7, DirtRates::default())).take(500).map(|e| e.body).collect();
        let b: Vec<_> = Simulator::new(config(7, DirtRates::default())).take(500).map(|e| e.body).collect();
        let c: Vec<_> = Simulator::new(config(8, DirtRates::default())).take(500).map(|e| e.body).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn clean_events_follow_the_seed_contract() {
        let now = parse_utc("2026-11-24T12:00:00").unwrap();
        let dirt = DirtRates { old_age: 0.0, future_admission: 0.0, ..DirtRates::default() };
        for e in Simulator::new(config(1, dirt)).take(2_000) {
            let v: Value = serde_json::from_slice(&e.body).unwrap();
            let age = v["age"].as_i64().unwrap();
            assert!((1..=100).contains(&age));
            assert!(DEPARTMENTS.contains(&v["department"].as_str().unwrap()));
            assert!(GENDERS.contains(&v["gender"].as_str().unwrap()));
            assert!((1..=500).contains(&v["bed_id"].as_i64().unwrap()));
            assert!((1..=7).contains(&v["hospital_id"].as_i64().unwrap()));
            let adm = parse_utc(v["admission_time"].as_str().unwrap()).unwrap();
            let dis = parse_utc(v["discharge_time"].as_str().unwrap()).unwrap();
            assert!(adm <= now && now - adm <= Duration::hours(72));
            let stay = dis - adm;
            assert!(stay >= Duration::hours(1) && stay <= Duration::hours(72));
            assert_eq!(v["patient_id"].as_str().unwrap(), e.partition_key);
        }
    }

    #[test]
    fn returning_patients_keep_their_id_and_gender() {
        let dirt = DirtRates { returning: 0.5, ..DirtRates::default() };
        let mut seen = std::collections::HashMap::new();
        let mut returning = 0;
        for e in Simulator::new(config(3, dirt)).take(3_000) {
            let v: Value = serde_json::from_slice(&e.body).unwrap();
            let id = v["patient_id"].as_str().unwrap().to_string();
            let gender = v["gender"].as_str().unwrap().to_string();
            if let Some(g) = seen.insert(id, gender.clone()) {
                assert_eq!(g, gender);
                returning += 1;
            }
        }
        assert!(returning > 1_000, "{returning}");
    }

    #[test]
    fn rejects_rates_that_are_not_probabilities() {
        let bad = DirtRates { malformed: 1.5, ..DirtRates::default() };
        assert!(bad.validate().unwrap_err().contains("--malformed-rate"));
        let too_many = DirtRates { malformed: 0.6, wrong_type: 0.6, ..DirtRates::default() };
        assert!(too_many.validate().unwrap_err().contains("at most 1"));
    }
}
