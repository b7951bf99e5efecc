//! `build_gold`: the timer-triggered function, a thin binding over the gold job
//! ([`crate::pipeline::job`]): it reconciles bronze with silver, builds gold when more than
//! `PATIENTFLOW_GOLD_MIN_NEW_FILES` silver files are new (the seed's ADF rule "more than 5 new
//! silver files") or a census change is due, and loads the warehouse; otherwise it says why it did
//! nothing. Past-due runs behave the same.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use chrono::NaiveDateTime;
use serde_json::Value;

use super::FunctionError;
use super::invocation::{InvokeRequest, InvokeResponse};
use crate::pipeline::gold::GoldMetrics;
use crate::pipeline::job::{self, Trigger};
use crate::state::AppState;

pub use crate::pipeline::job::GoldJobReport;

/// Function name (folder, module and route).
pub const NAME: &str = "build_gold";
/// The trigger binding's name in function.json.
pub const BINDING: &str = "timer";

/// POST /build_gold
pub async fn handle(State(state): State<AppState>, body: Bytes) -> Result<Json<InvokeResponse>, FunctionError> {
    let req = InvokeRequest::from_slice(&body)?;
    let timer = req.binding(BINDING)?;
    if !timer.is_object() {
        return Err(FunctionError::BadRequest(format!(
            "Data.{BINDING} is not a TimerInfo object; this function takes a timer trigger"
        )));
    }
    let past_due = timer.get("IsPastDue").and_then(Value::as_bool).unwrap_or(false);
    let now = req.utc_now().unwrap_or_else(|| state.clock());
    let report = on_timer(&state, now, past_due).await?;
    Ok(Json(InvokeResponse {
        logs: vec![report.summary.clone()],
        return_value: serde_json::to_value(&report).unwrap_or_default(),
        ..Default::default()
    }))
}

/// What the timer does at `now`: the gold job with the timer's threshold, logged. `patientflow run`
/// calls it in-process.
pub async fn on_timer(state: &AppState, now: NaiveDateTime, past_due: bool) -> Result<GoldJobReport, FunctionError> {
    on_timer_after(state, now, past_due, None).await
}

/// [`on_timer`] right after builds of the caller's own (`earlier`, reported with the job's: see
/// [`job::run_after`]).
pub async fn on_timer_after(
    state: &AppState,
    now: NaiveDateTime,
    past_due: bool,
    earlier: Option<GoldMetrics>,
) -> Result<GoldJobReport, FunctionError> {
    let trigger = Trigger::Timer {
        min_new_files: state.gold().min_new_files,
        reconcile_max_files: state.gold().reconcile_max_files,
    };
    let lake = state.lake().await?;
    let report = job::run_after(lake, state, &state.job_options(now, trigger), earlier).await?;
    let reconcile = report.reconcile.clone().unwrap_or_default();
    tracing::info!(
        pending = report.pending_silver_files,
        census_due = report.census_due,
        past_due,
        reconciled = reconcile.refined,
        reconcile_missing = reconcile.missing,
        reconcile_deferred = reconcile.deferred,
        build_seconds = report.build_seconds,
        load_seconds = report.load_seconds,
        summary = %report.summary,
        "Gold timer run."
    );
    Ok(report)
}
