//! Pure data: the patient-flow event contract and the Arrow schemas of every lake table. No I/O here.

pub mod event;
pub mod schema;
pub mod time;
