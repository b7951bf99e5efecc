//! Retention: what [`cleanup`] deletes from the gold container, decided from gold's own records and
//! one clock — the build's — never from the objects' modification times. Its cost follows what
//! expires and what failed, not the size of gold or of the retention window.
//!
//! - Manifests expire oldest first: the oldest is deleted when it is not the latest and its `as_of`
//!   is past the retention of the clock (readers of a recent build finish first). Each manifest
//!   lists the files the build before it referenced and it no longer does (`removed`); once a
//!   build's manifest expires, the files its successor removed are referenced by no manifest left,
//!   and are deleted with it. So each manifest is read about twice in its life.
//! - A build that never committed (it lost the race for its number, or failed) leaves a folder
//!   `builds/<number>-<nonce>` beside the committed build's folder of that number. Cleanup lists
//!   the build folders (names only) and, for a number with more than one, deletes every folder but
//!   the one its manifest names. Folders numbered above the latest build may belong to builds in
//!   flight and are kept. The latest build's own folder loses any file it does not reference (left
//!   by an earlier attempt at the same build that crashed).

use std::collections::{BTreeMap, HashSet};

use object_store::path::Path;

use super::manifest::{self, BUILDS, Manifest};
use super::{GoldOptions, Result};
use crate::storage::{Container, Lake};

/// The build number of a build file's folder (`builds/0000000007-<nonce>/…` → 7).
pub fn build_number_of(key: &str) -> Option<u64> {
    let folder = key.strip_prefix(BUILDS)?.strip_prefix('/')?.split('/').next()?;
    folder.split_once('-').map_or(folder, |(n, _)| n).parse().ok()
}

/// Build `n`'s manifest, or `None` when another cleanup deleted it meanwhile.
async fn read(lake: &Lake, n: u64) -> Result<Option<Manifest>> {
    match manifest::read(lake, n).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if super::is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes expired manifests with the files only they referenced, and the files of builds that
/// never committed (see the module doc). Returns how many objects it deleted.
pub async fn cleanup(lake: &Lake, options: &GoldOptions) -> Result<u64> {
    let cutoff = options.now - chrono::Duration::from_std(options.retention).unwrap_or_default();
    let numbers = manifest::build_numbers(lake).await?;
    let Some(&latest) = numbers.last() else { return Ok(0) };
    let mut deleted = 0;

    let mut current = None;
    for pair in numbers.windows(2) {
        let [n, next] = [pair[0], pair[1]];
        let Some(m) = (match current.take() {
            Some(m) => Some(m),
            None => read(lake, n).await?,
        }) else {
            continue;
        };
        let expired = crate::model::time::parse_utc(&m.as_of).is_some_and(|t| t < cutoff);
        if !expired {
            break;
        }
        let Some(successor) = read(lake, next).await? else { continue };
        for file in &successor.removed {
            lake.delete(Container::Gold, &Path::from(file.as_str())).await?;
            deleted += 1;
        }
        lake.delete(Container::Gold, &manifest::manifest_key(n)).await?;
        deleted += 1;
        current = Some(successor);
    }

    let mut folders: BTreeMap<u64, Vec<Path>> = BTreeMap::new();
    for folder in lake.list_folders(Container::Gold, &Path::from(BUILDS)).await? {
        if let Some(n) = build_number_of(&format!("{folder}/")).filter(|&n| n <= latest) {
            folders.entry(n).or_default().push(folder);
        }
    }
    for (n, folders) in folders {
        if folders.len() < 2 && n != latest {
            continue;
        }
        // An expired number's folders are left alone: which one committed is no longer known.
        let Some(m) = read(lake, n).await? else { continue };
        let committed = format!("{BUILDS}/{}", m.build_id);
        let referenced: HashSet<String> = if n == latest { m.files().into_iter().collect() } else { HashSet::new() };
        for folder in folders {
            let is_committed = folder.as_ref() == committed;
            if is_committed && n != latest {
                continue;
            }
            for meta in lake.list(Container::Gold, &folder).await? {
                if !is_committed || !referenced.contains(meta.location.as_ref()) {
                    lake.delete(Container::Gold, &meta.location).await?;
                    deleted += 1;
                }
            }
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
        let mut manifests = [build(1, hours(30), 1), build(2, hours(2), 2), build(3, hours(1), 2)];
        for i in 1..manifests.len() {
            let next: std::collections::HashSet<String> = manifests[i].files().into_iter().collect();
            manifests[i].removed = manifests[i - 1].removed_by(&next);
        }
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
