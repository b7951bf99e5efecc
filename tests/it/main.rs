//! The single integration-test binary (one link instead of one per file).

mod adf;
mod cli;
mod eventhubs;
mod exactly_once;
mod functions;
mod gold;
mod pipeline;
mod run_clock;
mod seed_kpis;
mod synapse;
mod util;
