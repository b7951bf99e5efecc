//! The limits the Functions host imposes, read from the `host.json` the host starts us next to:
//! `functionTimeout` (the host restarts the whole worker when it fires, so the handler must give up
//! first) and the Event Hubs trigger's `maxEventBatchSize` (the largest batch the host will POST).
//!
//! Where: `FUNCTIONS_APP_ROOT_PATH` (set by the host), else `AzureWebJobsScriptRoot`, else the
//! working directory (the host's default `workingDirectory` is the app root). Without a host.json
//! (`run`, tests, a handler started by hand) the documented defaults below apply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::ConfigError;

/// `functionTimeout` when host.json does not set one: 5 minutes, the shortest default of any plan
/// (Consumption; Flex Consumption, Premium and Dedicated default to 30).
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The handler's own limit when `functionTimeout` is `-1` (no host limit).
pub const UNBOUNDED_HANDLER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `extensions.eventHubs.maxEventBatchSize` when host.json does not set it (the extension's default).
pub const DEFAULT_MAX_EVENT_BATCH_SIZE: usize = 100;

/// The host's limits that the handler derives its own from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// `functionTimeout`; `None` is `-1` (unbounded).
    pub function_timeout: Option<Duration>,
    /// The Event Hubs trigger's `maxEventBatchSize`.
    pub max_event_batch_size: usize,
    /// The host.json these came from; `None` when the defaults apply.
    pub source: Option<PathBuf>,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            function_timeout: Some(DEFAULT_FUNCTION_TIMEOUT),
            max_event_batch_size: DEFAULT_MAX_EVENT_BATCH_SIZE,
            source: None,
        }
    }
}

impl HostLimits {
    /// Finds and reads host.json (see the module doc for where); the defaults when there is none.
    pub fn discover(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut roots: Vec<PathBuf> = ["FUNCTIONS_APP_ROOT_PATH", "AzureWebJobsScriptRoot"]
            .iter()
            .filter_map(|k| env(k).filter(|v| !v.trim().is_empty()).map(PathBuf::from))
            .collect();
        roots.push(PathBuf::from("."));
        match roots.into_iter().map(|r| r.join("host.json")).find(|p| p.is_file()) {
            Some(path) => Self::read(&path),
            None => Ok(Self::default()),
        }
    }

    /// Reads one host.json.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut limits = Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        limits.source = Some(path.to_path_buf());
        Ok(limits)
    }

    /// Parses host.json text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        let function_timeout = match v.get("functionTimeout") {
            None | Some(Value::Null) => Some(DEFAULT_FUNCTION_TIMEOUT),
            Some(Value::String(s)) => parse_timespan(s).map_err(|e| format!("functionTimeout {s:?}: {e}"))?,
            Some(other) => return Err(format!("functionTimeout {other} is not a \"hh:mm:ss\" string")),
        };
        let max_event_batch_size = match v.pointer("/extensions/eventHubs/maxEventBatchSize") {
            None | Some(Value::Null) => DEFAULT_MAX_EVENT_BATCH_SIZE,
            Some(n) => n
                .as_u64()
                .filter(|&n| n >= 1)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("extensions.eventHubs.maxEventBatchSize {n} is not a positive number"))?,
        };
        Ok(Self { function_timeout, max_event_batch_size, source: None })
    }

    /// The handler's invocation limit: strictly shorter than `functionTimeout`, leaving the host a
    /// tenth of it (at least 5 s, at most a minute) to receive our answer before it would restart
    /// the worker; [`UNBOUNDED_HANDLER_TIMEOUT`] when the host has no limit.
    pub fn handler_timeout(&self) -> Duration {
        let Some(t) = self.function_timeout else { return UNBOUNDED_HANDLER_TIMEOUT };
        let margin = (t / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
        if margin < t { t - margin } else { t / 2 }
    }
}

/// Parses a .NET TimeSpan as host.json writes `functionTimeout`: `[d.]hh:mm:ss[.fffffff]`, or `-1`
/// for no limit (`Ok(None)`).
pub fn parse_timespan(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "-1" {
        return Ok(None);
    }
    let bad = || "use \"hh:mm:ss\" (for example \"00:10:00\") or \"-1\"".to_string();
    let (days, rest) = match s.split_once(':') {
        Some((head, _)) if head.contains('.') => {
            let (d, _) = head.split_once('.').ok_or_else(bad)?;
            (d.parse::<u64>().map_err(|_| bad())?, &s[d.len() + 1..])
        }
        _ => (0, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, sec] = parts.as_slice() else { return Err(bad()) };
    let h: u64 = h.parse().map_err(|_| bad())?;
    let m: u64 = m.parse().map_err(|_| bad())?;
    let (whole, fraction) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 || whole > 59 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse::<u32>().map_err(|_| bad())?
    };
    let t = Duration::new(((days * 24 + h) * 60 + m) * 60 + whole, nanos);
    if t.is_zero() {
        return Err("a zero timeout is not allowed".into());
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_as_the_functions_docs_write_them() {
        // Values from Microsoft's host.json reference and the functions-scale timeout table.
        for (text, secs) in [("00:05:00", 300), ("00:10:00", 600), ("01:00:00", 3600), ("00:00:30", 30)] {
            assert_eq!(parse_timespan(text).unwrap(), Some(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(parse_timespan("1.02:00:00").unwrap(), Some(Duration::from_secs(26 * 3600)));
        assert_eq!(parse_timespan("00:00:01.5").unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timespan("-1").unwrap(), None);
        for bad in ["", "10", "00:60:00", "ten", "00:00:00", "1:2"] {
            assert!(parse_timespan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_handler_gives_up_strictly_before_the_host_for_every_timeout() {
        for secs in 1..=7200u64 {
            let limits = HostLimits { function_timeout: Some(Duration::from_secs(secs)), ..Default::default() };
            let t = limits.handler_timeout();
            assert!(t < Duration::from_secs(secs) && !t.is_zero(), "{secs}: {t:?}");
        }
        let unbounded = HostLimits { function_timeout: None, ..Default::default() };
        assert_eq!(unbounded.handler_timeout(), UNBOUNDED_HANDLER_TIMEOUT);
    }

    #[test]
    fn reads_the_shipped_host_json() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json");
        let limits = HostLimits::read(&path).unwrap();
        assert_eq!(limits.function_timeout, Some(Duration::from_secs(600)));
        assert_eq!(limits.max_event_batch_size, super::super::settings::SHIPPED_MAX_EVENT_BATCH_SIZE);
        assert_eq!(HostLimits::parse("{}").unwrap(), HostLimits::default());
        assert!(HostLimits::parse(r#"{"functionTimeout": 5}"#).unwrap_err().contains("functionTimeout"));
    }
}
