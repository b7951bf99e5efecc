//! The patient-flow event as hospitals send it (the seed's contract, DESIGN.md §2).
//!
//! Producers emit this shape; the silver step parses bodies leniently into [`crate::pipeline::silver`]
//! rows, so this struct describes the *clean* form only.

use chrono::NaiveDateTime;
use serde::Serialize;

/// Departments the simulator draws from. Silver keeps any department name it receives, so a new
/// department in a real feed is data, not an error.
pub const DEPARTMENTS: [&str; 7] = ["Emergency", "Surgery", "ICU", "Pediatrics", "Maternity", "Oncology", "Cardiology"];

/// Genders in the seed's contract.
pub const GENDERS: [&str; 2] = ["Male", "Female"];

/// The highest plausible age; older ages are data-entry errors and are capped in silver.
pub const MAX_AGE: i64 = 100;

/// What an over-age record is corrected to (the seed's rule).
pub const CAPPED_AGE: i32 = 90;

/// The earliest timestamp silver accepts (inclusive): 1900-01-01T00:00:00. Older values are data-entry
/// errors or placeholders (`0001-01-01`) and go to quarantine as `out_of_range`.
pub const MIN_TIMESTAMP_YEAR: i32 = 1900;

/// The latest year silver accepts: timestamps from 2101-01-01T00:00:00 on are placeholders such as
/// `9999-12-31` ("still admitted") and go to quarantine as `out_of_range`.
pub const MAX_TIMESTAMP_YEAR: i32 = 2100;

/// The longest stay silver accepts, in days (discharge minus the corrected admission). A longer stay
/// is almost surely a placeholder or a typo in the year; the event goes to quarantine as
/// `out_of_range` on `discharge_time` rather than skewing every length-of-stay figure.
pub const MAX_STAY_DAYS: i64 = 365;

/// The eight fields of a patient-flow event, in the seed's order.
pub const FIELDS: [&str; 8] =
    ["patient_id", "gender", "age", "department", "admission_time", "discharge_time", "bed_id", "hospital_id"];

/// One admission/discharge event in its clean form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientEvent {
    /// Stable patient identifier (a UUID in the simulator).
    pub patient_id: String,
    /// `Male` or `Female`.
    pub gender: String,
    /// Age in years.
    pub age: i64,
    /// Department name.
    pub department: String,
    /// Naive UTC admission time.
    #[serde(serialize_with = "crate::model::time::serialize_naive")]
    pub admission_time: NaiveDateTime,
    /// Naive UTC discharge time (planned or actual).
    #[serde(serialize_with = "crate::model::time::serialize_naive")]
    pub discharge_time: NaiveDateTime,
    /// Bed number within the hospital.
    pub bed_id: i64,
    /// Hospital number within the network.
    pub hospital_id: i64,
}
