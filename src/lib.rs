//! patientflow: a real-time patient-flow pipeline (Event Hubs → bronze → silver → gold → warehouse)
//! that runs as an Azure Functions custom handler, plus its simulator and local runner.
//!
//! Each module's own docs (`//!`) describe it; they carry no outer `///` here, which would make
//! rustdoc resolve the intra-doc links of both in this crate root's scope.

pub mod adf;
pub mod app;
pub mod cli;
pub mod config;
pub mod eventhubs;
pub mod functions;
pub mod local_host;
pub mod memory;
pub mod model;
#[cfg(target_arch = "x86_64")]
pub mod musl_mem;
pub mod package;
pub mod pipeline;
pub mod run;
pub mod simulate;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod warehouse;
