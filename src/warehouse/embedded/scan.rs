//! The rows a load appends, as a DuckDB table function: `INSERT INTO t BY NAME SELECT * FROM
//! gold_rows()` has DuckDB's threads read the table's new gold files and insert their rows in
//! parallel, where an appender inserts on the one thread that calls it (1M facts and 915k patient
//! versions: 1.2 s on one thread, 0.7 s on two).
//!
//! The table's files, in the load's order, are cut into one run of consecutive rows per thread,
//! every run but the last a whole number of DuckDB's row groups (a file the cut falls in is read in
//! two parts). Each scan task (DuckDB runs one per thread) takes a run nobody reads and reads it in
//! order, decoding a file and handing its rows out one vector at a time. So each task stores a run
//! of the load's order in full row groups, its files' rows next to each other, as one thread would:
//! the files a later build replaces together (see `load_order`) leave whole row groups, which the
//! checkpoint drops, rather than holes it must vacuum. (Tasks that took files in turns, or rows a
//! vector at a time, measured checkpoints of 0.9-1.5 s on the sixth to tenth of ten 1M runs onto
//! one lake, against 0.01-0.7 s.)
//!
//! A task is known by the address of the chunk DuckDB fills for it, the same on every call of the
//! task (DuckDB's C API offers no per-task state to a Rust table function). Nothing depends on that
//! for correctness: a file a task leaves unfinished is taken up by the next task that asks, and
//! the load repeats the statement until every file is in.
//!
//! Each run fetches its next file from the lake while the current one is read, so memory holds a
//! file's bytes and a batch per task, not the build. A failure (a file that is not a gold file of
//! the table) stops the statement, and the load returns that error, not DuckDB's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use duckdb::Connection;
use duckdb::core::{DataChunkHandle, LogicalTypeId};
use duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab, to_duckdb_logical_type_for_field};
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use crate::model::schema::{self, gold_column_micros};
use crate::pipeline::gold::keys;
use crate::storage::{Container, Lake};
use crate::warehouse::{Error, Result, Table};

/// The table function's name.
const FUNCTION: &str = "gold_rows";

/// The column that tags each warehouse row with the gold file it came from (`LoadedFile.file_id`).
pub(super) const GOLD_FILE_ID: &str = "gold_file_id";

/// DimPatient's durable key in the warehouse: [`keys::patient_key`] of its `patient_id`, the same
/// for every version of a patient (see `sql/embedded/001_schema.sql`).
const PATIENT_KEY: &str = "patient_key";

/// Rows decoded at a time.
const DECODE_BATCH: usize = 16 * 1024;

/// A gold file to load: its key in the gold container, the id its rows are tagged with, and its
/// rows (from the manifest; runs are cut by them).
pub(super) type Read = (String, i64, u64);

/// DuckDB's row group: 122,880 rows (`DEFAULT_ROW_GROUP_SIZE`; our files are attached without a
/// `ROW_GROUP_SIZE`).
const ROW_GROUP_ROWS: u64 = 122_880;

/// A file's bytes, being fetched.
type Fetch = tokio::task::JoinHandle<std::result::Result<Bytes, crate::storage::Error>>;

/// Rows `[first, end)` of a gold file; `end` `None`: to the file's end, whatever the manifest said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    file: String,
    id: i64,
    first: u64,
    end: Option<u64>,
}

/// Consecutive files (or parts) of the load's order that one task reads in order.
#[derive(Default)]
struct Run {
    parts: VecDeque<Part>,
    /// The fetch of `parts[0]`, started while the task reads the part before it.
    ahead: Option<Fetch>,
    /// The task reading this run.
    owner: Option<usize>,
}

/// Cuts `files` (in the load's order) into at most `n` runs of consecutive rows: every run but
/// the last holds a whole number of DuckDB's row groups, the nearest to an `n`-th of the rows, so
/// the runs' row groups are full but the last one's last, as if one thread had inserted them. A
/// file the cut falls in is read in two parts. Fewer than two row groups make one run.
fn runs(files: Vec<Read>, n: usize) -> Vec<Run> {
    let total: u64 = files.iter().map(|f| f.2).sum();
    let n = if total >= 2 * ROW_GROUP_ROWS { n.max(1) } else { 1 };
    let share = ((total / n as u64 + ROW_GROUP_ROWS / 2) / ROW_GROUP_ROWS).max(1) * ROW_GROUP_ROWS;
    let room_of = |runs: usize| if runs < n { share } else { u64::MAX };
    let mut runs = vec![Run::default()];
    let mut room = room_of(1);
    for (file, id, rows) in files {
        let mut first = 0;
        // A cut falls in this file: the run ends there (a file's last part reads to its end, whatever
        // the manifest said), and the next goes on.
        while runs.len() < n && rows - first >= room {
            let end = (first + room < rows).then_some(first + room);
            runs.last_mut().expect("one run at least").parts.push_back(Part { file: file.clone(), id, first, end });
            first += room;
            runs.push(Run::default());
            room = room_of(runs.len());
        }
        if first < rows || rows == 0 {
            room -= rows - first;
            runs.last_mut().expect("one run at least").parts.push_back(Part { file, id, first, end: None });
        }
    }
    runs.retain(|r| !r.parts.is_empty());
    runs
}

/// The columns the warehouse's `table` is loaded with: the gold file's, timestamps naive UTC
/// microseconds (DuckDB's `TIMESTAMP`), then DimPatient's `patient_key` and every table's
/// `gold_file_id`.
fn insert_schema(table: Table) -> SchemaRef {
    let gold = match table {
        Table::DimDepartment => &schema::DIM_DEPARTMENT,
        Table::DimPatient => &schema::DIM_PATIENT,
        Table::DimTime => &schema::DIM_TIME,
        Table::FactPatientFlow => &schema::FACT_PATIENT_FLOW,
    };
    let mut fields: Vec<Field> = gold
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(..) => {
                Field::new(f.name(), DataType::Timestamp(TimeUnit::Microsecond, None), f.is_nullable())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    if table == Table::DimPatient {
        fields.push(Field::new(PATIENT_KEY, DataType::Int64, false));
    }
    fields.push(Field::new(GOLD_FILE_ID, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// A gold file being read: its batches, and the rows of the current one not yet handed out.
struct Reading {
    file: String,
    id: i64,
    table: Table,
    batches: ParquetRecordBatchReader,
    current: Option<(RecordBatch, usize)>,
}

impl Reading {
    fn open(table: Table, part: Part, bytes: Bytes) -> Result<Self> {
        let Part { file, id, first, end } = part;
        let open = || {
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(DECODE_BATCH);
            let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            let (first, end) = (first.min(total), end.map_or(total, |e| e.clamp(first.min(total), total)));
            if first == 0 && end == total {
                return builder.build();
            }
            // A selection covers every row of the file: rows after its last selector are not read.
            let selectors = [
                RowSelector::skip(first as usize),
                RowSelector::select((end - first) as usize),
                RowSelector::skip((total - end) as usize),
            ];
            builder.with_row_selection(RowSelection::from(selectors.to_vec())).build()
        };
        let batches = open().map_err(|e| corrupt(&file, e.to_string()))?;
        Ok(Self { file, id, table, batches, current: None })
    }

    /// The next at most `vector` rows, decoding the next batch when the current one is done;
    /// `None` at the end of the file.
    fn next_slice(&mut self, schema: &SchemaRef, vector: usize) -> Result<Option<RecordBatch>> {
        loop {
            if let Some((batch, offset)) = &mut self.current
                && *offset < batch.num_rows()
            {
                let len = (batch.num_rows() - *offset).min(vector);
                let slice = batch.slice(*offset, len);
                *offset += len;
                return Ok(Some(slice));
            }
            match self.batches.next() {
                Some(batch) => {
                    let batch = batch.map_err(|e| corrupt(&self.file, e.to_string()))?;
                    self.current = Some((self.conform(&batch, schema)?, 0));
                }
                None => return Ok(None),
            }
        }
    }

    /// `batch` as the warehouse loads it (see [`insert_schema`]): columns found by name, each of the
    /// table's type (timestamps to naive microseconds, dictionaries or narrower types cast), then
    /// the columns the warehouse adds.
    fn conform(&self, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let column = match name {
                GOLD_FILE_ID => Arc::new(Int64Array::from_value(self.id, rows)) as ArrayRef,
                PATIENT_KEY => {
                    let ids = batch
                        .column_by_name("patient_id")
                        .and_then(|c| c.as_string_opt::<i32>())
                        .ok_or_else(|| corrupt(&self.file, "DimPatient has no text column patient_id".into()))?;
                    if ids.null_count() > 0 {
                        return Err(corrupt(&self.file, "DimPatient has a row without a patient_id".into()));
                    }
                    Arc::new(Int64Array::from_iter_values((0..rows).map(|i| keys::patient_key(ids.value(i)))))
                }
                _ => {
                    let column = batch
                        .column_by_name(name)
                        .ok_or_else(|| corrupt(&self.file, format!("{} has no column `{name}`", self.table)))?;
                    conform_column(column, field.data_type()).map_err(|detail| {
                        corrupt(&self.file, format!("{}.{name} is {} ({detail})", self.table, column.data_type()))
                    })?
                }
            };
            columns.push(column);
        }
        RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| corrupt(&self.file, e.to_string()))
    }
}

/// `column` as `target`: as it is, a millisecond or microsecond timestamp as naive microseconds,
/// anything else through arrow's cast (a dictionary of strings, a narrower integer).
fn conform_column(column: &ArrayRef, target: &DataType) -> std::result::Result<ArrayRef, String> {
    if column.data_type() == target {
        return Ok(Arc::clone(column));
    }
    if let DataType::Timestamp(..) = target {
        let micros = gold_column_micros(column.as_ref())
            .ok_or_else(|| "the warehouse loads millisecond or microsecond timestamps".to_string())?;
        return Ok(Arc::new(micros));
    }
    arrow_cast::cast(column, target).map_err(|e| e.to_string())
}

fn corrupt(file: &str, detail: String) -> Error {
    Error::Pipeline(crate::pipeline::Error::Corrupt { key: file.to_string(), detail })
}

/// The files of the table being inserted, shared by DuckDB's scan tasks.
pub(super) struct Feed {
    lake: Lake,
    rt: tokio::runtime::Handle,
    state: Mutex<State>,
}

struct State {
    /// The table being inserted and its columns.
    table: Table,
    schema: SchemaRef,
    /// Its files not yet taken up, in runs.
    runs: Vec<Run>,
    /// Files being read, by the scan task reading them (the address of its chunk).
    reading: HashMap<usize, Reading>,
    /// Files left unfinished by the tasks of an earlier statement: the next task that asks takes one.
    unfinished: Vec<Reading>,
    /// Rows handed out for the table.
    rows: u64,
    /// The first failure: every task stops, and the load returns it.
    error: Option<Error>,
}

impl Feed {
    pub(super) fn new(lake: &Lake, rt: &tokio::runtime::Handle) -> Self {
        let table = Table::FactPatientFlow;
        let state = State {
            table,
            schema: insert_schema(table),
            runs: Vec::new(),
            reading: HashMap::new(),
            unfinished: Vec::new(),
            rows: 0,
            error: None,
        };
        Self { lake: lake.clone(), rt: rt.clone(), state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fetch(&self, file: &str) -> Fetch {
        let (lake, key) = (self.lake.clone(), object_store::path::Path::from(file));
        self.rt.spawn(async move { lake.get(Container::Gold, &key).await })
    }

    /// Whether the table has rows left to insert after a statement, and the failure that stopped one.
    fn pending(&self) -> Result<bool> {
        let mut s = self.lock();
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        // The next statement's tasks are new: what this one's left is anyone's.
        let left: Vec<Reading> = s.reading.drain().map(|(_, r)| r).collect();
        s.unfinished.extend(left);
        s.runs.iter_mut().for_each(|r| r.owner = None);
        Ok(s.runs.iter().any(|r| !r.parts.is_empty()) || !s.unfinished.is_empty())
    }

    /// The next at most `vector` rows for the task whose chunk is at `task`; `None` when the table
    /// has none left for it.
    fn next_slice(&self, task: usize, vector: usize) -> Result<Option<RecordBatch>> {
        let (schema, held) = {
            let mut s = self.lock();
            if s.error.is_some() {
                return Err(Error::Database("stopped: another scan task failed".into()));
            }
            (Arc::clone(&s.schema), s.reading.remove(&task))
        };
        let mut held = held;
        loop {
            let mut reading = match held.take() {
                Some(r) => r,
                None => match self.claim(task)? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            // Decoding runs outside the lock, so tasks decode in parallel; a part that has ended
            // gives way to the task's next.
            if let Some(slice) = reading.next_slice(&schema, vector)? {
                let mut s = self.lock();
                s.rows += slice.num_rows() as u64;
                s.reading.insert(task, reading);
                return Ok(Some(slice));
            }
        }
    }

    /// The next part for `task`, which has none: one an earlier statement left unfinished, else the
    /// next of its run (a task without one takes the first run nobody reads); `None` when none is
    /// left. The part is fetched and opened outside the lock.
    fn claim(&self, task: usize) -> Result<Option<Reading>> {
        let (table, part, fetch) = {
            let mut s = self.lock();
            if let Some(r) = s.unfinished.pop() {
                return Ok(Some(r));
            }
            let table = s.table;
            let own = s.runs.iter().position(|r| r.owner == Some(task) && !r.parts.is_empty());
            let free = || s.runs.iter().position(|r| r.owner.is_none() && !r.parts.is_empty());
            let Some(i) = own.or_else(free) else { return Ok(None) };
            let run = &mut s.runs[i];
            run.owner = Some(task);
            let Some(part) = run.parts.pop_front() else { return Ok(None) };
            let fetch = run.ahead.take().unwrap_or_else(|| self.fetch(&part.file));
            run.ahead = run.parts.front().map(|next| self.fetch(&next.file));
            (table, part, fetch)
        };
        let bytes = match self.rt.block_on(fetch) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(Error::Pipeline(e.into())),
            Err(e) => return Err(Error::Database(format!("reading gold failed: {e}"))),
        };
        Reading::open(table, part, bytes).map(Some)
    }

    /// Keeps the first failure for the load to return.
    fn record(&self, e: Error) {
        let mut s = self.lock();
        if s.error.is_none() {
            s.error = Some(e);
        }
    }
}

/// The table function over the feed registered with it.
struct GoldRows;

impl VTab for GoldRows {
    type InitData = ();
    type BindData = Arc<Feed>;

    fn bind(bind: &BindInfo) -> std::result::Result<Self::BindData, Box<dyn std::error::Error>> {
        let feed = extra_feed(bind).ok_or("gold_rows has no feed")?;
        let schema = Arc::clone(&feed.lock().schema);
        for field in schema.fields() {
            bind.add_result_column(field.name(), to_duckdb_logical_type_for_field(field)?);
        }
        Ok(Arc::clone(feed))
    }

    fn init(init: &InitInfo) -> std::result::Result<Self::InitData, Box<dyn std::error::Error>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        init.set_max_threads(threads as u64);
        Ok(())
    }

    fn func(
        info: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        // One vector's worth: the capacity of the chunk DuckDB hands in, whose address names the task.
        let vector = output.flat_vector(0).capacity().max(1);
        let task = output.get_ptr() as usize;
        let feed = info.get_bind_data();
        match feed.next_slice(task, vector) {
            Ok(Some(slice)) => write_chunk(&slice, output)?,
            Ok(None) => output.set_len(0),
            Err(e) => {
                let message = e.to_string();
                feed.record(e);
                return Err(message.into());
            }
        }
        Ok(())
    }
}

/// Writes `batch` (at most a vector's rows, one column per result column of `gold_rows`, of the
/// types [`insert_schema`] gives) into DuckDB's `chunk`. Written here rather than by duckdb-rs's
/// conversion, which hands each string to DuckDB's checked assignment, validating it as UTF-8
/// again: an arrow string array is UTF-8 by construction (the parquet reader checked every value it
/// decoded), so the load assigns strings unchecked. Numbers, dates and timestamps are copied as
/// duckdb-rs copies them (DuckDB's `DATE` and `TIMESTAMP` are days and microseconds, as arrow's).
fn write_chunk(
    batch: &RecordBatch,
    chunk: &mut DataChunkHandle,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let rows = batch.num_rows();
    if batch.num_columns() != chunk.num_columns() || rows > chunk.flat_vector(0).capacity() {
        return Err(format!(
            "{FUNCTION}: {} columns of {rows} rows for a chunk of {} columns of {} rows",
            batch.num_columns(),
            chunk.num_columns(),
            chunk.flat_vector(0).capacity()
        )
        .into());
    }
    for (i, column) in batch.columns().iter().enumerate() {
        let mut vector = chunk.flat_vector(i);
        match column.data_type() {
            DataType::Utf8 => {
                fits(&vector, LogicalTypeId::Varchar, i)?;
                write_strings(column.as_string::<i32>(), column_vector(chunk, i));
            }
            DataType::Int64 => copy_primitive::<Int64Type>(column, &mut vector, LogicalTypeId::Bigint, i)?,
            DataType::Timestamp(TimeUnit::Microsecond, None) => {
                copy_primitive::<TimestampMicrosecondType>(column, &mut vector, LogicalTypeId::Timestamp, i)?
            }
            DataType::Int32 => copy_primitive::<Int32Type>(column, &mut vector, LogicalTypeId::Integer, i)?,
            DataType::Date32 => copy_primitive::<Date32Type>(column, &mut vector, LogicalTypeId::Date, i)?,
            DataType::Float64 => copy_primitive::<Float64Type>(column, &mut vector, LogicalTypeId::Double, i)?,
            DataType::Boolean => {
                fits(&vector, LogicalTypeId::Boolean, i)?;
                let values: Vec<bool> = column.as_boolean().values().iter().collect();
                copy_values(&mut vector, &values);
            }
            other => return Err(format!("{FUNCTION}: no conversion for a column of {other}").into()),
        }
        if let Some(nulls) = column.nulls().filter(|n| n.null_count() > 0) {
            for row in (0..rows).filter(|&r| nulls.is_null(r)) {
                vector.set_null(row);
            }
        }
    }
    chunk.set_len(rows);
    Ok(())
}

/// Whether `vector` (column `i`) stores DuckDB's `expected` type: what is copied into it must be
/// its storage.
fn fits(
    vector: &duckdb::core::FlatVector<'_>,
    expected: LogicalTypeId,
    i: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let stored = vector.logical_type().id();
    match stored == expected {
        true => Ok(()),
        false => Err(format!("{FUNCTION}: column {i} is {stored:?} in DuckDB but {expected:?} in the batch").into()),
    }
}

/// Copies a primitive column (column `i`) into `vector`, which must store DuckDB's `expected` type.
fn copy_primitive<T: arrow_array::ArrowPrimitiveType>(
    column: &ArrayRef,
    vector: &mut duckdb::core::FlatVector<'_>,
    expected: LogicalTypeId,
    i: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    fits(vector, expected, i)?;
    copy_values(vector, column.as_primitive::<T>().values());
    Ok(())
}

/// Copies `values` (at most the vector's capacity) into `vector`, whose DuckDB type stores `T`.
#[allow(unsafe_code)]
fn copy_values<T: Copy>(vector: &mut duckdb::core::FlatVector<'_>, values: &[T]) {
    // SAFETY: the vector's DuckDB type stores `T` (the callers checked it with `fits`: BIGINT and
    // TIMESTAMP i64, INTEGER and DATE i32, DOUBLE f64, BOOLEAN bool); it holds `capacity` values, at
    // least `values.len()` (`write_chunk` checked the rows), and nothing else refers to its storage
    // while the table function fills it.
    unsafe { vector.copy::<T>(values) }
}

/// The vector of `chunk`'s column `i` (`i` below its column count).
#[allow(unsafe_code)]
fn column_vector(chunk: &DataChunkHandle, i: usize) -> duckdb::ffi::duckdb_vector {
    // SAFETY: `chunk` is a live data chunk DuckDB handed to the table function, and `i` is one of
    // its columns (`write_chunk` checked the count): DuckDB returns that column's vector, owned by
    // the chunk and valid while it is.
    unsafe { duckdb::ffi::duckdb_data_chunk_get_vector(chunk.get_ptr(), i as u64) }
}

/// Writes the non-null values of `strings` (at most the vector's capacity) into the VARCHAR
/// `vector`, rows from 0 (nulls are marked by the caller).
#[allow(unsafe_code)]
fn write_strings(strings: &arrow_array::StringArray, vector: duckdb::ffi::duckdb_vector) {
    for (row, value) in strings.iter().enumerate() {
        if let Some(value) = value {
            // SAFETY: `vector` is a VARCHAR vector of the chunk being filled (`write_chunk` checked
            // its type) with room for `row` (`write_chunk` checked the rows);
            // DuckDB copies the `value.len()` bytes at `value.as_ptr()`, valid for the call, into
            // the vector's own storage. They are UTF-8: `value` is a `&str`.
            unsafe {
                duckdb::ffi::duckdb_unsafe_vector_assign_string_element_len(
                    vector,
                    row as u64,
                    value.as_ptr().cast(),
                    value.len() as u64,
                );
            }
        }
    }
}

/// The feed `register` gave the function.
#[allow(unsafe_code)]
fn extra_feed(bind: &BindInfo) -> Option<&Arc<Feed>> {
    // SAFETY: the function's extra info is the `Arc<Feed>` that `register` handed to
    // `register_table_function_with_extra_info`, which DuckDB keeps (boxed, never moved) as long
    // as the function is registered, i.e. longer than any bind of it.
    unsafe { bind.get_extra_info::<Arc<Feed>>().as_ref() }
}

/// Registers `gold_rows` over `feed` on this connection's database.
pub(super) fn register(conn: &Connection, feed: &Arc<Feed>) -> Result<()> {
    conn.register_table_function_with_extra_info::<GoldRows, _>(FUNCTION, feed)
        .map_err(|e| Error::Database(format!("cannot register {FUNCTION}: {e}")))
}

/// Inserts the rows of `table`'s `files` (in the load's order) on `threads` threads, one run of files
/// each; returns the rows inserted.
pub(super) fn insert(conn: &Connection, feed: &Feed, table: Table, files: Vec<Read>, threads: usize) -> Result<u64> {
    {
        let mut s = feed.lock();
        s.table = table;
        s.schema = insert_schema(table);
        s.runs = runs(files, threads);
        s.rows = 0;
    }
    // One statement inserts every file unless a task left one unfinished (see the module docs).
    let mut before = None;
    while feed.pending()? {
        let rows = feed.lock().rows;
        if before == Some(rows) {
            return Err(Error::Database(format!("inserting {table}: a statement took no rows")));
        }
        before = Some(rows);
        conn.execute(&format!("INSERT INTO {table} BY NAME SELECT * FROM {FUNCTION}()"), [])
            .map_err(|e| feed.lock().error.take().unwrap_or_else(|| Error::Database(e.to_string())))?;
    }
    Ok(feed.lock().rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The parts of each file, in the order the runs hold them.
    fn parts_by_file(runs: &[Run]) -> HashMap<i64, Vec<(u64, Option<u64>)>> {
        let mut out: HashMap<i64, Vec<(u64, Option<u64>)>> = HashMap::new();
        for part in runs.iter().flat_map(|r| &r.parts) {
            out.entry(part.id).or_default().push((part.first, part.end));
        }
        out
    }

    proptest! {
        /// However the files' sizes fall: every file is read once, whole (its parts follow each
        /// other, the last to the file's end), in the load's order; at most `n` runs, and every run
        /// but the last holds whole row groups.
        #[test]
        fn runs_cover_every_file_once_and_fill_whole_row_groups(
            rows in prop::collection::vec(prop_oneof![0u64..1_000, 0u64..300_000], 1..40),
            n in 1usize..5,
        ) {
            let files: Vec<Read> = rows.iter().enumerate().map(|(i, &r)| (format!("f{i}"), i as i64, r)).collect();
            let runs = runs(files, n);
            prop_assert!(!runs.is_empty() && runs.len() <= n);
            let order: Vec<i64> = runs.iter().flat_map(|r| &r.parts).map(|p| p.id).collect();
            prop_assert!(order.windows(2).all(|w| w[0] <= w[1]), "the load's order: {order:?}");
            let by_file = parts_by_file(&runs);
            prop_assert_eq!(by_file.len(), rows.len());
            for (id, parts) in &by_file {
                prop_assert_eq!(parts[0].0, 0);
                prop_assert_eq!(parts.last().unwrap().1, None, "the last part reads to the end");
                for w in parts.windows(2) {
                    prop_assert_eq!(w[0].1, Some(w[1].0), "file {}: parts follow each other", id);
                    prop_assert!(w[0].0 < w[1].0);
                }
                prop_assert!(parts.iter().all(|&(first, end)| first < rows[*id as usize] || (first == 0 && end.is_none())));
            }
            let total: u64 = rows.iter().sum();
            if total < 2 * ROW_GROUP_ROWS {
                prop_assert_eq!(runs.len(), 1);
            }
            for run in &runs[..runs.len() - 1] {
                let held: u64 = run.parts.iter().map(|p| p.end.unwrap_or(rows[p.id as usize]) - p.first).sum();
                prop_assert!(held > 0 && held.is_multiple_of(ROW_GROUP_ROWS), "{held} rows");
            }
        }
    }

    /// The parts of a file, read one after another, give its rows once each, in order — also when
    /// the manifest's row count is wrong (the last part reads to the file's end).
    #[test]
    fn a_files_parts_read_its_rows_once() {
        use arrow_array::Int64Array;
        let values: Vec<i64> = (0..50_000).collect();
        let batch =
            RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(values.clone())) as ArrayRef)]).unwrap();
        let bytes =
            crate::storage::parquet::encode(&batch.schema(), &[batch], crate::storage::parquet::Codec::Fast).unwrap();
        let read = |first: u64, end: Option<u64>| -> Vec<i64> {
            let part = Part { file: "f".into(), id: 1, first, end };
            let reading = Reading::open(Table::DimTime, part, bytes.clone()).unwrap();
            reading
                .batches
                .flat_map(|b| b.unwrap().column(0).as_primitive::<arrow_array::types::Int64Type>().values().to_vec())
                .collect()
        };
        assert_eq!(read(0, None), values);
        for cut in [0, 1, 2_048, 16_384, 30_000, 49_999, 50_000] {
            let mut both = read(0, Some(cut));
            both.extend(read(cut, None));
            assert_eq!(both, values, "cut at {cut}");
        }
        // A manifest that said 40,000 rows (the file has 50,000): cut at 30,000, nothing lost.
        let mut both = read(0, Some(30_000));
        both.extend(read(30_000, None));
        assert_eq!(both, values);
        // A manifest that said 60,000: the first part reads what there is, the second nothing.
        assert_eq!(read(0, Some(55_000)), values);
        assert!(read(55_000, None).is_empty());
    }

    #[test]
    fn two_runs_of_about_half_the_rows_for_two_threads() {
        let files: Vec<Read> = (0..10).map(|i| (format!("f{i}"), i, 100_000)).collect();
        let runs = runs(files, 2);
        assert_eq!(runs.len(), 2);
        // 500,000 rows each would be 4.07 row groups: the first run takes 4 (491,520 rows), cutting f4.
        assert_eq!(runs[0].parts.back(), Some(&Part { file: "f4".into(), id: 4, first: 0, end: Some(91_520) }));
        assert_eq!(runs[1].parts.front(), Some(&Part { file: "f4".into(), id: 4, first: 91_520, end: None }));
    }
}
