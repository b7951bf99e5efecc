//! Retention: what [`cleanup`] deletes from the gold container, decided from gold's own records and
//! one clock — the build's — never from the objects' modification times.
//!
//! - A manifest is kept when it is the latest, or its `as_of` is within the retention of the clock
//!   (readers of a recent build finish first); older ones are deleted.
//! - A build file is kept when a kept manifest references it. Otherwise its folder's build number
//!   (`builds/<number>-<nonce>/…`) decides: at or below the latest committed build, the build can
//!   never commit (its number is taken) — it lost a race, failed, or was superseded — so the file
//!   is garbage; above the latest, it may belong to a build in flight and is kept.

use std::collections::HashSet;

use object_store::path::Path;

use super::manifest::{self, BUILDS};
use super::{GoldOptions, Result};
use crate::storage::{Container, Lake};

/// The build number of a build file's folder (`builds/0000000007-<nonce>/…` → 7).
pub fn build_number_of(key: &str) -> Option<u64> {
    let folder = key.strip_prefix(BUILDS)?.strip_prefix('/')?.split('/').next()?;
    folder.split_once('-').map_or(folder, |(n, _)| n).parse().ok()
}

/// Deletes manifests older than the retention (never the latest) and build files no kept manifest
/// references whose build number is at or below the latest (see the module doc). Returns how many
/// objects it deleted.
pub async fn cleanup(lake: &Lake, options: &GoldOptions) -> Result<u64> {
    let cutoff = options.now - chrono::Duration::from_std(options.retention).unwrap_or_default();
    let numbers = manifest::build_numbers(lake).await?;
    let Some(&latest) = numbers.last() else { return Ok(0) };
    let mut keep: HashSet<String> = HashSet::new();
    let mut deleted = 0;
    for &n in numbers.iter().rev() {
        let m = match manifest::read(lake, n).await {
            Ok(m) => m,
            // Another builder's cleanup deleted it meanwhile.
            Err(super::Error::Storage(crate::storage::Error::NotFound { .. })) => continue,
            Err(e) => return Err(e),
        };
        let recent = crate::model::time::parse_utc(&m.as_of).is_none_or(|t| t >= cutoff);
        if n == latest || recent {
            keep.extend(m.files());
        } else {
            lake.delete(Container::Gold, &manifest::manifest_key(n)).await?;
            deleted += 1;
        }
    }
    for meta in lake.list(Container::Gold, &Path::from(BUILDS)).await? {
        let key = meta.location.as_ref();
        let settled = build_number_of(key).is_some_and(|n| n <= latest);
        if settled && !keep.contains(key) {
            lake.delete(Container::Gold, &meta.location).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_numbers() {
        assert_eq!(build_number_of("builds/0000000007-00ff00ff00ff00ff/dim_time.parquet"), Some(7));
        assert_eq!(build_number_of("builds/0000000012-ab/fact_patient_flow/visit_date=2026-11-24.parquet"), Some(12));
        assert_eq!(build_number_of("builds/x-ab/dim_time.parquet"), None);
        assert_eq!(build_number_of("_manifests/00000000000000000001.json"), None);
    }
}
