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
    fn rejects_names_that_are_not_stems() {
        for bad in ["", "partition=/1-2", "partition=3/1", "partition=3/a-b", "other/x", "partition=3/4/1-2"] {
            assert_eq!(BatchStem::parse_name(bad), None, "{bad}");
        }
        assert!(BatchStem::valid_partition("31"));
        assert!(!BatchStem::valid_partition("../x"));
        assert!(!BatchStem::valid_partition(""));
    }
}
