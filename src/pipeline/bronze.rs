//! Bronze: one parquet file per Event Hubs invocation holding every event body byte for byte (malformed
//! ones too) with its lineage. Named from (partition, first and last sequence number) and written
//! create-if-absent, so a replayed batch finds its file and changes nothing.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use bytes::Bytes;
use chrono::NaiveDateTime;

use super::{Error, Result};
use crate::model::schema::BRONZE;
use crate::model::time::to_micros;
use crate::storage::keys::BatchStem;
use crate::storage::parquet::Codec;
use crate::storage::{Container, Lake, PutOutcome, parquet};

/// One event as Event Hubs delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// The body bytes, untouched.
    pub body: Bytes,
    /// Sequence number within the partition.
    pub sequence_number: i64,
    /// Offset (a string in current Event Hubs SDKs).
    pub offset: Option<String>,
    /// When Event Hubs accepted the event (UTC).
    pub enqueued_time: NaiveDateTime,
    /// The partition key the producer used, if any.
    pub partition_key: Option<String>,
    /// Application properties as JSON text, if any.
    pub properties: Option<String>,
}

/// One invocation's batch: events of a single partition.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// Event hub name.
    pub event_hub: String,
    /// Partition id.
    pub partition_id: String,
    /// When this batch was ingested (the host's `sys.UtcNow`).
    pub ingested_at: NaiveDateTime,
    /// The events, in delivery order.
    pub events: Vec<RawEvent>,
}

impl EventBatch {
    /// The stem of this batch's files, or an error if the batch cannot be named.
    pub fn stem(&self) -> Result<BatchStem> {
        if !BatchStem::valid_partition(&self.partition_id) {
            return Err(Error::InvalidInput(format!(
                "partition id {:?} is not an Event Hubs partition id (letters, digits, '-' or '_')",
                self.partition_id
            )));
        }
        let seqs = self.events.iter().map(|e| e.sequence_number);
        let (Some(first), Some(last)) = (seqs.clone().min(), seqs.max()) else {
            return Err(Error::InvalidInput("the batch holds no events".into()));
        };
        Ok(BatchStem { partition: self.partition_id.clone(), first_seq: first, last_seq: last })
    }
}

/// What one bronze ingest did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BronzeMetrics {
    /// The bronze file's key.
    pub key: String,
    /// Events in the batch.
    pub events: usize,
    /// Body bytes in the batch.
    pub body_bytes: usize,
    /// Size of the parquet file.
    pub file_bytes: usize,
    /// `false` when the file already existed (a replay): nothing was written.
    pub created: bool,
}

/// Encodes a batch as a bronze record batch.
pub fn to_record_batch(batch: &EventBatch) -> Result<RecordBatch> {
    let n = batch.events.len();
    let mut event_hub = StringBuilder::with_capacity(n, n * batch.event_hub.len());
    let mut partition = StringBuilder::with_capacity(n, n * batch.partition_id.len());
    let mut offset = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut props = StringBuilder::new();
    let body_len: usize = batch.events.iter().map(|e| e.body.len()).sum();
    let mut body = BinaryBuilder::with_capacity(n, body_len);
    for e in &batch.events {
        event_hub.append_value(&batch.event_hub);
        partition.append_value(&batch.partition_id);
        offset.append_option(e.offset.as_deref());
        key.append_option(e.partition_key.as_deref());
        props.append_option(e.properties.as_deref());
        body.append_value(&e.body);
    }
    let seq = Int64Array::from_iter_values(batch.events.iter().map(|e| e.sequence_number));
    let enq = TimestampMicrosecondArray::from_iter_values(batch.events.iter().map(|e| to_micros(&e.enqueued_time)));
    let ingested = TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(to_micros(&batch.ingested_at), n));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(event_hub.finish()),
        Arc::new(partition.finish()),
        Arc::new(seq),
        Arc::new(offset.finish()),
        Arc::new(enq),
        Arc::new(key.finish()),
        Arc::new(props.finish()),
        Arc::new(ingested),
        Arc::new(body.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&BRONZE), columns)?)
}

/// Lands a batch in bronze. A replay (the file exists) writes nothing and reports `created: false`.
pub async fn ingest(lake: &Lake, batch: &EventBatch) -> Result<BronzeMetrics> {
    let stem = batch.stem()?;
    let key = stem.key();
    let body_bytes = batch.events.iter().map(|e| e.body.len()).sum();
    let record_batch = to_record_batch(batch)?;
    let file = parquet::encode(&BRONZE, &[record_batch], Codec::Archive)?;
    let file_bytes = file.len();
    let outcome = lake.put_if_absent(Container::Bronze, &key, file).await?;
    Ok(BronzeMetrics {
        key: key.to_string(),
        events: batch.events.len(),
        body_bytes,
        file_bytes,
        created: outcome == PutOutcome::Created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::parse_utc;
    use crate::storage::StorageConfig;
    use arrow_array::{Array, BinaryArray};

    fn batch(bodies: &[&[u8]]) -> EventBatch {
        let t = parse_utc("2026-11-24T12:00:00").unwrap();
        EventBatch {
            event_hub: "patient-flow".into(),
            partition_id: "2".into(),
            ingested_at: t,
            events: bodies
                .iter()
                .enumerate()
                .map(|(i, b)| RawEvent {
                    body: Bytes::copy_from_slice(b),
                    sequence_number: 100 + i as i64,
                    offset: Some(format!("{}", 4096 * i)),
                    enqueued_time: t,
                    partition_key: None,
                    properties: Some("{}".into()),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn keeps_every_body_byte_for_byte_and_replays_are_no_ops() -> Result<()> {
        let lake = Lake::open(&StorageConfig::memory()).await?;
        let bodies: [&[u8]; 3] = [b"{\"patient_id\":\"a\"}", b"\xff\xfe not json", b""];
        let first = ingest(&lake, &batch(&bodies)).await?;
        assert!(first.created);
        assert_eq!(first.key, "patient-flow/partition=2/00000000000000000100-00000000000000000102.parquet");
        let again = ingest(&lake, &batch(&bodies)).await?;
        assert!(!again.created);

        let bytes = lake.get(Container::Bronze, &object_store::path::Path::from(first.key)).await?;
        let (_, batches) = parquet::decode(bytes)?;
        let body = batches[0].column_by_name("body").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
        let got: Vec<&[u8]> = (0..body.len()).map(|i| body.value(i)).collect();
        assert_eq!(got, bodies.to_vec());
        Ok(())
    }

    #[test]
    fn a_batch_without_events_or_with_a_bad_partition_is_rejected() {
        assert!(matches!(batch(&[]).stem(), Err(Error::InvalidInput(_))));
        let mut b = batch(&[b"x"]);
        b.partition_id = "../../etc".into();
        assert!(matches!(b.stem(), Err(Error::InvalidInput(_))));
    }
}
