//! Gold builds are committed by a manifest: `gold/_manifests/<build number>.json`, written
//! create-if-absent. A build's table files are written first under their own folder; the manifest
//! put is the single atomic commit. Readers take the highest manifest, so they see the previous
//! build or the new one, never a mix; two builds racing for the same number cannot both commit.
//!
//! Each gold table is a set of immutable parquet files ([`TableFile`]); a build adds files and
//! drops others, and loaders follow by the file names alone (see `warehouse::file_changes`).
//! Manifests written before tables were file sets (one file per fact day and one DimPatient file),
//! or before they recorded silver as sequence ranges ([`Folded`]), do not deserialize: such a gold is
//! rebuilt from silver (see the README, "Upgrading").

use std::collections::BTreeMap;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::pipeline::{Error, Result};
use crate::storage::keys::BatchStem;
use crate::storage::{Container, Lake, PutOutcome};

/// Where manifests live in the gold container.
pub const MANIFESTS: &str = "_manifests";
/// Where build files live in the gold container.
pub const BUILDS: &str = "builds";

/// One immutable parquet file of a gold table. Files are never rewritten and their names are unique:
/// a build adds some files to a table and drops others (Delta Lake's model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFile {
    /// The file's key in the gold container.
    pub file: String,
    /// Rows in the file.
    pub rows: u64,
    /// No row's key (DimPatient: `patient_id`; FactPatientFlow: `fact_id`) is in any file of the
    /// previous build: a loader appends the file without deleting anything first.
    #[serde(default)]
    pub fresh: bool,
    /// Facts only: the earliest instant after the build's clock at which some row's
    /// `is_currently_admitted` flips (an admission or discharge still in the future); `None` when
    /// nothing will change. A later build past this instant rewrites the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change_us: Option<i64>,
    /// Facts only: the other days (`YYYY-MM-DD`) whose hours the file's rows reference
    /// (discharges); its partition's `discharge_days` is the union over its files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discharge_days: Vec<String>,
}

/// One fact partition (a visit date) in a build: the files that hold its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactPartition {
    /// The partition's files; each `fact_id` is in exactly one file of the build.
    pub files: Vec<TableFile>,
    /// The other days (`YYYY-MM-DD`) whose hours the rows reference (discharges); DimTime holds
    /// every hour of the partition days and of these.
    #[serde(default)]
    pub discharge_days: Vec<String>,
}

impl FactPartition {
    /// Rows in the partition (all its files).
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// The earliest census flip of any of its files (see [`TableFile::next_change_us`]).
    pub fn next_change_us(&self) -> Option<i64> {
        self.files.iter().filter_map(|f| f.next_change_us).min()
    }
}

/// The committed state of gold after one build.
///
/// Invariants every build keeps (loaders rely on them): within one manifest each `patient_id` is in
/// exactly one DimPatient file and each `fact_id` in exactly one fact file; a key present in build N
/// is present in every later build (rows move between files, never vanish); files are immutable
/// and their names unique.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Build number, from 1.
    pub build: u64,
    /// Unique id of this build's files (build number and a nonce).
    pub build_id: String,
    /// The build's clock (RFC 3339): `is_currently_admitted` is as of this instant.
    pub as_of: String,
    /// The silver files folded into gold so far, as sequence ranges per partition (its size
    /// follows the gaps between folded batches, not the number of files).
    pub silver: Folded,
    /// DimDepartment file (small: loaders replace the table whole).
    pub dim_department: String,
    /// DimPatient files; each `patient_id` (all its SCD2 versions) is in exactly one (the `i`-th
    /// belongs to ledger segment `i`).
    pub dim_patient: Vec<TableFile>,
    /// DimTime file (small: loaders replace the table whole).
    pub dim_time: String,
    /// FactPatientFlow partitions by visit date (`YYYY-MM-DD`).
    pub fact_patient_flow: BTreeMap<String, FactPartition>,
    /// Row counts per table.
    pub rows: BTreeMap<String, u64>,
    /// The visit ledger's segments, oldest first (gold-internal, see `gold::ledger`; each has a key
    /// sidecar); the `i`-th pairs with DimPatient file `i`. Loaders never read them. `None` in a
    /// gold built before the ledger existed, which the next build rebuilds from silver.
    #[serde(default)]
    pub ledger: Option<Vec<TableFile>>,
    /// The files the previous build referenced and this one does not: cleanup deletes them once
    /// the previous build's manifest expires (see `gold::retention`).
    #[serde(default)]
    pub removed: Vec<String>,
}

/// Which silver files gold has folded in: per Event Hubs partition, the sequence ranges of the
/// folded batches, merged (`[first, last]`, inclusive, sorted, neither overlapping nor adjacent).
///
/// A silver file is one batch, `partition=<p>/<first>-<last>`, and an Event Hubs (partition,
/// sequence number) is one event: a file is folded when its whole range is. That holds because a
/// build records a file's range only together with every silver file that overlaps it (a
/// redelivered batch's file holds only the events no earlier file held; see `gold`'s
/// `overlap_groups`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Folded(BTreeMap<String, Vec<[i64; 2]>>);

impl Folded {
    /// Whether every event of the batch `stem` is folded.
    pub fn contains(&self, stem: &BatchStem) -> bool {
        let Some(ranges) = self.0.get(&stem.partition) else { return false };
        // The last range starting at or before `first_seq` is the only one that can hold it.
        let i = ranges.partition_point(|r| r[0] <= stem.first_seq);
        i > 0 && ranges[i - 1][1] >= stem.last_seq
    }

    /// Records the batch `stem` as folded.
    pub fn insert(&mut self, stem: &BatchStem) {
        let (first, last) = (stem.first_seq.min(stem.last_seq), stem.first_seq.max(stem.last_seq));
        let ranges = self.0.entry(stem.partition.clone()).or_default();
        // Ranges that overlap or touch [first, last] are merged into it.
        let start = ranges.partition_point(|r| r[1].saturating_add(1) < first);
        let end = ranges.partition_point(|r| r[0] <= last.saturating_add(1));
        let merged = ranges[start..end].iter().fold([first, last], |acc, r| [acc[0].min(r[0]), acc[1].max(r[1])]);
        ranges.splice(start..end, [merged]);
    }

    /// Partitions and their ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, &[[i64; 2]])> {
        self.0.iter().map(|(p, r)| (p.as_str(), r.as_slice()))
    }

    /// Nothing folded yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Manifest {
    /// Every file this build references (the ledger's too).
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

    /// The files of this build that `next` (the files of the build after it) no longer references,
    /// sorted (a fresh gold's first build removes nothing).
    pub fn removed_by(&self, next: &std::collections::HashSet<String>) -> Vec<String> {
        let mut removed: Vec<String> = self.files().into_iter().filter(|f| !next.contains(f)).collect();
        removed.sort_unstable();
        removed.dedup();
        removed
    }

    /// Every fact file of the build, across partitions.
    pub fn fact_files(&self) -> impl Iterator<Item = &TableFile> {
        self.fact_patient_flow.values().flat_map(|p| p.files.iter())
    }

    /// The earliest census flip recorded in any fact partition.
    pub fn next_change_us(&self) -> Option<i64> {
        self.fact_patient_flow.values().filter_map(FactPartition::next_change_us).min()
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
    serde_json::from_slice(&bytes).map_err(|e| {
        let hint = if e.classify() == serde_json::error::Category::Data {
            " (a manifest written before gold tables were sets of files, or before it recorded silver as sequence ranges, is not read: rebuild gold from silver, see the README's \"Upgrading\")"
        } else {
            ""
        };
        Error::Corrupt { key: key.to_string(), detail: format!("{e}{hint}") }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stem(partition: &str, first: i64, last: i64) -> BatchStem {
        BatchStem { partition: partition.into(), first_seq: first, last_seq: last }
    }

    #[test]
    fn folded_ranges_merge_when_they_touch() {
        let mut f = Folded::default();
        f.insert(&stem("0", 10, 19));
        f.insert(&stem("0", 30, 39));
        f.insert(&stem("1", 10, 19));
        assert!(f.contains(&stem("0", 12, 15)) && !f.contains(&stem("0", 15, 25)) && !f.contains(&stem("2", 10, 10)));
        f.insert(&stem("0", 20, 29));
        assert_eq!(f.ranges().collect::<Vec<_>>(), [("0", &[[10, 39]][..]), ("1", &[[10, 19]][..])]);
        assert!(f.contains(&stem("0", 10, 39)));
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"0":[[10,39]],"1":[[10,19]]}"#);
        assert_eq!(serde_json::from_str::<Folded>(&json).unwrap(), f);
    }

    proptest! {
        /// Against the obvious model (the set of folded sequence numbers): a batch is folded when
        /// each of its numbers is, whatever batches came before and in whatever order.
        #[test]
        fn folded_agrees_with_the_set_of_sequence_numbers(
            batches in prop::collection::vec((0..3u8, 0..60i64, 0..8i64), 0..24),
            probes in prop::collection::vec((0..3u8, 0..70i64, 0..10i64), 1..24),
        ) {
            let mut folded = Folded::default();
            let mut model = std::collections::BTreeSet::new();
            for (p, first, len) in batches {
                folded.insert(&stem(&p.to_string(), first, first + len));
                model.extend((first..=first + len).map(|s| (p, s)));
                for (p, first, len) in &probes {
                    let expected = (*first..=first + len).all(|s| model.contains(&(*p, s)));
                    prop_assert_eq!(folded.contains(&stem(&p.to_string(), *first, first + len)), expected);
                }
            }
            for (_, ranges) in folded.ranges() {
                prop_assert!(ranges.windows(2).all(|w| w[0][1] + 1 < w[1][0]), "merged: {:?}", ranges);
            }
        }
    }

    /// `fresh` and `next_change_us` default when absent; `next_change_us` is left out when `None`;
    /// a partition's rows and next change are over its files; every file is listed, the ledger's too.
    #[test]
    fn table_files_round_trip_and_sum_up() {
        let f: TableFile = serde_json::from_str(r#"{"file":"builds/1/a.parquet","rows":3}"#).unwrap();
        assert_eq!(
            f,
            TableFile {
                file: "builds/1/a.parquet".into(),
                rows: 3,
                fresh: false,
                next_change_us: None,
                discharge_days: Vec::new()
            }
        );
        assert!(!serde_json::to_string(&f).unwrap().contains("next_change_us"));
        let file = |name: &str, rows: u64, next: Option<i64>| TableFile {
            file: format!("builds/1/{name}.parquet"),
            rows,
            fresh: false,
            next_change_us: next,
            discharge_days: Vec::new(),
        };
        let p = FactPartition {
            files: vec![file("f1", 3, Some(9)), file("f2", 2, Some(4)), file("f3", 1, None)],
            discharge_days: vec![],
        };
        assert_eq!((p.rows(), p.next_change_us()), (6, Some(4)));
        let mut m = Manifest {
            dim_department: "builds/1/dep.parquet".into(),
            dim_patient: vec![file("p1", 1, None), file("p2", 1, None)],
            dim_time: "builds/1/time.parquet".into(),
            ledger: Some(vec![file("l", 1, None)]),
            ..Default::default()
        };
        m.fact_patient_flow.insert("2026-11-24".into(), p);
        m.fact_patient_flow.insert("2026-11-25".into(), FactPartition::default());
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.next_change_us(), Some(4));
        assert_eq!(m.fact_files().count(), 3);
        let mut files = m.files();
        files.sort();
        let expected: Vec<String> = ["dep", "f1", "f2", "f3", "l.keys", "l", "p1", "p2", "time"]
            .iter()
            .map(|n| format!("builds/1/{n}.parquet"))
            .collect();
        assert_eq!(files, expected);
    }
}
