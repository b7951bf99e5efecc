//! The single integration-test binary (one link instead of one per file).

mod adf;
mod cli;
mod eventhubs;
mod functions;
mod gold;
mod pipeline;
mod synapse;
mod util;
mod warehouse;
