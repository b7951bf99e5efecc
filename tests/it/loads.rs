//! Loads follow gold's file sets exactly: a warehouse that loads every build, one that skips builds
//! (1, 3, 7), one that loads only the last, and random others all hold the same tables — the last
//! build's rows, nothing more — whatever the builds did to the files: fresh files of new keys,
//! files rewritten with changed rows, rows moved, merged or split between files.
//!
//! The builds are synthetic (written here, honouring gold's invariants: each key in exactly one
//! file of a build, a key never leaves once in, files immutable with unique names), so the loader
//! meets file-set shapes the gold build of the day may not produce yet.

#![cfg(feature = "embedded-warehouse")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use patientflow::model::schema::{self, GOLD_TZ};
use patientflow::pipeline::gold::keys::patient_key;
use patientflow::pipeline::gold::manifest::{Manifest, TableFile};
use patientflow::storage::parquet::{Codec, encode};
use patientflow::storage::{Container, Lake, StorageConfig};
use patientflow::warehouse::embedded::Embedded;
use patientflow::warehouse::{Warehouse, loaded_files};
use proptest::prelude::*;

/// One row of a keyed table in the model: its key and the version of its content.
type Row = (i64, u32);

/// A gold file in the model.
#[derive(Debug, Clone)]
struct File {
    name: String,
    rows: Vec<Row>,
    fresh: bool,
    /// When the file's census flag flips (facts; the loader orders its appends by it): files
    /// share some of a few instants, or have none.
    next_change_us: Option<i64>,
}

/// What a build does to one keyed table.
#[derive(Debug, Clone)]
enum Op {
    /// A fresh file of `n` new keys.
    Fresh(usize),
    /// Files `pick` (indices, modulo the count) are replaced by `parts` files holding their keys
    /// (every `bump`-th row with new content) and `new` new keys: not fresh.
    Rewrite { pick: Vec<usize>, parts: usize, bump: usize, new: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..4usize).prop_map(Op::Fresh),
        (prop::collection::vec(0..8usize, 1..3), 1..3usize, 1..4usize, 0..3usize)
            .prop_map(|(pick, parts, bump, new)| Op::Rewrite { pick, parts, bump, new }),
    ]
}

/// One build: the ops on DimPatient and on FactPatientFlow, and whether DimDepartment changes.
type BuildPlan = (Vec<Op>, Vec<Op>, bool);

fn build_plan() -> impl Strategy<Value = BuildPlan> {
    (prop::collection::vec(op(), 1..3), prop::collection::vec(op(), 1..3), any::<bool>())
}

/// The model of one keyed table across builds.
#[derive(Debug, Default)]
struct Table {
    prefix: &'static str,
    files: Vec<File>,
    next_key: i64,
    written: usize,
}

impl Table {
    fn new(prefix: &'static str) -> Self {
        Self { prefix, ..Default::default() }
    }

    fn file(&mut self, build: usize, rows: Vec<Row>, fresh: bool) -> File {
        self.written += 1;
        let next_change_us = (!self.written.is_multiple_of(4)).then_some((self.written * 7 % 5) as i64);
        File { name: format!("builds/{build}/{}/{}.parquet", self.prefix, self.written), rows, fresh, next_change_us }
    }

    fn new_keys(&mut self, n: usize) -> Vec<Row> {
        let rows = (0..n as i64).map(|i| (self.next_key + i, 0)).collect();
        self.next_key += n as i64;
        rows
    }

    /// Applies `ops`; returns the files written.
    fn apply(&mut self, build: usize, ops: &[Op]) -> Vec<File> {
        let mut written = Vec::new();
        for op in ops {
            let new_files: Vec<File> = match op {
                Op::Fresh(n) => {
                    let rows = self.new_keys(*n);
                    vec![self.file(build, rows, true)]
                }
                Op::Rewrite { pick, parts, bump, new } => {
                    if self.files.is_empty() {
                        continue;
                    }
                    let picked: BTreeSet<usize> = pick.iter().map(|p| p % self.files.len()).collect();
                    let mut rows: Vec<Row> = Vec::new();
                    for i in picked.iter().rev() {
                        rows.extend(self.files.remove(*i).rows);
                    }
                    rows.sort_unstable();
                    for (i, row) in rows.iter_mut().enumerate() {
                        if i % bump == 0 {
                            row.1 += 1;
                        }
                    }
                    rows.extend(self.new_keys(*new));
                    let size = rows.len().div_ceil(*parts).max(1);
                    let chunks: Vec<Vec<Row>> = rows.chunks(size).map(<[Row]>::to_vec).collect();
                    chunks.into_iter().map(|c| self.file(build, c, false)).collect()
                }
            };
            self.files.extend(new_files.iter().cloned());
            written.extend(new_files);
        }
        written
    }

    fn rows(&self) -> BTreeSet<Row> {
        self.files.iter().flat_map(|f| f.rows.iter().copied()).collect()
    }
}

/// A batch of `schema` for `rows`: the key column holds the key (DimPatient: `P<key>`), every other
/// column a value derived from the key and the version, so a changed version changes every column.
/// A patient has one to three SCD2 versions (rows), all in its file.
fn batch(schema: &SchemaRef, rows: &[Row], patients: bool) -> RecordBatch {
    let expanded: Vec<(i64, u32, i64)> = rows
        .iter()
        .flat_map(|&(k, v)| {
            let versions = if patients { 1 + (k + i64::from(v)) % 3 } else { 1 };
            (0..versions).map(move |j| (k, v, j))
        })
        .collect();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let name = field.name().as_str();
            let salt = name.len() as i64;
            let n = |(k, v, j): (i64, u32, i64)| k * 1000 + i64::from(v) * 10 + j + salt;
            let array: ArrayRef = match field.data_type() {
                DataType::Int64 => {
                    let mut b = Int64Builder::new();
                    for &r in &expanded {
                        b.append_value(if name == "fact_id" { r.0 } else { n(r) });
                    }
                    Arc::new(b.finish())
                }
                DataType::Int32 => {
                    let mut b = Int32Builder::new();
                    for &r in &expanded {
                        b.append_value((n(r) % 1_000_000) as i32);
                    }
                    Arc::new(b.finish())
                }
                DataType::Utf8 => {
                    let mut b = StringBuilder::new();
                    for &r in &expanded {
                        if name == "patient_id" {
                            b.append_value(format!("P{}", r.0));
                        } else {
                            b.append_value(format!("{name}-{}", n(r)));
                        }
                    }
                    Arc::new(b.finish())
                }
                DataType::Boolean => {
                    let mut b = BooleanBuilder::new();
                    for &r in &expanded {
                        b.append_value(n(r) % 2 == 0);
                    }
                    Arc::new(b.finish())
                }
                DataType::Date32 => {
                    let mut b = Date32Builder::new();
                    for &r in &expanded {
                        b.append_value(20_000 + (n(r) % 100) as i32);
                    }
                    Arc::new(b.finish())
                }
                DataType::Float64 => {
                    let mut b = Float64Builder::new();
                    for &r in &expanded {
                        b.append_value(n(r) as f64 / 4.0);
                    }
                    Arc::new(b.finish())
                }
                DataType::Timestamp(..) => {
                    let mut b = TimestampMillisecondBuilder::new().with_timezone(GOLD_TZ);
                    for &r in &expanded {
                        b.append_value(1_790_000_000_000 + n(r));
                    }
                    Arc::new(b.finish())
                }
                other => panic!("no synthetic values for {other}"),
            };
            array
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns).unwrap()
}

async fn put(lake: &Lake, name: &str, schema: &SchemaRef, batch: RecordBatch) {
    let bytes: Bytes = encode(schema, &[batch], Codec::Fast).unwrap();
    lake.put(Container::Gold, &name.into(), bytes).await.unwrap();
}

/// Writes the builds of `plans` into `lake`; returns their manifests and the rows the last build's
/// keyed tables hold, by the model.
async fn builds(lake: &Lake, plans: &[BuildPlan]) -> (Vec<Manifest>, BTreeSet<Row>, BTreeSet<Row>) {
    let (mut patients, mut facts) = (Table::new("dim_patient"), Table::new("fact"));
    let mut manifests = Vec::new();
    let mut department = String::new();
    for (i, (patient_ops, fact_ops, new_department)) in plans.iter().enumerate() {
        let build = i + 1;
        let before = (patients.rows(), facts.rows());
        for f in patients.apply(build, patient_ops) {
            put(lake, &f.name, &schema::DIM_PATIENT, batch(&schema::DIM_PATIENT, &f.rows, true)).await;
        }
        for f in facts.apply(build, fact_ops) {
            put(lake, &f.name, &schema::FACT_PATIENT_FLOW, batch(&schema::FACT_PATIENT_FLOW, &f.rows, false)).await;
        }
        // The model's own invariants: each key in one file; no key ever leaves.
        for (table, was) in [(&patients, before.0), (&facts, before.1)] {
            let keys: Vec<i64> = table.files.iter().flat_map(|f| f.rows.iter().map(|r| r.0)).collect();
            let unique: BTreeSet<i64> = keys.iter().copied().collect();
            assert_eq!(keys.len(), unique.len(), "a key in two files");
            assert!(was.iter().all(|r| unique.contains(&r.0)), "a key left");
        }
        if *new_department || department.is_empty() {
            department = format!("builds/{build}/dim_department.parquet");
            put(
                lake,
                &department,
                &schema::DIM_DEPARTMENT,
                batch(&schema::DIM_DEPARTMENT, &[(build as i64, 0)], false),
            )
            .await;
        }
        let dim_time = format!("builds/{build}/dim_time.parquet");
        put(lake, &dim_time, &schema::DIM_TIME, batch(&schema::DIM_TIME, &[(1, build as u32), (2, 0)], false)).await;
        let table_file = |f: &File| TableFile {
            file: f.name.clone(),
            rows: f.rows.len() as u64,
            fresh: f.fresh,
            next_change_us: f.next_change_us,
            ..Default::default()
        };
        let mut m = Manifest {
            build: build as u64,
            build_id: format!("{build:010}-0000000000000000"),
            as_of: "2026-11-24T12:00:00.000000Z".into(),
            dim_department: department.clone(),
            dim_patient: patients.files.iter().map(table_file).collect(),
            dim_time,
            ..Default::default()
        };
        // The loader does not care which day a file is under: spread them over three.
        for (j, f) in facts.files.iter().enumerate() {
            let day = format!("2026-11-2{}", j % 3);
            m.fact_patient_flow.entry(day).or_default().files.push(table_file(f));
        }
        m.rows.insert("FactPatientFlow".into(), facts.rows().len() as u64);
        manifests.push(m);
    }
    (manifests, patients.rows(), facts.rows())
}

/// Every table of a warehouse as sorted rows of text: the star schema's columns (`gold_file_id`,
/// the id a load gives the file a row came from, differs between load sequences), and the files held.
/// Every row's `gold_file_id` must name a held file of its table.
async fn contents(w: &Embedded) -> BTreeMap<&'static str, Vec<String>> {
    w.with_conn(|c| {
        let mut out = BTreeMap::new();
        for table in ["DimDepartment", "DimPatient", "DimTime", "FactPatientFlow"] {
            let sql =
                format!("SELECT CAST(t AS VARCHAR) FROM (SELECT * EXCLUDE (gold_file_id) FROM {table}) t ORDER BY 1");
            let mut s = c.prepare(&sql).unwrap();
            let rows = s.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect();
            out.insert(table, rows);
            let orphans: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM {table} WHERE gold_file_id NOT IN \
                         (SELECT file_id FROM LoadedFile WHERE table_name = '{table}')"
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(orphans, 0, "{table}: rows tagged with a file the warehouse does not hold");
        }
        let mut s = c.prepare("SELECT table_name || ' ' || file FROM LoadedFile ORDER BY 1").unwrap();
        out.insert("LoadedFile", s.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect());
        // DimPatient's durable key is the ledger's key of its patient id, on every row.
        let mut s = c.prepare("SELECT patient_id, patient_key FROM DimPatient").unwrap();
        for row in s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).unwrap() {
            let (id, key) = row.unwrap();
            assert_eq!(key, patient_key(&id), "patient_key of {id}");
        }
        Ok(out)
    })
    .await
    .unwrap()
}

/// (key, version) of the rows a warehouse's keyed table holds, read back from the synthetic values.
async fn keyed_rows(w: &Embedded) -> (BTreeSet<Row>, BTreeSet<Row>, i64) {
    w.with_conn(|c| {
        let salt = "patient_sk".len() as i64;
        let mut s = c.prepare("SELECT DISTINCT patient_sk FROM DimPatient").unwrap();
        let patients = s
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|sk| {
                let v = sk.unwrap() - salt;
                (v.div_euclid(1000), (v.rem_euclid(1000) / 10) as u32)
            })
            .collect();
        let salt = "patient_sk".len() as i64;
        let mut s = c.prepare("SELECT fact_id, patient_sk FROM FactPatientFlow").unwrap();
        let facts = s
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
            .map(|r| {
                let (id, sk) = r.unwrap();
                (id, ((sk - salt).rem_euclid(1000) / 10) as u32)
            })
            .collect();
        let rows: i64 = c.query_row("SELECT count(*) FROM FactPatientFlow", [], |r| r.get(0)).unwrap();
        Ok((patients, facts, rows))
    })
    .await
    .unwrap()
}

async fn load_sequence(lake: &Lake, builds: &[Manifest], sequence: &[usize]) -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
    for &n in sequence {
        let m = &builds[n - 1];
        let out = w.load(lake, m).await.unwrap();
        assert!(out.loaded, "build {n} of {sequence:?}");
        assert_eq!(out.build, m.build);
    }
    (dir, w)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Each case makes some twenty loads, and DuckDB in a test build takes a fraction of a second for
/// each: five cases by default; PROPTEST_CASES=100 explores further.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 100, ..ProptestConfig::default() })]

    /// Loading every build, builds 1, 3 and 7, a random subsequence, or the last alone: the same
    /// tables, holding exactly the last build's rows; loading the last build again changes nothing.
    #[test]
    fn any_sequence_of_loads_ending_at_a_build_gives_that_build(
        plans in prop::collection::vec(build_plan(), 7),
        skip in prop::collection::vec(any::<bool>(), 6),
    ) {
        runtime().block_on(async {
            let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
            let (manifests, patients, facts) = builds(&lake, &plans).await;
            let every: Vec<usize> = (1..=7).collect();
            let random: Vec<usize> = (1..=6).filter(|n| !skip[n - 1]).chain([7]).collect();
            let (_d, reference) = load_sequence(&lake, &manifests, &every).await;
            let expected = contents(&reference).await;
            let (held_patients, held_facts, fact_rows) = keyed_rows(&reference).await;
            prop_assert_eq!(&held_patients, &patients, "DimPatient holds the last build's patients");
            prop_assert_eq!(&held_facts, &facts, "FactPatientFlow holds the last build's facts");
            prop_assert_eq!(fact_rows as usize, facts.len(), "each fact once");
            let files: BTreeSet<String> = loaded_files(&manifests[6]).into_iter().map(|(t, f)| format!("{t} {f}")).collect();
            prop_assert_eq!(&expected["LoadedFile"], &files.into_iter().collect::<Vec<_>>(), "LoadedFile: the last build's files");
            for sequence in [vec![1, 3, 7], random, vec![7]] {
                let (_d, w) = load_sequence(&lake, &manifests, &sequence).await;
                prop_assert_eq!(&contents(&w).await, &expected, "{:?}", sequence);
            }
            let again = reference.load(&lake, &manifests[6]).await.unwrap();
            prop_assert!(!again.loaded);
            prop_assert_eq!(&contents(&reference).await, &expected, "a second load of build 7 changes nothing");
            Ok(())
        })?;
    }
}

/// A load takes fact files up by when their census flag next flips (the files no clock replaces
/// last), not in the build's day order, and stores each file's rows next to each other though two
/// threads insert them (each a run of consecutive files, cut at a whole row group: the file the cut
/// falls in is stored in two pieces at most): the rows a later build replaces together sit
/// together, so their delete empties whole row groups instead of leaving holes across every recent
/// day. Read back through the files' ids (the order the load took them up) and DuckDB's `rowid` (a
/// row's position in the table's storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_that_flip_together_are_stored_together() {
    flipping_facts_load_stored_together(&Lake::open(&StorageConfig::memory()).await.unwrap()).await;
}

/// The same, with the gold files in Azurite: the load's threads fetch them over HTTP (Azurite runs
/// under `scripts/test`; without it the test says it is skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_that_flip_together_are_stored_together_loaded_from_azurite() {
    let Some(config) = crate::util::azurite_config("flip_together") else { return };
    flipping_facts_load_stored_together(&Lake::open(&config).await.unwrap()).await;
}

async fn flipping_facts_load_stored_together(lake: &Lake) {
    let mut m = Manifest {
        build: 1,
        build_id: "0000000001-0000000000000000".into(),
        as_of: "2026-11-24T12:00:00.000000Z".into(),
        ..Default::default()
    };
    // (day, file, next flip): in the build's order a, b, c, d.
    let files = [
        ("2026-11-20", "a", Some(2)),
        ("2026-11-20", "b", None),
        ("2026-11-21", "c", Some(1)),
        ("2026-11-21", "d", Some(2)),
    ];
    // Files of many of DuckDB's vectors (2,048 rows), more than two row groups (122,880) in all:
    // rows handed out vector by vector to whichever thread asks would interleave them.
    const ROWS: i64 = 70_000;
    for (i, (day, name, flip)) in files.into_iter().enumerate() {
        let rows: Vec<Row> = (0..ROWS).map(|k| (1_000_000 * i as i64 + k, 0)).collect();
        let file = format!("builds/1/fact/{name}.parquet");
        put(lake, &file, &schema::FACT_PATIENT_FLOW, batch(&schema::FACT_PATIENT_FLOW, &rows, false)).await;
        let table_file = TableFile { file, rows: ROWS as u64, fresh: true, next_change_us: flip, ..Default::default() };
        m.fact_patient_flow.entry(day.into()).or_default().files.push(table_file);
    }
    let dir = tempfile::tempdir().unwrap();
    let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
    assert!(w.load(lake, &m).await.unwrap().loaded);
    let stored: Vec<(String, i64, i64)> = w
        .with_conn(|c| {
            let mut s = c
                .prepare(
                    "SELECT l.file, count(*), count(*) FILTER (WHERE f.previous IS DISTINCT FROM f.gold_file_id) \
                     FROM (SELECT gold_file_id, lag(gold_file_id) OVER (ORDER BY rowid) AS previous FROM FactPatientFlow) f \
                     JOIN LoadedFile l ON l.file_id = f.gold_file_id GROUP BY l.file, l.file_id ORDER BY l.file_id",
                )
                .unwrap();
            Ok(s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect())
        })
        .await
        .unwrap();
    let order: Vec<&str> = stored.iter().map(|(f, ..)| f.trim_start_matches("builds/1/fact/")).collect();
    assert_eq!(order, ["c.parquet", "a.parquet", "d.parquet", "b.parquet"], "by next flip, ties in build order");
    for (file, rows, pieces) in &stored {
        assert_eq!(*rows, ROWS, "{file}");
        assert!(*pieces <= 2, "{file} is stored in {pieces} pieces: {stored:?}");
    }
    let pieces: i64 = stored.iter().map(|(.., p)| p).sum();
    assert!(pieces <= stored.len() as i64 + 1, "one file at most is cut in two: {stored:?}");
}

/// A manifest of one fact file in `lake` holding `rows`, written as `batch` (build `n`).
async fn fact_build(lake: &Lake, n: u64, name: &str, batch: RecordBatch) -> Manifest {
    let file = format!("builds/{n}/fact/{name}.parquet");
    let bytes: Bytes = encode(&batch.schema(), std::slice::from_ref(&batch), Codec::Fast).unwrap();
    lake.put(Container::Gold, &file.as_str().into(), bytes).await.unwrap();
    let mut m = Manifest {
        build: n,
        build_id: format!("{n:010}-0000000000000000"),
        as_of: "2026-11-24T12:00:00.000000Z".into(),
        ..Default::default()
    };
    let table_file = TableFile { file, rows: batch.num_rows() as u64, fresh: true, ..Default::default() };
    m.fact_patient_flow.entry("2026-11-20".into()).or_default().files.push(table_file);
    m
}

/// Gold files keep their columns' meaning, not always their arrow types: files written before gold
/// stored milliseconds hold microseconds, and a writer may store text as a dictionary. Such a file
/// loads as the same rows as one of today's types (every column compared as text), in a load of
/// several threads where each converts the batches it decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_files_of_other_arrow_types_load_as_the_same_rows() {
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let rows: Vec<Row> = (0..5_000).map(|k| (k, 1)).collect();
    let today = batch(&schema::FACT_PATIENT_FLOW, &rows, false);
    let (mut fields, mut columns) = (Vec::new(), Vec::new());
    for (field, column) in today.schema().fields().iter().zip(today.columns()) {
        let (field, column) = match field.data_type() {
            DataType::Timestamp(_, tz) => {
                let micros = DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, tz.clone());
                (field.as_ref().clone().with_data_type(micros.clone()), arrow_cast::cast(column, &micros).unwrap())
            }
            DataType::Utf8 => {
                let dictionary = schema::text_dictionary();
                (
                    field.as_ref().clone().with_data_type(dictionary.clone()),
                    arrow_cast::cast(column, &dictionary).unwrap(),
                )
            }
            _ => (field.as_ref().clone(), Arc::clone(column)),
        };
        fields.push(field);
        columns.push(column);
    }
    let older = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).unwrap();

    let mut loaded = Vec::new();
    for (name, batch) in [("today", today), ("older", older)] {
        let m = fact_build(&lake, 1, name, batch).await;
        let dir = tempfile::tempdir().unwrap();
        let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
        assert_eq!(w.load(&lake, &m).await.unwrap().fact_rows_written, 5_000, "{name}");
        let mut held = contents(&w).await;
        held.remove("LoadedFile");
        loaded.push(held);
    }
    assert_eq!(loaded[0], loaded[1]);
}

/// The load writes DuckDB's vectors itself (strings unchecked, numbers copied): the rows it stores
/// are those duckdb-rs's own arrow conversion (its appender) stores from the same batch — every
/// column type of the fact table, nulls in every nullable column, text beyond ASCII, and vectors
/// cut from the middle of the batches the load decodes (5,000 rows: three vectors of 2,048).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_rows_are_the_rows_duckdbs_own_arrow_conversion_stores() {
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let rows: Vec<Row> = (0..5_000).map(|k| (k, 1)).collect();
    let plain = batch(&schema::FACT_PATIENT_FLOW, &rows, false);
    let every_seventh = arrow_array::BooleanArray::from_iter((0..plain.num_rows()).map(|i| Some(i % 7 == 3)));
    let columns: Vec<ArrayRef> = plain
        .schema()
        .fields()
        .iter()
        .zip(plain.columns())
        .map(|(field, column)| match (field.data_type(), field.is_nullable()) {
            (DataType::Utf8, _) => {
                let text = column.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
                let accented: arrow_array::StringArray =
                    text.iter().map(|v| v.map(|v| format!("{v}-Ünïcødé €"))).collect();
                let accented: ArrayRef = Arc::new(accented);
                if field.is_nullable() {
                    arrow_select::nullif::nullif(&accented, &every_seventh).unwrap()
                } else {
                    accented
                }
            }
            (_, true) => arrow_select::nullif::nullif(column, &every_seventh).unwrap(),
            _ => Arc::clone(column),
        })
        .collect();
    let facts = RecordBatch::try_new(plain.schema(), columns).unwrap();
    assert!(facts.columns().iter().any(|c| c.null_count() > 0), "the batch has nulls");

    let m = fact_build(&lake, 1, "facts", facts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
    assert_eq!(w.load(&lake, &m).await.unwrap().fact_rows_written, 5_000);
    let (stored, expected, differ) = w
        .with_conn(move |c| {
            let db = |e: duckdb::Error| patientflow::warehouse::Error::Database(e.to_string());
            c.execute_batch("CREATE TABLE expected AS SELECT * EXCLUDE (gold_file_id) FROM FactPatientFlow LIMIT 0")
                .map_err(db)?;
            // The batch in the table's column order, timestamps as the warehouse's naive UTC.
            let mut s = c.prepare("SELECT column_name FROM information_schema.columns WHERE table_name = 'expected' ORDER BY ordinal_position").map_err(db)?;
            let names: Vec<String> = s.query_map([], |r| r.get(0)).map_err(db)?.map(Result::unwrap).collect();
            let naive = DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None);
            let (fields, columns): (Vec<arrow_schema::Field>, Vec<ArrayRef>) = names
                .iter()
                .map(|name| {
                    let column = facts.column_by_name(name).unwrap();
                    let field = facts.schema().field_with_name(name).unwrap().clone();
                    match field.data_type() {
                        DataType::Timestamp(..) => {
                            (field.with_data_type(naive.clone()), arrow_cast::cast(column, &naive).unwrap())
                        }
                        _ => (field, Arc::clone(column)),
                    }
                })
                .unzip();
            let ordered = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns).unwrap();
            let mut appender = c.appender("expected").map_err(db)?;
            appender.append_record_batch(ordered).map_err(db)?;
            appender.flush().map_err(db)?;
            let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(db);
            let stored = count("SELECT count(*) FROM FactPatientFlow")?;
            let expected = count("SELECT count(*) FROM expected")?;
            let differ = count(
                "SELECT count(*) FROM ((SELECT * EXCLUDE (gold_file_id) FROM FactPatientFlow EXCEPT ALL SELECT * FROM expected) \
                 UNION ALL (SELECT * FROM expected EXCEPT ALL SELECT * EXCLUDE (gold_file_id) FROM FactPatientFlow))",
            )?;
            Ok((stored, expected, differ))
        })
        .await
        .unwrap();
    assert_eq!((stored, expected, differ), (5_000, 5_000, 0));
}

/// A build naming a fact file that is not a gold fact file (not parquet; parquet without a column
/// the table has) fails its load with an error naming the file and what is wrong, and the
/// warehouse keeps the build it held, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_gold_file_fails_the_load_and_leaves_the_build_held() {
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let first = fact_build(&lake, 1, "good", batch(&schema::FACT_PATIENT_FLOW, &[(1, 0), (2, 0)], false)).await;
    let dir = tempfile::tempdir().unwrap();
    let w = Embedded::open(&dir.path().join("w.duckdb")).unwrap();
    assert!(w.load(&lake, &first).await.unwrap().loaded);
    let before = contents(&w).await;

    let rows: Vec<Row> = (10..5_010).map(|k| (k, 0)).collect();
    let full = batch(&schema::FACT_PATIENT_FLOW, &rows, false);
    let without_fact_id = full.project(&(1..full.num_columns()).collect::<Vec<_>>()).unwrap();
    let mut not_parquet = fact_build(&lake, 2, "garbage", full.clone()).await;
    let garbage = not_parquet.fact_patient_flow["2026-11-20"].files[0].file.clone();
    lake.put(Container::Gold, &garbage.as_str().into(), Bytes::from_static(b"not a parquet file")).await.unwrap();
    let missing_column = fact_build(&lake, 2, "no-fact-id", without_fact_id).await;
    // Beside a good file, so another thread reads it while the bad one fails.
    let good = fact_build(&lake, 2, "more", full).await;
    let day = not_parquet.fact_patient_flow.get_mut("2026-11-20").unwrap();
    day.files.extend(good.fact_patient_flow["2026-11-20"].files.clone());
    for (m, expected) in [(&not_parquet, "garbage.parquet"), (&missing_column, "has no column `fact_id`")] {
        let e = w.load(&lake, m).await.unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
        assert_eq!(w.loaded_build().await.unwrap(), Some(1));
        assert_eq!(contents(&w).await, before, "nothing of the failed load is visible");
    }
}

/// A warehouse loaded before gold tables were file sets (it records fact days in `LoadedPartition`)
/// is emptied when it opens: the rebuilt gold then loads whole, with no row of the old one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_loaded_before_file_sets_is_emptied_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    written_by_an_older_layout(
        &path,
        "DROP TABLE LoadedFile;
        CREATE TABLE LoadedPartition (visit_date VARCHAR NOT NULL, file VARCHAR NOT NULL);
        INSERT INTO LoadedPartition VALUES ('2026-11-24', 'builds/0000000009-aa/fact.parquet');
        INSERT INTO LoadLog VALUES (9, '0000000009-aa', TIMESTAMP '2026-11-24 12:00:00', 0);
        INSERT INTO DimDepartment VALUES (1, 'ICU', 1, 1);",
    )
    .await;

    let w = Embedded::open(&path).unwrap();
    reloads_whole(&w).await;
    let old: i64 = w
        .with_conn(|c| {
            c.query_row(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'LoadedPartition'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| patientflow::warehouse::Error::Database(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(old, 0, "the old record is dropped");
}

/// A warehouse loaded before rows named their gold file (no `gold_file_id`: the previous release's
/// schema, kept as test data) cannot delete by file: it is emptied when it opens, and the next load
/// brings the build in whole, with no row of the old one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_loaded_before_rows_named_their_file_is_emptied_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    {
        let c = duckdb::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../data/embedded/schema_before_file_ids.sql")).unwrap();
        c.execute_batch(
            "INSERT INTO LoadLog VALUES (9, '0000000009-aa', TIMESTAMP '2026-11-24 12:00:00', 0);
             INSERT INTO LoadedFile VALUES ('DimDepartment', 'builds/0000000009-aa/dim_department.parquet');
             INSERT INTO DimDepartment VALUES (1, 'ICU', 1);",
        )
        .unwrap();
    }
    reloads_whole(&Embedded::open(&path).unwrap()).await;
}

/// A warehouse loaded before DimPatient had its durable key (`patient_key`, which the seed KPIs
/// join versions by) is emptied when it opens, and the next load brings the build in whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_loaded_before_patients_had_a_durable_key_is_emptied_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    written_by_an_older_layout(
        &path,
        "ALTER TABLE DimPatient DROP COLUMN patient_key;
        INSERT INTO LoadLog VALUES (9, '0000000009-aa', TIMESTAMP '2026-11-24 12:00:00', 0);
        INSERT INTO LoadedFile VALUES ('DimDepartment', 'builds/0000000009-aa/dim_department.parquet', 1);
        INSERT INTO DimDepartment VALUES (1, 'ICU', 1, 1);",
    )
    .await;
    reloads_whole(&Embedded::open(&path).unwrap()).await;
}

/// A warehouse at `path` in today's schema, then changed by `old_layout` (SQL) into what an older
/// layout wrote.
async fn written_by_an_older_layout(path: &std::path::Path, old_layout: &'static str) {
    Embedded::open(path)
        .unwrap()
        .with_conn(move |c| {
            c.execute_batch(old_layout).map_err(|e| patientflow::warehouse::Error::Database(e.to_string()))
        })
        .await
        .unwrap();
}

/// A warehouse an older layout wrote (it held build 9 and an ICU department), once opened: it holds
/// no build, and loading build 1 brings exactly build 1's rows and files, none of the old ones.
async fn reloads_whole(w: &Embedded) {
    assert_eq!(w.loaded_build().await.unwrap(), None, "LoadLog is emptied");
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let (manifests, patients, facts) = builds(&lake, &[(vec![Op::Fresh(3)], vec![Op::Fresh(4)], true)]).await;
    let out = w.load(&lake, &manifests[0]).await.unwrap();
    assert_eq!((out.build, out.fact_rows_total), (1, facts.len() as u64), "build 1 loads though 9 was held");
    let held = contents(w).await;
    assert_eq!(held["DimDepartment"].len(), 1, "the old ICU row is gone: {:?}", held["DimDepartment"]);
    let files: Vec<String> = loaded_files(&manifests[0]).into_iter().map(|(t, f)| format!("{t} {f}")).collect();
    assert_eq!(held["LoadedFile"], files, "only the build's files are held");
    let (held_patients, held_facts, _) = keyed_rows(w).await;
    assert_eq!((held_patients, held_facts), (patients, facts));
}
