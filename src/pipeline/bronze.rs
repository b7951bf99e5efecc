//! Bronze: one parquet file per Event Hubs invocation holding every event body byte for byte (malformed
//! ones too) with its lineage. Named from (partition, first and last sequence number) and written
//! create-if-absent, so a replayed batch finds its file and changes nothing.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use bytes::Bytes;
use chrono::NaiveDateTime;

use super::{Error, Result};
use crate::model::schema::{BRONZE, BRONZE_LAYOUT};
use crate::model::time::to_micros;
use crate::storage::keys::BatchStem;
use crate::storage::{Container, Lake, PutOutcome, parquet};

/// One event as Event Hubs delivered it (a convenience for building an [`EventBatch`] by hand;
/// the handler decodes a batch straight into its columns).
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

/// One invocation's batch: events of a single partition, column by column — the columns of the
/// bronze file it becomes, so encoding it copies nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// Event hub name.
    pub event_hub: String,
    /// Partition id.
    pub partition_id: String,
    /// When this batch was ingested (the host's `sys.UtcNow`).
    pub ingested_at: NaiveDateTime,
    /// The events' columns, in delivery order.
    pub events: EventColumns,
}

/// The per-event columns of a batch, all of one length.
#[derive(Debug, Clone, PartialEq)]
pub struct EventColumns {
    /// The bodies, untouched.
    pub body: BinaryArray,
    /// Sequence numbers within the partition.
    pub sequence_number: Int64Array,
    /// Offsets (strings in current Event Hubs SDKs), null when the host sent none.
    pub offset: StringArray,
    /// When Event Hubs accepted each event (UTC), microseconds since the epoch.
    pub enqueued_time: TimestampMicrosecondArray,
    /// The partition keys producers used, null when none.
    pub partition_key: StringArray,
    /// Application properties as JSON text, null when the host sent none.
    pub properties: StringArray,
}

/// The events' bodies as one array, its values buffer sized once: `from_iter_values` grows it as
/// it goes, copying every body written so far at each step.
pub(crate) fn body_array<'a>(bodies: impl Iterator<Item = &'a Bytes> + Clone) -> BinaryArray {
    let (n, bytes) = bodies.clone().fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.len()));
    let mut array = BinaryBuilder::with_capacity(n, bytes);
    bodies.for_each(|b| array.append_value(b));
    array.finish()
}

impl EventColumns {
    /// Checks that every column has as many values as there are bodies.
    pub fn try_new(
        body: BinaryArray,
        sequence_number: Int64Array,
        offset: StringArray,
        enqueued_time: TimestampMicrosecondArray,
        partition_key: StringArray,
        properties: StringArray,
    ) -> Result<Self> {
        let n = body.len();
        let lengths = [sequence_number.len(), offset.len(), enqueued_time.len(), partition_key.len(), properties.len()];
        if lengths.iter().any(|&l| l != n) || sequence_number.null_count() + enqueued_time.null_count() > 0 {
            return Err(Error::Internal(format!(
                "event columns of unequal lengths or with nulls: {n} bodies, {lengths:?}"
            )));
        }
        Ok(Self { body, sequence_number, offset, enqueued_time, partition_key, properties })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl EventBatch {
    /// A batch from events built one by one (tests, tools).
    pub fn from_events(
        event_hub: impl Into<String>,
        partition_id: impl Into<String>,
        ingested_at: NaiveDateTime,
        events: &[RawEvent],
    ) -> Self {
        let n = events.len();
        let text = |f: fn(&RawEvent) -> Option<&str>| {
            let bytes = events.iter().filter_map(f).map(str::len).sum();
            let mut b = StringBuilder::with_capacity(n, bytes);
            events.iter().for_each(|e| b.append_option(f(e)));
            b.finish()
        };
        let events = EventColumns {
            body: body_array(events.iter().map(|e| &e.body)),
            sequence_number: Int64Array::from_iter_values(events.iter().map(|e| e.sequence_number)),
            offset: text(|e| e.offset.as_deref()),
            enqueued_time: TimestampMicrosecondArray::from_iter_values(
                events.iter().map(|e| to_micros(&e.enqueued_time)),
            ),
            partition_key: text(|e| e.partition_key.as_deref()),
            properties: text(|e| e.properties.as_deref()),
        };
        Self { event_hub: event_hub.into(), partition_id: partition_id.into(), ingested_at, events }
    }

    /// The stem of this batch's files, or an error if the batch cannot be named.
    pub fn stem(&self) -> Result<BatchStem> {
        if !BatchStem::valid_partition(&self.partition_id) {
            return Err(Error::InvalidInput(format!(
                "partition id {:?} is not an Event Hubs partition id (letters, digits, '-' or '_')",
                self.partition_id
            )));
        }
        let seqs = self.events.sequence_number.values();
        let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Err(Error::InvalidInput("the batch holds no events".into()));
        };
        Ok(BatchStem { partition: self.partition_id.clone(), first_seq: *first, last_seq: *last })
    }

    /// Body bytes in the batch.
    pub fn body_bytes(&self) -> usize {
        self.events.body.values().len()
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

/// Encodes a batch as a bronze record batch (the event columns are shared, not copied).
pub fn to_record_batch(batch: &EventBatch) -> Result<RecordBatch> {
    let e = &batch.events;
    let n = e.len();
    let constant = |v: &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, n))) };
    let ingested = TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(to_micros(&batch.ingested_at), n));
    let columns: Vec<ArrayRef> = vec![
        constant(&batch.event_hub),
        constant(&batch.partition_id),
        Arc::new(e.sequence_number.clone()),
        Arc::new(e.offset.clone()),
        Arc::new(e.enqueued_time.clone()),
        Arc::new(e.partition_key.clone()),
        Arc::new(e.properties.clone()),
        Arc::new(ingested),
        Arc::new(e.body.clone()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&BRONZE), columns)?)
}

/// Lands a batch in bronze. A replay (the file exists) writes nothing and reports `created: false`.
pub async fn ingest(lake: &Lake, batch: &EventBatch) -> Result<BronzeMetrics> {
    let stem = batch.stem()?;
    let key = stem.key();
    let record_batch = to_record_batch(batch)?;
    let file = parquet::encode_layout(&BRONZE, &[record_batch], &BRONZE_LAYOUT)?;
    let file_bytes = file.len();
    let outcome = lake.put_if_absent(Container::Bronze, &key, file).await?;
    Ok(BronzeMetrics {
        key: key.to_string(),
        events: batch.events.len(),
        body_bytes: batch.body_bytes(),
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
        let events: Vec<RawEvent> = bodies
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
            .collect();
        EventBatch::from_events("patient-flow", "2", t, &events)
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
