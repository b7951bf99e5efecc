//! Azure Data Factory's Webhook activity: the job message the webhook enqueues, the callback body
//! (`{Output, Error, StatusCode}`, reportStatusOnCallBack) and the policy that decides where a callback
//! may go. The callback URL comes from a request body, so it is an SSRF vector: only `https` URLs on
//! allowed hosts are called, redirects are never followed, and refusals are logged.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

/// Default allowed callback hosts: Data Factory's callback front end.
pub const DEFAULT_CALLBACK_HOSTS: &str = "*.clouddatahub.net";

/// Where callbacks may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// Host patterns: `example.com` (exact) or `*.example.com` (any subdomain).
    pub hosts: Vec<String>,
    /// Also allow `http` to loopback addresses (local development and tests only).
    pub allow_http_loopback: bool,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_CALLBACK_HOSTS, false)
    }
}

impl CallbackPolicy {
    /// Parses a comma-separated host list.
    pub fn parse(hosts: &str, allow_http_loopback: bool) -> Self {
        let hosts = hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Self { hosts, allow_http_loopback }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == *p,
        })
    }

    /// Checks a callback URL; the error says why it is refused (without echoing query strings).
    pub fn check(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|_| "callBackUri is not a URL".to_string())?;
        let host = url.host_str().ok_or("callBackUri has no host")?.to_string();
        if !url.username().is_empty() || url.password().is_some() {
            return Err("callBackUri must not carry credentials".into());
        }
        let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
            || host == "localhost";
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http_loopback && loopback => {}
            scheme => return Err(format!("callBackUri scheme {scheme} is not allowed; only https")),
        }
        if !self.host_allowed(&host) {
            return Err(format!(
                "callBackUri host {host} is not allowed; allowed: {} (PATIENTFLOW_ADF_CALLBACK_HOSTS)",
                self.hosts.join(", ")
            ));
        }
        Ok(url)
    }
}

/// The message `gold_webhook` enqueues for `gold_job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoldJobMessage {
    /// Data Factory's pipeline run id (idempotency key).
    pub run_id: String,
    /// Where to report the result.
    pub call_back_uri: String,
    /// When the webhook accepted the request (RFC 3339).
    pub requested_at: String,
}

/// The callback body with `reportStatusOnCallBack: true`: `StatusCode` ≥ 400 fails the activity.
pub fn callback_body(result: Result<&Value, (&str, &str)>) -> Value {
    match result {
        Ok(output) => json!({ "Output": output, "StatusCode": "200" }),
        Err((code, message)) => json!({
            "Output": {},
            "Error": { "ErrorCode": code, "Message": message },
            "StatusCode": "500",
        }),
    }
}

/// Sends a callback. Never follows redirects (a redirect could lead anywhere).
pub async fn send_callback(url: &Url, body: &Value) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .post(url.as_str())
        .header("Content-Type", "application/json")
        .json(body)
        .send()
        .await
        .map_err(|e| format!("callback not delivered: {}", e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("callback answered HTTP {}", response.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_on_allowed_hosts() {
        let p = CallbackPolicy::default();
        assert!(p.check("https://westeurope.frontend.clouddatahub.net/workflow/callback/abc?x=1").is_ok());
        for bad in [
            "http://westeurope.frontend.clouddatahub.net/cb",
            "https://evil.example.com/cb",
            "https://clouddatahub.net.evil.com/cb",
            "https://user:pw@westeurope.frontend.clouddatahub.net/cb",
            "http://127.0.0.1:8080/cb",
            "https://169.254.169.254/metadata",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
        let local = CallbackPolicy::parse("127.0.0.1, localhost", true);
        assert!(local.check("http://127.0.0.1:9000/cb").is_ok());
        assert!(local.check("http://10.0.0.1/cb").is_err());
        assert!(CallbackPolicy::parse("127.0.0.1", false).check("http://127.0.0.1/cb").is_err());
    }

    #[test]
    fn callback_bodies_follow_report_status_on_callback() {
        let ok = callback_body(Ok(&json!({"build": 3})));
        assert_eq!(ok, json!({"Output": {"build": 3}, "StatusCode": "200"}));
        let err = callback_body(Err(("GOLD_LOAD_FAILED", "warehouse down")));
        assert_eq!(err["Error"]["ErrorCode"], "GOLD_LOAD_FAILED");
        assert_eq!(err["StatusCode"], "500");
    }
}
