//! The warehouse seam: the gold build is loaded, idempotently per build, into a [`Warehouse`] — the
//! embedded DuckDB database by default (feature `embedded-warehouse`), Synapse when configured.

#[cfg(feature = "embedded-warehouse")]
pub mod embedded;
pub mod report;
pub mod synapse;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::pipeline::gold::manifest::Manifest;
use crate::storage::Lake;

/// Warehouse errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The warehouse rejected a statement or could not be opened.
    #[error("warehouse: {0}")]
    Database(String),
    /// Reading the gold files failed.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::Error),
    /// Another process holds the warehouse (a load is in progress) longer than the wait allows.
    #[error("{0}")]
    Busy(String),
    /// The warehouse holds a newer build than the one offered.
    #[error("warehouse already holds build {loaded}, newer than build {offered}; nothing loaded")]
    Newer {
        /// Build in the warehouse.
        loaded: u64,
        /// Build offered.
        offered: u64,
    },
}

/// Result alias for warehouse calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadMetrics {
    /// The build now in the warehouse.
    pub build: u64,
    /// `false` when the build was already loaded (nothing changed).
    pub loaded: bool,
    /// Fact partitions replaced.
    pub partitions_replaced: u64,
    /// Fact rows written.
    pub fact_rows_written: u64,
    /// Fact rows in the warehouse after the load.
    pub fact_rows_total: u64,
}

/// What the load of one build does to fact days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactChanges {
    /// Days (YYYY-MM-DD) whose gold file differs from the one loaded, with the new file.
    pub replace: Vec<(String, String)>,
    /// Days loaded before that the build no longer has.
    pub remove: Vec<String>,
}

/// Compares a build's fact days with the gold file each day was last loaded from (the
/// warehouse's `LoadedPartition`): both loaders replace only what changed.
pub fn fact_changes(manifest: &Manifest, loaded: &BTreeMap<String, String>) -> FactChanges {
    let replace = manifest
        .fact_patient_flow
        .iter()
        .filter(|(day, p)| loaded.get(*day) != Some(&day_files(p)))
        .map(|(day, p)| (day.clone(), day_files(p)))
        .collect();
    let remove = loaded.keys().filter(|d| !manifest.fact_patient_flow.contains_key(*d)).cloned().collect();
    FactChanges { replace, remove }
}

/// TEMPORARY: a day's files joined by `|`.
pub fn day_files(p: &crate::pipeline::gold::manifest::FactPartition) -> String {
    p.files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>().join("|")
}

/// A star-schema warehouse that gold builds are loaded into.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Loads build `manifest.build` from the lake, in one transaction; a build already loaded is a no-op.
    async fn load(&self, lake: &Lake, manifest: &Manifest) -> Result<LoadMetrics>;

    /// The build the warehouse holds, if any.
    async fn loaded_build(&self) -> Result<Option<u64>>;

    /// The KPI report from the loaded build.
    async fn report(&self) -> Result<report::Report>;

    /// A short name for logs.
    fn name(&self) -> &'static str;
}
