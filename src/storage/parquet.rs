//! Parquet encoding of lake files: one place for the writer settings (zstd, always) and for turning
//! bytes into record batches and back.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

/// A parquet file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("parquet: {0}")]
pub struct ParquetError(String);

/// How a layer's files are compressed (parquet's default is *uncompressed*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd level 1: bronze, the raw archive — the best ratio on JSON bodies, written once.
    Archive,
    /// Snappy: silver and gold. Cheap to write and read (parquet-rs sets up a zstd context per
    /// page, which dominates small files), and what Synapse's `COPY INTO` reads (it takes Snappy
    /// or GZIP parquet, not zstd).
    Fast,
}

/// The writer settings of every lake file: the layer's codec, page statistics for pruning, and
/// no `created_by` drift beyond the library version.
pub fn writer_properties(codec: Codec) -> WriterProperties {
    writer_properties_builder(codec).build()
}

/// [`writer_properties`], still open for per-column settings.
pub fn writer_properties_builder(codec: Codec) -> parquet::file::properties::WriterPropertiesBuilder {
    let compression = match codec {
        Codec::Archive => Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
        Codec::Fast => Compression::SNAPPY,
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
}

/// Encodes batches (all of `schema`) into one parquet file in memory.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch], codec: Codec) -> Result<Bytes, ParquetError> {
    encode_with(schema, batches, writer_properties(codec))
}

/// Encodes batches with the given writer settings.
pub fn encode_with(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<Bytes, ParquetError> {
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, Arc::clone(schema), Some(props)).map_err(|e| ParquetError(e.to_string()))?;
    for batch in batches {
        writer.write(batch).map_err(|e| ParquetError(e.to_string()))?;
    }
    writer.close().map_err(|e| ParquetError(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes a whole parquet file. Fails (never panics) on anything that is not parquet.
pub fn decode(bytes: Bytes) -> Result<(SchemaRef, Vec<RecordBatch>), ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| ParquetError(e.to_string()))?;
    let schema = Arc::clone(builder.schema());
    let reader = builder.with_batch_size(64 * 1024).build().map_err(|e| ParquetError(e.to_string()))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| ParquetError(e.to_string()))?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};

    #[test]
    fn files_are_compressed_and_round_trip() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from_iter_values(0..1000))]).unwrap();
        let bytes = encode(&schema, std::slice::from_ref(&batch), Codec::Archive).unwrap();
        let meta = parquet::file::reader::SerializedFileReader::new(bytes.clone()).unwrap();
        use parquet::file::reader::FileReader;
        let codec = meta.metadata().row_group(0).column(0).compression();
        assert!(matches!(codec, Compression::ZSTD(_)), "{codec:?}");
        let fast = encode(&schema, std::slice::from_ref(&batch), Codec::Fast).unwrap();
        let meta = parquet::file::reader::SerializedFileReader::new(fast.clone()).unwrap();
        assert_eq!(meta.metadata().row_group(0).column(0).compression(), Compression::SNAPPY);
        assert_eq!(decode(fast).unwrap().1, vec![batch.clone()]);
        let (_, back) = decode(bytes.clone()).unwrap();
        assert_eq!(back, vec![batch.clone()]);
        assert_eq!(encode(&schema, &[batch], Codec::Archive).unwrap(), bytes, "encoding is deterministic");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Bytes::from_static(b"not parquet at all")).is_err());
        assert!(decode(Bytes::new()).is_err());
    }
}
