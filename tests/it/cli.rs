//! The binary as a user runs it: simulate, serve, run, package.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NOW: &str = "2026-11-24T12:00:00";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patientflow"))
}

fn simulate(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let out = bin().arg("simulate").args(args).arg("--output").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

#[test]
fn simulate_is_byte_identical_for_the_same_seed_and_clock() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--seed", "7", "--count", "100000", "--now", NOW];
    let a = simulate(dir.path(), "a.ndjson", &args);
    let b = simulate(dir.path(), "b.ndjson", &args);
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 100_000);
    assert!(a == b, "same seed and --now must give identical files");
    let c = simulate(dir.path(), "c.ndjson", &["--seed", "8", "--count", "100000", "--now", NOW]);
    assert!(a != c);
}

#[test]
fn simulated_dirt_rates_are_within_statistical_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000.0;
    let rates =
        [("--malformed-rate", 0.03), ("--missing-rate", 0.04), ("--wrong-type-rate", 0.02), ("--duplicate-rate", 0.03)];
    let mut args: Vec<String> =
        vec!["--seed".into(), "99".into(), "--count".into(), "100000".into(), "--now".into(), NOW.into()];
    for (flag, rate) in rates {
        args.push(flag.into());
        args.push(rate.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = simulate(dir.path(), "dirty.ndjson", &args);
    let now = patientflow::model::time::parse_utc(NOW).unwrap();
    let (mut malformed, mut missing, mut wrong, mut dup, mut old, mut future, mut typed) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut previous_clean: Option<&[u8]> = None;
    for line in data.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(line) else {
            malformed += 1.0;
            continue;
        };
        if previous_clean == Some(line) {
            dup += 1.0;
            continue;
        }
        if o.len() < 8 {
            missing += 1.0;
            continue;
        }
        let types_ok = o["patient_id"].is_string()
            && o["gender"].is_string()
            && o["age"].is_i64()
            && o["department"].is_string()
            && o["admission_time"].is_string()
            && o["discharge_time"].is_string()
            && o["bed_id"].is_i64()
            && o["hospital_id"].is_i64();
        if !types_ok {
            wrong += 1.0;
            continue;
        }
        previous_clean = Some(line);
        typed += 1.0;
        old += f64::from(u8::from(o["age"].as_i64().unwrap() > 100));
        let adm = patientflow::model::time::parse_utc(o["admission_time"].as_str().unwrap()).unwrap();
        future += f64::from(u8::from(adm > now));
    }
    // Binomial standard deviation at n = 100,000 is at most 0.0007; allow five of them.
    let close = |name: &str, got: f64, want: f64| assert!((got - want).abs() < 0.0035, "{name}: {got} vs {want}");
    close("malformed", malformed / n, 0.03);
    close("missing", missing / n, 0.04);
    close("wrong type", wrong / n, 0.02);
    close("duplicate", dup / n, 0.03);
    close("old age", old / typed, 0.05);
    close("future admission", future / typed, 0.05);
}

#[test]
fn simulate_rejects_bad_rates_with_the_flag_name() {
    let out = bin().args(["simulate", "--malformed-rate", "2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--malformed-rate"));
}

#[test]
fn serve_without_a_port_says_how_to_fix_it() {
    let out = bin()
        .arg("serve")
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("FUNCTIONS_HTTPWORKER_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FUNCTIONS_CUSTOMHANDLER_PORT") && err.contains("--port"), "{err}");
    let out = bin().arg("serve").env("FUNCTIONS_CUSTOMHANDLER_PORT", "eighty").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a TCP port"));
}

/// Starts `patientflow serve` on a free port as the host would and waits for `GET /`.
pub(crate) fn start_handler(exe: &std::path::Path, data: &std::path::Path) -> (std::process::Child, u16, Duration) {
    // A build without DuckDB must be told which warehouse; `none` keeps this about the handler.
    let env: &[(&str, &str)] =
        if cfg!(feature = "embedded-warehouse") { &[] } else { &[("PATIENTFLOW_WAREHOUSE", "none")] };
    start_handler_with(exe, data, env)
}

/// [`start_handler`] with extra app settings.
fn start_handler_with(
    exe: &std::path::Path,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, Duration) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("PATIENTFLOW_DATA_DIR", data)
        .env_remove("LAKE")
        .env_remove("PATIENTFLOW_WAREHOUSE")
        .envs(env.iter().copied())
        .current_dir(data.parent().unwrap_or(data))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            let _ = s.read_to_string(&mut response);
            if response.starts_with("HTTP/1.1 200") {
                return (child, port, started.elapsed());
            }
        }
        assert!(Instant::now() < deadline, "handler never answered GET /");
        assert!(child.try_wait().unwrap().is_none(), "handler exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serve_answers_the_hosts_probe_and_logs_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _port, _ready) = start_handler(std::path::Path::new(env!("CARGO_BIN_EXE_patientflow")), dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout =
        BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
    assert!(stdout.contains("Handler listening"), "log lines go to stdout: {stdout}");
}

/// `bench` runs on both builds — the deploy build has no warehouse, so it stops after gold — and
/// reports every stage with the handler's and the local host's time apart.
#[test]
fn bench_times_every_stage_of_this_build() {
    let out = bin()
        .args(["bench", "--events", "3000", "--batch-size", "100", "--partitions", "2"])
        .env_remove("LAKE")
        .env_remove("PATIENTFLOW_WAREHOUSE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages: Vec<&str> = v["stages"].as_array().unwrap().iter().filter_map(|s| s["stage"].as_str()).collect();
    for stage in ["bronze", "silver", "gold"] {
        assert!(stages.contains(&stage), "{stages:?}");
    }
    assert!(v["silver_rows"].as_u64().is_some_and(|n| n > 0 && n <= 3000), "{v}");
    // Each stage's peak is the process's peak when that stage ended (Linux `VmHWM`), which only
    // grows: in the order the stages end, no peak is below the one before. Gold's is taken when
    // the build ended, before the job's load: gold and load are told apart. Since Linux 6.2 the
    // kernel reads a process's RSS from per-CPU counters without summing them (a reading may be a
    // few pages off), so two readings may go back by a little: 32 pages were seen once.
    if cfg!(target_os = "linux") {
        const KERNEL_SLACK: u64 = 4 << 20;
        let peaks: Vec<u64> =
            v["stages"].as_array().unwrap().iter().map(|s| s["peak_memory_bytes"].as_u64().unwrap()).collect();
        assert!(peaks.windows(2).all(|w| w[0] <= w[1] + KERNEL_SLACK), "peaks by stage: {stages:?} {peaks:?}");
        assert!(peaks.iter().all(|&p| p <= v["peak_memory_bytes"].as_u64().unwrap() + KERNEL_SLACK), "{v}");
    }
    assert!(v["handler_seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
    assert!(v["host_seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
    // The process's CPU time over the timed part: some, and no more than every core this process
    // may use could give in that wall time (a CPU quota is enforced per 100 ms period, hence the
    // slack).
    let (cpu, total) = (v["cpu_seconds"].as_f64().unwrap(), v["total_seconds"].as_f64().unwrap());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(cpu > 0.0 && cpu <= total * cores + 0.1, "cpu {cpu} s over {total} s on {cores} cores: {v}");
    if cfg!(feature = "embedded-warehouse") {
        assert!(v["fact_rows"].as_u64().is_some_and(|n| n > 0), "the embedded warehouse was loaded: {v}");
    } else {
        assert!(v["fact_rows"].is_null(), "no warehouse in the deploy build: {v}");
    }
}

/// `bench --runs` runs each bench in a fresh process, one after another, and reports each run and
/// the medians of their figures; it refuses what it cannot do.
#[test]
fn bench_runs_report_each_run_and_their_medians() {
    let bench = |extra: &[&str]| {
        bin()
            .args(["bench", "--events", "300", "--batch-size", "100", "--partitions", "1"])
            .args(extra)
            .env_remove("LAKE")
            .env_remove("PATIENTFLOW_WAREHOUSE")
            .output()
            .unwrap()
    };
    let out = bench(&["--runs", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let each = v["each"].as_array().unwrap();
    assert_eq!((v["runs"].as_u64(), each.len()), (Some(3), 3), "{v}");
    let mut totals: Vec<f64> = each.iter().map(|r| r["total_seconds"].as_f64().unwrap()).collect();
    totals.sort_by(f64::total_cmp);
    assert_eq!(v["median"]["total_seconds"].as_f64(), Some(totals[1]), "{v}");
    let mut cpus: Vec<f64> = each.iter().map(|r| r["cpu_seconds"].as_f64().unwrap()).collect();
    cpus.sort_by(f64::total_cmp);
    assert_eq!(v["median"]["cpu_seconds"].as_f64(), Some(cpus[1]), "{v}");
    for run in each {
        assert_eq!(run["silver_rows"], each[0]["silver_rows"], "the same seeded events in every run");
        // Every run was given the bench's options.
        assert_eq!((run["events"].as_u64(), run["partitions"].as_u64()), (Some(300), Some(1)), "{run}");
        assert_eq!(run["batch_size"].as_u64(), Some(100), "{run}");
    }
    let stages: Vec<&str> =
        v["median"]["stages"].as_array().unwrap().iter().filter_map(|s| s["stage"].as_str()).collect();
    for stage in ["bronze", "silver", "gold"] {
        assert!(stages.contains(&stage), "{stages:?}");
    }

    let keep = tempfile::tempdir().unwrap();
    let out = bench(&["--runs", "2", "--keep", keep.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep keeps the data of one run"));
    let out = bench(&["--runs", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runs"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A glibc build starts over with `glibc.malloc.hugetlb=1` (glibc reads it only at process start;
/// see `patientflow::memory`), unless the environment already chose: the bench reports what the
/// process it measured ran with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn glibc_builds_ask_for_huge_pages_unless_the_environment_chose() {
    let allocator = |tunables: Option<&str>| {
        let mut cmd = bin();
        cmd.args(["bench", "--events", "200", "--batch-size", "50", "--partitions", "1"])
            .env_remove("LAKE")
            .env_remove("PATIENTFLOW_WAREHOUSE")
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("GLIBC_TUNABLES");
        if let Some(t) = tunables {
            cmd.env("GLIBC_TUNABLES", t);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["allocator"].as_str().unwrap().to_string()
    };
    let default = allocator(None);
    if patientflow::memory::kernel_offers_huge_pages() {
        assert_eq!(default, "glibc malloc, 2 arenas at most, transparent huge pages asked for");
    } else {
        assert_eq!(default, "glibc malloc, 2 arenas at most, transparent huge pages not asked for");
    }
    assert_eq!(
        allocator(Some("glibc.malloc.hugetlb=0")),
        "glibc malloc, 2 arenas at most, transparent huge pages not asked for",
        "the user's choice wins"
    );
    assert!(
        allocator(Some("glibc.malloc.arena_max=3")).starts_with("glibc malloc, 3 arenas at most"),
        "the user's other tunables are kept"
    );
}

/// A binary given file capabilities (`setcap`, e.g. to bind a low port) runs in glibc's
/// secure-execution mode, where glibc may drop `GLIBC_TUNABLES`: there the huge-page restart must
/// not happen, or the restarted process finds the tunable missing and starts over forever (it did,
/// before the guard). The capabilities must be gained by a user who lacks them, so this needs root,
/// `setcap` and `runuser`: ignored (shown as skipped) unless scripts/test finds them. (The musl build
/// never restarts; it must start under file capabilities all the same.)
#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs root, setcap and runuser (scripts/test runs it where it finds them)"]
fn secure_execution_a_binary_with_file_capabilities_starts_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("patientflow");
    std::fs::copy(env!("CARGO_BIN_EXE_patientflow"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let setcap = Command::new("setcap").arg("cap_net_bind_service+ep").arg(&copy).status().unwrap();
    assert!(setcap.success(), "setcap failed");
    // A restart loop never ends (each round takes milliseconds): `timeout` (coreutils) ends the
    // binary after a minute, a hang rather than a slow start, and then fails the command.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "timeout", "--signal=KILL", "60"])
        .arg(&copy)
        .args(["simulate", "--count", "3", "--seed", "1", "--now", NOW])
        .env_remove("GLIBC_TUNABLES")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?} (137: killed after a minute, restarting forever?): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), 3, "three events simulated");
}

/// The README's performance figures are counted with valgrind (`callgrind`), so the binary must run
/// under it. For a while it could not: the CPU clock `run` reports was read through rustix's own vDSO
/// parser, which reads past what valgrind maps, and every run died of a segmentation fault before its
/// first event (rustix issue 1559); rustix now calls the C library's `clock_gettime`. Every build
/// (the glibc builds' huge-page restart turned off, or valgrind would watch only the process that
/// restarts); ignored (shown as skipped) unless scripts/test finds valgrind.
#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs valgrind (scripts/test runs it where it finds it)"]
fn under_valgrind_a_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("valgrind")
        .args(["--tool=none", "--error-exitcode=99"])
        .arg(env!("CARGO_BIN_EXE_patientflow"))
        .args(["run", "--count", "200", "--seed", "1", "--now", NOW, "--warehouse", "none", "--format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
        // A shifted clock (libfaketime, preloaded) is not what this test is about.
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} under valgrind: {stderr}", out.status);
    assert!(!stderr.contains("Process terminating"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 200);
    assert_eq!(report["silver_rows"], 200);
    assert!(report["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{report}");
}

#[cfg(feature = "embedded-warehouse")]
#[test]
fn run_with_no_arguments_finishes_and_reports_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("run")
        .current_dir(dir.path())
        .env_remove("LAKE")
        .env_remove("PATIENTFLOW_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("events 100000"), "{stdout}");
    assert!(stdout.contains("bronze files"), "{stdout}");
    assert!(stdout.contains("silver files"), "{stdout}");
    assert!(dir.path().join("patientflow-data/bronze/patient-flow").is_dir());
}

/// A report that runs out of memory names the KPI and the setting that gives it more, and `run`
/// says the pipeline's work is done (the warehouse holds the build): `report` with more memory
/// then reads it.
#[cfg(feature = "embedded-warehouse")]
#[test]
fn a_report_out_of_memory_names_the_setting_and_says_the_data_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lake");
    let out = bin()
        .args(["run", "--count", "3000", "--data-dir"])
        .arg(&data)
        .env("PATIENTFLOW_REPORT_MEMORY_LIMIT", "2MB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("every stage ran and the warehouse holds build 1, but its KPI report failed"), "{stderr}");
    assert!(stderr.contains("warehouse: KPI "), "{stderr}");
    assert!(stderr.contains("set PATIENTFLOW_REPORT_MEMORY_LIMIT higher"), "{stderr}");
    let out = bin().args(["report", "--format", "json", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["build"], 1, "{report}");
}

#[cfg(feature = "embedded-warehouse")]
#[test]
fn run_reads_an_ndjson_file_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"patient_id\":\"a\",\"age\":30}\n\nnot json\r\n{\"patient_id\":\"b\",\"age\":140}\n")
        .unwrap();
    let report = |data: &str| {
        let out = bin()
            .args(["run", "--format", "json", "--now", NOW, "--input"])
            .arg(&input)
            .arg("--data-dir")
            .arg(dir.path().join(data))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The gold stage's peak memory is the job's, taken when the build ended (before the load).
        let gold_stage = v["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "gold").unwrap();
        assert_eq!(gold_stage["peak_memory_bytes"], v["gold"]["build_peak_memory_bytes"], "{v}");
        if cfg!(target_os = "linux") {
            assert!(v["gold"]["build_peak_memory_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
        }
        // Timings and memory differ between runs; everything else must not.
        assert!(v["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
        v.as_object_mut().unwrap().remove("stages");
        v.as_object_mut().unwrap().remove("cpu_seconds");
        let gold = v["gold"].as_object_mut().unwrap();
        gold.remove("build_seconds");
        gold.remove("load_seconds");
        gold.remove("build_peak_memory_bytes");
        gold["load"].as_object_mut().unwrap().remove("phase_seconds");
        v
    };
    let a = report("a");
    assert_eq!(a["events"], 3, "blank lines are not events");
    assert_eq!(a["silver_rows"], 2);
    assert_eq!(a["quarantined"]["invalid_json"], 1);
    assert_eq!(a["corrected"]["age_capped"], 1);
    assert_eq!(a, report("b"));
}

#[test]
fn package_assembles_a_function_app_whose_handler_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("app");
    let out = bin().arg("package").arg("--out").arg(&out_dir).arg("--zip").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    if cfg!(target_env = "musl") {
        assert!(said.contains("static: runs on any Linux Functions host"), "says the binary is static: {said}");
    } else {
        assert!(
            said.contains("dynamically linked") && said.contains("x86_64-unknown-linux-musl"),
            "says how to get a static binary: {said}"
        );
    }
    let mut zip = zip::ZipArchive::new(std::fs::File::open(dir.path().join("app.zip")).unwrap()).unwrap();
    let names: HashSet<String> = zip.file_names().map(|n| n.unwrap().to_string()).collect();
    assert!(
        names.contains("host.json") && names.contains("ingest_bronze/function.json") && names.contains("patientflow"),
        "{names:?}"
    );
    assert_eq!(zip.by_name("patientflow").unwrap().unix_mode().unwrap() & 0o777, 0o755);
    let host: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("host.json")).unwrap()).unwrap();
    let exe = host["customHandler"]["description"]["defaultExecutablePath"].as_str().unwrap();
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let entry = entry.unwrap();
        if entry.path().join("function.json").is_file() {
            let f: Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path().join("function.json")).unwrap()).unwrap();
            assert!(f["bindings"].is_array());
            names.insert(entry.file_name().to_string_lossy().to_string());
        }
    }
    let expected: HashSet<String> = patientflow::functions::FUNCTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
    assert!(names.contains("ingest_bronze") && names.contains("refine_silver") && names.contains("build_gold"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join(exe)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the handler must carry its executable bit");
    }
    let (mut child, _, _) = start_handler(&out_dir.join(exe), &dir.path().join("data"));
    child.kill().unwrap();
    child.wait().unwrap();

    let again = bin().arg("package").arg("--out").arg(&out_dir).output().unwrap();
    assert!(!again.status.success(), "refuses to overwrite a non-empty folder");
}

#[cfg(feature = "embedded-warehouse")]
#[test]
fn running_the_same_events_again_appends_to_the_hub_and_changes_no_visit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let sim = bin()
        .args(["simulate", "--seed", "3", "--count", "3000", "--now", NOW, "--duplicate-rate", "0.02"])
        .output()
        .unwrap();
    std::fs::write(&input, &sim.stdout).unwrap();
    let run = || {
        let out = bin()
            .args(["run", "--format", "json", "--now", NOW, "--batch-size", "500", "--input"])
            .arg(&input)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    // The local hub continues its sequence numbers: new bronze files, not replays.
    assert_eq!(second["bronze_replays"], 0);
    assert_eq!(second["bronze_files_created"], first["bronze_files_created"]);
    // Gold sees the same visits again: nothing inserted, nothing updated, the same KPIs.
    let build = &second["gold"]["build"];
    assert_eq!(build["build"], 2);
    assert_eq!((build["facts_inserted"].as_u64(), build["facts_updated"].as_u64()), (Some(0), Some(0)), "{build}");
    assert_eq!(first["gold"]["load"]["fact_rows_total"], second["gold"]["load"]["fact_rows_total"]);
    let sections = |v: &Value| v["report"]["sections"].clone();
    assert_eq!(sections(&first), sections(&second));
}

#[cfg(feature = "embedded-warehouse")]
#[test]
fn report_and_quarantine_read_what_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = bin()
        .args([
            "run",
            "--format",
            "json",
            "--count",
            "2000",
            "--now",
            NOW,
            "--malformed-rate",
            "0.05",
            "--wrong-type-rate",
            "0.02",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let ran: Value = serde_json::from_slice(&run.stdout).unwrap();

    let report = bin().args(["report", "--format", "json"]).arg("--data-dir").arg(&data).output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report, ran["report"], "the report command reads the same warehouse state run reported");

    let q = bin()
        .args(["quarantine", "--format", "json", "--reason", "wrong_type"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["by_reason"], report["quarantine_by_reason"]);
    let entries = q["entries"].as_array().unwrap();
    assert!(!entries.is_empty() && entries.iter().all(|e| e["reason"] == "wrong_type"));
    assert!(entries.iter().all(|e| e.get("body").is_none()), "never the content");

    let bad = bin().args(["quarantine", "--reason", "nonsense"]).arg("--data-dir").arg(&data).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_json"), "lists the valid reasons");
}

/// The README's deploy settings for Synapse, with a server that does not exist (`.invalid` never
/// resolves, so nothing hangs).
const SYNAPSE_SETTINGS: [(&str, &str); 4] = [
    ("PATIENTFLOW_WAREHOUSE", "synapse"),
    ("SYNAPSE_SERVER", "pfws-test.invalid"),
    ("SYNAPSE_DATABASE", "patientflow"),
    ("SYNAPSE_GOLD_URL", "https://pflake.dfs.core.windows.net/gold"),
];

/// Point 1: `PATIENTFLOW_WAREHOUSE=synapse`, set as the README's deploy step sets it, is accepted by
/// every command that takes it; a load then fails because the server cannot be reached — and says
/// which server — not because of the configuration.
#[test]
fn the_readmes_synapse_settings_are_accepted_and_a_load_names_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let built = bin()
        .args(["run", "--format", "json", "--count", "300", "--now", NOW])
        .arg("--data-dir")
        .arg(&data)
        .env("PATIENTFLOW_WAREHOUSE", "none")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));

    let (mut child, _, _) =
        start_handler_with(std::path::Path::new(env!("CARGO_BIN_EXE_patientflow")), &data, &SYNAPSE_SETTINGS);
    child.kill().unwrap();
    child.wait().unwrap();

    for command in [&["warehouse", "load"][..], &["warehouse", "init"], &["report"]] {
        let started = Instant::now();
        let out = bin()
            .args(command)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("LAKE")
            .env_remove("SYNAPSE_AUTH")
            .envs(SYNAPSE_SETTINGS)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?}: {err}");
        assert!(!err.contains("is not a warehouse") && !err.contains("needs SYNAPSE"), "{command:?}: {err}");
        if command[0] == "warehouse" {
            assert!(err.contains("cannot reach pfws-test.invalid"), "{command:?}: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{command:?} took {:?}", started.elapsed());
    }
}

/// Runs `command`, killing it (and failing) if it has not exited within `limit`.
#[cfg(not(feature = "embedded-warehouse"))]
fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{command:?} did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Point 2: a build without DuckDB does not pretend to have a warehouse: with the setting unset
/// (or `embedded`), `serve` stops at start with one line naming the setting.
#[cfg(not(feature = "embedded-warehouse"))]
#[test]
fn without_duckdb_serve_stops_at_start_until_a_warehouse_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    for value in [None, Some("embedded")] {
        let mut command = bin();
        command.arg("serve").arg("--data-dir").arg(dir.path()).env("FUNCTIONS_CUSTOMHANDLER_PORT", "0");
        command.env_remove("PATIENTFLOW_WAREHOUSE");
        if let Some(v) = value {
            command.env("PATIENTFLOW_WAREHOUSE", v);
        }
        let out = output_within(&mut command, Duration::from_secs(30));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(patientflow::config::NO_EMBEDDED_WAREHOUSE), "{err}");
    }
    for command in [&["run", "--count", "10"][..], &["warehouse", "load"]] {
        let out =
            bin().args(command).arg("--data-dir").arg(dir.path()).env_remove("PATIENTFLOW_WAREHOUSE").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("PATIENTFLOW_WAREHOUSE=synapse"), "{command:?}");
    }
}

/// Point 2: with DuckDB compiled in, an unset warehouse means the embedded one.
#[cfg(feature = "embedded-warehouse")]
#[test]
fn with_duckdb_the_default_warehouse_is_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["warehouse", "init", "--data-dir"])
        .arg(dir.path())
        .env_remove("PATIENTFLOW_WAREHOUSE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("warehouse.duckdb").is_file());
}

/// Point 7: the handler reads host.json from the app root the host starts it in and gives up on
/// an invocation strictly before `functionTimeout`.
#[test]
fn serve_derives_its_limits_from_host_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("host.json"),
        r#"{"version": "2.0", "functionTimeout": "00:02:00", "extensions": {"eventHubs": {"maxEventBatchSize": 50}}}"#,
    )
    .unwrap();
    let env = [
        ("FUNCTIONS_APP_ROOT_PATH", root.to_str().unwrap()),
        ("PATIENTFLOW_WAREHOUSE", "none"),
        ("LOG_FORMAT", "json"),
    ];
    let (mut child, _, _) =
        start_handler_with(std::path::Path::new(env!("CARGO_BIN_EXE_patientflow")), &dir.path().join("data"), &env);
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout =
        BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
    let line = stdout.lines().find(|l| l.contains("Handler listening")).unwrap_or_else(|| panic!("{stdout}"));
    let line: Value = serde_json::from_str(line).unwrap();
    let field = |name: &str| line["fields"][name].as_u64().unwrap_or_else(|| panic!("{name} in {line}"));
    let timeout_ms = field("request_timeout_ms");
    assert!(timeout_ms > 0 && timeout_ms < 120_000, "{line}");
    let limit = field("max_body_bytes");
    assert_eq!(
        limit as usize,
        patientflow::config::settings::body_limit(50, patientflow::config::settings::DEFAULT_MAX_EVENT_BYTES)
    );
}
