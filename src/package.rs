//! `patientflow package`: assembles a Function App folder the host can run — `host.json` at the
//! root pointing at the handler binary, one folder per function with its `function.json`, and the
//! binary with its executable bit (the host only sets it on Linux Consumption).

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// `host.json` as shipped in this repository.
pub const HOST_JSON: &str = include_str!("../host.json");
/// `local.settings.json` for `func start` against Azurite (never deployed: see `.funcignore`).
pub const LOCAL_SETTINGS: &str = include_str!("../local.settings.json");
/// The handler's file name inside the package.
pub const HANDLER: &str = "patientflow";

/// Every function: (name, function.json).
pub const FUNCTION_JSON: [(&str, &str); 5] = [
    ("ingest_bronze", include_str!("../functions/ingest_bronze/function.json")),
    ("refine_silver", include_str!("../functions/refine_silver/function.json")),
    ("build_gold", include_str!("../functions/build_gold/function.json")),
    ("gold_webhook", include_str!("../functions/gold_webhook/function.json")),
    ("gold_job", include_str!("../functions/gold_job/function.json")),
];

/// Writes the package into `out` (created; must be empty if it exists) and returns a summary.
pub fn package(out: &Path, binary: &Path) -> anyhow::Result<String> {
    if out.exists() && fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.next().is_some() {
        bail!("{} is not empty; pass a new folder to --out", out.display());
    }
    if !binary.is_file() {
        bail!(
            "handler binary {} does not exist; build it with `cargo build --release` or pass --binary",
            binary.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut host: Value = serde_json::from_str(HOST_JSON).context("host.json is not valid JSON")?;
    host["customHandler"]["description"]["defaultExecutablePath"] = Value::String(HANDLER.into());
    fs::write(out.join("host.json"), serde_json::to_string_pretty(&host)? + "\n")?;
    fs::write(out.join("local.settings.json"), LOCAL_SETTINGS)?;
    fs::write(out.join(".funcignore"), "local.settings.json\n")?;
    for (name, json) in FUNCTION_JSON {
        serde_json::from_str::<Value>(json)
            .with_context(|| format!("functions/{name}/function.json is not valid JSON"))?;
        let dir = out.join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("function.json"), json)?;
    }
    let target = out.join(HANDLER);
    fs::copy(binary, &target).with_context(|| format!("cannot copy {} into the package", binary.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    }
    let size = fs::metadata(&target)?.len();
    Ok(format!(
        "packaged {} functions ({}) and the handler ({:.1} MB) into {}\nrun it locally: cd {} && func start",
        FUNCTION_JSON.len(),
        FUNCTION_JSON.map(|(n, _)| n).join(", "),
        size as f64 / 1e6,
        out.display(),
        out.display()
    ))
}
