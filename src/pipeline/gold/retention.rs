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
    use crate::model::time::{parse_utc, rfc3339};
    use crate::pipeline::gold::manifest::{FactPartition, Manifest, TableFile};
    use crate::storage::StorageConfig;
    use bytes::Bytes;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn build(n: u64, as_of: chrono::NaiveDateTime, fact_from: u64) -> Manifest {
        let dir = |b: u64| format!("{BUILDS}/{b:010}-00000000000000aa");
        let mut m = Manifest {
            build: n,
            build_id: format!("{n:010}-00000000000000aa"),
            as_of: rfc3339(&as_of),
            dim_department: format!("{}/dim_department.parquet", dir(n)),
            dim_patient: vec![TableFile {
                file: format!("{}/dim_patient.parquet", dir(n)),
                rows: 1,
                ..Default::default()
            }],
            dim_time: format!("{}/dim_time.parquet", dir(n)),
            ..Default::default()
        };
        // The fact day is unchanged since build `fact_from`: its file stays in that folder.
        let file = format!("{}/fact_patient_flow/visit_date=2026-11-24.parquet", dir(fact_from));
        // and the build adds a file of new visits to it; the ledger is one file per build.
        let added = format!("{}/fact_patient_flow/visit_date=2026-11-24/new.parquet", dir(n));
        let files = vec![
            TableFile { file, rows: 1, ..Default::default() },
            TableFile { file: added, rows: 1, fresh: true, next_change_us: Some(1), ..Default::default() },
        ];
        m.ledger = Some(vec![TableFile {
            file: format!("{}/ledger/bucket=000.parquet", dir(n)),
            rows: 1,
            ..Default::default()
        }]);
        m.fact_patient_flow.insert("2026-11-24".into(), FactPartition { files, discharge_days: Default::default() });
        m
    }

    /// Builds 1 (old), 2 (recent), 3 (latest, sharing build 2's fact file); a loser of the race for
    /// number 3 and a build 4 still in flight. Returns what cleanup left, as of `now`.
    async fn scenario(now: chrono::NaiveDateTime) -> BTreeSet<String> {
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        let hours = |h: i64| now - chrono::Duration::hours(h);
        let manifests = [build(1, hours(30), 1), build(2, hours(2), 2), build(3, hours(1), 2)];
        let mut files: Vec<String> = manifests.iter().flat_map(Manifest::files).collect();
        files.push(format!("{BUILDS}/0000000003-00000000000000bb/dim_time.parquet"));
        files.push(format!("{BUILDS}/0000000004-00000000000000cc/dim_time.parquet"));
        for f in &files {
            lake.put(Container::Gold, &Path::from(f.as_str()), Bytes::from_static(b"x")).await.unwrap();
        }
        for m in &manifests {
            manifest::commit(&lake, m).await.unwrap();
        }
        let options = GoldOptions::new(now, Duration::from_secs(24 * 3600));
        cleanup(&lake, &options).await.unwrap();
        let left = lake.list(Container::Gold, &Path::from("")).await.unwrap();
        left.into_iter().map(|m| m.location.to_string()).collect()
    }

    #[tokio::test]
    async fn retention_follows_the_build_clock_alone() {
        // The objects' real modification times are "now" on this machine; the verdict must not
        // depend on them: the same scenario decades apart in either direction leaves the same keys.
        let left = scenario(parse_utc("2026-11-24T12:00:00").unwrap()).await;
        for other in ["1999-01-01T00:00:00", "2031-06-01T12:00:00", "2077-03-15T08:30:00"] {
            assert_eq!(scenario(parse_utc(other).unwrap()).await, left, "{other}");
        }
        let expected: BTreeSet<String> = [
            "_manifests/00000000000000000002.json",
            "_manifests/00000000000000000003.json",
            "builds/0000000002-00000000000000aa/dim_department.parquet",
            "builds/0000000002-00000000000000aa/dim_patient.parquet",
            "builds/0000000002-00000000000000aa/dim_time.parquet",
            "builds/0000000002-00000000000000aa/fact_patient_flow/visit_date=2026-11-24.parquet",
            "builds/0000000002-00000000000000aa/fact_patient_flow/visit_date=2026-11-24/new.parquet",
            "builds/0000000002-00000000000000aa/ledger/bucket=000.keys.parquet",
            "builds/0000000002-00000000000000aa/ledger/bucket=000.parquet",
            "builds/0000000003-00000000000000aa/dim_department.parquet",
            "builds/0000000003-00000000000000aa/dim_patient.parquet",
            "builds/0000000003-00000000000000aa/dim_time.parquet",
            "builds/0000000003-00000000000000aa/fact_patient_flow/visit_date=2026-11-24/new.parquet",
            "builds/0000000003-00000000000000aa/ledger/bucket=000.keys.parquet",
            "builds/0000000003-00000000000000aa/ledger/bucket=000.parquet",
            "builds/0000000004-00000000000000cc/dim_time.parquet",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(left, expected, "build 1 expired, the loser of number 3 is garbage, build 4 may be in flight");
    }

    #[test]
    fn folder_numbers() {
        assert_eq!(build_number_of("builds/0000000007-00ff00ff00ff00ff/dim_time.parquet"), Some(7));
        assert_eq!(build_number_of("builds/0000000012-ab/fact_patient_flow/visit_date=2026-11-24.parquet"), Some(12));
        assert_eq!(build_number_of("builds/x-ab/dim_time.parquet"), None);
        assert_eq!(build_number_of("_manifests/00000000000000000001.json"), None);
    }
}
