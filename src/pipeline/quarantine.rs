//! Reading quarantine back: counts by reason over every quarantine file, and a listing of events
//! with their lineage and reason — never their content (it is health data; `detail` names fields only).
//!
//! Each (event hub, partition, sequence number) counts once: two refines of overlapping re-delivered
//! batches racing can both quarantine the same event, and it must not count twice.

use std::collections::{BTreeMap, HashSet};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use serde::Serialize;

use super::{Error, Result};
use crate::model::time::{from_micros, rfc3339};
use crate::storage::keys::patient_flow_prefix;
use crate::storage::{Container, Lake, parquet};

/// One quarantined event, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Reason code.
    pub reason: String,
    /// Which field or rule failed.
    pub detail: String,
    /// Partition id.
    pub partition_id: String,
    /// Sequence number.
    pub sequence_number: i64,
    /// Enqueued time (RFC 3339).
    pub enqueued_time: String,
    /// Body size in bytes (the body itself stays in the lake).
    pub body_bytes: usize,
    /// The bronze file it came from.
    pub bronze_file: String,
}

/// Counts by reason and the first entries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    /// Quarantine files read.
    pub files: usize,
    /// Distinct events (event hub, partition, sequence number) per reason code, over all files.
    pub by_reason: BTreeMap<String, u64>,
    /// Up to `limit` entries.
    pub entries: Vec<Entry>,
}

impl Listing {
    /// A readable table.
    pub fn render(&self) -> String {
        let total: u64 = self.by_reason.values().sum();
        let mut out = format!("{total} quarantined events in {} files\n", self.files);
        for (reason, n) in &self.by_reason {
            out.push_str(&format!("  {reason:<20} {n:>10}\n"));
        }
        if !self.entries.is_empty() {
            out.push_str(&format!(
                "\n{:<20} {:>9} {:>12} {:>6}  {:<27} detail\n",
                "reason", "partition", "sequence", "bytes", "enqueued"
            ));
        }
        for e in &self.entries {
            out.push_str(&format!(
                "{:<20} {:>9} {:>12} {:>6}  {:<27} {}\n",
                e.reason, e.partition_id, e.sequence_number, e.body_bytes, e.enqueued_time, e.detail
            ));
        }
        out
    }
}

fn entries(key: &str, batch: &RecordBatch) -> Result<Vec<(String, Entry)>> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt { key: key.into(), detail: format!("no `{name}` column") })
    };
    let reason = col("reason")?.as_string::<i32>();
    let detail = col("detail")?.as_string::<i32>();
    let body = col("body")?.as_binary::<i32>();
    let part = col("partition_id")?.as_string::<i32>();
    let seq = col("sequence_number")?.as_primitive::<Int64Type>();
    let enq = col("enqueued_time")?.as_primitive::<TimestampMicrosecondType>();
    let file = col("bronze_file")?.as_string::<i32>();
    let hub = col("event_hub")?.as_string::<i32>();
    Ok((0..batch.num_rows())
        .map(|i| {
            (
                hub.value(i).to_string(),
                Entry {
                    reason: reason.value(i).to_string(),
                    detail: detail.value(i).to_string(),
                    partition_id: part.value(i).to_string(),
                    sequence_number: seq.value(i),
                    enqueued_time: from_micros(enq.value(i)).map(|t| rfc3339(&t)).unwrap_or_default(),
                    body_bytes: body.value(i).len(),
                    bronze_file: file.value(i).to_string(),
                },
            )
        })
        .collect())
}

/// Reads every quarantine file; keeps up to `limit` entries (optionally of one reason).
pub async fn list(lake: &Lake, reason: Option<&str>, limit: usize) -> Result<Listing> {
    if let Some(r) = reason
        && !super::silver::Reason::ALL.iter().any(|x| x.code() == r)
    {
        let codes: Vec<&str> = super::silver::Reason::ALL.iter().map(|r| r.code()).collect();
        return Err(Error::InvalidInput(format!("unknown reason {r:?}; reasons are {}", codes.join(", "))));
    }
    let mut listing = Listing::default();
    let mut seen: HashSet<(String, String, i64)> = HashSet::new();
    for meta in lake.list(Container::Quarantine, &patient_flow_prefix()).await? {
        let key = meta.location.to_string();
        let bytes = lake.get(Container::Quarantine, &meta.location).await?;
        let (_, batches) =
            parquet::decode(bytes).map_err(|e| Error::Corrupt { key: key.clone(), detail: e.to_string() })?;
        listing.files += 1;
        for batch in &batches {
            for (hub, e) in entries(&key, batch)? {
                if !seen.insert((hub, e.partition_id.clone(), e.sequence_number)) {
                    continue;
                }
                *listing.by_reason.entry(e.reason.clone()).or_default() += 1;
                if listing.entries.len() < limit && reason.is_none_or(|r| r == e.reason) {
                    listing.entries.push(e);
                }
            }
        }
    }
    Ok(listing)
}
