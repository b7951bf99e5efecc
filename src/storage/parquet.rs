//! Parquet encoding of lake files: one place for the writer settings and for turning bytes into
//! record batches and back.
//!
//! Every file gets its layer's codec and page statistics. A table may add a [`Layout`]: columns whose
//! values are (nearly) all distinct are written PLAIN (a dictionary of 1,000 unique ids costs an
//! interner hash per value and is bigger than the values), columns of large opaque values (event
//! bodies) get no statistics (a min/max of every body is a memcmp per value and bytes nobody prunes
//! on), and columns that encode to a few bytes (a constant, run-length encoded) are left
//! uncompressed: parquet-rs sets up a codec context per compressed column chunk, and for zstd that
//! set-up costs more than the column's bytes are worth. Files that only their writer reads back,
//! whole, get no statistics at all; a column that readers look values up in gets a bloom filter.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

/// A parquet file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("parquet: {0}")]
pub struct ParquetError(String);

impl ParquetError {
    /// An error about a file's content, in words.
    pub fn new(detail: impl Into<String>) -> Self {
        Self(detail.into())
    }
}

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

impl Codec {
    fn compression(self) -> Compression {
        match self {
            // Level 1: zstd's fastest standard level; bodies are JSON text, which it compresses
            // about 3× already (negative levels save little time here and lose ratio).
            Codec::Archive => Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
            Codec::Fast => Compression::SNAPPY,
        }
    }
}

/// Per-column writer settings of one table, beyond its layer's codec (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The layer's codec.
    pub codec: Codec,
    /// Page statistics on every column not named in `no_statistics`; `false` for files that only
    /// their writer reads back, whole (gold's ledger), where nothing prunes by them.
    pub statistics: bool,
    /// Columns of (nearly) distinct values: PLAIN, no dictionary.
    pub plain: &'static [&'static str],
    /// Columns of large opaque values: no statistics.
    pub no_statistics: &'static [&'static str],
    /// Integer columns that (nearly) only grow, e.g. sequence numbers: DELTA_BINARY_PACKED, which
    /// stores such a column in a few bits per value (no dictionary).
    pub delta: &'static [&'static str],
    /// Columns that encode to a few bytes (constants, delta-encoded ints): no codec.
    pub uncompressed: &'static [&'static str],
    /// Columns readers look values up in: a bloom filter sized for the file's rows, with
    /// [`BLOOM_FPP`] false positives.
    pub bloom_filter: &'static [&'static str],
}

/// False positives of a [`Layout`]'s bloom filters. Gold finds the few fact files that hold the
/// rows a build moves (hundreds of ids at once) by their filters instead of decoding every file of
/// their days: at 1 in 10,000 ids (about 3 bytes a row), a file that holds none of 800 ids is read
/// anyway 8 % of the time; at 1 % it would be read every time.
pub const BLOOM_FPP: f64 = 1e-4;

impl Layout {
    /// The layer's defaults for every column.
    pub const fn uniform(codec: Codec) -> Self {
        Self {
            codec,
            statistics: true,
            plain: &[],
            no_statistics: &[],
            delta: &[],
            uncompressed: &[],
            bloom_filter: &[],
        }
    }

    /// The writer settings of a file of `rows` rows (they size the bloom filters) with this layout.
    pub fn writer_properties(&self, rows: usize) -> WriterProperties {
        let mut b = base_properties(self.codec);
        let path = |name: &str| ColumnPath::from(name);
        if !self.statistics {
            b = b.set_statistics_enabled(EnabledStatistics::None);
        }
        for name in self.plain {
            b = b.set_column_dictionary_enabled(path(name), false);
        }
        for name in self.delta {
            b = b
                .set_column_dictionary_enabled(path(name), false)
                .set_column_encoding(path(name), Encoding::DELTA_BINARY_PACKED);
        }
        for name in self.no_statistics {
            b = b.set_column_statistics_enabled(path(name), EnabledStatistics::None);
        }
        for name in self.uncompressed {
            b = b.set_column_compression(path(name), Compression::UNCOMPRESSED);
        }
        for name in self.bloom_filter {
            b = b
                .set_column_bloom_filter_enabled(path(name), true)
                .set_column_bloom_filter_max_ndv(path(name), (rows as u64).max(1))
                .set_column_bloom_filter_fpp(path(name), BLOOM_FPP);
        }
        b.build()
    }
}

/// The settings every lake file starts from: the layer's codec, page statistics for pruning, and
/// no `created_by` drift beyond the library version.
fn base_properties(codec: Codec) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(codec.compression())
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
}

/// Encodes batches (all of `schema`) into one parquet file in memory, with the layer's defaults for
/// every column ([`Layout::uniform`]).
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch], codec: Codec) -> Result<Bytes, ParquetError> {
    encode_layout(schema, batches, &Layout::uniform(codec))
}

/// Encodes batches (all of `schema`) into one parquet file in memory, with a table's [`Layout`].
pub fn encode_layout(schema: &SchemaRef, batches: &[RecordBatch], layout: &Layout) -> Result<Bytes, ParquetError> {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    encode_with(schema, batches, layout.writer_properties(rows))
}

/// Encodes batches with the given writer settings.
pub fn encode_with(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<Bytes, ParquetError> {
    // Most of a file is its largest column after encoding; start near the input's size so the
    // buffer grows once or twice, not a dozen times.
    let input: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    write_file(Vec::with_capacity(input / 2 + 4096), Arc::clone(schema), batches, props)
}

/// Writes `batches` as one parquet file into `out`: what [`encode_with`] and [`StreamEncoder`]
/// both do, so a streamed file is byte for byte the file of its batches.
fn write_file<B: std::borrow::Borrow<RecordBatch>>(
    mut out: Vec<u8>,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = B>,
    props: WriterProperties,
) -> Result<Bytes, ParquetError> {
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(|e| ParquetError(e.to_string()))?;
    for batch in batches {
        writer.write(batch.borrow()).map_err(|e| ParquetError(e.to_string()))?;
    }
    writer.close().map_err(|e| ParquetError(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes a whole parquet file. Fails (never panics) on anything that is not parquet.
pub fn decode(bytes: Bytes) -> Result<(SchemaRef, Vec<RecordBatch>), ParquetError> {
    decode_projected(bytes, None, None)
}

/// [`decode`] into batches of `schema` when the file's columns are `schema`'s: the reader then reads
/// a column as the type `schema` gives it (a string column as a dictionary, say). A file of other
/// columns (an older layout) is decoded as it is.
pub fn decode_as(bytes: Bytes, schema: &SchemaRef) -> Result<Vec<RecordBatch>, ParquetError> {
    decode_projected(bytes, None, Some(schema)).map(|(_, batches)| batches)
}

/// [`decode_columns`] with the column types of `schema`, which names every column of the file, as
/// [`decode_as`] reads them.
pub fn decode_columns_as(bytes: Bytes, columns: &[&str], schema: &SchemaRef) -> Result<Vec<RecordBatch>, ParquetError> {
    decode_projected(bytes, Some(columns), Some(schema)).map(|(_, batches)| batches)
}

/// Decodes only the named top-level columns of a parquet file (absent names are skipped; the
/// batches' schema says which were found). Columns not read are not decompressed.
pub fn decode_columns(bytes: Bytes, columns: &[&str]) -> Result<(SchemaRef, Vec<RecordBatch>), ParquetError> {
    decode_projected(bytes, Some(columns), None)
}

/// The decoders above: `columns` only, if given; with `schema`'s types where the file's columns
/// are `schema`'s (the reader refuses a schema that does not fit the file when it opens it).
fn decode_projected(
    bytes: Bytes,
    columns: Option<&[&str]>,
    schema: Option<&SchemaRef>,
) -> Result<(SchemaRef, Vec<RecordBatch>), ParquetError> {
    let typed = schema.and_then(|schema| {
        let options = ArrowReaderOptions::new().with_schema(Arc::clone(schema));
        ParquetRecordBatchReaderBuilder::try_new_with_options(bytes.clone(), options).ok()
    });
    let mut builder = match typed {
        Some(builder) => builder,
        None => ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| ParquetError(e.to_string()))?,
    };
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    let reader = builder.with_batch_size(64 * 1024).build().map_err(|e| ParquetError(e.to_string()))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| ParquetError(e.to_string()))?;
    Ok((schema, batches))
}

/// Whether a parquet file may hold any of `values` in its int64 column `column`, by the column's
/// bloom filters (a "no" is certain, a "yes" may be a false positive); `None` when some row group
/// has no bloom filter for the column (a file written without one): only decoding can tell.
/// Reads the footer and the filters, no data page.
pub fn may_contain_any(bytes: Bytes, column: &str, values: &[i64]) -> Result<Option<bool>, ParquetError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;
    let properties = parquet::file::properties::ReaderProperties::builder().set_read_bloom_filter(true).build();
    let options = ReadOptionsBuilder::new().with_reader_properties(properties).build();
    let reader = SerializedFileReader::new_with_options(bytes, options).map_err(|e| ParquetError(e.to_string()))?;
    let Some(index) =
        reader.metadata().file_metadata().schema_descr().columns().iter().position(|c| c.name() == column)
    else {
        return Err(ParquetError(format!("no `{column}` column")));
    };
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| ParquetError(e.to_string()))?;
        match group.get_column_bloom_filter(index) {
            None => return Ok(None),
            Some(filter) if values.iter().any(|v| filter.check(v)) => return Ok(Some(true)),
            Some(_) => {}
        }
    }
    Ok(Some(false))
}

/// Encodes one parquet file from batches handed over one at a time, on a thread of its own: a
/// producer's rows become compressed pages while it builds the next ones, so memory holds the
/// encoded file and a batch or two, not every row at once, and the encoding runs beside the
/// producer. The bytes are those [`encode_with`] makes of the same batches.
pub struct StreamEncoder {
    batches: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    worker: Option<std::thread::JoinHandle<Result<Bytes, ParquetError>>>,
}

impl StreamEncoder {
    /// Starts the encoder's thread.
    pub fn new(schema: SchemaRef, props: WriterProperties) -> Result<Self, ParquetError> {
        // One batch waits while one is encoded: a producer that outruns the encoder waits too.
        let (batches, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(1);
        let worker = std::thread::Builder::new()
            .name("parquet-encode".into())
            .spawn(move || write_file(Vec::new(), schema, rx, props))
            .map_err(|e| ParquetError(format!("cannot start an encoder thread: {e}")))?;
        Ok(Self { batches: Some(batches), worker: Some(worker) })
    }

    /// Hands a batch to the encoder, waiting while it is still busy with the one before.
    pub fn write(&mut self, batch: RecordBatch) -> Result<(), ParquetError> {
        let sent = self.batches.as_ref().is_some_and(|tx| tx.send(batch).is_ok());
        if sent {
            return Ok(());
        }
        // The encoder stopped early: its error says why.
        Err(self.join().err().unwrap_or_else(|| ParquetError("the encoder stopped early".into())))
    }

    /// The encoded file.
    pub fn finish(mut self) -> Result<Bytes, ParquetError> {
        self.join()
    }

    /// Closes the input and waits for the encoder's result.
    fn join(&mut self) -> Result<Bytes, ParquetError> {
        self.batches = None;
        match self.worker.take() {
            Some(worker) => worker.join().unwrap_or_else(|_| Err(ParquetError("the encoder thread panicked".into()))),
            None => Err(ParquetError("the encoder has already finished".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};

    /// A schema that fits the file reads its columns as that schema's types; one that does not (an
    /// older layout's file) leaves the file read as it is; a damaged file is still an error.
    #[test]
    fn a_typed_decode_reads_a_fitting_file_as_its_types_and_any_other_as_it_is() {
        let plain: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let s: arrow_array::StringArray = (0..100).map(|i| (i % 7 != 0).then(|| format!("v{}", i % 3))).collect();
        let batch =
            RecordBatch::try_new(Arc::clone(&plain), vec![Arc::new(Int64Array::from_iter_values(0..100)), Arc::new(s)])
                .unwrap();
        let bytes = encode(&plain, std::slice::from_ref(&batch), Codec::Fast).unwrap();
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let fits: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", dictionary, true)]));
        let typed = decode_as(bytes.clone(), &fits).unwrap();
        assert_eq!(typed[0].schema(), fits);
        assert_eq!(arrow_cast::cast(typed[0].column(1), &DataType::Utf8).unwrap().as_ref(), batch.column(1).as_ref());
        let only_s = decode_columns_as(bytes.clone(), &["s"], &fits).unwrap();
        assert_eq!(only_s[0].num_columns(), 1);
        assert_eq!(*only_s[0].column(0).data_type(), *fits.field(1).data_type());

        let other: SchemaRef = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        assert_eq!(decode_as(bytes.clone(), &other).unwrap(), vec![batch]);
        assert!(decode_as(bytes.slice(..bytes.len() - 20), &fits).is_err());
    }

    #[test]
    fn a_streamed_file_is_the_file_of_its_batches() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let batch = |from: i64, to: i64| {
            let s: arrow_array::StringArray =
                (from..to).map(|i| (i % 7 != 0).then(|| format!("v{}", i % 100))).collect();
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from_iter_values(from..to)), Arc::new(s)],
            )
            .unwrap()
        };
        // Row groups of 256Ki rows: the second batch straddles a row group boundary.
        let batches = [batch(0, 2048), batch(2048, 300_000), batch(300_000, 300_001)];
        let mut stream =
            StreamEncoder::new(Arc::clone(&schema), Layout::uniform(Codec::Fast).writer_properties(0)).unwrap();
        for b in &batches {
            stream.write(b.clone()).unwrap();
        }
        let streamed = stream.finish().unwrap();
        assert_eq!(streamed, encode(&schema, &batches, Codec::Fast).unwrap());

        // A batch of another schema stops the encoder; the error says so, on write or on finish.
        let other: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, false)]));
        let wrong = RecordBatch::try_new(other, vec![Arc::new(arrow_array::StringArray::from(vec!["a"]))]).unwrap();
        let mut stream =
            StreamEncoder::new(Arc::clone(&schema), Layout::uniform(Codec::Fast).writer_properties(0)).unwrap();
        let failed = (0..3).map(|_| stream.write(wrong.clone())).find_map(Result::err);
        let error = match failed {
            Some(e) => e,
            None => stream.finish().unwrap_err(),
        };
        assert!(error.to_string().contains("parquet"), "{error}");
    }

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

    /// A bloom filter answers "certainly not here" for values the file lacks and never "no" for a
    /// value it holds; a file without one says it cannot tell. The filter is a [`Layout`]'s, sized
    /// by the file's rows at [`BLOOM_FPP`].
    #[test]
    fn bloom_filters_tell_which_files_may_hold_a_value() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let ids: Vec<i64> = (0..5000).map(|i| i * 7919 - 20_000).collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(ids.clone()))]).unwrap();
        let layout = Layout { bloom_filter: &["id"], ..Layout::uniform(Codec::Fast) };
        let with = encode_layout(&schema, std::slice::from_ref(&batch), &layout).unwrap();
        for id in &ids {
            assert_eq!(may_contain_any(with.clone(), "id", &[*id]).unwrap(), Some(true), "{id} is in the file");
        }
        let absent: Vec<i64> = (0..5000).map(|i| i * 7919 + 1).collect();
        let false_positives =
            absent.iter().filter(|v| may_contain_any(with.clone(), "id", &[**v]).unwrap() == Some(true));
        // 1 in 10,000: about 0.5 of 5,000, where parquet's default (5 %) lets 250 through and 1 % 50.
        assert!(false_positives.count() < 10);
        let without = encode(&schema, std::slice::from_ref(&batch), Codec::Fast).unwrap();
        assert_eq!(may_contain_any(without, "id", &[ids[0]]).unwrap(), None);
        assert!(may_contain_any(with.clone(), "nope", &[1]).is_err());
        assert!(may_contain_any(Bytes::from_static(b"not parquet"), "id", &[1]).is_err());
    }

    #[test]
    fn a_layout_sets_dictionary_statistics_and_codec_per_column() {
        use arrow_array::StringArray;
        use parquet::file::reader::FileReader;
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("hub", DataType::Utf8, false),
            Field::new("body", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
        ]));
        let ids: Vec<String> = (0..1000).map(|i| format!("id-{i:06}")).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(&ids)),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n("patient-flow", 1000))),
                Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("{{\"id\":\"{i}\"}}")))),
                Arc::new(Int64Array::from_iter_values(5000..6000)),
            ],
        )
        .unwrap();
        let layout = Layout {
            codec: Codec::Archive,
            plain: &["id", "body"],
            no_statistics: &["body"],
            delta: &["seq"],
            uncompressed: &["hub", "seq"],
            ..Layout::uniform(Codec::Archive)
        };
        let bytes = encode_layout(&schema, std::slice::from_ref(&batch), &layout).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(bytes.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        let dictionary = |i: usize| rg.column(i).encodings().any(|e| e == Encoding::RLE_DICTIONARY);
        assert!(!dictionary(0) && dictionary(1) && !dictionary(2) && !dictionary(3));
        assert!(rg.column(3).encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        assert!(rg.column(3).compressed_size() < 200, "1,000 consecutive numbers in a few bytes");
        assert!(rg.column(0).statistics().is_some() && rg.column(2).statistics().is_none());
        assert!(matches!(rg.column(0).compression(), Compression::ZSTD(_)));
        assert_eq!(rg.column(1).compression(), Compression::UNCOMPRESSED);
        assert_eq!(decode(bytes.clone()).unwrap().1, vec![batch.clone()]);
        let (projected, batches) = decode_columns(bytes, &["body", "id", "absent"]).unwrap();
        let names: Vec<&str> = projected.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "body"], "file order, absent names skipped");
        assert_eq!(batches[0].column(1), batch.column(2));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Bytes::from_static(b"not parquet at all")).is_err());
        assert!(decode(Bytes::new()).is_err());
    }
}
