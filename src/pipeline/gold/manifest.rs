//! Gold builds are committed by a manifest: `gold/_manifests/<build number>.json`, written
//! create-if-absent. A build's table files are written first under their own folder; the manifest
//! put is the single atomic commit. Readers take the highest manifest, so they see the previous
//! build or the new one, never a mix; two builds racing for the same number cannot both commit.

use std::collections::BTreeMap;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::pipeline::{Error, Result};
use crate::storage::{Container, Lake, PutOutcome};

/// Where manifests live in the gold container.
pub const MANIFESTS: &str = "_manifests";
/// Where build files live in the gold container.
pub const BUILDS: &str = "builds";

/// One immutable parquet file of a gold table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFile {
    /// Key in the gold container.
    pub file: String,
    /// Rows in the file.
    pub rows: u64,
    /// No row's key (DimPatient: `patient_id`; FactPatientFlow: `fact_id`) is in any file of the
    /// previous build: a loader appends it without deleting anything first.
    #[serde(default)]
    pub fresh: bool,
    /// Facts only: the earliest instant after the build's clock at which some row's
    /// `is_currently_admitted` flips; a later build past it rewrites the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change_us: Option<i64>,
    /// Facts only: the other days (`YYYY-MM-DD`) whose hours the rows reference (discharges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discharge_days: Vec<String>,
}

/// One fact partition (a visit date): its files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FactPartition {
    /// The partition's files.
    pub files: Vec<TableFile>,
    /// The other days (`YYYY-MM-DD`) whose hours the rows reference (discharges); DimTime holds
    /// every hour of the partition days and of these.
    #[serde(default)]
    pub discharge_days: Vec<String>,
}

impl FactPartition {
    /// Rows in the partition.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// The earliest instant at which some row's `is_currently_admitted` flips.
    pub fn next_change_us(&self) -> Option<i64> {
        self.files.iter().filter_map(|f| f.next_change_us).min()
    }
}

/// The committed state of gold after one build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Build number, from 1.
    pub build: u64,
    /// Unique id of this build's files (build number and a nonce).
    pub build_id: String,
    /// The build's clock (RFC 3339): `is_currently_admitted` is as of this instant.
    pub as_of: String,
    /// Every silver file folded into gold so far (sorted).
    pub silver_files: Vec<String>,
    /// DimDepartment file.
    pub dim_department: String,
    /// DimPatient files: each patient is in exactly one (the `i`-th belongs to ledger segment `i`).
    pub dim_patient: Vec<TableFile>,
    /// DimTime file.
    pub dim_time: String,
    /// FactPatientFlow partitions by visit date (`YYYY-MM-DD`).
    pub fact_patient_flow: BTreeMap<String, FactPartition>,
    /// Row counts per table.
    pub rows: BTreeMap<String, u64>,
    /// The visit ledger's segments, oldest first (see `gold::ledger`); `None` in a gold built
    /// before the ledger existed, which the next build rebuilds from silver.
    #[serde(default)]
    pub ledger: Option<Vec<TableFile>>,
}

impl Manifest {
    /// Every file this build references.
    pub fn files(&self) -> Vec<String> {
        let mut files = vec![self.dim_department.clone(), self.dim_time.clone()];
        files.extend(self.dim_patient.iter().map(|f| f.file.clone()));
        files.extend(self.fact_patient_flow.values().flat_map(|p| p.files.iter().map(|f| f.file.clone())));
        for segment in self.ledger.iter().flatten() {
            files.push(segment.file.clone());
            files.push(super::ledger::keys_file(&segment.file));
        }
        files.retain(|f| !f.is_empty());
        files
    }
}

/// The key of build `n`'s manifest.
pub fn manifest_key(n: u64) -> Path {
    Path::from(format!("{MANIFESTS}/{n:020}.json"))
}

fn parse_number(key: &str) -> Option<u64> {
    key.strip_prefix(MANIFESTS)?.strip_prefix('/')?.strip_suffix(".json")?.parse().ok()
}

/// All committed build numbers, ascending.
pub async fn build_numbers(lake: &Lake) -> Result<Vec<u64>> {
    let mut numbers: Vec<u64> = lake
        .list(Container::Gold, &Path::from(MANIFESTS))
        .await?
        .iter()
        .filter_map(|m| parse_number(m.location.as_ref()))
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Reads build `n`'s manifest.
pub async fn read(lake: &Lake, n: u64) -> Result<Manifest> {
    let key = manifest_key(n);
    let bytes = lake.get(Container::Gold, &key).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { key: key.to_string(), detail: e.to_string() })
}

/// The latest committed manifest, or `None` before the first build.
pub async fn latest(lake: &Lake) -> Result<Option<Manifest>> {
    match build_numbers(lake).await?.last() {
        Some(&n) => read(lake, n).await.map(Some),
        None => Ok(None),
    }
}

/// Commits `manifest` as build `manifest.build`. Fails with [`Error::Conflict`] if another build
/// committed that number first.
pub async fn commit(lake: &Lake, manifest: &Manifest) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
    match lake.put_if_absent(Container::Gold, &manifest_key(manifest.build), Bytes::from(bytes)).await? {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExists => Err(Error::Conflict(format!(
            "gold build {} was committed by another builder first; this build's files are discarded",
            manifest.build
        ))),
    }
}
