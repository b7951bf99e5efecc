//! The single integration-test binary (one link instead of one per file).

mod adf;
mod cli;
mod eventhubs;
mod exactly_once;
mod functions;
mod gold;
mod pipeline;
mod properties;
mod run_clock;
#[cfg(feature = "embedded-warehouse")]
mod seed_kpis;
mod synapse;
mod util;
