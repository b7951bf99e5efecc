//! Criterion benchmarks of the pipeline's hot entry points, so a regression shows in numbers:
//!
//! - `ingest_bronze/1000_events`: the Event Hubs batch envelope of 1,000 simulated events, POSTed to
//!   the handler's router as the host sends it (`dataType: binary`, double-encoded arrays) → one
//!   bronze file in an in-memory lake: envelope decoding, base64, the bronze encode and the write;
//! - `refine_silver/1000_events`: `pipeline::silver::process` on one 1,000-event bronze file
//!   (decode, the silver rules, silver and quarantine encodes and writes) into an in-memory lake;
//! - `gold/build_50k_events`: `pipeline::gold::build` folding the silver files of ~50,000 events
//!   into an empty gold container on a local temporary lake.
//!
//! Each measured call gets a fresh lake (set up outside the timing): bronze and silver writes are
//! create-if-absent and a build folds only what is new, so a second call on the same lake would
//! measure a replay. Only public entry points are used (the router, `silver::process`,
//! `gold::build`), never the stages' internals, so the benchmarks survive rewrites of those.
//!
//! Run: `cargo bench --bench pipeline` (or `-- gold` for one group). Criterion keeps the last
//! results under `target/criterion/` and reports the change against them.

use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use chrono::NaiveDateTime;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use patientflow::app::{self, AppState, HandlerSettings};
use patientflow::functions::{ingest_bronze, refine_silver};
use patientflow::local_host::envelopes::{self, HubEvent, HubPartition};
use patientflow::model::time::parse_utc;
use patientflow::pipeline::gold::{self, BuildOutcome, GoldOptions};
use patientflow::pipeline::silver;
use patientflow::simulate::{DirtRates, SimulationConfig, Simulator};
use patientflow::storage::keys::{BatchStem, patient_flow_prefix};
use patientflow::storage::{Container, Lake, StorageConfig};
use serde_json::Value;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const BATCH: usize = 1_000;
const PARTITIONS: usize = 4;
const GOLD_EVENTS: usize = 50_000;

fn now() -> NaiveDateTime {
    parse_utc("2026-11-24T12:00:00").expect("a valid clock")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime")
}

fn memory_lake(rt: &Runtime) -> Lake {
    rt.block_on(Lake::open(&StorageConfig::memory())).expect("an in-memory lake")
}

fn state(lake: &Lake) -> AppState {
    AppState::with_lake(lake.clone(), HandlerSettings { now: Some(now()), ..Default::default() })
}

/// `count` simulated events (the seed's distribution and dirt), as Event Hubs batches of
/// [`BATCH`] spread over [`PARTITIONS`] partitions, each as the envelope the host POSTs.
fn batch_envelopes(count: usize) -> Vec<Vec<u8>> {
    let first = patientflow::run::first_enqueued(now(), count as u64).expect("events that fit before now");
    let config = SimulationConfig { seed: 42, now: first, hospitals: 7, beds: 500, dirt: DirtRates::default() };
    let events: Vec<_> = Simulator::new(config).take(count).collect();
    let mut next_seq = [0i64; PARTITIONS];
    let mut next_offset = [0i64; PARTITIONS];
    let ids: Vec<String> = (0..PARTITIONS).map(|p| p.to_string()).collect();
    events
        .chunks(BATCH)
        .enumerate()
        .map(|(b, chunk)| {
            let p = b % PARTITIONS;
            let hub_events: Vec<HubEvent> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let event = HubEvent {
                        body: e.body.clone().into(),
                        sequence_number: next_seq[p] + i as i64,
                        offset: next_offset[p],
                        enqueued_time: first + chrono::Duration::milliseconds((b * BATCH + i) as i64),
                        partition_key: Some(e.partition_key.clone()),
                    };
                    next_offset[p] += e.body.len() as i64;
                    event
                })
                .collect();
            next_seq[p] += chunk.len() as i64;
            let hub = HubPartition {
                namespace: "bench.servicebus.windows.net",
                event_hub: "patient-flow",
                consumer_group: "$Default",
                partition_id: &ids[p],
            };
            let last = hub_events.last().map_or(first, |e| e.enqueued_time);
            envelopes::event_hub_batch_bytes(&hub, &hub_events, &last, &format!("bench-{b}"))
        })
        .collect()
}

/// POSTs `body` to `/<function>` on the handler's router, as the host would, and returns the
/// response's `ReturnValue`.
async fn post(state: &AppState, function: &str, body: Vec<u8>) -> Value {
    let request = Request::post(format!("/{function}"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "bench")
        .body(Body::from(body))
        .expect("a request");
    let response = app::router(state.clone()).oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("a response body").to_bytes();
    assert!(status.is_success(), "{function} answered {status}: {}", String::from_utf8_lossy(&bytes));
    let envelope: Value = serde_json::from_slice(&bytes).expect("an invocation response");
    envelope["ReturnValue"].clone()
}

/// Lands `envelopes` in bronze through the handler; returns the bronze files' stems.
async fn ingest(state: &AppState, envelopes: &[Vec<u8>]) -> Vec<BatchStem> {
    let mut stems = Vec::new();
    for body in envelopes {
        let answer = post(state, ingest_bronze::NAME, body.clone()).await;
        let key = answer["key"].as_str().expect("ingest_bronze names its bronze file");
        stems.push(BatchStem::parse_key(key).expect("a bronze key"));
    }
    stems
}

fn ingest_bronze(c: &mut Criterion) {
    let rt = runtime();
    let envelope = batch_envelopes(BATCH).remove(0);
    let mut group = c.benchmark_group("ingest_bronze");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1000_events", |b| {
        b.iter_batched(
            || (state(&memory_lake(&rt)), envelope.clone()),
            |(state, body)| rt.block_on(post(&state, ingest_bronze::NAME, body)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn refine_silver(c: &mut Criterion) {
    let rt = runtime();
    let envelope = batch_envelopes(BATCH).remove(0);
    let (stem, bronze) = rt.block_on(async {
        let lake = Lake::open(&StorageConfig::memory()).await.expect("an in-memory lake");
        let stem = ingest(&state(&lake), &[envelope]).await.remove(0);
        let bronze = lake.get(Container::Bronze, &stem.key()).await.expect("the bronze file");
        (stem, bronze)
    });
    let mut group = c.benchmark_group("refine_silver");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1000_events", |b| {
        b.iter_batched(
            || (memory_lake(&rt), bronze.clone()),
            |(lake, bronze)| {
                let m = rt.block_on(silver::process(&lake, &stem, bronze)).expect("a refine");
                assert_eq!(m.rows_in, BATCH as u64);
                black_box(m)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The silver files of [`GOLD_EVENTS`] events, by key, landed and refined through the handler.
fn silver_files(rt: &Runtime) -> Vec<(object_store::path::Path, Bytes)> {
    let envelopes = batch_envelopes(GOLD_EVENTS);
    rt.block_on(async {
        let lake = Lake::open(&StorageConfig::memory()).await.expect("an in-memory lake");
        let state = state(&lake);
        for stem in ingest(&state, &envelopes).await {
            let key = stem.key();
            let bronze = lake.get(Container::Bronze, &key).await.expect("the bronze file");
            let uri = lake.uri(Container::Bronze, &key);
            let body = envelopes::blob_trigger_bytes(&uri, &stem.name(), Some(&bronze), &now(), "bench");
            post(&state, refine_silver::NAME, body).await;
        }
        let mut files = Vec::new();
        for m in lake.list(Container::Silver, &patient_flow_prefix()).await.expect("a silver listing") {
            let bytes = lake.get(Container::Silver, &m.location).await.expect("a silver file");
            files.push((m.location, bytes));
        }
        files
    })
}

fn gold_build(c: &mut Criterion) {
    let rt = runtime();
    let files = silver_files(&rt);
    let options = GoldOptions::new(now(), Duration::from_secs(3600));
    let mut group = c.benchmark_group("gold");
    group.throughput(Throughput::Elements(GOLD_EVENTS as u64));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(15));
    group.bench_function("build_50k_events", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let lake = rt.block_on(async {
                    let lake = Lake::open(&StorageConfig::local(dir.path())).await.expect("a local lake");
                    for (key, bytes) in &files {
                        lake.put(Container::Silver, key, bytes.clone()).await.expect("a silver file written");
                    }
                    lake
                });
                (dir, lake)
            },
            |(dir, lake)| {
                let outcome = rt.block_on(gold::build(&lake, &options)).expect("a gold build");
                assert!(matches!(outcome, BuildOutcome::Built(_)), "the build folded the silver files in");
                // The folder is removed after the timing (criterion drops outputs outside it).
                (dir, black_box(outcome))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, ingest_bronze, refine_silver, gold_build);
criterion_main!(benches);
