//! Reconciliation: finds bronze files that have no silver file and refines them. The blob trigger
//! normally does this within seconds; a file it gave up on (`poisonBlobThreshold` failed attempts —
//! a storage blip is enough — send the blob to the poison queue) would otherwise never reach silver
//! or gold. The gold timer runs this before it counts new silver files.
//!
//! Bounded cost: per Event Hubs partition, a watermark (`gold/_reconcile/watermarks.json`) records
//! the last bronze key up to which every bronze file has its silver file; each run lists bronze and
//! silver only after it, and refines at most `max_files` files. The watermark advances over the
//! leading run of files that are done (refined, or corrupt: retrying cannot help, and they are
//! counted and logged), so a run lists only what is recent or still missing.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::{Error, Result, silver};
use crate::storage::keys::{BatchStem, patient_flow_prefix};
use crate::storage::{Container, Lake};

/// Where the watermarks live in the gold container.
pub const WATERMARKS: &str = "_reconcile/watermarks.json";

/// What a reconciliation run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Bronze files looked at (after the watermarks).
    pub bronze_checked: u64,
    /// Bronze files found without a silver file.
    pub missing: u64,
    /// Of those, refined now.
    pub refined: u64,
    /// Of those, unreadable (corrupt): skipped for good.
    pub corrupt: u64,
    /// Of those, left for the next run (over `max_files`, or a storage error).
    pub deferred: u64,
    /// The bronze keys refined now or found corrupt.
    pub files: Vec<String>,
}

impl ReconcileReport {
    /// One line for logs (keys and counts only).
    pub fn summary(&self) -> String {
        format!(
            "reconciliation: {} bronze files checked, {} without silver: {} refined, {} corrupt, {} deferred",
            self.bronze_checked, self.missing, self.refined, self.corrupt, self.deferred
        )
    }
}

async fn read_watermarks(lake: &Lake) -> Result<BTreeMap<String, String>> {
    match lake.get(Container::Gold, &Path::from(WATERMARKS)).await {
        // An unreadable watermark file costs one full listing, nothing else.
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(crate::storage::Error::NotFound { .. }) => Ok(BTreeMap::new()),
        Err(e) => Err(e.into()),
    }
}

/// Refines up to `max_files` bronze files that have no silver file (oldest first per partition).
pub async fn reconcile(lake: &Lake, max_files: usize) -> Result<ReconcileReport> {
    let mut marks = read_watermarks(lake).await?;
    let before = marks.clone();
    let mut report = ReconcileReport::default();
    let mut budget = max_files;
    // Every partition's bronze and silver listings at once: a listing is a round trip to storage
    // (and on a local disk a metadata lookup per file), and nothing below changes what they list.
    let folders = lake.list_folders(Container::Bronze, &patient_flow_prefix()).await?;
    let listings = futures::future::try_join_all(folders.iter().map(|folder| {
        let partition = folder.as_ref().rsplit('/').next().unwrap_or_default().to_string();
        let after = marks.get(&partition).map(|k| Path::from(k.as_str()));
        async move {
            let (bronze, silver) = futures::future::try_join(
                lake.list_after(Container::Bronze, folder, after.as_ref()),
                lake.list_after(Container::Silver, folder, after.as_ref()),
            )
            .await?;
            let silver: HashSet<Path> = silver.into_iter().map(|m| m.location).collect();
            Ok::<_, Error>((partition, bronze, silver))
        }
    }))
    .await?;
    for (partition, bronze, silver) in listings {
        let mut advancing = true;
        for meta in bronze {
            report.bronze_checked += 1;
            let key = meta.location;
            let mut done = silver.contains(&key);
            if !done && let Some(stem) = BatchStem::parse_key(key.as_ref()) {
                report.missing += 1;
                if budget == 0 {
                    report.deferred += 1;
                } else {
                    budget -= 1;
                    match silver::process_from_lake(lake, &stem).await {
                        Ok(m) => {
                            report.refined += 1;
                            report.files.push(key.to_string());
                            tracing::warn!(bronze = %key, rows_out = m.rows_out, "Reconciliation refined a bronze file the blob trigger had not.");
                            done = true;
                        }
                        Err(e @ Error::Corrupt { .. }) => {
                            report.corrupt += 1;
                            report.files.push(key.to_string());
                            tracing::error!(bronze = %key, error = %e, "Reconciliation found a corrupt bronze file; skipped.");
                            done = true;
                        }
                        Err(e) => {
                            report.deferred += 1;
                            tracing::warn!(bronze = %key, error = %e, "Reconciliation could not refine a bronze file; retried next run.");
                        }
                    }
                }
            } else if !done {
                // Not a batch file (nothing the blob trigger would take either).
                done = true;
            }
            advancing &= done;
            if advancing {
                marks.insert(partition.clone(), key.to_string());
            }
        }
    }
    if marks != before {
        let bytes = serde_json::to_vec(&marks).map_err(|e| Error::Internal(e.to_string()))?;
        lake.put(Container::Gold, &Path::from(WATERMARKS), Bytes::from(bytes)).await?;
    }
    if report.missing > 0 {
        tracing::warn!(
            checked = report.bronze_checked,
            missing = report.missing,
            refined = report.refined,
            corrupt = report.corrupt,
            deferred = report.deferred,
            "Reconciliation run."
        );
    }
    Ok(report)
}
