//! The Data Factory path: webhook → 202 + queued job → gold_job → gold built, warehouse loaded,
//! callback received by a real local HTTP server — on failure too; foreign callbacks refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use patientflow::adf::CallbackPolicy;
use patientflow::app::{AppState, GoldSettings, WarehouseConfig};
use patientflow::storage::{Lake, StorageConfig};
use serde_json::{Value, json};

use crate::util::{self, call, event, land};

type Received = Arc<Mutex<Vec<Value>>>;

/// A callback receiver on a loopback port; returns its base URL and what it received.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/callback/{id}",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, got)
}

fn state(lake: &Lake, warehouse: WarehouseConfig) -> AppState {
    let gold = GoldSettings {
        min_new_files: 5,
        retention: Duration::from_secs(3600),
        adf_callbacks: CallbackPolicy::parse("127.0.0.1", true),
        ..Default::default()
    };
    AppState::build(StorageConfig::memory(), Some(lake.clone()), util::settings(), warehouse, gold)
}

fn webhook(body: &Value) -> Value {
    let mut envelope: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/tests/data/invocations/http_webhook.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap(),
    )
    .unwrap();
    envelope["Data"]["req"]["Body"] = Value::String(body.to_string());
    envelope
}

/// The queue trigger's envelope: the message arrives double-encoded.
fn queue(job: &str) -> Value {
    json!({ "Data": { "job": Value::String(Value::String(job.to_string()).to_string()) }, "Metadata": { "sys": { "UtcNow": "2026-11-24T12:00:00Z" } } })
}

#[cfg(feature = "embedded-warehouse")]
#[tokio::test]
async fn webhook_queues_a_job_that_builds_loads_and_calls_back_once() {
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (ingest, lake) = util::memory().await;
    land(&ingest, &lake, "0", 0, &[event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None)]).await;
    let app = state(&lake, WarehouseConfig::Embedded(dir.path().join("w.duckdb").into()));

    let callback = format!("{base}/callback/run-7");
    let started = std::time::Instant::now();
    let (status, response) =
        call(&app, "gold_webhook", &webhook(&json!({"runId": "run-7", "callBackUri": callback}))).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "ADF needs the answer within a minute; we take well under a second"
    );
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["Outputs"]["res"]["statusCode"], 202);
    assert_eq!(response["Outputs"]["res"]["body"]["runId"], "run-7");
    let job = response["Outputs"]["job"].as_str().unwrap().to_string();
    assert!(received.lock().unwrap().is_empty(), "nothing built before the job runs");

    let (status, response) = call(&app, "gold_job", &queue(&job)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["StatusCode"], "200");
    assert_eq!(got[0]["Output"]["build"]["build"], 1, "{}", got[0]);
    assert_eq!(got[0]["Output"]["load"]["fact_rows_total"], 1);

    // The queue redelivers the message: no second build, no second callback.
    let (status, response) = call(&app, "gold_job", &queue(&job)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(received.lock().unwrap().len(), 1);
    assert_eq!(patientflow::pipeline::gold::manifest::build_numbers(&lake).await.unwrap(), [1]);
}

#[cfg(feature = "embedded-warehouse")]
#[tokio::test]
async fn a_failing_load_calls_back_with_the_error() {
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (ingest, lake) = util::memory().await;
    land(&ingest, &lake, "0", 0, &[event("A", "Male", 50, "ICU", 3, 1, "2026-11-24T01:00:00", None)]).await;
    // The warehouse "file" is a folder: the load fails.
    let app = state(&lake, WarehouseConfig::Embedded(dir.path().to_path_buf().into()));
    let (_, response) =
        call(&app, "gold_webhook", &webhook(&json!({"runId": "run-8", "callBackUri": format!("{base}/callback/8")})))
            .await;
    let job = response["Outputs"]["job"].as_str().unwrap().to_string();
    let (status, _) = call(&app, "gold_job", &queue(&job)).await;
    assert_eq!(status, StatusCode::OK);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let code: u16 = got[0]["StatusCode"].as_str().unwrap().parse().unwrap();
    assert!(code >= 400, "{}", got[0]);
    assert_eq!(got[0]["Error"]["ErrorCode"], "GOLD_DEPENDENCY_FAILED");
    assert!(got[0]["Error"]["Message"].as_str().unwrap().contains("warehouse"), "{}", got[0]);
}

#[tokio::test]
async fn callbacks_outside_the_allow_list_are_refused() {
    let (base, received) = receiver().await;
    let (_, lake) = util::memory().await;
    let app = state(&lake, WarehouseConfig::None);
    for bad in ["https://evil.example.com/cb", "http://169.254.169.254/metadata/identity", "ftp://127.0.0.1/x"] {
        let (status, response) = call(&app, "gold_webhook", &webhook(&json!({"runId": "r", "callBackUri": bad}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(response["Outputs"]["res"]["statusCode"], 400, "{bad}: {response}");
        assert!(response["Outputs"].get("job").is_none(), "nothing queued for {bad}");
    }
    let (_, response) = call(&app, "gold_webhook", &webhook(&json!({"runId": "r"}))).await;
    assert!(response["Outputs"]["res"]["body"]["error"].as_str().unwrap().contains("callBackUri"));

    // A forged queue message is refused too, and nothing is called.
    let forged =
        json!({"runId": "x", "callBackUri": "https://evil.example.com/cb", "requestedAt": "2026-11-24T12:00:00Z"})
            .to_string();
    let (status, response) = call(&app, "gold_job", &queue(&forged)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(response["Logs"][0].as_str().unwrap().contains("refused"), "{response}");

    // The default policy refuses even loopback http: only https on *.clouddatahub.net.
    let strict = AppState::with_lake(lake.clone(), util::settings());
    let (_, response) =
        call(&strict, "gold_webhook", &webhook(&json!({"runId": "r", "callBackUri": format!("{base}/callback/1")})))
            .await;
    assert_eq!(response["Outputs"]["res"]["statusCode"], 400);
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_captured_webhook_envelope_is_accepted_with_the_default_policy() {
    let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
    let app = AppState::with_lake(lake, util::settings());
    let envelope: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/tests/data/invocations/http_webhook.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap(),
    )
    .unwrap();
    let (status, response) = call(&app, "gold_webhook", &envelope).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["Outputs"]["res"]["statusCode"], 202, "{response}");
    let job: Value = serde_json::from_str(response["Outputs"]["job"].as_str().unwrap()).unwrap();
    assert_eq!(job["runId"], "abc");
    assert!(job["callBackUri"].as_str().unwrap().starts_with("https://westeurope.frontend.clouddatahub.net/"));
}

/// Point 10: the timer and Data Factory jobs race for the same build numbers. A job whose data
/// another builder committed reports success with that build; and once the races are over, the
/// next cleanup leaves no build file that no manifest references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_the_timer_and_gold_jobs_fails_no_callback_and_leaves_no_orphans() {
    use patientflow::pipeline::gold::{self, GoldOptions, manifest};
    use patientflow::storage::Container;
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&StorageConfig::local(dir.path())).await.unwrap();
    let ingest = AppState::with_lake(lake.clone(), util::settings());
    let app = state(&lake, WarehouseConfig::None);
    let timer = AppState::build(
        StorageConfig::memory(),
        Some(lake.clone()),
        util::settings(),
        WarehouseConfig::None,
        GoldSettings { min_new_files: 0, retention: Duration::from_secs(3600), ..Default::default() },
    );
    let rounds = 12;
    const JOBS: usize = 3;
    for round in 0..rounds {
        // Discharges between the builders' clocks (12:00:00–12:00:10 for jobs, 12:01 on for the
        // timer): each sees census changes due in the others' builds, and they race more.
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let id = format!("R{round}-{i}");
                let discharge = format!("2026-11-24T12:00:{:02}", 2 + i);
                event(&id, "Male", 40, "ICU", 1, i + 1, "2026-11-24T01:00:00", Some(&discharge))
            })
            .collect();
        land(&ingest, &lake, "0", round * 100, &bodies).await;
        let jobs: Vec<String> = (0..JOBS)
            .map(|j| {
                json!({"runId": format!("race-{round}-{j}"), "callBackUri": format!("{base}/callback/{round}-{j}"), "requestedAt": "2026-11-24T12:00:00Z"})
                    .to_string()
            })
            .collect();
        let mut tasks = Vec::new();
        for (j, job) in jobs.into_iter().enumerate() {
            let app = app.clone();
            // Each job on its own clock (the host's UtcNow): racing builds differ, as in production.
            let mut envelope = queue(&job);
            envelope["Metadata"]["sys"]["UtcNow"] = json!(format!("2026-11-24T12:00:{:02}Z", 5 * j));
            tasks.push(tokio::spawn(async move { call(&app, "gold_job", &envelope).await }));
        }
        let t = timer.clone();
        let minute = format!("2026-11-24T12:{:02}:00", round + 1);
        tasks.push(tokio::spawn(async move {
            let now = patientflow::model::time::parse_utc(&minute).unwrap();
            call(&t, "build_gold", &patientflow::local_host::envelopes::timer("build_gold", &now, false, "g")).await
        }));
        for task in tasks {
            let (status, response) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}: {response}");
        }
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), JOBS * rounds as usize);
    for callback in &got {
        assert_eq!(callback["StatusCode"], "200", "{callback}");
        let data_build = callback["Output"]["data_build"].as_u64().expect("the build that holds the job's data");
        let m = manifest::read(&lake, data_build).await.unwrap();
        assert!(!m.silver.is_empty(), "{callback}");
    }
    let by_another = got.iter().filter(|c| c["Output"]["built_by_another"] == true).count();
    eprintln!("{by_another} of {} jobs found their data committed by another builder", got.len());
    let latest = manifest::latest(&lake).await.unwrap().unwrap();
    let silver = lake.list(Container::Silver, &object_store::path::Path::from("patient-flow")).await.unwrap();
    assert_eq!(silver.len(), rounds as usize);
    for f in &silver {
        let stem = patientflow::storage::keys::BatchStem::parse_key(f.location.as_ref()).unwrap();
        assert!(latest.silver.contains(&stem), "{} is folded", f.location);
    }

    let mut committed = std::collections::HashSet::new();
    for n in manifest::build_numbers(&lake).await.unwrap() {
        committed.extend(manifest::read(&lake, n).await.unwrap().files());
    }
    let files = lake.list(Container::Gold, &object_store::path::Path::from("builds")).await.unwrap();
    let losers = files.iter().filter(|f| !committed.contains(f.location.as_ref())).count();
    eprintln!("{} build files before the cleanup, {losers} of them from builds that never committed", files.len());
    gold::cleanup(&lake, &GoldOptions::new(util::now(), Duration::from_secs(3600))).await.unwrap();
    let mut referenced = std::collections::HashSet::new();
    for n in manifest::build_numbers(&lake).await.unwrap() {
        referenced.extend(manifest::read(&lake, n).await.unwrap().files());
    }
    let files = lake.list(Container::Gold, &object_store::path::Path::from("builds")).await.unwrap();
    let orphans: Vec<String> =
        files.iter().map(|f| f.location.to_string()).filter(|f| !referenced.contains(f)).collect();
    assert!(orphans.is_empty(), "{} orphan build files, e.g. {:?}", orphans.len(), orphans.first());
}
