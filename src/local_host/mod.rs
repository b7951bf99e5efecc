//! A small, faithful stand-in for the Functions host, for `patientflow run`, `bench` and tests: it
//! starts the real handler on a loopback port and POSTs the host's envelopes to `/<function>` over
//! HTTP, with the host's headers. It is a local runner, not a second host: no bindings, no scaling.
//!
//! It also tells apart the handler's time from its own. The router it serves is the handler's own
//! ([`app::router`]) wrapped in one timing layer: once a request's body has arrived, the layer times
//! the handler until its response is ready and returns that in the [`HANDLER_TIME_HEADER`] response
//! header. [`LocalHost::invoke_timed`] reads it next to the round trip it measured itself, so a
//! runner can report what Azure would bill (the handler's time) apart from what only this stand-in
//! costs (building envelopes, HTTP on loopback).

pub mod envelopes;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::{self, AppState};
use crate::functions::invocation::InvokeResponse;

/// The invocation failed (non-2xx, or the handler could not be reached).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The handler answered with a non-2xx status.
    #[error("{function} failed with HTTP {status}: {message}")]
    Failed {
        /// Function name.
        function: String,
        /// HTTP status.
        status: u16,
        /// The handler's error message.
        message: String,
    },
    /// The handler could not be reached or answered garbage.
    #[error("{function}: {detail}")]
    Transport {
        /// Function name.
        function: String,
        /// What went wrong.
        detail: String,
    },
}

/// The response header in which the local host's server reports the handler's time for one
/// invocation, in whole microseconds.
pub const HANDLER_TIME_HEADER: &str = "x-patientflow-handler-micros";

/// One invocation's answer and where its time went.
#[derive(Debug)]
pub struct Invocation {
    /// The handler's response envelope.
    pub response: InvokeResponse,
    /// The handler's own time: from the request's body having arrived to its response being ready.
    pub handler: Duration,
    /// The round trip as the caller saw it: sending the body, the handler, reading the response.
    pub round_trip: Duration,
}

impl Invocation {
    /// What the round trip cost beyond the handler: HTTP on loopback both ways, and waiting for a
    /// core when the handler and the runner compete for them.
    pub fn transport(&self) -> Duration {
        self.round_trip.saturating_sub(self.handler)
    }
}

/// Times the handler for one request (see [`HANDLER_TIME_HEADER`]). The body is read first, so its
/// trip over loopback counts as transport, not as the handler's time; the handler then reads it
/// from memory, under its own body limit as before.
async fn time_handler(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")).into_response(),
    };
    let started = Instant::now();
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    response.headers_mut().insert(HANDLER_TIME_HEADER, HeaderValue::from(micros));
    response
}

/// A running handler and a client that invokes it the way the host does.
pub struct LocalHost {
    client: reqwest::Client,
    base: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl LocalHost {
    /// Starts the handler for `state` on a free loopback port.
    pub async fn start(state: AppState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        // The handler's router as `serve` runs it, plus the timing layer. (`serve` also warms the
        // lake in the background; a runner's state is built around an open lake.)
        let router = app::router(state).layer(axum::middleware::from_fn(time_handler));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            client: Self::client(),
            base: format!("http://{addr}"),
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap_or_default()
    }

    /// The handler's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// POSTs an envelope to `/<function>` as the host does and decodes the response envelope.
    pub async fn invoke(
        &self,
        function: &str,
        envelope: &Value,
        invocation_id: &str,
    ) -> Result<InvokeResponse, InvokeError> {
        let body = serde_json::to_vec(envelope)
            .map_err(|e| InvokeError::Transport { function: function.to_string(), detail: e.to_string() })?;
        self.invoke_raw(function, body, invocation_id).await
    }

    /// Like [`invoke`](Self::invoke) with an already serialized body.
    pub async fn invoke_raw(
        &self,
        function: &str,
        body: Vec<u8>,
        invocation_id: &str,
    ) -> Result<InvokeResponse, InvokeError> {
        self.invoke_timed(function, body, invocation_id).await.map(|i| i.response)
    }

    /// Like [`invoke_raw`](Self::invoke_raw), with the handler's time and the round trip.
    pub async fn invoke_timed(
        &self,
        function: &str,
        body: Vec<u8>,
        invocation_id: &str,
    ) -> Result<Invocation, InvokeError> {
        let transport = |detail: String| InvokeError::Transport { function: function.to_string(), detail };
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/{function}", self.base))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Azure-Functions-InvocationId", invocation_id)
            .header("User-Agent", "patientflow-local-host")
            .body(body)
            .send()
            .await
            .map_err(|e| transport(format!("handler unreachable: {e}")))?;
        let status = response.status();
        let handler = response
            .headers()
            .get(HANDLER_TIME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
            .unwrap_or_default();
        let bytes = response.bytes().await.map_err(|e| transport(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(InvokeError::Failed { function: function.to_string(), status: status.as_u16(), message });
        }
        let response = serde_json::from_slice(&bytes)
            .map_err(|e| transport(format!("the response is not an invocation envelope: {e}")))?;
        Ok(Invocation { response, handler, round_trip: started.elapsed() })
    }

    /// Stops the handler after in-flight invocations finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::HandlerSettings;
    use crate::local_host::envelopes::{HubEvent, HubPartition};
    use crate::model::time::parse_utc;
    use crate::storage::{Lake, StorageConfig};

    #[tokio::test]
    async fn an_invocation_reports_the_handlers_time_inside_its_round_trip() {
        let now = parse_utc("2026-11-24T12:00:00").unwrap();
        let lake = Lake::open(&StorageConfig::memory()).await.unwrap();
        let host =
            LocalHost::start(AppState::with_lake(lake, HandlerSettings { now: Some(now), ..Default::default() }))
                .await
                .unwrap();
        let events: Vec<HubEvent> = (0..20)
            .map(|i| HubEvent {
                body: format!("{{\"patient_id\":\"p{i}\"}}").into(),
                sequence_number: i,
                offset: 100 * i,
                enqueued_time: now,
                partition_key: None,
            })
            .collect();
        let p = HubPartition { namespace: "ns", event_hub: "hub", consumer_group: "$Default", partition_id: "0" };
        let body = envelopes::event_hub_batch_bytes(&p, &events, &now, "g");
        let invocation = host.invoke_timed("ingest_bronze", body, "t").await.unwrap();
        assert_eq!(invocation.response.return_value["created"], true);
        assert!(invocation.handler > Duration::ZERO, "the timing header was read");
        assert!(invocation.handler <= invocation.round_trip, "{invocation:?}");
        assert_eq!(invocation.transport(), invocation.round_trip - invocation.handler);

        // The handler's own checks still apply behind the timing layer: a bad envelope is its 400.
        match host.invoke_raw("ingest_bronze", b"{\"Data\":{}}".to_vec(), "t").await {
            Err(InvokeError::Failed { status: 400, .. }) => {}
            other => panic!("expected the handler's 400, got {other:?}"),
        }
        host.stop().await;
    }
}
