//! Logging, and the process's peak memory and CPU time for reports. The handler logs to **stdout**: the
//! Functions host records stdout at Information and every stderr line as an Error. Commands whose
//! stdout is data (`simulate`) log to stderr.
//! `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` emits JSON lines for Application Insights.

use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (the handler).
    Stdout,
    /// Standard error (commands that write data to stdout).
    Stderr,
}

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(target: LogTarget, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result = match (target, json) {
        (LogTarget::Stdout, false) => builder.with_writer(std::io::stdout).try_init(),
        (LogTarget::Stdout, true) => builder.json().with_writer(std::io::stdout).try_init(),
        (LogTarget::Stderr, false) => builder.with_writer(std::io::stderr).try_init(),
        (LogTarget::Stderr, true) => builder.json().with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes; `None` elsewhere.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time this process has used so far, all threads, user and system
/// (`CLOCK_PROCESS_CPUTIME_ID`). On a shared machine it moves far less than wall time with what
/// else runs, so runs compare by it where wall times are noise.
pub fn process_cpu_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    std::time::Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}
