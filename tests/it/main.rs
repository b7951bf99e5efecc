//! The single integration-test binary (one link instead of one per file).

mod adf;
mod cli;
mod eventhubs;
// Compares warehouse KPIs too, so it needs the embedded warehouse.
#[cfg(feature = "embedded-warehouse")]
mod exactly_once;
mod functions;
mod gold;
// Loads of synthetic gold file sets into the embedded warehouse.
#[cfg(feature = "embedded-warehouse")]
mod loads;
mod pipeline;
mod properties;
// Every lake file read back by pyarrow.
mod readers;
// `run` loads the embedded warehouse.
#[cfg(feature = "embedded-warehouse")]
mod run_clock;
#[cfg(feature = "embedded-warehouse")]
mod seed_kpis;
mod synapse;
mod util;
mod warehouse;
