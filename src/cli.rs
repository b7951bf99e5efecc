//! The command line: one binary that is the handler (`serve`), the hospital simulator (`simulate`),
//! the whole pipeline on a laptop (`run`), the deployment packager (`package`) and the quarantine
//! browser (`quarantine`). Each subcommand maps to a function here; the work lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDateTime;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    GoldArgs, GoldSettings, HandlerArgs, HandlerSettings, HostLimits, LakeArgs, WarehouseConfig, handler_port,
};
use crate::model::time::{now_utc, parse_clock, rfc3339};
use crate::run::{RunOptions, Source, Via};
use crate::simulate::{DirtRates, SimulationConfig, Simulator};
use crate::storage::Lake;
use crate::telemetry::{self, LogTarget};

/// Real-time patient-flow pipeline: Event Hubs → bronze → silver → gold → warehouse, as an Azure
/// Functions custom handler.
#[derive(Parser)]
#[command(name = "patientflow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Azure Functions custom handler (the Functions host starts this).
    Serve(ServeArgs),
    /// Generate hospital admission/discharge events as NDJSON.
    Simulate(SimulateArgs),
    /// Run the whole pipeline locally through the real handler: simulate (or --input) → bronze → silver → gold → warehouse → KPI report.
    Run(RunArgs),
    /// Assemble a deployable Function App folder (host.json, functions, handler binary).
    Package(PackageArgs),
    /// List quarantined events with their reasons (never their content).
    Quarantine(QuarantineArgs),
    /// Print the KPIs from the warehouse (occupancy, turnover, census, length of stay, admissions).
    Report(ReportArgs),
    /// Time the whole pipeline over N generated events in a temporary folder; prints JSON.
    Bench(BenchArgs),
    /// Manage the warehouse: apply its DDL, load the latest gold build, show the Synapse load SQL.
    #[command(subcommand)]
    Warehouse(WarehouseCommand),
}

#[derive(Subcommand)]
enum WarehouseCommand {
    /// Apply the star-schema DDL to the configured warehouse (idempotent).
    Init(WarehouseArgs),
    /// Load the latest gold build into the configured warehouse (a build already loaded is a no-op).
    Load(WarehouseArgs),
    /// Print the Synapse SQL that loads a gold build (for review; nothing is executed).
    Sql {
        /// The build (default: the latest).
        #[arg(long)]
        build: Option<u64>,
        /// Copy only the files this build lacks, as if the pool held it (default: an empty pool).
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        args: WarehouseArgs,
    },
    /// Get an Entra ID token for Synapse with the configured sign-in (prints its length, never the token).
    Token(WarehouseArgs),
}

#[derive(Args)]
struct WarehouseArgs {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    gold: GoldArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Port to listen on; default: FUNCTIONS_CUSTOMHANDLER_PORT, which the Functions host sets.
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind (the host calls 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    handler: HandlerArgs,
    #[command(flatten)]
    gold: GoldArgs,
}

/// The simulator's settings, shared by `simulate` and `run`.
#[derive(Args, Clone)]
#[command(next_help_heading = "Simulator")]
pub struct SimArgs {
    /// Random seed: the same seed and --now give byte-identical events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The clock every timestamp is anchored to (ISO-8601, UTC); default: now.
    #[arg(long, value_parser = parse_clock)]
    now: Option<NaiveDateTime>,
    /// Hospitals in the network (numbered from 1).
    #[arg(long, default_value_t = 7)]
    hospitals: i64,
    /// Beds per hospital (numbered from 1).
    #[arg(long, default_value_t = 500)]
    beds: i64,
    /// Share of ages 101–150 (the seed's dirty data).
    #[arg(long, default_value_t = 0.05)]
    old_age_rate: f64,
    /// Share of admission times 1–72 h in the future (the seed's dirty data).
    #[arg(long = "future-rate", default_value_t = 0.05)]
    future_rate: f64,
    /// Share of malformed bodies (truncated JSON, binary garbage, JSON arrays).
    #[arg(long, default_value_t = 0.0)]
    malformed_rate: f64,
    /// Share of events with one field left out.
    #[arg(long = "missing-rate", default_value_t = 0.0)]
    missing_rate: f64,
    /// Share of events with one field of the wrong JSON type.
    #[arg(long, default_value_t = 0.0)]
    wrong_type_rate: f64,
    /// Share of exact re-sends of the previous clean event.
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Share of visits by patients seen before (their age may have changed).
    #[arg(long, default_value_t = 0.2)]
    returning_rate: f64,
}

impl SimArgs {
    fn config(&self, now: NaiveDateTime) -> anyhow::Result<SimulationConfig> {
        let dirt = DirtRates {
            old_age: self.old_age_rate,
            future_admission: self.future_rate,
            malformed: self.malformed_rate,
            missing_field: self.missing_rate,
            wrong_type: self.wrong_type_rate,
            duplicate: self.duplicate_rate,
            returning: self.returning_rate,
        };
        dirt.validate().map_err(anyhow::Error::msg)?;
        if self.hospitals < 1 || self.beds < 1 {
            bail!("--hospitals and --beds must be at least 1");
        }
        Ok(SimulationConfig { seed: self.seed, now, hospitals: self.hospitals, beds: self.beds, dirt })
    }

    fn now(&self) -> NaiveDateTime {
        self.now.unwrap_or_else(now_utc)
    }
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Number of events.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Events per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Output file (default: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Where to send: `file` (NDJSON to --output or stdout) or `eventhubs` (EH__fullyQualifiedNamespace + EH_NAME).
    #[arg(long, value_enum, default_value = "file")]
    to: Destination,
    /// Event Hubs namespace, e.g. myns.servicebus.windows.net (identity-based, Entra ID).
    #[arg(long, env = "EH__fullyQualifiedNamespace")]
    eventhubs_namespace: Option<String>,
    /// The Functions `EH` setting; a SAS connection string is refused with the fix.
    #[arg(long, env = "EH", hide_env_values = true)]
    eventhubs_connection: Option<String>,
    /// Event hub name.
    #[arg(long, env = "EH_NAME", default_value = "patient-flow")]
    event_hub: String,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = "EH__clientId")]
    eventhubs_client_id: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Destination {
    File,
    Eventhubs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Number of events to simulate.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Read events from this NDJSON file (one body per line) instead of simulating.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Event Hubs partitions (events are spread by partition key, the patient id).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Events per ingest_bronze invocation (host.json maxEventBatchSize).
    #[arg(long, default_value_t = crate::config::settings::SHIPPED_MAX_EVENT_BATCH_SIZE)]
    batch_size: usize,
    /// Event hub name recorded in bronze.
    #[arg(long, env = "EH_NAME", default_value = "patient-flow")]
    event_hub: String,
    /// refine_silver invocations in flight (what host.json's extensions.blobs.maxDegreeOfParallelism
    /// sets on Azure; the shipped host.json says 4, but on two cores 2 refines as fast with less memory).
    #[arg(long, default_value_t = 2)]
    silver_concurrency: usize,
    /// Play the Functions host: post every invocation as the host's HTTP envelope to the handler on
    /// a loopback port (as `bench` does), instead of calling the functions in this process. Slower;
    /// the lake it writes is the same.
    #[arg(long)]
    via_host: bool,
    /// Output format of the report.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    gold: GoldArgs,
}

#[derive(Args)]
struct ReportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    gold: GoldArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Event Hubs partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Events per ingest_bronze invocation (host.json maxEventBatchSize).
    #[arg(long, default_value_t = crate::config::settings::SHIPPED_MAX_EVENT_BATCH_SIZE)]
    batch_size: usize,
    /// refine_silver invocations in flight.
    #[arg(long, default_value_t = 2)]
    silver_concurrency: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the data folder here instead of a temporary one (one run only).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Runs, each in a fresh process of this program, one after another; with more than one, the
    /// output gives each run and their medians (timings on a shared machine vary from run to run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), overrides_with = "runs")]
    runs: u32,
}

#[derive(Args)]
struct PackageArgs {
    /// Folder to create (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Handler binary to ship (default: this executable).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Also write `<out>.zip`, ready for `az functionapp deployment source config-zip` / zip deploy.
    #[arg(long)]
    zip: bool,
}

#[derive(Args)]
struct QuarantineArgs {
    /// Show at most this many events (newest files first).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only this reason code.
    #[arg(long)]
    reason: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Parses the command line and runs the chosen command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            telemetry::init(LogTarget::Stdout, "info");
            runtime()?.block_on(serve(args))
        }
        Command::Simulate(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            simulate(args)
        }
        Command::Run(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            runtime()?.block_on(run(args))
        }
        Command::Package(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            let binary = match args.binary {
                Some(b) => b,
                None => std::env::current_exe().context("cannot find this executable; pass --binary")?,
            };
            let report = crate::package::package(&args.out, &binary)?;
            println!("{report}");
            if args.zip {
                let zip = args.out.with_extension("zip");
                let size = crate::package::zip_folder(&args.out, &zip)?;
                println!("zipped into {} ({:.1} MB)", zip.display(), size as f64 / 1e6);
            }
            Ok(())
        }
        Command::Quarantine(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            runtime()?.block_on(quarantine(args))
        }
        Command::Report(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            runtime()?.block_on(report(args))
        }
        Command::Bench(args) => {
            telemetry::init(LogTarget::Stderr, "warn");
            runtime()?.block_on(bench(args))
        }
        Command::Warehouse(command) => {
            telemetry::init(LogTarget::Stderr, "warn");
            runtime()?.block_on(warehouse(command))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let port = handler_port(args.port, |k| std::env::var(k).ok())?;
    // Every setting is checked before the port is bound: a wrong one stops the handler at start,
    // in one line, instead of failing each invocation later.
    let host = HostLimits::discover(|k| std::env::var(k).ok())?;
    let settings = args.handler.settings(&host)?;
    let storage = args.lake.storage_config()?;
    let warehouse = args.gold.warehouse_config(&args.lake.data_dir)?;
    let gold = args.gold.gold_settings()?;
    // Bind first: the host's readiness probe must be answered before any slow setup.
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {}:{port}", args.host))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        lake = %storage.describe(),
        host_json = %host.source.as_ref().map_or("none (defaults)".to_string(), |p| p.display().to_string()),
        request_timeout_ms = settings.request_timeout.as_millis() as u64,
        max_body_bytes = settings.max_body_bytes,
        ready_ms = started.elapsed().as_millis() as u64,
        "Handler listening."
    );
    let state = crate::state::AppState::build(storage, None, settings, warehouse, gold);
    crate::app::serve(listener, state, crate::app::shutdown_signal()).await.context("the handler stopped with an error")
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let now = args.sim.now();
    let config = args.sim.config(now)?;
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        bail!("--rate must be a positive number of events per second");
    }
    if let Destination::Eventhubs = args.to {
        let target = crate::eventhubs::EventHubsTarget::from_settings(
            args.eventhubs_namespace.as_deref(),
            args.eventhubs_connection.as_deref(),
            &args.event_hub,
            args.eventhubs_client_id.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let sim = Simulator::new(config);
        let events = sim.take(args.count as usize).map(|e| (e.partition_key, e.body));
        let report =
            runtime()?.block_on(crate::eventhubs::send(&target, events, args.rate)).map_err(anyhow::Error::msg)?;
        eprintln!(
            "sent {} events in {} batches to {}/{} ({} partitions) in {:.2} s",
            report.events,
            report.batches,
            target.namespace,
            target.event_hub,
            report.partitions,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let (mut out, bar): (Box<dyn Write>, _) = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let bar =
                indicatif::ProgressBar::with_draw_target(Some(args.count), indicatif::ProgressDrawTarget::stderr());
            (Box::new(std::io::BufWriter::with_capacity(1 << 20, file)), bar)
        }
        None => (Box::new(std::io::BufWriter::new(std::io::stdout().lock())), indicatif::ProgressBar::hidden()),
    };
    let started = Instant::now();
    let mut sim = Simulator::new(config);
    for (i, e) in sim.by_ref().take(args.count as usize).enumerate() {
        out.write_all(&e.body)?;
        out.write_all(b"\n")?;
        if i % 1024 == 0 {
            bar.set_position(i as u64);
        }
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    let tally = sim.tally();
    eprintln!(
        "simulated {} events (seed {}, now {}) in {:.2} s; injected: {}",
        tally.events,
        args.sim.seed,
        rfc3339(&now),
        started.elapsed().as_secs_f64(),
        serde_json::to_string(tally)?
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let now = args.sim.now();
    let source = match &args.input {
        Some(path) => Source::File(path.clone()),
        None => Source::Simulate { config: args.sim.config(now)?, count: args.count },
    };
    let storage = args.lake.storage_config()?;
    let lake = Lake::open(&storage).await.with_context(|| format!("cannot open the lake ({})", storage.describe()))?;
    let options = RunOptions {
        source,
        partitions: args.partitions,
        batch_size: args.batch_size,
        event_hub: args.event_hub.clone(),
        now,
        silver_concurrency: args.silver_concurrency,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        via: if args.via_host { Via::Host } else { Via::InProcess },
    };
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let settings = HandlerSettings { now: Some(now), ..Default::default() };
    let warehouse = args.gold.warehouse_config(&args.lake.data_dir)?;
    // `run` folds everything it ingested: its gold timer call has no minimum of new files.
    let gold = GoldSettings { min_new_files: 0, ..args.gold.gold_settings()? };
    let started = Instant::now();
    let report = crate::run::run(lake, settings, warehouse, gold, options).await?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!("patientflow run — lake: {}", storage.describe());
            print!("{}", report.render());
            println!("total    {:>8.3} s", started.elapsed().as_secs_f64());
            if let Some(kpis) = &report.report {
                print!("\n{}", kpis.render());
            }
        }
    }
    Ok(())
}

/// The warehouse the settings name, opened the way the handler opens it.
async fn configured_warehouse(
    lake: &Lake,
    lake_args: &LakeArgs,
    gold: &GoldArgs,
) -> anyhow::Result<std::sync::Arc<dyn crate::warehouse::Warehouse>> {
    let state = crate::state::AppState::build(
        crate::storage::StorageConfig::memory(),
        Some(lake.clone()),
        Default::default(),
        gold.warehouse_config(&lake_args.data_dir)?,
        gold.gold_settings()?,
    );
    match state.warehouse().await? {
        Some(w) => Ok(w),
        None => bail!("no warehouse is configured (PATIENTFLOW_WAREHOUSE=none); set it to embedded or synapse"),
    }
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    args.gold.warehouse_config(&args.lake.data_dir)?;
    let storage = args.lake.storage_config()?;
    let lake = Lake::open(&storage).await.with_context(|| format!("cannot open the lake ({})", storage.describe()))?;
    let warehouse = configured_warehouse(&lake, &args.lake, &args.gold).await?;
    let mut kpis = warehouse.report().await?;
    kpis.quarantine_by_reason = crate::pipeline::quarantine::list(&lake, None, 0).await?.by_reason;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&kpis)?),
        Format::Text => print!("{}", kpis.render()),
    }
    Ok(())
}

async fn warehouse(command: WarehouseCommand) -> anyhow::Result<()> {
    use crate::pipeline::gold::manifest;
    use crate::warehouse::synapse;
    match command {
        WarehouseCommand::Token(args) => {
            let config = args.gold.synapse.config()?;
            let token = synapse::access_token(&config.auth).await?;
            println!(
                "token acquired for {} ({} characters)",
                synapse::SQL_SCOPE,
                secrecy::ExposeSecret::expose_secret(&token).len()
            );
            Ok(())
        }
        WarehouseCommand::Init(args) => match args.gold.warehouse_config(&args.lake.data_dir)? {
            WarehouseConfig::Synapse(config) => {
                synapse::Synapse::new(config)?.init().await?;
                println!("synapse schema applied");
                Ok(())
            }
            #[cfg(feature = "embedded-warehouse")]
            WarehouseConfig::Embedded(config) => {
                crate::warehouse::embedded::Embedded::open_with(&config)?;
                println!("embedded schema applied to {}", config.path.display());
                Ok(())
            }
            _ => bail!("no warehouse is configured (PATIENTFLOW_WAREHOUSE)"),
        },
        WarehouseCommand::Load(args) => {
            args.gold.warehouse_config(&args.lake.data_dir)?;
            let storage = args.lake.storage_config()?;
            let lake = Lake::open(&storage).await?;
            let Some(latest) = manifest::latest(&lake).await? else {
                bail!("gold has no build yet; run the pipeline first")
            };
            let w = configured_warehouse(&lake, &args.lake, &args.gold).await?;
            let m = w.load(&lake, &latest).await?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        WarehouseCommand::Sql { build, since, args } => {
            let storage = args.lake.storage_config()?;
            let lake = Lake::open(&storage).await?;
            let m = match build {
                Some(n) => manifest::read(&lake, n).await?,
                None => manifest::latest(&lake).await?.ok_or_else(|| anyhow::anyhow!("gold has no build yet"))?,
            };
            // The pool holds build `since`: exactly its files.
            let loaded = match since {
                Some(n) => crate::warehouse::loaded_files(&manifest::read(&lake, n).await?),
                None => Default::default(),
            };
            let gold_url = args.gold.synapse.synapse_gold_url.clone().ok_or_else(|| {
                anyhow::anyhow!("set SYNAPSE_GOLD_URL (e.g. https://mylake.dfs.core.windows.net/gold)")
            })?;
            let changes = crate::warehouse::file_changes(&m, &loaded);
            print!("{}", synapse::load_sql(&gold_url, &m, &changes, since, &synapse::new_load_id())?);
            Ok(())
        }
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.runs > 1 {
        return bench_runs(&args);
    }
    let temp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let dir = args.keep.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let now = parse_clock("2026-11-24T12:00:00").map_err(anyhow::Error::msg)?;
    let config = SimulationConfig { seed: args.seed, now, hospitals: 7, beds: 500, dirt: DirtRates::default() };
    // The events are generated first, outside the timing, as the reference runs read pre-generated
    // events: the bench measures the pipeline, not the simulator.
    let generated = Instant::now();
    let input = dir.join("events.ndjson");
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input)?);
        for e in Simulator::new(config).take(args.events as usize) {
            out.write_all(&e.body)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    let generate_seconds = generated.elapsed().as_secs_f64();
    let lake = Lake::open(&crate::storage::StorageConfig::local(dir.join("lake"))).await?;
    let options = RunOptions {
        source: Source::File(input),
        partitions: args.partitions,
        batch_size: args.batch_size,
        event_hub: "patient-flow".into(),
        now,
        silver_concurrency: args.silver_concurrency,
        progress: false,
        // The bench measures the handler as Azure runs it: every invocation through its envelope.
        via: Via::Host,
    };
    let settings = HandlerSettings { now: Some(now), ..Default::default() };
    // The deploy build has no embedded warehouse: it measures everything up to gold.
    let warehouse = if cfg!(feature = "embedded-warehouse") {
        WarehouseConfig::Embedded(dir.join("lake/warehouse.duckdb").into())
    } else {
        WarehouseConfig::None
    };
    let gold = GoldSettings { min_new_files: 0, ..Default::default() };
    let started = Instant::now();
    let report = crate::run::run(lake, settings, warehouse, gold, options).await?;
    let total = started.elapsed().as_secs_f64();
    let sum = |f: fn(&crate::run::StageReport) -> f64| report.stages.iter().map(f).sum::<f64>();
    let out = serde_json::json!({
        "events": args.events,
        "generate_seconds_untimed": generate_seconds,
        "partitions": args.partitions,
        "batch_size": args.batch_size,
        "stages": report.stages,
        "total_seconds": total,
        "cpu_seconds": report.cpu_seconds,
        // Sums over invocations, which overlap: see the README's Performance section.
        "handler_seconds": sum(|s| s.handler_seconds),
        "host_seconds": sum(|s| s.host_seconds),
        "events_per_second": args.events as f64 / total,
        "peak_memory_bytes": crate::telemetry::peak_memory_bytes(),
        "allocator": crate::memory::allocator(),
        "silver_rows": report.silver_rows,
        "fact_rows": report.gold.as_ref().and_then(|g| g["load"]["fact_rows_total"].as_u64()),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `bench --runs N`: each run a `bench` of its own in a fresh process of this executable (so no run
/// inherits another's heap, page cache of the lake or peak memory), one after another; prints every
/// run and the medians.
fn bench_runs(args: &BenchArgs) -> anyhow::Result<()> {
    if args.keep.is_some() {
        bail!("--keep keeps the data of one run: use it without --runs, or leave it out");
    }
    let exe = std::env::current_exe().context("cannot find this executable to start the runs")?;
    // Each run is this command again with every option it was given (a later `--runs` overrides
    // the first), so no option needs forwarding by name.
    let given: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let out = std::process::Command::new(&exe)
            .args(&given)
            .args(["--runs", "1"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot start bench run {run} of {}", args.runs))?;
        if !out.status.success() {
            bail!("bench run {run} of {} failed ({}); its error is above", args.runs, out.status);
        }
        runs.push(
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .with_context(|| format!("bench run {run} of {} printed no report", args.runs))?,
        );
    }
    println!("{}", serde_json::to_string_pretty(&bench_medians(runs))?);
    Ok(())
}

/// The medians of bench runs' figures (per stage too), beside the runs themselves.
fn bench_medians(runs: Vec<serde_json::Value>) -> serde_json::Value {
    let median = |get: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Option<f64> {
        let mut values: Vec<f64> = runs.iter().filter_map(get).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        (n > 0).then(|| if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
    };
    let field = |name: &'static str| median(&move |r: &serde_json::Value| r[name].as_f64());
    let stage_names: Vec<String> = runs
        .first()
        .and_then(|r| r["stages"].as_array())
        .map(|stages| stages.iter().filter_map(|s| s["stage"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let stages: Vec<serde_json::Value> = stage_names
        .iter()
        .map(|name| {
            let of = |key: &'static str| {
                median(&|r: &serde_json::Value| {
                    r["stages"].as_array()?.iter().find(|s| s["stage"] == name.as_str())?[key].as_f64()
                })
            };
            serde_json::json!({
                "stage": name,
                "seconds": of("seconds"),
                "start_seconds": of("start_seconds"),
                "handler_seconds": of("handler_seconds"),
                "host_seconds": of("host_seconds"),
            })
        })
        .collect();
    serde_json::json!({
        "runs": runs.len(),
        "events": runs.first().map(|r| r["events"].clone()),
        "median": {
            "total_seconds": field("total_seconds"),
            "cpu_seconds": field("cpu_seconds"),
            "handler_seconds": field("handler_seconds"),
            "host_seconds": field("host_seconds"),
            "events_per_second": field("events_per_second"),
            "peak_memory_bytes": field("peak_memory_bytes").map(|b| b.round() as u64),
            "stages": stages,
        },
        "each": runs,
    })
}

async fn quarantine(args: QuarantineArgs) -> anyhow::Result<()> {
    let storage = args.lake.storage_config()?;
    let lake = Lake::open(&storage).await.with_context(|| format!("cannot open the lake ({})", storage.describe()))?;
    let listing = crate::pipeline::quarantine::list(&lake, args.reason.as_deref(), args.limit).await?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&listing)?),
        Format::Text => print!("{}", listing.render()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(total: f64, peak: u64, stages: &[(&str, f64)]) -> serde_json::Value {
        let stages: Vec<serde_json::Value> = stages
            .iter()
            .map(|(stage, seconds)| {
                serde_json::json!({"stage": stage, "seconds": seconds, "start_seconds": 0.5 * seconds,
                    "handler_seconds": 2.0 * seconds, "host_seconds": 0.0})
            })
            .collect();
        serde_json::json!({"events": 1000, "total_seconds": total, "cpu_seconds": 1.5 * total, "handler_seconds": 2.0 * total,
            "host_seconds": 0.0, "events_per_second": 1000.0 / total, "peak_memory_bytes": peak, "stages": stages})
    }

    /// Each figure's median is taken on its own (the fastest total need not have the fastest
    /// stages); an even number of runs takes the mean of the middle two.
    #[test]
    fn bench_medians_take_each_figure_on_its_own() {
        let runs = vec![
            run(7.0, 300, &[("bronze", 1.0), ("gold", 3.0)]),
            run(5.0, 100, &[("bronze", 3.0), ("gold", 2.0)]),
            run(6.0, 200, &[("bronze", 2.0), ("gold", 9.0)]),
        ];
        let v = bench_medians(runs.clone());
        assert_eq!(v["runs"], 3);
        assert_eq!(v["each"].as_array().unwrap().len(), 3);
        let m = &v["median"];
        assert_eq!((m["total_seconds"].as_f64(), m["handler_seconds"].as_f64()), (Some(6.0), Some(12.0)));
        assert_eq!(m["events_per_second"].as_f64(), Some(1000.0 / 6.0));
        assert_eq!(m["cpu_seconds"].as_f64(), Some(9.0));
        assert_eq!(m["peak_memory_bytes"].as_u64(), Some(200));
        let stage = |name: &str| m["stages"].as_array().unwrap().iter().find(|s| s["stage"] == name).unwrap().clone();
        assert_eq!((stage("bronze")["seconds"].as_f64(), stage("gold")["seconds"].as_f64()), (Some(2.0), Some(3.0)));
        assert_eq!(stage("gold")["start_seconds"].as_f64(), Some(1.5));

        let even = bench_medians(runs[..2].to_vec());
        assert_eq!(even["median"]["total_seconds"].as_f64(), Some(6.0));
        assert_eq!(even["median"]["peak_memory_bytes"].as_u64(), Some(200));
    }
}
