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

/// Whether an ELF executable asks for a dynamic loader (a `PT_INTERP` program header): such a binary
/// needs the host's glibc to be at least as new as the build machine's. `None` when it is not ELF64.
pub fn is_dynamically_linked(binary: &[u8]) -> Option<bool> {
    if binary.len() < 64 || &binary[..4] != b"\x7fELF" || binary[4] != 2 || binary[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| binary.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| binary.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    Some((0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        binary.get(at..at + 4).is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    }))
}

/// How to build the static handler Azure needs.
pub const MUSL_HINT: &str = "for Azure, ship a static binary: `rustup target add x86_64-unknown-linux-musl && apt-get install musl-tools`, \
then `cargo build --release --no-default-features --target x86_64-unknown-linux-musl` and \
`patientflow package --binary target/x86_64-unknown-linux-musl/release/patientflow` \
(the embedded DuckDB warehouse is left out: Azure loads Synapse)";

/// Zips a package folder (the handler keeps its executable bit).
pub fn zip_folder(dir: &Path, zip_path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let file = fs::File::create(zip_path).with_context(|| format!("cannot create {}", zip_path.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let mut entries: Vec<std::path::PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() { stack.push(path) } else { entries.push(path) }
        }
    }
    entries.sort();
    for path in &entries {
        let name = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
        let mode = if name == HANDLER { 0o755 } else { 0o644 };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        zip.start_file(name, options)?;
        zip.write_all(&fs::read(path)?)?;
    }
    zip.finish()?;
    Ok(fs::metadata(zip_path)?.len())
}

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
    let linking = match is_dynamically_linked(&fs::read(&target)?) {
        Some(false) => "static: runs on any Linux Functions host".to_string(),
        Some(true) => format!("dynamically linked against this machine's glibc; {MUSL_HINT}"),
        None => "not a Linux x86-64 executable: the Linux Functions host cannot run it".to_string(),
    };
    Ok(format!(
        "packaged {} functions ({}) and the handler ({:.1} MB, {linking}) into {}\nrun it locally: cd {} && func start",
        FUNCTION_JSON.len(),
        FUNCTION_JSON.map(|(n, _)| n).join(", "),
        size as f64 / 1e6,
        out.display(),
        out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        let this = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries link glibc dynamically; the musl build (what Azure runs) is static.
        assert_eq!(is_dynamically_linked(&this), Some(!cfg!(target_env = "musl")));
        assert_eq!(is_dynamically_linked(b"#!/bin/sh\necho hi"), None);
        // A minimal ELF64 header with no program headers: static.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert_eq!(is_dynamically_linked(&elf), Some(false));
    }
}
