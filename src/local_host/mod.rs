//! A small, faithful stand-in for the Functions host, for `patientflow run`, `bench` and tests: it
//! starts the real handler on a loopback port and POSTs the host's envelopes to `/<function>` over
//! HTTP, with the host's headers. It is a local runner, not a second host: no bindings, no scaling.

pub mod envelopes;

use std::net::SocketAddr;
use std::time::Duration;

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
        let server = tokio::spawn(app::serve(listener, state, async {
            let _ = stopped.await;
        }));
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
        let transport = |detail: String| InvokeError::Transport { function: function.to_string(), detail };
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
        let bytes = response.bytes().await.map_err(|e| transport(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(InvokeError::Failed { function: function.to_string(), status: status.as_u16(), message });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| transport(format!("the response is not an invocation envelope: {e}")))
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
