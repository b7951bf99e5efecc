//! Typed lake keys: every blob name the pipeline writes is built here, nowhere else.
//!
//! Bronze, silver and quarantine files of one Event Hubs invocation share a *stem*,
//! `patient-flow/partition=<p>/<first seq>-<last seq>`, zero-padded so names sort by sequence number.
//! The stem is what the blob trigger's `{name}` captures (`bronze/patient-flow/{name}.parquet`), so
//! a replayed batch or a re-triggered blob always lands on the same names.

use std::fmt;

use object_store::path::Path;

/// The folder (inside each container) that holds patient-flow files.
pub const PATIENT_FLOW_PREFIX: &str = "patient-flow";

/// Extension of every lake data file.
pub const PARQUET_EXT: &str = ".parquet";

/// The stem shared by the bronze, silver and quarantine files of one Event Hubs batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchStem {
    /// Event Hubs partition id.
    pub partition: String,
    /// First sequence number in the batch.
    pub first_seq: i64,
    /// Last sequence number in the batch.
    pub last_seq: i64,
}

impl BatchStem {
    /// The blob trigger's `{name}`: `partition=<p>/<first>-<last>`.
    pub fn name(&self) -> String {
        format!("partition={}/{:020}-{:020}", self.partition, self.first_seq, self.last_seq)
    }

    /// The key of this batch's file in any of the bronze, silver and quarantine containers.
    pub fn key(&self) -> Path {
        Path::from(format!("{PATIENT_FLOW_PREFIX}/{}{PARQUET_EXT}", self.name()))
    }

    /// Parses a trigger `{name}` (`partition=3/000…1041-000…1042`) back into a stem.
    pub fn parse_name(name: &str) -> Option<Self> {
        let (partition, range) = name.strip_prefix("partition=")?.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        if partition.is_empty() || partition.contains('/') {
            return None;
        }
        Some(Self { partition: partition.to_string(), first_seq: first.parse().ok()?, last_seq: last.parse().ok()? })
    }

    /// Parses a full key (`patient-flow/partition=3/….parquet`) into a stem.
    pub fn parse_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(PATIENT_FLOW_PREFIX)?.strip_prefix('/')?;
        Self::parse_name(rest.strip_suffix(PARQUET_EXT)?)
    }

    /// A valid partition id is what Event Hubs uses: short, no path separators or wildcards.
    pub fn valid_partition(partition: &str) -> bool {
        !partition.is_empty()
            && partition.len() <= 64
            && partition.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

impl fmt::Display for BatchStem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The prefix under which all patient-flow files of a container live.
pub fn patient_flow_prefix() -> Path {
    Path::from(PATIENT_FLOW_PREFIX)
}

/// Silver's sequence index: empty markers in the silver container beside `patient-flow/`, grouped by
/// sequence number, so a refine lists only the neighbourhood of its own range (see
/// `pipeline::silver`). A silver file of at most [`SEQ_BUCKET`] numbers has a marker in every bucket
/// its range touches (one, or two across a boundary):
/// `_index/patient-flow/partition=<p>/b=<seq / SEQ_BUCKET>/<first>-<last>`; a wider one has one in
/// `…/partition=<p>/meta/<first>-<last>`, beside the partition's `complete` marker.
pub const SEQ_INDEX_PREFIX: &str = "_index/patient-flow";

/// The width of a bucket of the sequence index, and the widest range that gets bucket markers.
pub const SEQ_BUCKET: i64 = 1 << 14;

impl BatchStem {
    fn index_folder(partition: &str) -> String {
        format!("{SEQ_INDEX_PREFIX}/partition={partition}")
    }

    fn index_bucket(partition: &str, bucket: i64) -> String {
        format!("{}/b={bucket:015}", Self::index_folder(partition))
    }

    fn index_meta(partition: &str) -> String {
        format!("{}/meta", Self::index_folder(partition))
    }

    /// Whether the range is at most [`SEQ_BUCKET`] numbers wide (its markers go in buckets).
    pub fn is_narrow(&self) -> bool {
        self.last_seq >= self.first_seq && self.last_seq - self.first_seq < SEQ_BUCKET
    }

    /// The keys of this batch's markers in the sequence index.
    pub fn index_keys(&self) -> Vec<Path> {
        let range = format!("{:020}-{:020}", self.first_seq, self.last_seq);
        if self.is_narrow() {
            (self.first_seq.div_euclid(SEQ_BUCKET)..=self.last_seq.div_euclid(SEQ_BUCKET))
                .map(|b| Path::from(format!("{}/{range}", Self::index_bucket(&self.partition, b))))
                .collect()
        } else {
            vec![Path::from(format!("{}/{range}", Self::index_meta(&self.partition)))]
        }
    }

    /// The index folders that hold a marker of every file whose range overlaps this one: the
    /// buckets this range touches (a narrow file sharing a number with it has a marker in that
    /// number's bucket) and the `meta` folder (wide files, and the `complete` marker). `None` when
    /// that is more than `max_buckets` buckets (this range is itself very wide): list
    /// [`index_partition`](Self::index_partition) whole then.
    pub fn index_neighbourhood(&self, max_buckets: i64) -> Option<Vec<Path>> {
        let (lo, hi) = (self.first_seq.div_euclid(SEQ_BUCKET), self.last_seq.div_euclid(SEQ_BUCKET));
        if hi.saturating_sub(lo) >= max_buckets {
            return None;
        }
        let mut folders: Vec<Path> = (lo..=hi).map(|b| Path::from(Self::index_bucket(&self.partition, b))).collect();
        folders.push(Path::from(Self::index_meta(&self.partition)));
        Some(folders)
    }

    /// The folder of bucket `bucket` of a partition's sequence index.
    pub fn index_bucket_folder(partition: &str, bucket: i64) -> Path {
        Path::from(Self::index_bucket(partition, bucket))
    }

    /// The `meta` folder of a partition's sequence index (wide ranges and the `complete` marker).
    pub fn index_meta_folder(partition: &str) -> Path {
        Path::from(Self::index_meta(partition))
    }

    /// The bucket number of a bucket folder of the sequence index (`…/partition=<p>/b=<n>` → `n`).
    pub fn parse_index_bucket(folder: &str) -> Option<i64> {
        folder.rsplit_once('/')?.1.strip_prefix("b=")?.parse().ok()
    }

    /// The folder of a partition's files (in bronze, silver or quarantine).
    pub fn partition_prefix(partition: &str) -> Path {
        Path::from(format!("{PATIENT_FLOW_PREFIX}/partition={partition}"))
    }

    /// The whole sequence index of a partition.
    pub fn index_partition(partition: &str) -> Path {
        Path::from(Self::index_folder(partition))
    }

    /// The marker that says every silver file of the partition has its index markers (written once
    /// the index is known complete; a lake written before the index existed gets it on the first
    /// refine that finds it missing). It sits in the `meta` folder, which every lookup lists.
    pub fn index_complete(partition: &str) -> Path {
        Path::from(format!("{}/complete", Self::index_meta(partition)))
    }

    /// Parses an index marker's key back into the stem it stands for (`None` for `complete`).
    pub fn parse_index_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(SEQ_INDEX_PREFIX)?.strip_prefix('/')?;
        let (partition, rest) = rest.split_once('/')?;
        let (_, range) = rest.rsplit_once('/')?;
        Self::parse_name(&format!("{partition}/{range}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_round_trip_and_sort_by_sequence() {
        let a = BatchStem { partition: "3".into(), first_seq: 1041, last_seq: 1042 };
        assert_eq!(a.name(), "partition=3/00000000000000001041-00000000000000001042");
        assert_eq!(a.key().as_ref(), "patient-flow/partition=3/00000000000000001041-00000000000000001042.parquet");
        assert_eq!(BatchStem::parse_name(&a.name()), Some(a.clone()));
        assert_eq!(BatchStem::parse_key(a.key().as_ref()), Some(a.clone()));
        let b = BatchStem { partition: "3".into(), first_seq: 9, last_seq: 10 };
        assert!(b.key().as_ref() < a.key().as_ref());
    }

    #[test]
    fn index_markers_sit_in_the_folders_their_neighbours_list() {
        let stem = |first: i64, last: i64| BatchStem { partition: "3".into(), first_seq: first, last_seq: last };
        let a = stem(40_000, 40_999);
        let keys = a.index_keys();
        assert_eq!(
            keys.iter().map(|k| k.as_ref()).collect::<Vec<_>>(),
            ["_index/patient-flow/partition=3/b=000000000000002/00000000000000040000-00000000000000040999"]
        );
        assert_eq!(BatchStem::parse_index_key(keys[0].as_ref()), Some(a.clone()));
        assert_eq!(stem(16_000, 17_000).index_keys().len(), 2, "a range across a bucket boundary is in both");
        let wide = stem(0, SEQ_BUCKET);
        assert!(!wide.is_narrow());
        assert_eq!(wide.index_keys().len(), 1);
        assert!(wide.index_keys()[0].as_ref().contains("/meta/"));
        assert_eq!(BatchStem::parse_index_key(wide.index_keys()[0].as_ref()), Some(wide.clone()));
        assert_eq!(BatchStem::parse_index_key(BatchStem::index_complete("3").as_ref()), None);
        assert!(
            BatchStem::index_complete("3")
                .as_ref()
                .starts_with(&format!("{}/", a.index_neighbourhood(16).unwrap().last().unwrap()))
        );
        // Every range overlapping `s` has a marker in one of s's folders.
        for s in [stem(0, 0), stem(100, 199), stem(16_383, 16_384), stem(50_000, 70_000)] {
            let folders = s.index_neighbourhood(16).unwrap();
            for first in (s.first_seq - SEQ_BUCKET - 2).max(0)..=s.last_seq + 2 {
                for span in [1, 7, SEQ_BUCKET, SEQ_BUCKET + 1, 3 * SEQ_BUCKET] {
                    let other = stem(first, first + span - 1);
                    let overlaps = other.first_seq <= s.last_seq && other.last_seq >= s.first_seq;
                    let listed = other
                        .index_keys()
                        .iter()
                        .any(|k| folders.iter().any(|f| k.as_ref().starts_with(&format!("{f}/"))));
                    assert_eq!(overlaps, overlaps && listed, "{other:?} overlaps {s:?} but no marker is listed");
                }
            }
        }
        assert_eq!(stem(0, 1 << 40).index_neighbourhood(16), None);
    }

    #[test]
    fn rejects_names_that_are_not_stems() {
        for bad in ["", "partition=/1-2", "partition=3/1", "partition=3/a-b", "other/x", "partition=3/4/1-2"] {
            assert_eq!(BatchStem::parse_name(bad), None, "{bad}");
        }
        assert!(BatchStem::valid_partition("31"));
        assert!(!BatchStem::valid_partition("../x"));
        assert!(!BatchStem::valid_partition(""));
    }
}
