//! patientflow: a real-time patient-flow pipeline (Event Hubs → bronze → silver → gold → warehouse)
//! that runs as an Azure Functions custom handler, plus its simulator and local runner.

/// Azure Data Factory webhook callbacks.
pub mod adf;
/// The HTTP application: router, serving.
pub mod app;
/// The command line.
pub mod cli;
/// Settings from flags and app settings.
pub mod config;
/// Sending simulated events to Azure Event Hubs.
pub mod eventhubs;
/// The Functions: thin handlers over the pipeline.
pub mod functions;
/// A local stand-in for the Functions host (used by `run`, `bench` and tests).
pub mod local_host;
/// Giving freed memory back to the operating system.
pub mod memory;
/// Pure data: the event contract and table schemas.
pub mod model;
/// Byte copies and comparisons the static musl build uses in place of musl's.
#[cfg(target_arch = "x86_64")]
pub mod musl_mem;
/// Deployable Function App folders.
pub mod package;
/// The pipeline core: bronze, silver, gold.
pub mod pipeline;
/// `patientflow run`.
pub mod run;
/// The hospital simulator.
pub mod simulate;
/// State shared by the functions (below the routes).
pub mod state;
/// The lake over object_store.
pub mod storage;
/// Logging setup.
pub mod telemetry;
/// The warehouse: the trait, the embedded DuckDB database, the KPI report.
pub mod warehouse;
