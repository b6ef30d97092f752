//! `tessera` — the command line: serve the FHIR API, import data, run benchmarks.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tessera_engine::{Engine, EngineConfig};

mod demo;

/// mimalloc returns freed memory to the system promptly, which keeps the server's resident
/// size close to its live data after large imports.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera: a shared-domain electronic health record platform speaking HL7 FHIR R4.
///
/// Several healthcare organisations share one instance and one record per patient.
/// The FHIR API is served at http://ADDR/fhir. Data lives in an embedded SQLite database
/// in the data directory unless a PostgreSQL URL is given.
#[derive(Parser)]
#[command(name = "tessera", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    ///
    /// Examples:
    ///   tessera serve --demo
    ///   tessera serve --data-dir /var/lib/tessera --listen 0.0.0.0:8080
    ///   tessera serve --database-url postgres://tessera@db/tessera
    Serve(ServeArgs),
    /// Load FHIR data (transaction/batch bundles, NDJSON; plain, .gz or .bz2; files or folders).
    ///
    /// Bundles are committed as transactions (a batch entry by entry); NDJSON lines are
    /// created (or updated when they carry an id). An interrupted import can be run
    /// again: finished files are skipped. Example:
    ///   tessera import --data-dir ./tessera-data ../shared/data/synthea
    Import(ImportArgs),
    /// Benchmarks against a running server (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    data_dir: PathBuf,
    /// PostgreSQL connection URL; when given, the data directory is not used.
    #[arg(long, env = "TESSERA_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Public base URL of the FHIR API (default: http://LISTEN/fhir).
    #[arg(long, env = "TESSERA_BASE_URL")]
    base_url: Option<String>,
    /// Load a small demo data set (once) before serving.
    #[arg(long, env = "TESSERA_DEMO")]
    demo: bool,
    /// Refuse PUT on an absent id instead of creating the resource.
    #[arg(long, env = "TESSERA_NO_UPDATE_CREATE")]
    no_update_create: bool,
    /// Largest request body, in bytes.
    #[arg(long, env = "TESSERA_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a resource.
    #[arg(long, env = "TESSERA_MAX_DEPTH", default_value_t = 64)]
    max_depth: usize,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "TESSERA_LOG_JSON")]
    log_json: bool,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Files or folders to load.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Bundles committed at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Post bundles to a running server with concurrent HTTP clients and report resources/s.
    ///
    /// Files whose name contains "hospital" or "practitioner" are sent first, one at a time.
    Ingest {
        /// FHIR base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        url: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Bundle files or folders (.json, .json.gz, .json.bz2).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Read resources by id with concurrent keep-alive connections and report req/s and latency.
    Read {
        /// FHIR base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        url: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Resource type to read (ids are discovered with a search).
        #[arg(long, default_value = "Patient")]
        resource_type: String,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `mi_option_purge_delay` in mimalloc 2.x's `mi_option_e` (mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> anyhow::Result<()> {
    // Give freed memory back to the system at once rather than after a delay that an idle
    // server never reaches: the resident size then follows the live data (a large import
    // otherwise leaves its peak resident).
    // SAFETY: sets a plain integer option of the allocator; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Import(args) => {
            init_logging(false);
            let store = open_store(&args.store).await?;
            let engine = Engine::new(store, EngineConfig::default());
            let summary = tessera_import::run(&engine, &args.paths, &tessera_import::Options { concurrency: args.concurrency }).await?;
            println!("{summary}");
            if summary.errors.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} error(s) during import", summary.errors.len())
            }
        }
        Command::Bench(BenchCommand::Ingest { url, clients, paths }) => {
            let report = tessera_bench::ingest(&url, &paths, clients).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench(BenchCommand::Read { url, connections, seconds, resource_type }) => {
            let report = tessera_bench::read(&url, &resource_type, connections, std::time::Duration::from_secs(seconds)).await?;
            println!("{report}");
            Ok(())
        }
    }
}

async fn open_store(args: &StoreArgs) -> anyhow::Result<tessera_store::DynStore> {
    let store = tessera_store::open(&args.data_dir, args.database_url.as_deref())
        .await
        .with_context(|| match &args.database_url {
            Some(_) => "cannot open the PostgreSQL database".to_string(),
            None => format!("cannot open the data directory {}", args.data_dir.display()),
        })?;
    Ok(store)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let store = open_store(&args.store).await?;
    let base_url = args.base_url.clone().unwrap_or_else(|| format!("http://{}/fhir", args.listen));
    let config = EngineConfig {
        base_url: base_url.trim_end_matches('/').to_string(),
        update_create: !args.no_update_create,
        limits: tessera_fhir::validation::Limits { max_depth: args.max_depth },
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, config);
    if args.demo {
        demo::load(&engine).await.context("cannot load the demo data")?;
    }
    let router = tessera_http::router(engine.clone(), tessera_http::HttpConfig { max_body_bytes: args.max_body_bytes });
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(backend = engine.store().backend(), %base_url, "Tessera is serving FHIR R4");
    tessera_http::serve(listener, router, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
