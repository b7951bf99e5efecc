//! Arrow schemas of every lake table, defined once. Bronze, silver and quarantine timestamps are naive
//! UTC at microsecond precision (the seed's convention), stored as `Timestamp(Microsecond, None)`.
//! Gold timestamps are UTC instants at millisecond precision, `Timestamp(Millisecond, "UTC")`, which
//! parquet stores as INT64 `TIMESTAMP(MILLIS, isAdjustedToUTC=true)`: the only INT64 timestamp a
//! Synapse dedicated pool's COPY INTO reads into `datetime2` (it rejects MICROS and NANOS), and a UTC
//! instant that Spark, DuckDB and pyarrow read without a session time-zone shift.

use std::sync::{Arc, LazyLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, TimestampMillisecondType};
use arrow_array::{Array, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::storage::parquet::{Codec, Layout};

/// The timestamp type of bronze, silver and quarantine.
pub const TS: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

/// The time zone gold timestamps are marked with.
pub const GOLD_TZ: &str = "UTC";

/// How a build holds a text column of few distinct values in memory: a dictionary of strings,
/// which parquet reads straight from the file's dictionary pages and writes value by value, so a
/// file's bytes are those of its plain strings.
pub fn text_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `schema` with the text columns `names` as [`text_dictionary`]s, every other field as it is.
pub fn with_text_dictionaries(schema: &Schema, names: &[&str]) -> SchemaRef {
    let fields = schema.fields().iter().map(|f| match names.contains(&f.name().as_str()) {
        true => Arc::new(Field::new(f.name(), text_dictionary(), f.is_nullable())),
        false => Arc::clone(f),
    });
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
}

/// `batch` with every column cast to `schema`'s type by arrow's own cast (a dictionary of strings
/// to plain strings, say): the independent plain form tests compare a build's in-memory batches
/// against.
#[cfg(test)]
pub fn cast_to(batch: &arrow_array::RecordBatch, schema: &SchemaRef) -> arrow_array::RecordBatch {
    let columns = batch.columns().iter().zip(schema.fields()).map(|(c, f)| arrow_cast::cast(c, f.data_type()).unwrap());
    arrow_array::RecordBatch::try_new(Arc::clone(schema), columns.collect()).unwrap()
}

/// The timestamp type of every gold table: milliseconds, marked UTC.
pub fn gold_ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from(GOLD_TZ)))
}

/// Microseconds (the pipeline's unit) floored to gold's millisecond precision, still in
/// microseconds: what a gold file gives back for `us`. Gold applies it to every timestamp it takes
/// from silver, so a row read back from gold compares equal to the same row built from silver.
pub fn gold_precision(us: i64) -> i64 {
    from_gold_ms(to_gold_ms(us))
}

/// Microseconds to the milliseconds a gold column stores (floored).
pub fn to_gold_ms(us: i64) -> i64 {
    us.div_euclid(1000)
}

/// A gold column's milliseconds back to microseconds (saturating: the floor of the earliest
/// microsecond instants is not itself representable in microseconds).
pub fn from_gold_ms(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

/// A gold timestamp column as naive microseconds (the pipeline's unit): milliseconds (what gold
/// writes) are converted; microseconds (gold files written before gold moved to milliseconds) pass
/// through. `None` when the column is not a millisecond or microsecond timestamp.
pub fn gold_column_micros(column: &dyn Array) -> Option<TimestampMicrosecondArray> {
    match column.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Some(column.as_primitive::<TimestampMillisecondType>().unary(from_gold_ms))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Some(column.as_primitive::<TimestampMicrosecondType>().clone().with_timezone_opt(None::<&str>))
        }
        _ => None,
    }
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// Bronze: every event byte for byte, with where it came from.
pub static BRONZE: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        Field::new("event_hub", DataType::Utf8, false),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Int64, false),
        Field::new("offset", DataType::Utf8, true),
        Field::new("enqueued_time", TS, false),
        Field::new("partition_key", DataType::Utf8, true),
        Field::new("properties", DataType::Utf8, true),
        Field::new("ingested_at", TS, false),
        Field::new("body", DataType::Binary, false),
    ])
});

/// How bronze files are written. zstd (the archive) where there are bytes to save: bodies, partition
/// keys, offsets. Sequence numbers and enqueued times grow within a partition (delta-encoded to a
/// few bytes); hub, partition, properties and ingestion time are constants or nearly (a dictionary
/// of one value): those columns stay uncompressed, which spares a zstd context each. Partition
/// keys (patient ids) get no statistics, like bodies: a file holds the events of whichever
/// patients arrived together, so its lowest and highest key span nearly every key and prune
/// nothing, while computing them compares every key twice.
pub const BRONZE_LAYOUT: Layout = Layout {
    plain: &["offset", "partition_key", "body"],
    no_statistics: &["body", "properties", "partition_key"],
    delta: &["sequence_number", "enqueued_time"],
    uncompressed: &["event_hub", "partition_id", "sequence_number", "enqueued_time", "properties", "ingested_at"],
    ..Layout::uniform(Codec::Archive)
};

/// The lineage columns silver and quarantine rows carry back to their bronze event.
fn lineage() -> Vec<Field> {
    vec![
        Field::new("event_hub", DataType::Utf8, false),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Int64, false),
        Field::new("enqueued_time", TS, false),
        Field::new("bronze_file", DataType::Utf8, false),
    ]
}

/// Silver: typed, validated patient-flow rows with quality flags and lineage.
pub static SILVER: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
        Field::new("department", DataType::Utf8, true),
        Field::new("admission_time", TS, false),
        Field::new("admission_time_sent", TS, true),
        Field::new("discharge_time", TS, true),
        Field::new("bed_id", DataType::Int32, true),
        Field::new("hospital_id", DataType::Int32, true),
        Field::new("age_capped", DataType::Boolean, false),
        Field::new("admission_imputed", DataType::Boolean, false),
        Field::new("discharge_before_admission", DataType::Boolean, false),
        Field::new("missing_fields", DataType::Utf8, true),
    ];
    fields.extend(lineage());
    schema(fields)
});

/// How silver files are written (Snappy where it pays): ids and timestamps are (nearly) unique, so
/// PLAIN, and uncompressed — Snappy saved a tenth of their bytes (random ids, times spread over
/// days) for 8 % of a refine's time (criterion, `refine_silver`); the lineage's sequence numbers
/// and enqueued times grow (delta); the low-cardinality columns keep their dictionaries, and their
/// bit-packed indices stay uncompressed too: Snappy left them at 1.00–1.07 of their size (1M
/// events, DuckDB's `parquet_metadata`), so it only cost time. Only the flags, mostly false, keep
/// it. Patient ids get no statistics: a file's rows are the patients of a batch, in arrival order,
/// so its lowest and highest id span nearly every id and prune nothing (see [`BRONZE_LAYOUT`]).
pub const SILVER_LAYOUT: Layout = Layout {
    plain: &["patient_id", "admission_time", "admission_time_sent", "discharge_time"],
    no_statistics: &["patient_id"],
    delta: &["sequence_number", "enqueued_time"],
    uncompressed: &[
        "patient_id",
        "gender",
        "age",
        "department",
        "admission_time",
        "admission_time_sent",
        "discharge_time",
        "bed_id",
        "hospital_id",
        "missing_fields",
        "event_hub",
        "partition_id",
        "sequence_number",
        "enqueued_time",
        "bronze_file",
    ],
    ..Layout::uniform(Codec::Fast)
};

/// Quarantine: events that cannot be rows, with their raw bytes and a reason.
pub static QUARANTINE: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("body", DataType::Binary, false),
    ];
    fields.extend(lineage());
    schema(fields)
});

/// How quarantine files are written (Snappy): raw bodies PLAIN without statistics.
pub const QUARANTINE_LAYOUT: Layout = Layout {
    plain: &["body"],
    no_statistics: &["body"],
    delta: &["sequence_number", "enqueued_time"],
    uncompressed: &["event_hub", "partition_id", "sequence_number", "enqueued_time", "bronze_file"],
    ..Layout::uniform(Codec::Fast)
};

/// DimDepartment: one row per (department, hospital).
pub static DIM_DEPARTMENT: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        Field::new("department_sk", DataType::Int64, false),
        Field::new("department", DataType::Utf8, false),
        Field::new("hospital_id", DataType::Int32, false),
    ])
});

/// How DimDepartment files are written: nothing in them shrinks under Snappy (see
/// [`FACT_PATIENT_FLOW_LAYOUT`]).
pub const DIM_DEPARTMENT_LAYOUT: Layout =
    Layout { uncompressed: &["department_sk", "department", "hospital_id"], ..Layout::uniform(Codec::Fast) };

/// DimPatient, SCD type 2: one row per version of a patient's attributes.
pub static DIM_PATIENT: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        Field::new("patient_sk", DataType::Int64, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
        Field::new("attr_hash", DataType::Int64, false),
        Field::new("effective_from", gold_ts(), false),
        Field::new("effective_to", gold_ts(), true),
        Field::new("is_current", DataType::Boolean, false),
    ])
});

/// How DimPatient files are written: keys, ids and validity times are (nearly) distinct (PLAIN);
/// ids, keys and the small-domain attributes stay uncompressed (see [`FACT_PATIENT_FLOW_LAYOUT`]).
/// `attr_hash` is a hash of the tracked attributes (gender and age), so it has their few hundred
/// values: a dictionary stores it in about a byte a row, where PLAIN took eight and Snappy left
/// 0.32 of those (200 values in 915k versions of a 1M build). Patient ids get no statistics: the
/// files are laid out by patient key (a hash), so a page's lowest and highest id span nearly every
/// id and prune nothing, while computing them compares every id twice.
pub const DIM_PATIENT_LAYOUT: Layout = Layout {
    plain: &["patient_sk", "patient_id", "effective_from", "effective_to"],
    no_statistics: &["patient_id"],
    uncompressed: &["patient_sk", "patient_id", "gender", "age", "attr_hash", "is_current"],
    ..Layout::uniform(Codec::Fast)
};

/// DimTime at hour grain; `time_key` is `yyyymmddhh`.
pub static DIM_TIME: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        Field::new("time_key", DataType::Int32, false),
        Field::new("date", DataType::Date32, false),
        Field::new("year", DataType::Int32, false),
        Field::new("quarter", DataType::Int32, false),
        Field::new("month", DataType::Int32, false),
        Field::new("day", DataType::Int32, false),
        Field::new("hour", DataType::Int32, false),
        Field::new("day_of_week", DataType::Int32, false),
        Field::new("is_weekend", DataType::Boolean, false),
    ])
});

/// How DimTime files are written: a few hundred small rows, the layer's defaults.
pub const DIM_TIME_LAYOUT: Layout = Layout::uniform(Codec::Fast);

/// FactPatientFlow: one row per visit (upserted on `fact_id`), partitioned by `visit_date`.
pub static FACT_PATIENT_FLOW: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        Field::new("fact_id", DataType::Int64, false),
        Field::new("patient_sk", DataType::Int64, false),
        Field::new("department_sk", DataType::Int64, false),
        Field::new("admission_time_key", DataType::Int32, false),
        Field::new("discharge_time_key", DataType::Int32, true),
        Field::new("admission_time", gold_ts(), false),
        Field::new("discharge_time", gold_ts(), true),
        Field::new("admission_date", DataType::Date32, false),
        Field::new("length_of_stay_hours", DataType::Float64, true),
        Field::new("is_currently_admitted", DataType::Boolean, false),
        Field::new("bed_id", DataType::Int32, true),
        Field::new("hospital_id", DataType::Int32, true),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Int64, false),
        Field::new("enqueued_time", gold_ts(), false),
        Field::new("bronze_file", DataType::Utf8, false),
        Field::new("ingested_at", gold_ts(), false),
        Field::new("visit_date", DataType::Date32, false),
    ])
});

/// How FactPatientFlow files are written. Ids, keys, times and stays are (nearly) distinct: PLAIN,
/// a dictionary would only cost time. Columns Snappy does not shrink stay uncompressed, which
/// every parquet reader takes (Synapse's `COPY INTO` included): 64-bit hashes and ids and the
/// dictionary indices of small-domain columns (0.95–1.0 of their size, DuckDB's
/// `parquet_metadata` on a 1M build) — for a third of the CPU of encoding gold (callgrind) — and
/// the columns of a few values a file (the partitions a build folds, the days, the ingestion
/// time: dictionary indices of a bit or two, which Snappy made 1.09–1.10 of their size);
/// timestamps, which shrink to 0.6–0.9, keep the layer's codec. `fact_id` gets a bloom filter: a
/// build finds the files that hold the rows it moves by it (see [`BLOOM_FPP`](crate::storage::parquet::BLOOM_FPP)).
pub const FACT_PATIENT_FLOW_LAYOUT: Layout = Layout {
    plain: &[
        "fact_id",
        "patient_sk",
        "admission_time",
        "discharge_time",
        "length_of_stay_hours",
        "sequence_number",
        "enqueued_time",
    ],
    uncompressed: &[
        "fact_id",
        "patient_sk",
        "department_sk",
        "admission_time_key",
        "discharge_time_key",
        "length_of_stay_hours",
        "bed_id",
        "hospital_id",
        "admission_date",
        "partition_id",
        "ingested_at",
        "visit_date",
    ],
    bloom_filter: &["fact_id"],
    ..Layout::uniform(Codec::Fast)
};

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::TimestampMillisecondArray;

    #[test]
    fn gold_precision_floors_to_the_millisecond_and_round_trips_through_a_gold_column() {
        for us in [0, 1, 999, 1000, 1001, -1, -999, -1000, -1001, 1_732_449_600_123_456, i64::MAX, i64::MIN] {
            let floored = gold_precision(us);
            assert!(floored <= us, "{us}");
            assert_eq!(gold_precision(floored), floored, "idempotent at {us}");
            if us > i64::MIN + 1000 {
                assert!(us - floored < 1000 && floored % 1000 == 0, "{us}");
            }
            let column = TimestampMillisecondArray::from(vec![to_gold_ms(us)]).with_timezone(GOLD_TZ);
            assert_eq!(gold_column_micros(&column).unwrap().value(0), floored, "{us}");
        }
        let legacy = TimestampMicrosecondArray::from(vec![1_732_449_600_123_456]);
        assert_eq!(gold_column_micros(&legacy).unwrap().value(0), 1_732_449_600_123_456, "µs files read as they are");
        assert!(gold_column_micros(&arrow_array::Int64Array::from(vec![1])).is_none());
    }
}
