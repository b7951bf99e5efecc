//! FactPatientFlow: one row per visit (`fact_id`), built from the visit's winning event (the latest
//! by [`Visits::order_key`](super::input::Visits::order_key)) and the patient version valid at its
//! admission, partitioned by visit date — the date of the admission the row carries — so a build
//! rewrites only the days it touches.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, DictionaryArray, RecordBatch};
use arrow_schema::SchemaRef;

use super::dims::{self, PatientVersion};
use super::input::{Visit, Visits};
use super::keys;
use super::keys::epoch_days;
use crate::model::schema::{FACT_PATIENT_FLOW, GOLD_TZ, gold_column_micros, to_gold_ms, with_text_dictionaries};
use crate::pipeline::{Error, Result};

/// FactPatientFlow as a build holds it in memory: [`FACT_PATIENT_FLOW`] with `bronze_file`
/// dictionary-encoded. The column is a lake path (74 bytes a row, of a few thousand distinct values
/// in a build), two fifths of a fact row held as plain strings, and every fact a build rewrites or
/// writes passes through memory. Files are still written under [`FACT_PATIENT_FLOW`]: parquet's
/// writer takes a dictionary column value by value, so a file's bytes are those of its plain
/// strings (tested below).
pub static FACT_IN_MEMORY: LazyLock<SchemaRef> =
    LazyLock::new(|| with_text_dictionaries(&FACT_PATIENT_FLOW, &["bronze_file"]));

/// Decodes a fact file into [`FACT_IN_MEMORY`] batches, `bronze_file` read straight into a
/// dictionary; a file of another layout is decoded as it is ([`lay_out_day`] converts it).
pub fn read(bytes: bytes::Bytes) -> std::result::Result<Vec<RecordBatch>, crate::storage::parquet::ParquetError> {
    crate::storage::parquet::decode_as(bytes, &FACT_IN_MEMORY)
}

/// One visit as stored in gold (derived columns are computed when encoding).
#[derive(Debug, Clone, PartialEq)]
pub struct FactRow {
    /// Visit key.
    pub fact_id: i64,
    /// The patient version valid at admission.
    pub patient_sk: i64,
    /// Department key.
    pub department_sk: i64,
    /// Admission, µs.
    pub admission_us: i64,
    /// Discharge as sent, µs.
    pub discharge_us: Option<i64>,
    /// Bed id.
    pub bed_id: Option<i32>,
    /// Hospital id.
    pub hospital_id: Option<i32>,
    /// Event Hubs partition of the winning event.
    pub partition_id: Arc<str>,
    /// Its sequence number.
    pub sequence_number: i64,
    /// Its enqueued time, µs.
    pub enqueued_us: i64,
    /// Its bronze file.
    pub bronze_file: Arc<str>,
    /// When gold first took this version of the row, µs.
    pub ingested_us: i64,
    /// Partition key (days since epoch): the day of `admission_us`.
    pub visit_date: i32,
}

impl FactRow {
    /// The row of a visit whose winning event is `v`, for the patient's `versions`; `None` only if
    /// the versions do not cover the visit (they always do when built from the same records).
    pub fn of(visits: &Visits, v: &Visit, versions: &[PatientVersion], ingested_us: i64) -> Option<FactRow> {
        let (department, hospital) = visits.department_of(v);
        Some(FactRow {
            fact_id: v.fact_id,
            patient_sk: dims::patient_sk_at(versions, v.admission_us)?,
            department_sk: visits.department_sk(v.department, hospital, department),
            admission_us: v.admission_us,
            discharge_us: v.discharge_us,
            bed_id: v.bed_id,
            hospital_id: v.hospital_id,
            partition_id: visits.dict.arc(v.partition_id).cloned().unwrap_or_else(|| Arc::from("")),
            sequence_number: v.sequence_number,
            enqueued_us: v.enqueued_us,
            bronze_file: visits.dict.arc(v.bronze_file).cloned().unwrap_or_else(|| Arc::from("")),
            ingested_us,
            visit_date: keys::epoch_days(v.admission_us),
        })
    }

    /// Whether two rows are equal but for the columns that depend on delivery, not on the set of
    /// events: `bronze_file` (which copy of the event was folded first) and `ingested_at`.
    pub fn same_row(&self, other: &FactRow) -> bool {
        FactRow { ingested_us: other.ingested_us, bronze_file: Arc::clone(&other.bronze_file), ..self.clone() }
            == *other
    }

    /// Whether two rows describe the visit identically (everything but lineage and ingestion time).
    pub fn same_visit_content(&self, other: &FactRow) -> bool {
        (self.patient_sk, self.department_sk, self.admission_us, self.discharge_us, self.bed_id, self.hospital_id)
            == (
                other.patient_sk,
                other.department_sk,
                other.admission_us,
                other.discharge_us,
                other.bed_id,
                other.hospital_id,
            )
    }

    /// Discharge before admission: the stay is unknown, never negative.
    pub fn discharge_before_admission(&self) -> bool {
        discharge_before_admission(self.admission_us, self.discharge_us)
    }

    /// Length of stay in hours, for discharged visits with a consistent discharge (computed in
    /// 128 bits: no pair of timestamps overflows).
    pub fn length_of_stay_hours(&self) -> Option<f64> {
        let d = self.discharge_us?;
        (d >= self.admission_us).then(|| (i128::from(d) - i128::from(self.admission_us)) as f64 / 3_600_000_000.0)
    }

    /// Admitted and not (yet) discharged at `as_of`.
    pub fn is_currently_admitted(&self, as_of: i64) -> bool {
        is_admitted(self.admission_us, self.discharge_us, as_of)
    }

    /// The first instant after `as_of` at which [`is_currently_admitted`](Self::is_currently_admitted) flips.
    pub fn next_change(&self, as_of: i64) -> Option<i64> {
        next_change(self.admission_us, self.discharge_us, as_of)
    }
}

/// The discharge (µs) is before the admission: the stay is unknown.
fn discharge_before_admission(admission: i64, discharge: Option<i64>) -> bool {
    discharge.is_some_and(|d| d < admission)
}

/// A visit admitted at `admission` and discharged at `discharge` (µs) is admitted at `as_of`: it
/// has begun and not ended; a discharge before the admission never counts as a stay.
pub fn is_admitted(admission: i64, discharge: Option<i64>, as_of: i64) -> bool {
    !discharge_before_admission(admission, discharge) && admission <= as_of && discharge.is_none_or(|d| d > as_of)
}

/// The first instant after `as_of` at which [`is_admitted`] flips for the visit.
pub fn next_change(admission: i64, discharge: Option<i64>, as_of: i64) -> Option<i64> {
    if discharge_before_admission(admission, discharge) {
        return None;
    }
    [Some(admission), discharge].into_iter().flatten().filter(|&t| t > as_of).min()
}

/// Rows whose census flag flips within [`NEAR_FLIP_US`] of the build share files by six-hour window
/// of their flip instant; later flips share a file per week. A build rewrites a file once its
/// earliest flip is due, so it rewrites about the rows that flip, never a day's history: a row is
/// written when it arrives and again when it flips (a row whose flip is further off than
/// [`NEAR_FLIP_US`], rare, once more on its way into a six-hour window). The horizon covers the
/// seed's stays and future admissions (up to 72 hours each): with a one-day horizon, two thirds of
/// the open visits took the extra rewrite (measured: 0.85M rows rewritten per 1M new events once
/// the lake held three days of visits).
pub const FLIP_WINDOW_US: i64 = 6 * 3_600_000_000;

/// See [`FLIP_WINDOW_US`].
pub const NEAR_FLIP_US: i64 = 72 * 3_600_000_000;

/// See [`FLIP_WINDOW_US`].
pub const FAR_FLIP_WINDOW_US: i64 = 7 * 24 * 3_600_000_000;

/// Files with fewer rows than this whose rows never flip again are small: once a day has
/// [`MAX_SMALL_FILES`] of them, the next build that touches the day merges them.
pub const MIN_FILE_ROWS: usize = 16 * 1024;

/// See [`MIN_FILE_ROWS`].
pub const MAX_SMALL_FILES: usize = 8;

/// A row's file within its day: (not fresh, flip horizon, flip window), in file order.
type FileClass = (bool, u8, i64);

/// Which file of its day a row belongs in: rows new to gold apart from the rest (a loader appends
/// those without deleting), then by flip window (see [`FLIP_WINDOW_US`]); settled rows last.
fn file_class(fresh: bool, next_change: Option<i64>, as_of: i64) -> FileClass {
    match next_change {
        None => (!fresh, 2, 0),
        Some(t) if t - as_of <= NEAR_FLIP_US => (!fresh, 0, t.div_euclid(FLIP_WINDOW_US)),
        Some(t) => (!fresh, 1, t.div_euclid(FAR_FLIP_WINDOW_US)),
    }
}

/// A [`FileClass`] as one integer in the same order: not fresh in the top bit, the horizon in the
/// next two, the window offset by 2^60 in the rest (a window of any i64 instant is within ±2^29),
/// so sorting a day's rows compares one number where it compared three.
fn packed(class: FileClass) -> u64 {
    let (stale, horizon, window) = class;
    (u64::from(stale) << 63) | (u64::from(horizon) << 61) | (window + (1 << 60)) as u64
}

/// One file of a day, as [`lay_out_day`] splits it.
pub struct DayFile {
    /// Whether all its rows are new to gold (a loader appends them without deleting).
    pub fresh: bool,
    /// Its rows, sorted by admission, then key.
    pub batch: RecordBatch,
    /// The earliest instant one of its rows' census flag flips.
    pub next_change_us: Option<i64>,
    /// The other days whose hours its rows reference (keyable discharges on another day).
    pub discharge_days: BTreeSet<i32>,
}

/// Lays one day out into files by `file_class`: the day's `new` rows (with whether each is new
/// to gold) and the rows it keeps from the files it rewrites, as decoded (`kept`, without the
/// rows that left). Kept rows stay columns: only their census flag is recomputed as of `as_of`.
/// The flag and the flip instants follow the stored (millisecond) timestamps for every row, new
/// or kept, so a row's flag never depends on which build wrote it.
///
/// The files are gathered one at a time, as the caller takes them (see [`DayFiles`]), straight
/// from the day's batches: memory holds the day once plus the files being encoded, where a day
/// concatenated, then sorted (two copies), and each file a slice holding the whole sorted day
/// held up to three copies at a build's peak.
pub fn lay_out_day(
    key: &str,
    new: Vec<(bool, FactRow)>,
    kept: Vec<RecordBatch>,
    day: i32,
    as_of: i64,
) -> Result<DayFiles> {
    let mut sources = Vec::with_capacity(kept.len() + 1);
    let mut fresh_new: Vec<bool> = Vec::new();
    if !new.is_empty() {
        // In arrival order: the day's rows are put in order once, below, with the kept ones.
        let (flags, rows): (Vec<bool>, Vec<FactRow>) = new.into_iter().unzip();
        fresh_new = flags;
        sources.push(encode_unsorted(&rows, as_of)?);
    }
    for b in kept.into_iter().filter(|b| b.num_rows() > 0) {
        sources.push(conform(key, b)?);
    }
    let corrupt = |name: &str| Error::Corrupt { key: key.to_string(), detail: format!("no usable `{name}` column") };
    let flag = FACT_PATIENT_FLOW.index_of("is_currently_admitted")?;
    let rows: usize = sources.iter().map(RecordBatch::num_rows).sum();
    // The sort keys side by side (a comparison reads one tuple, not three columns); the row's
    // place (batch, row) last: equal keys (which a day never holds twice) would still come out in
    // one order.
    let mut keyed: Vec<(u64, i64, i64, u32, u32)> = Vec::with_capacity(rows);
    // Per batch: each row's flip instant and discharge, for the files' metadata.
    let mut flips: Vec<Vec<Option<i64>>> = Vec::with_capacity(sources.len());
    let mut discharges: Vec<Vec<Option<i64>>> = Vec::with_capacity(sources.len());
    for (b, batch) in sources.iter_mut().enumerate() {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| corrupt(name));
        let admission =
            gold_column_micros(column("admission_time")?.as_ref()).ok_or_else(|| corrupt("admission_time"))?;
        let discharge =
            gold_column_micros(column("discharge_time")?.as_ref()).ok_or_else(|| corrupt("discharge_time"))?;
        let fact_id = column("fact_id")?.as_primitive::<Int64Type>().clone();
        let n = batch.num_rows();
        let mut admitted = BooleanBuilder::with_capacity(n);
        let (mut next, mut left) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (adm, dis) = (admission.value(i), (!discharge.is_null(i)).then(|| discharge.value(i)));
            admitted.append_value(is_admitted(adm, dis, as_of));
            let change = next_change(adm, dis, as_of);
            let is_fresh = b == 0 && fresh_new.get(i).copied().unwrap_or(false);
            keyed.push((packed(file_class(is_fresh, change, as_of)), adm, fact_id.value(i), b as u32, i as u32));
            next.push(change);
            left.push(dis);
        }
        let mut columns = batch.columns().to_vec();
        columns[flag] = Arc::new(admitted.finish());
        *batch = RecordBatch::try_new(Arc::clone(&FACT_IN_MEMORY), columns)?;
        flips.push(next);
        discharges.push(left);
    }
    keyed.sort_unstable();
    let mut plans = Vec::new();
    for file in keyed.chunk_by(|a, b| a.0 == b.0) {
        let class = file[0].0;
        let at = |&(.., b, i): &(u64, i64, i64, u32, u32)| (b as usize, i as usize);
        plans.push(FilePlan {
            fresh: class >> 63 == 0,
            rows: file.iter().map(at).collect(),
            next_change_us: file.iter().filter_map(|k| flips[at(k).0][at(k).1]).min(),
            discharge_days: file
                .iter()
                .filter_map(|k| discharges[at(k).0][at(k).1])
                .map(epoch_days)
                .filter(|&d| d != day)
                .collect::<rustc_hash::FxHashSet<i32>>()
                .into_iter()
                .filter(|&d| keys::is_keyable_day(d))
                .collect(),
        });
    }
    Ok(DayFiles { sources, plans: plans.into_iter() })
}

/// The files of one day, gathered from the day's batches as they are taken (see [`lay_out_day`]);
/// the batches are freed with the last file.
pub struct DayFiles {
    sources: Vec<RecordBatch>,
    plans: std::vec::IntoIter<FilePlan>,
}

/// One file of a day before its rows are gathered.
struct FilePlan {
    fresh: bool,
    /// Its rows, in file order, as (batch, row) of [`DayFiles::sources`].
    rows: Vec<(usize, usize)>,
    next_change_us: Option<i64>,
    discharge_days: BTreeSet<i32>,
}

impl Iterator for DayFiles {
    type Item = Result<DayFile>;

    fn next(&mut self) -> Option<Result<DayFile>> {
        let plan = self.plans.next()?;
        let sources: Vec<&RecordBatch> = self.sources.iter().collect();
        let batch = arrow_select::interleave::interleave_record_batch(&sources, &plan.rows);
        if self.plans.len() == 0 {
            self.sources = Vec::new();
        }
        Some(batch.map_err(Error::from).map(|batch| DayFile {
            fresh: plan.fresh,
            batch,
            next_change_us: plan.next_change_us,
            discharge_days: plan.discharge_days,
        }))
    }
}

/// A decoded gold fact batch in the current schema; a file written with another layout (e.g.
/// microsecond timestamps) is converted row by row.
fn conform(key: &str, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema().fields() == FACT_IN_MEMORY.fields() {
        return Ok(RecordBatch::try_new(Arc::clone(&FACT_IN_MEMORY), batch.columns().to_vec())?);
    }
    if batch.schema().fields() == FACT_PATIENT_FLOW.fields() {
        let mut columns = batch.columns().to_vec();
        let file = FACT_PATIENT_FLOW.index_of("bronze_file")?;
        let dictionary: DictionaryArray<Int32Type> = columns[file].as_string::<i32>().iter().collect();
        columns[file] = Arc::new(dictionary);
        return Ok(RecordBatch::try_new(Arc::clone(&FACT_IN_MEMORY), columns)?);
    }
    let mut rows = Vec::new();
    decode(key, std::slice::from_ref(&batch), &mut rows)?;
    // The census flag is recomputed by the caller; this one is never read.
    encode(&mut rows, 0)
}

/// `batch` without the rows whose `fact_id` is in `leaving`.
pub fn without(key: &str, batch: RecordBatch, leaving: &rustc_hash::FxHashSet<i64>) -> Result<RecordBatch> {
    if leaving.is_empty() {
        return Ok(batch);
    }
    let ids = batch
        .column_by_name("fact_id")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| Error::Corrupt { key: key.to_string(), detail: "no `fact_id` column".into() })?;
    let keep: BooleanArray = ids.values().iter().map(|id| Some(!leaving.contains(id))).collect();
    Ok(arrow_select::filter::filter_record_batch(&batch, &keep)?)
}

/// Encodes a partition's rows (sorted by admission, then key, for deterministic bytes).
pub fn encode(rows: &mut [FactRow], as_of: i64) -> Result<RecordBatch> {
    rows.sort_by_key(|r| (r.admission_us, r.fact_id));
    encode_unsorted(rows, as_of)
}

/// [`encode`] with the rows in the order given.
fn encode_unsorted(rows: &[FactRow], as_of: i64) -> Result<RecordBatch> {
    let n = rows.len();
    let mut fact_id = Int64Builder::with_capacity(n);
    let mut patient = Int64Builder::with_capacity(n);
    let mut dept = Int64Builder::with_capacity(n);
    let mut adm_key = Int32Builder::with_capacity(n);
    let mut dis_key = Int32Builder::with_capacity(n);
    let mut adm = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    let mut dis = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    let mut adm_date = Date32Builder::with_capacity(n);
    let mut los = Float64Builder::with_capacity(n);
    let mut current = BooleanBuilder::with_capacity(n);
    let mut bed = Int32Builder::with_capacity(n);
    let mut hospital = Int32Builder::with_capacity(n);
    let mut part = StringBuilder::with_capacity(n, n);
    let mut seq = Int64Builder::with_capacity(n);
    let mut enq = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    // A few thousand bronze files in all, each name one shared string: a row's key is found by the
    // string's address, and a name's content hashed once per address; keys in order of first
    // appearance, as a dictionary builder gives them.
    let mut file = Int32Builder::with_capacity(n);
    let mut file_names = StringBuilder::new();
    let mut file_ids: rustc_hash::FxHashMap<&str, i32> = rustc_hash::FxHashMap::default();
    let mut file_at: rustc_hash::FxHashMap<usize, i32> = rustc_hash::FxHashMap::default();
    let (mut admission_keys, mut discharge_keys) = (keys::TimeKeys::default(), keys::TimeKeys::default());
    let mut ingested = TimestampMillisecondBuilder::with_capacity(n).with_timezone(GOLD_TZ);
    let mut visit = Date32Builder::with_capacity(n);
    for r in rows.iter() {
        fact_id.append_value(r.fact_id);
        patient.append_value(r.patient_sk);
        dept.append_value(r.department_sk);
        adm_key.append_value(admission_keys.key(r.admission_us).unwrap_or(keys::UNKNOWN_TIME_KEY));
        dis_key.append_option(r.discharge_us.and_then(|us| discharge_keys.key(us)));
        adm.append_value(to_gold_ms(r.admission_us));
        dis.append_option(r.discharge_us.map(to_gold_ms));
        adm_date.append_value(keys::epoch_days(r.admission_us));
        los.append_option(r.length_of_stay_hours());
        current.append_value(r.is_currently_admitted(as_of));
        bed.append_option(r.bed_id);
        hospital.append_option(r.hospital_id);
        part.append_value(&r.partition_id);
        seq.append_value(r.sequence_number);
        enq.append_value(to_gold_ms(r.enqueued_us));
        let id = *file_at.entry(Arc::as_ptr(&r.bronze_file).cast::<u8>() as usize).or_insert_with(|| {
            let next = file_ids.len() as i32;
            *file_ids.entry(&r.bronze_file).or_insert_with(|| {
                file_names.append_value(&r.bronze_file);
                next
            })
        });
        file.append_value(id);
        ingested.append_value(to_gold_ms(r.ingested_us));
        visit.append_value(r.visit_date);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(fact_id.finish()),
        Arc::new(patient.finish()),
        Arc::new(dept.finish()),
        Arc::new(adm_key.finish()),
        Arc::new(dis_key.finish()),
        Arc::new(adm.finish()),
        Arc::new(dis.finish()),
        Arc::new(adm_date.finish()),
        Arc::new(los.finish()),
        Arc::new(current.finish()),
        Arc::new(bed.finish()),
        Arc::new(hospital.finish()),
        Arc::new(part.finish()),
        Arc::new(seq.finish()),
        Arc::new(enq.finish()),
        Arc::new(DictionaryArray::<Int32Type>::try_new(file.finish(), Arc::new(file_names.finish()))?),
        Arc::new(ingested.finish()),
        Arc::new(visit.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::clone(&FACT_IN_MEMORY), cols)?)
}

/// Decodes a partition file.
pub fn decode(key: &str, batches: &[RecordBatch], into: &mut Vec<FactRow>) -> Result<()> {
    // Lineage strings repeat row after row: share one allocation per run of equal values.
    let mut last_part: Option<Arc<str>> = None;
    let mut last_file: Option<Arc<str>> = None;
    let shared = |last: &mut Option<Arc<str>>, s: &str| match last {
        Some(a) if &**a == s => Arc::clone(a),
        _ => {
            let a: Arc<str> = Arc::from(s);
            *last = Some(Arc::clone(&a));
            a
        }
    };
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::Corrupt { key: key.to_string(), detail: format!("no `{name}` column") })
        };
        let ts = |name: &str| {
            gold_column_micros(col(name)?.as_ref()).ok_or_else(|| Error::Corrupt {
                key: key.to_string(),
                detail: format!("`{name}` is not a millisecond or microsecond timestamp"),
            })
        };
        let fact_id = col("fact_id")?.as_primitive::<Int64Type>();
        let patient = col("patient_sk")?.as_primitive::<Int64Type>();
        let dept = col("department_sk")?.as_primitive::<Int64Type>();
        let adm = ts("admission_time")?;
        let dis = ts("discharge_time")?;
        let bed = col("bed_id")?.as_primitive::<Int32Type>();
        let hospital = col("hospital_id")?.as_primitive::<Int32Type>();
        let part = col("partition_id")?.as_string::<i32>();
        let seq = col("sequence_number")?.as_primitive::<Int64Type>();
        let enq = ts("enqueued_time")?;
        // Plain, or dictionary-encoded as a build holds it (see [`FACT_IN_MEMORY`]).
        let file = col("bronze_file")?;
        let file = match file.as_dictionary_opt::<Int32Type>() {
            Some(d) => arrow_select::take::take(d.values(), d.keys(), None)?,
            None => Arc::clone(file),
        };
        let file = file.as_string_opt::<i32>().ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            detail: "`bronze_file` is not a string column".into(),
        })?;
        let ingested = ts("ingested_at")?;
        let visit = col("visit_date")?.as_primitive::<arrow_array::types::Date32Type>();
        for i in 0..b.num_rows() {
            into.push(FactRow {
                fact_id: fact_id.value(i),
                patient_sk: patient.value(i),
                department_sk: dept.value(i),
                admission_us: adm.value(i),
                discharge_us: (!dis.is_null(i)).then(|| dis.value(i)),
                bed_id: (!bed.is_null(i)).then(|| bed.value(i)),
                hospital_id: (!hospital.is_null(i)).then(|| hospital.value(i)),
                partition_id: shared(&mut last_part, part.value(i)),
                sequence_number: seq.value(i),
                enqueued_us: enq.value(i),
                bronze_file: shared(&mut last_file, file.value(i)),
                ingested_us: ingested.value(i),
                visit_date: visit.value(i),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::text_dictionary;
    use arrow_schema::DataType;

    /// Instants anywhere, or within a few weeks of the epoch (rows in the same windows, every horizon).
    fn instant() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::prop_oneof![-(1i64 << 61)..(1i64 << 61), 0i64..(400 * 3_600_000_000)]
    }

    proptest::proptest! {
        /// Packed classes sort as the classes do, for any rows' flips and clocks.
        #[test]
        fn packed_classes_keep_their_order(
            a in (proptest::bool::ANY, proptest::option::of(instant())),
            b in (proptest::bool::ANY, proptest::option::of(instant())),
            as_of in instant(),
        ) {
            let (x, y) = (file_class(a.0, a.1, as_of), file_class(b.0, b.1, as_of));
            proptest::prop_assert_eq!(packed(x).cmp(&packed(y)), x.cmp(&y));
        }
    }

    fn row(id: i64, enq: i64, discharge: Option<i64>) -> FactRow {
        FactRow {
            fact_id: id,
            patient_sk: 1,
            department_sk: 2,
            admission_us: 100,
            discharge_us: discharge,
            bed_id: Some(3),
            hospital_id: Some(4),
            partition_id: Arc::from("0"),
            sequence_number: enq,
            enqueued_us: enq,
            bronze_file: Arc::from("f"),
            ingested_us: enq,
            visit_date: 0,
        }
    }

    #[test]
    fn rows_compare_without_delivery_columns() {
        let a = row(1, 10, None);
        let copy = FactRow { bronze_file: Arc::from("another copy"), ingested_us: 99, ..a.clone() };
        assert!(a.same_row(&copy) && a.same_visit_content(&copy));
        let later = row(1, 20, None);
        assert!(!a.same_row(&later), "another event is other lineage");
        assert!(a.same_visit_content(&later));
    }

    #[test]
    fn a_dictionary_encoded_bronze_file_is_written_as_the_bytes_of_its_strings() {
        let files = ["patient-flow/partition=0/a.parquet", "patient-flow/partition=1/b.parquet", ""];
        let mut rows: Vec<FactRow> = (0..5000)
            .map(|i| FactRow {
                bronze_file: Arc::from(files[(i as usize / 7) % 3]),
                admission_us: 1_000,
                ..row(i, i * 1_000, Some(200_000 + i * 1_000))
            })
            .collect();
        let in_memory = encode(&mut rows, 150_000).unwrap();
        assert_eq!(in_memory.schema(), *FACT_IN_MEMORY);
        assert_eq!(*in_memory.column_by_name("bronze_file").unwrap().data_type(), text_dictionary());
        // The same rows with the schema's plain strings, built independently of the dictionary.
        let plain: arrow_array::StringArray = rows.iter().map(|r| Some(&*r.bronze_file)).collect();
        let mut columns = in_memory.columns().to_vec();
        columns[FACT_PATIENT_FLOW.index_of("bronze_file").unwrap()] = Arc::new(plain);
        let plain = RecordBatch::try_new(Arc::clone(&FACT_PATIENT_FLOW), columns).unwrap();
        let bytes =
            super::super::encode(&FACT_PATIENT_FLOW, &crate::model::schema::FACT_PATIENT_FLOW_LAYOUT, &in_memory)
                .unwrap();
        assert_eq!(
            bytes,
            super::super::encode(&FACT_PATIENT_FLOW, &crate::model::schema::FACT_PATIENT_FLOW_LAYOUT, &plain).unwrap()
        );
        // Read back, the file is the in-memory batch again; any other reader sees plain strings.
        let back = read(bytes.clone()).unwrap();
        assert_eq!(arrow_select::concat::concat_batches(&FACT_IN_MEMORY, &back).unwrap(), in_memory);
        let (schema, _) = crate::storage::parquet::decode(bytes).unwrap();
        assert_eq!(schema.field_with_name("bronze_file").unwrap().data_type(), &DataType::Utf8);
        let mut decoded = Vec::new();
        decode("k", &back, &mut decoded).unwrap();
        assert!(decoded == rows, "the rows read back differ from the rows written");
    }

    #[test]
    fn extreme_stays_neither_overflow_nor_fail_encoding() {
        let mut r = row(1, 1, Some(i64::MAX));
        r.admission_us = i64::MIN;
        assert!(r.length_of_stay_hours().unwrap() > 0.0);
        let mut rows = vec![r];
        let b = encode(&mut rows, 0).unwrap();
        let keys = b.column_by_name("admission_time_key").unwrap().as_primitive::<Int32Type>();
        assert_eq!(keys.value(0), keys::UNKNOWN_TIME_KEY);
        assert!(b.column_by_name("discharge_time_key").unwrap().is_null(0));
    }

    #[test]
    fn stay_and_census_are_never_negative() {
        let r = row(1, 1, Some(50));
        assert!(r.discharge_before_admission());
        assert_eq!(r.length_of_stay_hours(), None);
        assert!(!r.is_currently_admitted(75));
        let r = row(1, 1, Some(100 + 7_200_000_000));
        assert_eq!(r.length_of_stay_hours(), Some(2.0));
        assert!(r.is_currently_admitted(200));
        assert!(!r.is_currently_admitted(100 + 7_200_000_000));
        assert_eq!(r.next_change(200), Some(100 + 7_200_000_000));
        assert_eq!(r.next_change(100 + 7_200_000_000), None);
        // Gold stores milliseconds: a row at that precision round-trips exactly.
        let r = FactRow { admission_us: 1_000, discharge_us: Some(1_000 + 7_200_000_000), enqueued_us: 2_000, ..r };
        let mut rows = vec![FactRow { ingested_us: 3_000, ..r }];
        let b = encode(&mut rows, 200).unwrap();
        let mut back = Vec::new();
        decode("k", &[b], &mut back).unwrap();
        assert_eq!(back, rows);
    }
}
