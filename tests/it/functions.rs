//! The handler against the host's exact envelopes: Event Hubs batches, blob triggers, bad input.

use std::collections::BTreeSet;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use axum::http::StatusCode;
use object_store::path::Path;
use patientflow::app::{AppState, HandlerSettings};
use patientflow::functions::invocation::to_base64;
use patientflow::local_host::envelopes;
use patientflow::storage::keys::BatchStem;
use patientflow::storage::{Container, Lake, StorageConfig, parquet};
use serde_json::{Value, json};

use crate::util::{self, batch, call, call_raw};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/data/invocations/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// 1,000 events, every 10th malformed in a different way.
fn thousand_bodies() -> Vec<Vec<u8>> {
    (0..1000)
        .map(|i| match i % 10 {
            3 => b"{\"patient_id\":\"trunc".to_vec(),
            7 => vec![0xff, 0x00, 0x80, i as u8, b'\n', b'"'],
            _ => format!(
                r#"{{"patient_id":"p{i}","gender":"Male","age":{},"department":"ICU","admission_time":"2026-11-24T0{}:00:00.000001","discharge_time":"2026-11-25T00:00:00","bed_id":{},"hospital_id":3}}"#,
                i % 100 + 1,
                i % 10,
                i % 500 + 1
            )
            .into_bytes(),
        })
        .collect()
}

async fn bronze_bodies(lake: &Lake, key: &str) -> (usize, Vec<Vec<u8>>, arrow_array::RecordBatch) {
    let bytes = lake.get(Container::Bronze, &Path::from(key)).await.unwrap();
    let (_, batches) = parquet::decode(bytes).unwrap();
    assert_eq!(batches.len(), 1);
    let b = batches[0].clone();
    let body = b.column_by_name("body").unwrap().as_binary::<i32>();
    let bodies = (0..body.len()).map(|i| body.value(i).to_vec()).collect();
    (b.num_rows(), bodies, b)
}

async fn ingest_thousand_and_replay(state: &AppState, lake: &Lake) {
    let bodies = thousand_bodies();
    let envelope = batch("5", 7000, &bodies);
    let (status, response) = call(state, "ingest_bronze", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let key = "patient-flow/partition=5/00000000000000007000-00000000000000007999.parquet";
    assert_eq!(response["ReturnValue"]["created"], json!(true));
    assert_eq!(response["ReturnValue"]["key"], json!(key));
    assert!(response["Logs"][0].as_str().unwrap().contains("1000 events"));

    let files = lake.list(Container::Bronze, &Path::from("patient-flow")).await.unwrap();
    assert_eq!(files.len(), 1, "one bronze file per invocation");
    let (rows, got, record) = bronze_bodies(lake, key).await;
    assert_eq!(rows, 1000);
    assert_eq!(got, bodies, "every body byte for byte, malformed ones too");
    let seq = record.column_by_name("sequence_number").unwrap().as_primitive::<arrow_array::types::Int64Type>();
    assert_eq!(seq.value(0), 7000);
    assert_eq!(seq.value(999), 7999);
    let first = lake.get(Container::Bronze, &Path::from(key)).await.unwrap();

    // The host replays the batch (crash before checkpoint): 2xx, nothing changes.
    let (status, response) = call(state, "ingest_bronze", &envelope).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["ReturnValue"]["created"], json!(false));
    assert_eq!(lake.list(Container::Bronze, &Path::from("patient-flow")).await.unwrap().len(), 1);
    assert_eq!(lake.get(Container::Bronze, &Path::from(key)).await.unwrap(), first);
}

#[tokio::test]
async fn a_thousand_event_batch_lands_byte_for_byte_and_a_replay_changes_nothing() {
    let (state, lake) = util::memory().await;
    ingest_thousand_and_replay(&state, &lake).await;
}

#[tokio::test]
async fn the_same_on_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&StorageConfig::local(dir.path())).await.unwrap();
    ingest_thousand_and_replay(&AppState::with_lake(lake.clone(), util::settings()), &lake).await;
    assert!(dir.path().join("bronze/patient-flow/partition=5").is_dir());
}

#[tokio::test]
async fn the_same_against_azurite() {
    let Some(config) = util::azurite_config("ingest") else { return };
    let state = AppState::new(config, util::settings());
    let lake = state.lake().await.unwrap().clone();
    ingest_thousand_and_replay(&state, &lake).await;
}

#[tokio::test]
async fn the_captured_envelope_decodes_with_its_lineage() {
    let (state, lake) = util::memory().await;
    let (status, response) = call(&state, "ingest_bronze", &fixture("eventhub_batch.json")).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let key = "patient-flow/partition=3/00000000000000001041-00000000000000001042.parquet";
    let (rows, bodies, record) = bronze_bodies(&lake, key).await;
    assert_eq!(rows, 2);
    assert!(bodies[0].starts_with(b"{\"patient_id\":\"f648504b-0001\""));
    assert_eq!(bodies[1], b"{\"patient_id\":\"");
    let text = |name: &str, i: usize| record.column_by_name(name).unwrap().as_string::<i32>().value(i).to_string();
    assert_eq!(text("event_hub", 0), "telemetry");
    assert_eq!(text("offset", 1), "4294967520");
    assert_eq!(text("properties", 0), r#"{"source":"gw-7"}"#);
    let ts = |name: &str, i: usize| {
        let us = record
            .column_by_name(name)
            .unwrap()
            .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
            .value(i);
        patientflow::model::time::format_naive(&patientflow::model::time::from_micros(us).unwrap())
    };
    assert_eq!(ts("enqueued_time", 0), "2024-06-01T10:15:02.250000");
    assert_eq!(ts("ingested_at", 0), "2024-06-01T10:15:03.123456", "ingestion time is the host's sys.UtcNow");
}

fn shape(v: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for part in ["Data", "Metadata"] {
        for (k, val) in v[part].as_object().unwrap() {
            let kind = match val {
                Value::String(_) => "string",
                Value::Object(_) => "object",
                _ => "other",
            };
            keys.insert(format!("{part}.{k}:{kind}"));
        }
    }
    keys
}

#[test]
fn envelopes_we_build_have_the_captured_shape() {
    assert_eq!(shape(&batch("3", 1, &[b"{}".to_vec()])), shape(&fixture("eventhub_batch.json")));
    let now = util::now();
    let blob = envelopes::blob_trigger("https://a/bronze/x", "n", None, &now, "g");
    assert_eq!(shape(&blob), shape(&fixture("blob_trigger_deferred.json")));
    assert_eq!(shape(&envelopes::timer("build_gold", &now, false, "g")), shape(&fixture("timer.json")));
}

#[tokio::test]
async fn envelopes_that_are_not_event_hub_batches_get_a_4xx_naming_the_problem() {
    let (state, lake) = util::memory().await;
    let good = batch("1", 0, &[b"{}".to_vec(), b"{}".to_vec()]);
    let mut no_binding = good.clone();
    no_binding["Data"] = json!({"items": "[]"});
    let mut json_bodies = good.clone();
    json_bodies["Data"]["events"] = json!("[{\"a\":1},{\"a\":2}]");
    let mut short_seq = good.clone();
    short_seq["Metadata"]["SequenceNumberArray"] = json!("[1]");
    let mut no_context = good.clone();
    no_context["Metadata"].as_object_mut().unwrap().retain(|k, _| !k.contains("PartitionContext"));
    let mut bad_time = good.clone();
    bad_time["Metadata"]["EnqueuedTimeUtcArray"] = json!("[\"yesterday\",\"2024-01-01T00:00:00\"]");
    let mut evil_partition = good.clone();
    evil_partition["Metadata"]["TriggerPartitionContext"]["PartitionId"] = json!("../../x");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{\"Data\":".to_vec(), "not JSON"),
        ("array", b"[]".to_vec(), "not a JSON object"),
        ("no binding", serde_json::to_vec(&no_binding).unwrap(), "`events`"),
        ("json bodies", serde_json::to_vec(&json_bodies).unwrap(), "dataType"),
        ("short seq", serde_json::to_vec(&short_seq).unwrap(), "SequenceNumberArray has 1 entries"),
        ("no context", serde_json::to_vec(&no_context).unwrap(), "PartitionContext"),
        ("bad time", serde_json::to_vec(&bad_time).unwrap(), "EnqueuedTimeUtcArray[0]"),
        ("evil partition", serde_json::to_vec(&evil_partition).unwrap(), "partition id"),
    ];
    for (name, body, expected) in cases {
        let (status, response) = call_raw(&state, "ingest_bronze", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {response}");
        let message = response["error"].as_str().unwrap();
        assert!(message.contains(expected), "{name}: {message}");
    }
    assert!(lake.list(Container::Bronze, &Path::from("")).await.unwrap().is_empty(), "nothing written");
}

#[tokio::test]
async fn unreachable_storage_fails_the_invocation_so_the_host_retries() {
    let backend = StorageConfig::from_connection_string(
        "LAKE",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1",
    )
    .unwrap();
    let state =
        AppState::new(StorageConfig { backend, containers: StorageConfig::memory().containers }, util::settings());
    let (status, response) = call(&state, "ingest_bronze", &batch("1", 0, &[b"{}".to_vec()])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
    assert!(response["error"].as_str().unwrap().contains("unreachable"), "{response}");
}

#[tokio::test]
async fn readiness_probe_and_body_limit() {
    use axum::body::Body;
    use tower::ServiceExt;
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let state = AppState::with_lake(lake, HandlerSettings { max_body_bytes: 1024 * 1024, ..util::settings() });
    let ok = patientflow::app::router(state.clone())
        .oneshot(axum::http::Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let big = batch("1", 0, &[vec![b'x'; 2 * 1024 * 1024]]);
    let (status, _) = call(&state, "ingest_bronze", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

async fn land(state: &AppState, p: &str, first: i64, bodies: &[Vec<u8>]) -> BatchStem {
    let (status, response) = call(state, "ingest_bronze", &batch(p, first, bodies)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    BatchStem::parse_key(response["ReturnValue"]["key"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn blob_content_and_deferred_binding_give_the_same_silver() {
    let bodies: Vec<Vec<u8>> = thousand_bodies().into_iter().cycle().take(10_000).collect();
    let now = util::now();

    // Content in Data (dataType: binary): the host sends the blob base64-encoded.
    let (state_a, lake_a) = util::memory().await;
    let stem = land(&state_a, "2", 0, &bodies).await;
    let bronze = lake_a.get(Container::Bronze, &stem.key()).await.unwrap();
    let uri = lake_a.uri(Container::Bronze, &stem.key());
    let with_content = envelopes::blob_trigger(&uri, &stem.name(), Some(&bronze), &now, "g");
    let (status, a) = call(&state_a, "refine_silver", &with_content).await;
    assert_eq!(status, StatusCode::OK, "{a}");

    // Deferred binding: only the name; the handler reads the blob itself.
    let (state_b, lake_b) = util::memory().await;
    land(&state_b, "2", 0, &bodies).await;
    let deferred = envelopes::blob_trigger(&uri, &stem.name(), None, &now, "g");
    let (status, b) = call(&state_b, "refine_silver", &deferred).await;
    assert_eq!(status, StatusCode::OK, "{b}");

    assert_eq!(a["ReturnValue"]["rows_in"], json!(10_000));
    let silver_a = lake_a.get(Container::Silver, &stem.key()).await.unwrap();
    let silver_b = lake_b.get(Container::Silver, &stem.key()).await.unwrap();
    assert_eq!(silver_a, silver_b);
    assert_eq!(
        lake_a.get(Container::Quarantine, &stem.key()).await.unwrap(),
        lake_b.get(Container::Quarantine, &stem.key()).await.unwrap()
    );
}

#[tokio::test]
async fn the_name_can_come_from_the_uri_alone() {
    let (state, lake) = util::memory().await;
    let stem = land(&state, "0", 10, &[b"{\"patient_id\":\"a\"}".to_vec()]).await;
    let mut envelope = fixture("blob_trigger_deferred.json");
    envelope["Metadata"].as_object_mut().unwrap().remove("name");
    envelope["Metadata"]["Uri"] =
        Value::String(format!("\"https://acct.blob.core.windows.net/bronze/{}\"", stem.key()));
    let (status, response) = call(&state, "refine_silver", &envelope).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert!(lake.exists(Container::Silver, &stem.key()).await.unwrap());
}

#[tokio::test]
async fn a_corrupt_bronze_file_fails_the_invocation_with_the_reason() {
    let (state, lake) = util::memory().await;
    let stem = BatchStem { partition: "1".into(), first_seq: 0, last_seq: 9 };
    let uri = lake.uri(Container::Bronze, &stem.key());
    let envelope = envelopes::blob_trigger(&uri, &stem.name(), Some(b"PAR1 this is not parquet"), &util::now(), "g");
    let (status, response) = call(&state, "refine_silver", &envelope).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{response}");
    assert!(response["error"].as_str().unwrap().contains("cannot be read"), "{response}");
    assert!(!lake.exists(Container::Silver, &stem.key()).await.unwrap());

    // Without content and without a blob: storage says not found — a retryable failure.
    let (status, _) =
        call(&state, "refine_silver", &envelopes::blob_trigger(&uri, &stem.name(), None, &util::now(), "g")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let mut wrong_name = envelopes::blob_trigger(&uri, "somewhere/else", Some(b"x"), &util::now(), "g");
    wrong_name["Metadata"]["Uri"] = json!("\"https://a/b/c.parquet\"");
    let (status, response) = call(&state, "refine_silver", &wrong_name).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response["error"].as_str().unwrap().contains("bronze/patient-flow/{name}.parquet"), "{response}");

    let mut not_b64 = envelopes::blob_trigger(&uri, &stem.name(), None, &util::now(), "g");
    not_b64["Data"]["blob"] = json!("\"PAR1 utf8-decoded\"");
    let (status, response) = call(&state, "refine_silver", &not_b64).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response["error"].as_str().unwrap().contains("dataType"), "{response}");
    let _ = to_base64(b"");
}

/// Point 7: the body limit follows host.json — the largest batch the host can send is accepted,
/// and the limit is nowhere near the old 256 MiB.
#[tokio::test]
async fn the_body_limit_fits_the_largest_batch_host_json_allows() {
    use patientflow::config::{HostLimits, settings};
    let host = HostLimits::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json")).unwrap();
    let handler = HandlerSettings {
        now: Some(util::now()),
        ..HandlerSettings::derived(&host, settings::DEFAULT_MAX_EVENT_BYTES)
    };
    assert!(handler.max_body_bytes < 64 * 1024 * 1024, "{}", handler.max_body_bytes);
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let state = AppState::with_lake(lake, handler);
    // maxEventBatchSize events, each as large as the setting allows, with real metadata.
    let largest: Vec<Vec<u8>> =
        (0..host.max_event_batch_size).map(|_| vec![b'x'; settings::DEFAULT_MAX_EVENT_BYTES]).collect();
    let (status, response) = call(&state, "ingest_bronze", &batch("1", 0, &largest)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let twice: Vec<Vec<u8>> =
        (0..host.max_event_batch_size).map(|_| vec![b'x'; 2 * settings::DEFAULT_MAX_EVENT_BYTES]).collect();
    let (status, _) = call(&state, "ingest_bronze", &batch("1", 5000, &twice)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// Point 7: the handler's own invocation limit is derived from host.json's `functionTimeout` and
/// strictly shorter; a setting may lower it, never raise it.
#[test]
fn the_invocation_limit_is_shorter_than_the_hosts() {
    use clap::Parser;
    use patientflow::config::{HandlerArgs, HostLimits};
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        handler: HandlerArgs,
    }
    let host = HostLimits::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json")).unwrap();
    let function_timeout = host.function_timeout.unwrap();
    let derived = T::try_parse_from(["x"]).unwrap().handler.settings(&host).unwrap();
    assert!(derived.request_timeout < function_timeout, "{:?}", derived.request_timeout);
    let lower = T::try_parse_from(["x", "--request-timeout-secs", "30"]).unwrap().handler.settings(&host).unwrap();
    assert_eq!(lower.request_timeout, std::time::Duration::from_secs(30));
    let same = format!("{}", function_timeout.as_secs());
    let e =
        T::try_parse_from(["x", "--request-timeout-secs", same.as_str()]).unwrap().handler.settings(&host).unwrap_err();
    assert!(
        e.to_string().contains("PATIENTFLOW_REQUEST_TIMEOUT_SECS") && e.to_string().contains("functionTimeout"),
        "{e}"
    );
}

/// Point 7: a SAS connection string's signature never reaches an error body (nor the error chain
/// the logs print), though the failing request's URL carries it.
#[tokio::test]
async fn a_sas_signature_never_reaches_an_error() {
    let sig = "Zm9vYmFyU0VDUkVUc2lnbmF0dXJl%2B%3D";
    let conn = format!(
        "AccountName=devstoreaccount1;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;SharedAccessSignature=sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig={sig}"
    );
    let backend = StorageConfig::from_connection_string("LAKE", &conn).unwrap();
    let config = StorageConfig { backend, containers: StorageConfig::memory().containers };
    let chain = format!("{:#}", anyhow::Error::new(Lake::open(&config).await.unwrap_err()));
    assert!(!chain.contains(sig) && !chain.contains("Zm9vYmFy"), "{chain}");
    let state = AppState::new(config, util::settings());
    let (status, response) = call(&state, "ingest_bronze", &batch("1", 0, &[b"{}".to_vec()])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
    let body = response.to_string();
    assert!(body.contains("unreachable") && !body.contains("Zm9vYmFy"), "{body}");
}

fn gold_state(lake: &Lake, min_new_files: usize, reconcile_max_files: usize) -> AppState {
    use patientflow::app::{GoldSettings, WarehouseConfig};
    AppState::build(
        StorageConfig::memory(),
        Some(lake.clone()),
        util::settings(),
        WarehouseConfig::None,
        GoldSettings {
            min_new_files,
            reconcile_max_files,
            retention: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
    )
}

fn timer_at(now: &str) -> Value {
    envelopes::timer("build_gold", &patientflow::model::time::parse_utc(now).unwrap(), false, "g")
}

/// Point 5: on a quiet night (no new silver file) the timer still builds when a census change its
/// manifest records is due, so a discharged patient stops counting as admitted.
#[tokio::test]
async fn the_timer_builds_when_a_census_change_is_due_whatever_the_file_count() {
    let (state, lake) = util::memory().await;
    let discharged_at_six =
        util::event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", Some("2026-11-24T18:00:00"));
    util::land(&state, &lake, "0", 0, &[discharged_at_six]).await;
    let (status, first) = call(&gold_state(&lake, 0, 8), "build_gold", &timer_at("2026-11-24T12:00:00")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["ReturnValue"]["build"]["outcome"], json!("built"), "{first}");

    // 19:00, nothing new, threshold 5: the discharge at 18:00 is due.
    let timer = gold_state(&lake, 5, 8);
    let (status, second) = call(&timer, "build_gold", &timer_at("2026-11-24T19:00:00")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["ReturnValue"]["census_due"], json!(true), "{second}");
    assert_eq!(second["ReturnValue"]["build"]["outcome"], json!("built"), "{second}");
    let latest = patientflow::pipeline::gold::manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(latest.build, 2);
    let tables = patientflow::pipeline::gold::read_build(&lake, &latest).await.unwrap();
    let facts =
        arrow_select::concat::concat_batches(&tables.fact_patient_flow[0].schema(), &tables.fact_patient_flow).unwrap();
    let admitted = facts.column_by_name("is_currently_admitted").unwrap().as_boolean().clone();
    assert_eq!(admitted.values().iter().collect::<Vec<_>>(), [false], "discharged at 18:00, as of 19:00");

    // Nothing due any more and nothing new: no build.
    let (_, third) = call(&timer, "build_gold", &timer_at("2026-11-24T20:00:00")).await;
    assert!(third["ReturnValue"]["build"].is_null(), "{third}");
}

/// Point 6: a bronze file the blob trigger never refined (poison queue) is found by the timer,
/// refined, counted and logged, and its events reach gold. The cost is bounded: a run refines at
/// most `reconcile_max_files`, and files behind the watermark are not listed again.
#[tokio::test]
async fn the_timer_refines_bronze_files_that_never_reached_silver() {
    let (state, lake) = util::memory().await;
    // Three bronze files, no blob trigger: as if all three went to the poison queue.
    for (i, id) in ["A", "B", "C"].iter().enumerate() {
        let body = util::event(id, "Female", 40, "ICU", 1, i as i64 + 1, "2026-11-24T01:00:00", None);
        let (status, response) = call(&state, "ingest_bronze", &batch("2", i as i64 * 10, &[body])).await;
        assert_eq!(status, StatusCode::OK, "{response}");
    }
    assert!(lake.list(Container::Silver, &Path::from("patient-flow")).await.unwrap().is_empty());

    let timer = gold_state(&lake, 0, 2);
    let (status, first) = call(&timer, "build_gold", &timer_at("2026-11-24T12:00:00")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let r = &first["ReturnValue"]["reconcile"];
    assert_eq!(
        (r["missing"].as_u64(), r["refined"].as_u64(), r["deferred"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{first}"
    );
    assert!(first["Logs"][0].as_str().unwrap().contains("2 refined"), "{first}");

    let (status, second) = call(&timer, "build_gold", &timer_at("2026-11-24T12:05:00")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r = &second["ReturnValue"]["reconcile"];
    assert_eq!(
        (r["refined"].as_u64(), r["bronze_checked"].as_u64()),
        (Some(1), Some(1)),
        "only past the watermark: {second}"
    );
    assert_eq!(lake.list(Container::Silver, &Path::from("patient-flow")).await.unwrap().len(), 3);
    let latest = patientflow::pipeline::gold::manifest::latest(&lake).await.unwrap().unwrap();
    assert_eq!(latest.rows["FactPatientFlow"], 3, "every event reached gold");

    let (_, third) = call(&timer, "build_gold", &timer_at("2026-11-24T12:10:00")).await;
    assert_eq!(third["ReturnValue"]["reconcile"]["bronze_checked"], json!(0), "{third}");
}
