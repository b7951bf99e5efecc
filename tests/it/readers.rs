//! Every kind of lake file we write, read back by a parquet reader we did not write: pyarrow (Arrow
//! C++), which is also what Spark-side and Python users of the lake read it with. Our own reader
//! agreeing with our own writer proves only that they agree with each other.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use patientflow::pipeline::gold::{self, BuildOutcome, GoldOptions};
use patientflow::storage::{Container, Lake};
use serde_json::{Value, json};

use crate::util::{self, land, python};

/// Whether pyarrow can be imported; under `PATIENTFLOW_REQUIRE_PYARROW=1` (the test command) it must.
fn have_pyarrow(test: &str) -> bool {
    let ok = Command::new(python()).args(["-c", "import pyarrow.parquet"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("PATIENTFLOW_REQUIRE_PYARROW").as_deref() != Ok("1"),
            "PATIENTFLOW_REQUIRE_PYARROW=1 but {} cannot import pyarrow",
            python()
        );
        eprintln!("SKIPPED {test}: no pyarrow for {}", python());
    }
    ok
}

/// pyarrow's name for an arrow type, for the types lake files hold.
fn pyarrow_type(t: &DataType) -> String {
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    };
    match t {
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 => "string".into(),
        DataType::LargeUtf8 => "large_string".into(),
        DataType::Binary => "binary".into(),
        DataType::LargeBinary => "large_binary".into(),
        DataType::Date32 => "date32[day]".into(),
        DataType::Timestamp(u, None) => format!("timestamp[{}]", unit(u)),
        DataType::Timestamp(u, Some(tz)) => format!("timestamp[{}, tz={tz}]", unit(u)),
        other => panic!("no pyarrow name for {other}: add it here and in tests/data/parquet/pyarrow_read.py"),
    }
}

/// A column's values as tests/data/parquet/pyarrow_read.py renders them.
fn render(column: &ArrayRef) -> Vec<Value> {
    let cast = |to: &DataType| arrow_cast::cast(column, to).unwrap();
    let each = |a: &dyn Array, f: &dyn Fn(usize) -> Value| {
        (0..a.len()).map(|i| if a.is_null(i) { Value::Null } else { f(i) }).collect()
    };
    match column.data_type() {
        DataType::Timestamp(..) => {
            let a = cast(&DataType::Int64);
            let v = a.as_primitive::<arrow_array::types::Int64Type>();
            each(&a, &|i| json!(v.value(i)))
        }
        DataType::Date32 => {
            let a = cast(&DataType::Int32);
            let v = a.as_primitive::<arrow_array::types::Int32Type>();
            each(&a, &|i| json!(v.value(i)))
        }
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>();
            each(column, &|i| json!(v.value(i).to_bits() as i64))
        }
        DataType::Float32 => {
            // pyarrow hands float32 to Python as a double.
            let v = column.as_primitive::<Float32Type>();
            each(column, &|i| json!(f64::from(v.value(i)).to_bits() as i64))
        }
        DataType::Utf8 => {
            let v = column.as_string::<i32>();
            each(column, &|i| json!(v.value(i)))
        }
        DataType::LargeUtf8 => {
            let v = column.as_string::<i64>();
            each(column, &|i| json!(v.value(i)))
        }
        DataType::Binary => {
            let v = column.as_binary::<i32>();
            each(column, &|i| json!(v.value(i).iter().map(|b| format!("{b:02x}")).collect::<String>()))
        }
        DataType::Boolean => {
            let v = column.as_boolean();
            each(column, &|i| json!(v.value(i)))
        }
        t if t.is_integer() => {
            // Every integer type fits i64 or u64 exactly through a JSON number.
            let a = if matches!(t, DataType::UInt64) { cast(&DataType::UInt64) } else { cast(&DataType::Int64) };
            (0..a.len())
                .map(|i| match a.data_type() {
                    _ if a.is_null(i) => Value::Null,
                    DataType::UInt64 => json!(a.as_primitive::<arrow_array::types::UInt64Type>().value(i)),
                    _ => json!(a.as_primitive::<arrow_array::types::Int64Type>().value(i)),
                })
                .collect()
        }
        other => panic!("no rendering for {other}: add it here and in tests/data/parquet/pyarrow_read.py"),
    }
}

/// What our reader reads from one file, in the harness's shape (codecs aside).
fn ours(bytes: bytes::Bytes) -> Value {
    let (schema, batches) = patientflow::storage::parquet::decode(bytes).unwrap();
    let batch = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
    let columns: serde_json::Map<String, Value> =
        schema.fields().iter().zip(batch.columns()).map(|(f, c)| (f.name().clone(), Value::from(render(c)))).collect();
    json!({
        "rows": RecordBatch::num_rows(&batch),
        "schema": schema.fields().iter().map(|f| json!([f.name(), pyarrow_type(f.data_type())])).collect::<Vec<_>>(),
        "columns": columns,
    })
}

async fn build(lake: &Lake) {
    let options = GoldOptions::new(util::now(), Duration::from_secs(3600));
    assert!(matches!(gold::build(lake, &options).await.unwrap(), BuildOutcome::Built(_)));
}

/// Bronze (zstd), silver and quarantine (Snappy) and gold (Snappy, with uncompressed columns and a
/// bloom filter) over two builds, each file read by pyarrow: the same rows, types and values as our
/// reader reads; gold only in codecs Synapse's `COPY INTO` reads (Snappy or none, never zstd), and
/// bronze's bodies in zstd, as README's layers say.
#[tokio::test]
async fn every_lake_file_reads_the_same_with_pyarrow() {
    if !have_pyarrow("every_lake_file_reads_the_same_with_pyarrow") {
        return;
    }
    let (state, lake) = util::memory().await;
    let first = util::simulated(5, 300, 0.05, 0.4);
    land(&state, &lake, "0", 0, &first[..150]).await;
    land(&state, &lake, "1", 0, &first[150..]).await;
    build(&lake).await;
    let second = util::simulated(6, 200, 0.05, 0.4);
    land(&state, &lake, "0", 150, &second[..100]).await;
    land(&state, &lake, "1", 150, &second[100..]).await;
    build(&lake).await;

    // Every parquet file of every container, copied to disk for pyarrow.
    let dir = tempfile::tempdir().unwrap();
    let mut files: BTreeMap<String, (Container, Value)> = BTreeMap::new();
    for container in [Container::Bronze, Container::Silver, Container::Quarantine, Container::Gold] {
        for meta in lake.list(container, &object_store::path::Path::from("")).await.unwrap() {
            if !meta.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let bytes = lake.get(container, &meta.location).await.unwrap();
            let path = dir.path().join(format!("{}.parquet", files.len()));
            std::fs::write(&path, &bytes).unwrap();
            files.insert(path.to_str().unwrap().to_string(), (container, ours(bytes)));
        }
    }
    let count = |c: Container| files.values().filter(|(k, _)| *k == c).count();
    assert!(count(Container::Bronze) >= 4 && count(Container::Silver) >= 4, "{}", files.len());
    assert!(count(Container::Quarantine) >= 1, "the dirt reached quarantine");
    assert!(count(Container::Gold) >= 8, "two builds of four tables: {}", count(Container::Gold));

    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/parquet/pyarrow_read.py");
    let mut child = Command::new(python())
        .arg(harness)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(&files.keys().collect::<Vec<_>>()).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pyarrow could not read a lake file: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), files.len());

    for (path, (container, ours)) in &files {
        let theirs = &theirs[path];
        let what = format!("{container:?} file {path}");
        assert_eq!(theirs["rows"], ours["rows"], "{what}");
        assert_eq!(theirs["schema"], ours["schema"], "{what}");
        for (column, values) in ours["columns"].as_object().unwrap() {
            assert_eq!(&theirs["columns"][column], values, "{what}, column {column}");
        }
        let codecs: BTreeMap<String, Vec<String>> = serde_json::from_value(theirs["codecs"].clone()).unwrap();
        for (column, chunks) in &codecs {
            for codec in chunks {
                match container {
                    Container::Gold => {
                        assert!(codec == "SNAPPY" || codec == "UNCOMPRESSED", "{what}, column {column}: {codec}")
                    }
                    Container::Bronze if column == "body" => assert_eq!(codec, "ZSTD", "{what}"),
                    _ => assert!(["ZSTD", "SNAPPY", "UNCOMPRESSED"].contains(&codec.as_str()), "{what}: {codec}"),
                }
            }
        }
    }
}
