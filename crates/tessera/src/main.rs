//! `tessera` — the command line: serve the FHIR API, import data, run benchmarks.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tessera_engine::{Access, Engine, EngineConfig};

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
    /// Run the server: the FHIR API (/fhir), the clinicians' web application (/), the patient
    /// portal (/portal) and SMART App Launch (/oauth/authorize), on one address.
    ///
    /// With --demo, open http://127.0.0.1:8080/ and sign in as dr.patel (demo-doctor-1);
    /// docs/demo-domain.md lists every demo user, patient account and app.
    /// TESSERA_WEB_IDLE_MINUTES (default 30) ends idle web sessions.
    ///
    /// Examples:
    ///   tessera serve --demo
    ///   tessera serve --data-dir /var/lib/tessera --listen 0.0.0.0:8080
    ///   tessera serve --database-url postgres://tessera@db/tessera
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Load FHIR data (transaction/batch bundles, NDJSON; plain, .gz or .bz2; files or folders).
    ///
    /// Bundles are committed as transactions (a batch entry by entry); NDJSON lines are
    /// created (or updated when they carry an id). An interrupted import can be run
    /// again: finished files are skipped. Example:
    ///   tessera import --data-dir ./tessera-data ../shared/data/synthea
    #[command(verbatim_doc_comment)]
    Import(ImportArgs),
    /// Benchmarks against a running server (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print an access token for a user or for the domain's system account.
    ///
    /// Examples:
    ///   tessera token --user dr.patel --role doctor --org rx1-general
    ///   tessera token --system --org rx1
    #[command(verbatim_doc_comment)]
    Token(TokenArgs),
    /// The domain configuration: organisations, sites, wards, roles, sharing dials.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Users: add, set passwords, grant roles, list.
    #[command(subcommand)]
    User(UserCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Migration reconciliation: match a joining organisation's legacy patient records with
    /// the domain's patient index, and register them.
    ///
    /// Reads PAS CSV extracts, HL7 v2 ADT files (PID), FHIR Bundles and NDJSON (files or
    /// folders; formats in docs/migration.md). A dry run changes nothing and reports, per
    /// record, would-link (with the record and score), would-create, to-review and
    /// invalid (with the reason). A real run registers each record atomically (linked or
    /// created, the organisation's MRN attached) and can be repeated safely. Examples:
    ///   tessera migrate --org rx2 --dry-run legacy/pas.csv
    ///   tessera migrate --org rx2 --dry-run --json report.json legacy/
    ///   tessera migrate --org rx2 legacy/
    #[command(verbatim_doc_comment)]
    Migrate(MigrateArgs),
    /// The patient index: the duplicate review worklist.
    #[command(subcommand)]
    Empi(EmpiCommand),
    /// Layered content (docs/content.md): signed packages of a layer, their differences and
    /// the impact of a change.
    #[command(subcommand)]
    Content(ContentCommand),
    /// Non-production environments (build, test, train, cert): create one from production
    /// (configuration and content, no patients), compare two, promote approved change
    /// requests one step, refresh train (docs/environments.md).
    #[command(subcommand)]
    Env(EnvCommand),
    /// The five ways an organisation comes to a shared domain (docs/onboarding.md): a new
    /// domain from the model content, a new domain from a copy, joining a domain as-is,
    /// joining a model client domain, joint optimisation. Each is audited and reported.
    #[command(subcommand)]
    Onboard(OnboardCommand),
    /// HL7 v2: send message files over MLLP and print the acknowledgements.
    #[command(subcommand)]
    Hl7(Hl7Command),
    /// The outbox of subscriptions' notifications (FHIR rest-hook and websocket, HL7 v2 over
    /// MLLP): list the items and their state, put dead ones back on the queue.
    ///
    /// Every change an active Subscription's criteria type concerns adds an item in the
    /// transaction of the change; `tessera serve` delivers them in order per subscription
    /// and patient, as the subscription owner's view allows (what it may not see is
    /// `suppressed`), retrying failures with backoff until `--outbox-max-attempts`, after
    /// which an item is `dead` (docs/integrators.md, docs/operators.md). Examples:
    ///   tessera outbox list --state dead
    ///   tessera outbox replay 42 43
    ///   tessera outbox replay --dead
    #[command(subcommand, verbatim_doc_comment)]
    Outbox(OutboxCommand),
    /// Upgrade the domain's model content to this build's (or a signed package's): a dry run
    /// lists every change and who it reaches; the real run refuses during a freeze.
    ///
    /// Example:
    ///   tessera upgrade --dry-run
    #[command(verbatim_doc_comment)]
    Upgrade {
        #[command(flatten)]
        store: StoreArgs,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A signed model-layer package instead of this build's model content.
        #[arg(long)]
        package: Option<PathBuf>,
    },
    /// Rebuild the search index from the current version of every resource.
    ///
    /// Needed after an upgrade that changes the search parameters or how values are
    /// extracted (the release notes say so). Run it while no server uses the database.
    /// Example:
    ///   tessera reindex --data-dir ./tessera-data
    #[command(verbatim_doc_comment)]
    Reindex {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The user to issue a token for.
    #[arg(long, conflicts_with = "system")]
    user: Option<String>,
    /// Role context (default: the user's first role).
    #[arg(long)]
    role: Option<String>,
    /// Organisation: of the role context, or the one the system account acts for — it then
    /// sees and writes only what a service account of that organisation may. Without it,
    /// `--system` gives the domain's bootstrap account: unrestricted, for operators only,
    /// never to be configured in an interface (every use is audited).
    #[arg(long)]
    org: Option<String>,
    /// Location within the role context.
    #[arg(long)]
    location: Option<String>,
    /// SMART scopes (default: everything the subject may have).
    #[arg(long)]
    scope: Option<String>,
    /// A token for the built-in system account (`system/*.*`; see --org).
    #[arg(long)]
    system: bool,
    /// Lifetime in minutes (system tokens).
    #[arg(long, default_value_t = 60)]
    minutes: u32,
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Merge a domain file (TOML) into the domain and apply it; safe to repeat.
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The domain file.
        file: PathBuf,
    },
    /// Print the domain configuration as JSON (without password hashes).
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add (or update) a user with one role assignment.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// Login name (also the Practitioner id).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        org: String,
        /// Locations of the role assignment (repeatable).
        #[arg(long = "location")]
        locations: Vec<String>,
        /// Initial password (else set one with `tessera user passwd`).
        #[arg(long, env = "TESSERA_USER_PASSWORD")]
        password: Option<String>,
    },
    /// Set a user's password (read from --password or the first line of standard input).
    Passwd {
        #[command(flatten)]
        store: StoreArgs,
        id: String,
        #[arg(long, env = "TESSERA_USER_PASSWORD")]
        password: Option<String>,
    },
    /// List users and their roles.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Clear the sign-in lock of a user (locked after repeated failed passwords), or with
    /// --client of a service account; takes effect on running servers within seconds, and is
    /// recorded in the audit trail.
    ///
    /// Example:
    ///   tessera user unlock dr.patel --data-dir ./tessera-data
    #[command(verbatim_doc_comment)]
    Unlock {
        #[command(flatten)]
        store: StoreArgs,
        /// Login name (with --client: the service account's client id).
        id: String,
        /// Unlock a service account (client credentials) instead of a user.
        #[arg(long)]
        client: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the audit trail; list every problem with the seq of its record.
    ///
    /// Checks the hash chain (records altered, deleted, reordered), the columns audit
    /// queries use against each record's event (user, patients, break-glass, action), the
    /// by-patient index behind $access-log, the chain against its anchor (records cut off
    /// its end), and reports the damage the server found and recorded (a damaged read
    /// journal). Safe beside a running server. Exit status: 0 intact, 2 problems found,
    /// 1 the check could not run. Examples:
    ///   tessera audit verify --data-dir /var/lib/tessera
    ///   tessera audit verify --database-url postgres://… --anchor /var/lib/tessera/audit.anchor
    #[command(verbatim_doc_comment)]
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// The anchor file the server keeps (the chain's head, signed). Default on SQLite:
        /// tessera-audit.anchor in the data directory; on PostgreSQL, the file given to
        /// `tessera serve --audit-anchor`.
        #[arg(long)]
        anchor: Option<PathBuf>,
        /// The anchor's key file (default: the anchor's path with `.key` appended).
        #[arg(long)]
        anchor_key: Option<PathBuf>,
        /// Problems listed at most (the others are counted).
        #[arg(long, default_value_t = 100)]
        max_problems: usize,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List outbox items, oldest first: id, subscription, resource, patient, state,
    /// attempts, last error. Safe beside a running server.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only items in this state: pending (not tried yet), failed (retried later),
        /// dead (given up: replay it), delivered, suppressed (the subscriber's view may not
        /// see it, or it no longer matches). Repeatable.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        /// Only items after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Items listed at most.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Put items back on the queue (pending, attempts reset, due now): the ids given, or
    /// every dead item with --dead. Audited (outbox-replay). The server delivers them (on
    /// SQLite, run it while the server is stopped: one process owns a data directory).
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// Every dead item.
        #[arg(long, conflicts_with = "ids")]
        dead: bool,
        /// Item ids (the first column of `tessera outbox list`).
        ids: Vec<i64>,
    },
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
    /// PostgreSQL: keep the head of the audit chain in this file too (signed with the key
    /// in FILE.key, created if absent), so that `tessera audit verify --anchor FILE`
    /// detects records cut off the end of the log. SQLite keeps one in its data directory.
    #[arg(long, env = "TESSERA_AUDIT_ANCHOR", value_name = "FILE")]
    audit_anchor: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Public base URL of the FHIR API (default: http://LISTEN/fhir).
    #[arg(long, env = "TESSERA_BASE_URL")]
    base_url: Option<String>,
    /// Load a small demo data set (once) before serving; also allows browser apps served
    /// from this machine (http://localhost:*, http://127.0.0.1:*, any port) through CORS.
    #[arg(long, env = "TESSERA_DEMO")]
    demo: bool,
    /// Let browser apps of this origin call the API (CORS): `https://app.example.org`,
    /// `http://localhost:*` (any port), or `*` (any web page; see docs/operators.md before
    /// using it). Repeatable; the environment variable takes a comma-separated list. None
    /// by default: browsers then refuse cross-origin calls.
    #[arg(long = "cors-origin", env = "TESSERA_CORS_ORIGINS", value_name = "ORIGIN", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Listen for HL7 v2 over MLLP on this address: the address of the domain file's first
    /// `[[interfaces]]` entry (with --demo: Northgate's `rx1-pas`, normally
    /// 127.0.0.1:2575), or, with --mllp-org, of an interface of that organisation.
    /// Every other declared interface with a `listen` address opens too (docs/hl7v2.md).
    #[arg(long, env = "TESSERA_MLLP_LISTEN")]
    mllp_listen: Option<std::net::SocketAddr>,
    /// With --mllp-listen: an interface of this organisation (what it brings is owned by
    /// it) instead of the first declared one.
    #[arg(long, env = "TESSERA_MLLP_ORG")]
    mllp_org: Option<String>,
    /// Do not deliver the outbox from this server (subscriptions' notifications): for all
    /// but one of several servers sharing a PostgreSQL database.
    #[arg(long, env = "TESSERA_NO_OUTBOX")]
    no_outbox: bool,
    /// Delivery attempts of a notification before it is dead (then `tessera outbox replay`).
    #[arg(long, env = "TESSERA_OUTBOX_MAX_ATTEMPTS", default_value_t = 8)]
    outbox_max_attempts: u32,
    /// Seconds before the first retry of a failed delivery; doubled after each further
    /// failure, up to --outbox-max-backoff-seconds.
    #[arg(long, env = "TESSERA_OUTBOX_BACKOFF_SECONDS", default_value_t = 1.0)]
    outbox_backoff_seconds: f64,
    /// Longest wait between two attempts of a delivery, in seconds.
    #[arg(long, env = "TESSERA_OUTBOX_MAX_BACKOFF_SECONDS", default_value_t = 300.0)]
    outbox_max_backoff_seconds: f64,
    /// Refuse PUT on an absent id instead of creating the resource.
    #[arg(long, env = "TESSERA_NO_UPDATE_CREATE")]
    no_update_create: bool,
    /// Largest request body, in bytes.
    #[arg(long, env = "TESSERA_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most entries in one batch or transaction Bundle.
    #[arg(long, env = "TESSERA_MAX_BUNDLE_ENTRIES", default_value_t = 20_000)]
    max_bundle_entries: usize,
    /// Most search parameters in one search request.
    #[arg(long, env = "TESSERA_MAX_SEARCH_PARAMETERS", default_value_t = 50)]
    max_search_parameters: usize,
    /// Most comma-separated values of one search parameter (and `_elements` names).
    #[arg(long, env = "TESSERA_MAX_SEARCH_VALUES", default_value_t = 100)]
    max_search_values: usize,
    /// Most `_sort` keys in one search.
    #[arg(long, env = "TESSERA_MAX_SORT_KEYS", default_value_t = 8)]
    max_sort_keys: usize,
    /// Most `_include`/`_revinclude` parameters in one search.
    #[arg(long, env = "TESSERA_MAX_INCLUDES", default_value_t = 16)]
    max_includes: usize,
    /// Largest `_offset` of a sorted search.
    #[arg(long, env = "TESSERA_MAX_OFFSET", default_value_t = 100_000)]
    max_offset: usize,
    /// Longest a single database query may run, in seconds (then the request answers 400
    /// "too costly"; PostgreSQL `statement_timeout`, SQLite progress handler).
    #[arg(long, env = "TESSERA_QUERY_TIMEOUT_SECONDS", default_value_t = 30)]
    query_timeout_seconds: u64,
    /// Seconds a connection may stay open without sending a complete request.
    #[arg(long, env = "TESSERA_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    idle_timeout_seconds: u64,
    /// Deepest JSON nesting accepted in a resource.
    #[arg(long, env = "TESSERA_MAX_DEPTH", default_value_t = 64)]
    max_depth: usize,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "TESSERA_LOG_JSON")]
    log_json: bool,
    /// Turn access policy and read audit OFF, to measure their cost. Exists only in
    /// builds made with the `bench-unenforced` feature; never in production.
    #[cfg(feature = "bench-unenforced")]
    #[arg(long)]
    unenforced_benchmark_only: bool,
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The migrating organisation (its MRN system names the records' local numbers; it
    /// registers them).
    #[arg(long)]
    org: String,
    /// Match and report only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also write the report as JSON to this file (`-` for standard output, instead of
    /// the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// HL7 v2 assigning authority to identifier system, `AUTHORITY=SYSTEM` (repeatable).
    #[arg(long = "authority", value_name = "AUTHORITY=SYSTEM")]
    authorities: Vec<String>,
    /// Extract files or folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Two databases: the source (production, or the environment changes come from) and the
/// target.
#[derive(clap::Args)]
struct TwoStores {
    /// The source's SQLite directory.
    #[arg(long)]
    from_data_dir: Option<PathBuf>,
    /// The source's PostgreSQL URL.
    #[arg(long)]
    from_database_url: Option<String>,
    /// The target's SQLite directory.
    #[arg(long)]
    to_data_dir: Option<PathBuf>,
    /// The target's PostgreSQL URL (an empty database for `env create`).
    #[arg(long)]
    to_database_url: Option<String>,
}

impl TwoStores {
    fn from(&self) -> anyhow::Result<StoreArgs> {
        anyhow::ensure!(self.from_data_dir.is_some() || self.from_database_url.is_some(), "name the source: --from-data-dir or --from-database-url");
        Ok(StoreArgs { data_dir: self.from_data_dir.clone().unwrap_or_default(), database_url: self.from_database_url.clone() })
    }

    fn to(&self) -> anyhow::Result<StoreArgs> {
        anyhow::ensure!(self.to_data_dir.is_some() || self.to_database_url.is_some(), "name the target: --to-data-dir or --to-database-url");
        Ok(StoreArgs { data_dir: self.to_data_dir.clone().unwrap_or_default(), database_url: self.to_database_url.clone() })
    }
}

#[derive(Subcommand)]
enum Hl7Command {
    /// Send each message of the files (one message or a batch per file) over one MLLP
    /// connection, printing each acknowledgement.
    ///
    /// Example:
    ///   tessera hl7 send ../shared/data/hl7v2/ADT-A04-01.hl7 --to 127.0.0.1:2575
    #[command(verbatim_doc_comment)]
    Send {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: String,
        /// Connect over TLS, trusting the certificates of this PEM file (the interface's
        /// certificate or the authority that signed it).
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// The name the interface's certificate must carry (default: the host of --to).
        #[arg(long, requires = "tls_ca")]
        server_name: Option<String>,
    },
}

#[derive(Subcommand)]
enum OnboardCommand {
    /// Option 1: a new domain from the model content, in an empty database (with the
    /// organisations and people of --domain-file).
    NewDomain {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        domain_file: Option<PathBuf>,
    },
    /// Option 2: a new domain from a copy of an existing domain's configuration and content
    /// (no patients), in an empty database.
    CopyDomain {
        #[command(flatten)]
        stores: TwoStores,
    },
    /// Option 3: a new organisation joins the domain as-is, with its domain file (its trust,
    /// sites, wards, users, sharing dials, interfaces; it may only add). Under enforced
    /// governance, a change request every trust signs off.
    Join {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        org_file: PathBuf,
    },
    /// Option 4: a new organisation joins a model client domain as-is: a new domain from the
    /// model content (option 1), then the organisation's file (option 3).
    JoinModel {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        org_file: PathBuf,
    },
    /// Option 5: joint optimisation — configuration (a domain file fragment) and content (a
    /// signed package) changes that affect the joiner and the existing organisations,
    /// proposed as change requests each of them signs off.
    Optimise {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        title: String,
        #[arg(long)]
        configuration: Option<PathBuf>,
        #[arg(long)]
        content: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Create a build, test, train or cert environment in a new database from production:
    /// the domain's configuration (without portal accounts) and every layered content item;
    /// no patient and nothing of any record. --synthetic loads synthetic patients (Synthea
    /// bundles) into it.
    ///
    /// Example:
    ///   tessera env create test --from-data-dir /var/lib/tessera --to-data-dir /var/lib/tessera-test --synthetic ../shared/data/synthea
    #[command(verbatim_doc_comment)]
    Create {
        /// build, test, train or cert.
        kind: String,
        #[command(flatten)]
        stores: TwoStores,
        /// Folders or files of synthetic patients' bundles to load.
        #[arg(long)]
        synthetic: Vec<PathBuf>,
    },
    /// The configuration and content differences between two environments.
    Drift {
        #[command(flatten)]
        stores: TwoStores,
    },
    /// Promote approved change requests one step (build → test → cert → production); each
    /// becomes a change request there, to be signed off there. --request: only these.
    Promote {
        #[command(flatten)]
        stores: TwoStores,
        #[arg(long)]
        request: Vec<String>,
    },
    /// Bring an environment's content (train's) back to production's.
    Refresh {
        #[command(flatten)]
        stores: TwoStores,
    },
}

#[derive(Subcommand)]
enum ContentCommand {
    /// Write a layer's content (of one organisation, for the organisation and site layers)
    /// as a versioned package signed with the domain's content key.
    ///
    /// Example:
    ///   tessera content export --layer organisation --org rx1 --out rx1-content.tcp
    #[command(verbatim_doc_comment)]
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// model, domain, organisation or site.
        #[arg(long)]
        layer: String,
        /// The trust (organisation layer) or site (site layer).
        #[arg(long)]
        org: Option<String>,
        /// The package's version (default: when it was exported).
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a package (its signature by the domain's content key, or a --trust-key, and
    /// its checksum) and load it in one transaction; prints what changed.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Also trust packages signed with this public key (hex), e.g. a model publisher's.
        #[arg(long)]
        trust_key: Vec<String>,
        file: PathBuf,
    },
    /// The element-level differences between two packages (two versions of a layer).
    Diff { a: PathBuf, b: PathBuf },
    /// What loading a package would change, and who and what that reaches: the
    /// organisations and sites whose content changes, their users, and the active orders,
    /// care plans and questionnaire responses that refer to the changed content.
    Impact {
        #[command(flatten)]
        store: StoreArgs,
        file: PathBuf,
    },
    /// Print the domain's content public key (made on first use), for other domains to trust.
    Key {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum EmpiCommand {
    /// List the open pairs of the duplicate review worklist, or decide one.
    ///
    /// Each pair shows its score, the field-by-field comparison and the trusts holding
    /// each record; the summary counts open pairs per pair of trusts (the
    /// cross-organisation duplicates figure). Decisions: merge (the newer record into the
    /// older), not-duplicate (remembered: the pair never returns), defer. Examples:
    ///   tessera empi review
    ///   tessera empi review --decide 01a2…e7 --as not-duplicate --note "twins"
    #[command(verbatim_doc_comment)]
    Review {
        #[command(flatten)]
        store: StoreArgs,
        /// The worklist Task to decide.
        #[arg(long, requires = "decision")]
        decide: Option<String>,
        /// merge, not-duplicate or defer.
        #[arg(long = "as", value_name = "DECISION", value_parser = ["merge", "not-duplicate", "defer"])]
        decision: Option<String>,
        /// A note recorded with the decision.
        #[arg(long)]
        note: Option<String>,
        /// Print the worklist as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Look for duplicates among the records already in the domain and put new pairs on
    /// the review worklist (after a migration, or after changing `[patient_index]`).
    ///
    /// Pairs at or above the lower threshold are proposed, never merged; a pair already on
    /// the worklist (decided "not a duplicate" included) is not proposed again. Example:
    ///   tessera empi scan --data-dir ./tessera-data
    #[command(verbatim_doc_comment)]
    Scan {
        #[command(flatten)]
        store: StoreArgs,
    },
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
    /// The organisation that owns what is imported; the import is then bound to it like a
    /// service account of that organisation (default: the domain itself, unrestricted).
    #[arg(long)]
    org: Option<String>,
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
        /// Access token sent as `Authorization: Bearer …`; get one with
        /// `tessera token --system --data-dir DIR`.
        #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
        token: String,
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
        /// Access token sent as `Authorization: Bearer …`; get one with
        /// `tessera token --system --data-dir DIR`.
        #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
        token: String,
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
    /// Time the clinician's record pages in the web application, as a browser asks for them
    /// (signed in through the form, enforcement and audit on): the record summary, the
    /// results and the trend of the most frequent analyte of one patient — by default the
    /// busiest patient of a Synthea folder (import it first).
    ///
    /// Example:
    ///   tessera bench web --busiest-from ../shared/data/synthea --token "$(tessera token --system)"
    Web {
        /// The server's address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Who signs in (their role must let them open the record, or break the glass).
        #[arg(long, default_value = "dr.patel")]
        user: String,
        #[arg(long, env = "TESSERA_BENCH_PASSWORD", default_value = "demo-doctor-1", hide_env_values = true)]
        password: String,
        /// The patient's id.
        #[arg(long, conflicts_with = "busiest_from")]
        patient: Option<String>,
        /// Time the busiest patient of this folder of Synthea bundles.
        #[arg(long)]
        busiest_from: Option<PathBuf>,
        /// A system token, to find that patient's id.
        #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Timed requests per page.
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// Send HL7 v2 messages to an MLLP interface over concurrent connections and report
    /// messages per second and the latency to each acknowledgement (sent only after the
    /// durable commit): registrations (ADT^A04, a new person each, matched through the
    /// patient index) or results (ORU^R01 with --results numeric results each).
    ///
    /// Example (the demo's interface):
    ///   tessera bench mllp --to 127.0.0.1:2575 --connections 8 --messages 20000
    ///   tessera bench mllp --to 127.0.0.1:2575 --oru --results 10 --messages 10000
    Mllp {
        /// The interface's address.
        #[arg(long, default_value = "127.0.0.1:2575")]
        to: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Messages to send.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Send ORU^R01 results instead of ADT^A04 registrations.
        #[arg(long)]
        oru: bool,
        /// Results (OBX) per ORU^R01.
        #[arg(long, default_value_t = 10)]
        results: usize,
    },
    /// Measure the patient index's matching: quality on a labelled set built from the
    /// Patients of the given bundles (each registered again with typos, nicknames, swapped
    /// names, transposed dates, no NHS number, a new address or a married name; twins and
    /// strangers too), then speed with a large synthetic index.
    ///
    /// Example:
    ///   tessera bench empi ../shared/data/synthea --population 1000000
    Empi {
        /// Bundle files or folders holding the original Patients.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Synthetic people placed around the originals in the quality run.
        #[arg(long, default_value_t = 100_000)]
        background: usize,
        /// Corrupted copies registered per original.
        #[arg(long, default_value_t = 20)]
        copies: usize,
        /// People in the index for the speed run (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        population: usize,
        /// Registrations timed in the speed run.
        #[arg(long, default_value_t = 10_000)]
        queries: usize,
        /// Seed of the generated data (the same seed, the same data).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a mixed workload that grows the database (creates, reads, searches, counts, a
    /// chain, $everything) and print p50/p99 per operation and the server's RSS over time.
    Soak {
        /// FHIR base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        url: String,
        /// Access token sent as `Authorization: Bearer …`; get one with
        /// `tessera token --system --data-dir DIR` (give `--minutes` beyond the run's length).
        #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
        token: String,
        /// Minutes to run (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Concurrent clients, one keep-alive connection each.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 30.0)]
        interval: f64,
        /// The server's process id: its RSS (VmRSS of /proc/PID/status) is printed.
        #[arg(long)]
        pid: Option<u32>,
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
            let (engine, _) = open_engine(&args.store, EngineConfig::default()).await?;
            let org = args.org.clone().unwrap_or_else(|| tessera_domain::BOOTSTRAP_ORGANISATION.to_string());
            let summary = tessera_import::run(&engine, &Access::system(&org), &args.paths, &tessera_import::Options { concurrency: args.concurrency }).await?;
            println!("{summary}");
            if summary.errors.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} error(s) during import", summary.errors.len())
            }
        }
        Command::Bench(BenchCommand::Ingest { url, token, clients, paths }) => {
            let report = tessera_bench::ingest(&url, &token, &paths, clients).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench(BenchCommand::Read { url, token, connections, seconds, resource_type }) => {
            let report = tessera_bench::read(&url, &token, &resource_type, connections, std::time::Duration::from_secs(seconds)).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench(BenchCommand::Web { url, user, password, patient, busiest_from, token, requests }) => {
            let report = tessera_bench::web(tessera_bench::WebOptions { url, user, password, patient, busiest_from, token, requests }).await?;
            print!("{report}");
            Ok(())
        }
        Command::Bench(BenchCommand::Mllp { to, connections, messages, oru, results }) => {
            let kind = if oru { tessera_bench::MllpKind::Results(results) } else { tessera_bench::MllpKind::Registrations };
            let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 0xffffff);
            let options = tessera_bench::MllpOptions { addr: to.clone(), kind, connections, messages, run };
            let bar = indicatif::ProgressBar::new(messages as u64);
            let report = tessera_bench::mllp(&options, &|n| bar.set_position(n as u64)).await?;
            bar.finish_and_clear();
            let what = if oru { format!("ORU^R01 ({results} results each)") } else { "ADT^A04 registrations".to_string() };
            println!("{what} to {to} over {connections} connections");
            println!("  {} of {} acknowledged AA in {:.1} s: {:.0} messages/s", report.accepted, report.messages, report.elapsed.as_secs_f64(), report.per_second());
            println!("  latency to the acknowledgement: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", report.p50_us as f64 / 1000.0, report.p99_us as f64 / 1000.0, report.max_us as f64 / 1000.0);
            if let Some(r) = report.first_refusal {
                println!("  first refusal:\n{r}");
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Empi { paths, background, copies, population, queries, seed }) => {
            let options = tessera_bench::EmpiOptions { paths, background, copies, population, queries, seed };
            let report = tokio::task::spawn_blocking(move || tessera_bench::empi(&options)).await??;
            println!("{report}");
            Ok(())
        }
        Command::Bench(BenchCommand::Soak { url, token, minutes, clients, interval, pid }) => {
            anyhow::ensure!(minutes > 0.0 && interval > 0.0, "--minutes and --interval must be positive");
            let options = tessera_bench::SoakOptions {
                url,
                token,
                duration: std::time::Duration::from_secs_f64(minutes * 60.0),
                clients,
                interval: std::time::Duration::from_secs_f64(interval),
                pid,
                progress: Some(std::sync::Arc::new(|line: &str| println!("{line}"))),
            };
            let report = tessera_bench::soak(options).await?;
            println!("{report}");
            Ok(())
        }
        Command::Token(args) => token(args).await,
        Command::Domain(DomainCommand::Apply { store, file }) => {
            init_logging(false);
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut domain = (*engine.domain()).clone();
            domain.apply_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let changed = engine.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("domain applied from {} ({changed} resources changed)", file.display());
            Ok(())
        }
        Command::Domain(DomainCommand::Show { store }) => {
            let (engine, _) = open_engine_shared(&store, EngineConfig::default()).await?;
            let mut domain = (*engine.domain()).clone();
            domain.users.iter_mut().for_each(|u| u.password_hash = None);
            domain.service_accounts.iter_mut().for_each(|s| s.secret_hash = None);
            println!("{}", serde_json::to_string_pretty(&domain)?);
            Ok(())
        }
        Command::User(cmd) => user(cmd).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Content(command) => content_command(command).await,
        Command::Env(command) => env_command(command).await,
        Command::Onboard(command) => onboard_command(command).await,
        Command::Outbox(command) => outbox_command(command).await,
        Command::Hl7(Hl7Command::Send { files, to, tls_ca, server_name }) => {
            let mut messages = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
                for m in tessera_hl7v2::batch_messages(&text) {
                    match m {
                        Ok(m) => messages.push(m.encode()),
                        Err(e) => anyhow::bail!("{}: {e}", f.display()),
                    }
                }
            }
            let timeout = std::time::Duration::from_secs(30);
            let acks = match &tls_ca {
                None => tessera_mllp::send(&to, &messages, timeout).await,
                Some(ca) => {
                    let host = server_name.clone().unwrap_or_else(|| to.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_else(|| to.clone()));
                    tessera_mllp::send_tls(&to, &host, ca, &messages, timeout).await
                }
            }
            .with_context(|| format!("MLLP to {to}"))?;
            let mut refused = 0;
            for replies in &acks {
                if replies.is_empty() {
                    println!("(no acknowledgement: the message asked for none)");
                }
                for a in replies {
                    println!("{}", a.replace('\r', "\n").trim_end());
                }
                if replies.iter().any(|a| !matches!(tessera_mllp::msa_code(a).as_str(), "AA" | "CA")) {
                    refused += 1;
                }
            }
            anyhow::ensure!(refused == 0, "{refused} of {} message(s) not accepted", acks.len());
            Ok(())
        }
        Command::Upgrade { store, dry_run, package } => {
            init_logging(false);
            // The schema first, found without migrating anything.
            let pending = tessera_store::schema::pending_migrations(&store.data_dir, store.database_url.as_deref()).await?;
            if pending.is_empty() {
                println!("schema: up to date");
            }
            for p in &pending {
                println!("schema: {p}");
            }
            if !dry_run {
                // A freeze stops the schema's migration too: read the domain without migrating.
                if let Some(json) = tessera_store::schema::read_meta(&store.data_dir, store.database_url.as_deref(), "domain").await? {
                    let domain: tessera_domain::Domain = serde_json::from_str(&json).context("the stored domain")?;
                    if let Some(w) = tessera_engine::governance::freeze_at(&domain, time::OffsetDateTime::now_utc()) {
                        anyhow::bail!("production changes are frozen until {} ({}): the upgrade waits", w.end, w.reason);
                    }
                }
            } else if !pending.is_empty() {
                println!("the model content is compared once the schema is current (run without --dry-run outside a freeze)");
                return Ok(());
            }
            let (engine, _) = if dry_run { open_engine_shared(&store, EngineConfig::default()).await? } else { open_engine(&store, EngineConfig::default()).await? };
            let model: serde_json::Value = match package {
                Some(p) => {
                    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                    let pkg = tessera_content::package::Package::parse(&bytes)?;
                    anyhow::ensure!(pkg.manifest.layer == "model", "an upgrade package is of the model layer, not {}", pkg.manifest.layer);
                    pkg.verify(&[tessera_content::ops::domain_key(&engine).await?.public_hex()])?
                }
                None => serde_json::from_str(tessera_content::MODEL_CONTENT)?,
            };
            print!("{}", tessera_content::upgrade::model_content(&engine, &model, dry_run).await?);
            Ok(())
        }
        Command::Empi(EmpiCommand::Scan { store }) => {
            init_logging(false);
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
            bar.set_style(indicatif::ProgressStyle::with_template("{spinner} scanning: {msg} records").expect("template"));
            let (scanned, added) = engine.scan_duplicates(&Access::bootstrap(), &|n| bar.set_message(n.to_string())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            bar.finish_and_clear();
            println!("{scanned} records scanned; {added} new pair(s) on the review worklist (`tessera empi review`)");
            Ok(())
        }
        Command::Empi(EmpiCommand::Review { store, decide, decision, note, json }) => {
            init_logging(false);
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let access = Access::bootstrap();
            if let (Some(task), Some(decision)) = (decide, decision) {
                engine.resolve_candidate(&access, &task, &decision, note.as_deref()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("Task/{task}: {decision}");
                return Ok(());
            }
            let pairs = engine.open_duplicates(&access).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pairs)?);
                return Ok(());
            }
            let mut by_trusts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
            for p in &pairs {
                let name = |t: &[String]| if t.is_empty() { "—".to_string() } else { t.join("+") };
                let (a, b) = (name(&p.newer_trusts), name(&p.older_trusts));
                let key = if a <= b { format!("{a} / {b}") } else { format!("{b} / {a}") };
                *by_trusts.entry(key).or_default() += 1;
                println!("Task/{} ({}) score {:.1}: Patient/{} [{}] ~ Patient/{} [{}]", p.task, p.status, p.score, p.newer, a, p.older, b);
                for (field, how) in &p.fields {
                    println!("    {field:<12} {how}");
                }
            }
            println!("{} open pair(s)", pairs.len());
            for (trusts, n) in by_trusts {
                println!("  {trusts}: {n}");
            }
            Ok(())
        }
        Command::Reindex { store } => {
            let store = open_store(&store).await?;
            let total = store.stats().await.map_err(|e| anyhow::anyhow!("{e}"))?.current_resources;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} reindexing {pos}/{len} resources [{bar:40}] {per_sec} eta {eta}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            let started = std::time::Instant::now();
            store.clear_search_index().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut after = 0;
            let mut done = 0u64;
            while let Some((last, n)) = store.reindex_chunk(after, 2_000).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                after = last;
                done += n as u64;
                bar.set_position(done);
            }
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            println!("reindexed {done} resources in {secs:.1} s ({:.0} resources/s)", done as f64 / secs.max(1e-9));
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { store, anchor, anchor_key, max_problems }) => {
            audit_verify(store, anchor, anchor_key, max_problems).await
        }
    }
}

/// `tessera audit verify`: exits with 2 if the trail is damaged.
async fn audit_verify(store: StoreArgs, anchor: Option<PathBuf>, anchor_key: Option<PathBuf>, max_problems: usize) -> anyhow::Result<()> {
    // The anchor is read first: opening a SQLite directory that no server owns recovers
    // its journal and moves the anchor on (after recording any damage it showed).
    let explicit = anchor.is_some();
    let anchor_path = anchor.or_else(|| store.database_url.is_none().then(|| store.data_dir.join(tessera_store::anchor::FILE_NAME)));
    let (kept, anchor_problem) = match &anchor_path {
        Some(p) if explicit || p.exists() => match tessera_audit::load_anchor(p, anchor_key.as_deref()) {
            Ok(Some(a)) => (Some(a), None),
            Ok(None) => (None, explicit.then(|| format!("there is no anchor at {}", p.display()))),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let store = open_store_shared(&store).await?;
    let options = tessera_audit::VerifyOptions { anchor: kept.clone(), max_problems: max_problems.max(1), ..Default::default() };
    let report = tessera_audit::verify_with(store.as_ref(), &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", report.summary());
    match (&kept, &anchor_path) {
        (Some(a), Some(p)) => println!("anchor: seq {} ({})", a.seq, p.display()),
        _ if anchor_problem.is_none() => {
            println!("no anchor: records removed from the end of the log would not show (see --anchor)")
        }
        _ => {}
    }
    if let Some(e) = &anchor_problem {
        println!("  anchor: {e}");
    }
    for p in &report.problems {
        println!("  seq {}: {}: {}", p.seq, p.kind.name(), p.message);
    }
    if report.more_problems > 0 {
        println!("  … and {} more", report.more_problems);
    }
    if report.problem.is_some() || anchor_problem.is_some() {
        std::process::exit(2);
    }
    Ok(())
}

/// Opens the store for a command that only reads (and may keep a setting, such as the
/// token signing key): safe beside a running server on the same data directory.
async fn open_store_shared(args: &StoreArgs) -> anyhow::Result<tessera_store::DynStore> {
    tessera_store::open_shared(&args.data_dir, args.database_url.as_deref()).await.with_context(|| match &args.database_url {
        Some(_) => "cannot open the PostgreSQL database".to_string(),
        None => format!("cannot open the data directory {}", args.data_dir.display()),
    })
}

/// Opens the store as its owner (commands that write: refused on SQLite while a server
/// owns the data directory, with a message saying so).
async fn open_store(args: &StoreArgs) -> anyhow::Result<tessera_store::DynStore> {
    let store = tessera_store::open(&args.data_dir, args.database_url.as_deref())
        .await
        .with_context(|| match &args.database_url {
            Some(_) => "cannot open the PostgreSQL database".to_string(),
            None => format!("cannot open the data directory {}", args.data_dir.display()),
        })?;
    Ok(store)
}


/// Opens the store as its owner, loads the domain and the token signing key (created on
/// first use).
async fn open_engine(args: &StoreArgs, config: EngineConfig) -> anyhow::Result<(Engine, std::sync::Arc<tessera_auth::Authenticator>)> {
    engine_on(open_store(args).await?, config).await
}

/// [`open_engine`] for commands that only read (and keep settings): safe beside a
/// running server.
async fn open_engine_shared(args: &StoreArgs, config: EngineConfig) -> anyhow::Result<(Engine, std::sync::Arc<tessera_auth::Authenticator>)> {
    engine_on(open_store_shared(args).await?, config).await
}

async fn engine_on(store: tessera_store::DynStore, config: EngineConfig) -> anyhow::Result<(Engine, std::sync::Arc<tessera_auth::Authenticator>)> {
    let engine = Engine::new(store, config);
    engine.load_domain().await.map_err(|e| anyhow::anyhow!("cannot load the domain: {e}"))?;
    const SECRET_KEY: &str = "auth.signing-secret";
    let secret = match engine.setting(SECRET_KEY).await? {
        Some(s) => s,
        None => {
            let s = tessera_auth::Authenticator::encode_secret(&tessera_auth::Authenticator::generate_secret());
            engine.set_setting(SECRET_KEY, &s).await?;
            // Another process may have raced us: use whatever is stored now.
            engine.setting(SECRET_KEY).await?.unwrap_or(s)
        }
    };
    let auth = tessera_auth::Authenticator::from_base64(&secret).map_err(|e| anyhow::anyhow!("the stored signing key is not valid: {e}"))?;
    Ok((engine, std::sync::Arc::new(auth)))
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (engine, auth) = open_engine_shared(&args.store, EngineConfig::default()).await?;
    let domain = engine.domain();
    let now = tessera_auth::now();
    let token = if args.system {
        let org = args.org.clone().unwrap_or_else(|| tessera_domain::BOOTSTRAP_ORGANISATION.to_string());
        anyhow::ensure!(domain.organisation(&org).is_some(), "organisation '{org}' is not in the domain");
        auth.issue_system_token(tessera_engine::SYSTEM_ACCOUNT, &org, args.scope.as_deref().unwrap_or("system/*.*"), now, args.minutes)
    } else {
        let user = args.user.as_deref().context("give --user NAME or --system")?;
        auth.issue_user_token(&domain, user, args.role.as_deref(), args.org.as_deref(), args.location.as_deref(), args.scope.as_deref(), now)
            .map_err(|e| anyhow::anyhow!("{e}"))?
    };
    println!("{token}");
    Ok(())
}

async fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { store, id, name, role, org, locations, password } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let mut domain = (*engine.domain()).clone();
            let existing = domain.user(&id).cloned();
            let mut user = existing.unwrap_or(tessera_domain::User { id: id.clone(), name: name.clone(), password_hash: None, roles: Vec::new(), active: true });
            user.name = name;
            domain.upsert_user(user).map_err(|e| anyhow::anyhow!("{e}"))?;
            domain.add_role(&id, tessera_domain::RoleAssignment { organisation: org, role, locations }).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(p) = password {
                domain.set_password(&id, &p).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            engine.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("user {id} saved");
            Ok(())
        }
        UserCommand::Passwd { store, id, password } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let mut domain = (*engine.domain()).clone();
            domain.set_password(&id, &password).map_err(|e| anyhow::anyhow!("{e}"))?;
            engine.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("password of {id} set");
            Ok(())
        }
        UserCommand::List { store } => {
            let (engine, _) = open_engine_shared(&store, EngineConfig::default()).await?;
            for u in &engine.domain().users {
                let roles: Vec<String> = u.roles.iter().map(|r| format!("{}@{}{}", r.role, r.organisation, if r.locations.is_empty() { String::new() } else { format!(" [{}]", r.locations.join(", ")) })).collect();
                println!("{:<20} {:<28} {}{}", u.id, u.name, roles.join("; "), if u.active { "" } else { " (inactive)" });
            }
            Ok(())
        }
        UserCommand::Unlock { store, id, client } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await.map_err(|e| {
                anyhow::anyhow!("{e:#}\nWhile a server owns this data directory, unlock through it: POST /admin/users/{id}/unlock{} with a domain administrator's token", if client { "?client=true" } else { "" })
            })?;
            let domain = engine.domain();
            let (account, known) = if client {
                (tessera_auth::Account::Client(id.clone()), domain.service_account(&id).is_some_and(|a| a.id != tessera_engine::SYSTEM_ACCOUNT))
            } else {
                (tessera_auth::Account::User(id.clone()), domain.user(&id).is_some())
            };
            anyhow::ensure!(known, "{} '{id}' is not in the domain", if client { "service account" } else { "user" });
            let key = account.lock_key();
            let before = tessera_auth::LockState::parse(engine.setting(&key).await?.as_deref());
            engine.set_setting(&key, "").await?;
            engine.record_auth(&tessera_auth::AuthEvent::unlock(&account, &domain, "tessera user unlock")).await?;
            match before.locked_for(tessera_auth::now()) {
                Some(secs) => println!("{id} unlocked (the lock had {} more minutes to run)", secs.div_ceil(60)),
                None => println!("{id} was not locked; its failed sign-ins are forgotten"),
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let base_url = args.base_url.clone().unwrap_or_else(|| format!("http://{}/fhir", args.listen));
    for origin in args.cors_origins.iter().filter(|o| !o.trim().is_empty()) {
        tessera_http::check_cors_origin(origin).map_err(|e| anyhow::anyhow!("--cors-origin: {e}"))?;
    }
    let mut config = EngineConfig::default();
    config.base_url = base_url.trim_end_matches('/').to_string();
    config.update_create = !args.no_update_create;
    config.limits = tessera_fhir::validation::Limits { max_depth: args.max_depth };
    config.max_bundle_entries = args.max_bundle_entries;
    config.search_limits = tessera_engine::SearchLimits {
        max_parameters: args.max_search_parameters,
        max_values: args.max_search_values,
        max_sort_keys: args.max_sort_keys,
        max_includes: args.max_includes,
        max_elements: args.max_search_values,
        max_offset: args.max_offset,
    };
    tessera_store::set_query_timeout(std::time::Duration::from_secs(args.query_timeout_seconds.max(1)));
    #[cfg(feature = "bench-unenforced")]
    if args.unenforced_benchmark_only {
        tracing::warn!("access policy and read audit are OFF (benchmark build)");
        config = config.unenforced();
    }
    let store = open_store(&args.store).await?;
    if let Some(anchor) = &args.audit_anchor {
        store.set_audit_anchor(anchor).await.with_context(|| format!("cannot keep the audit anchor in {}", anchor.display()))?;
    }
    let (engine, auth) = engine_on(store, config).await?;
    if args.demo {
        demo::load(&engine).await.context("cannot load the demo data")?;
    }
    // The patient index is built in the background: registrations that arrive first wait
    // for it, everything else is served at once.
    let warming = engine.clone();
    tokio::spawn(async move {
        if let Err(e) = warming.warm_patient_index().await {
            tracing::warn!(error = %e, "the patient index could not be built now; it is built at the first registration");
        }
    });
    let mut http = tessera_http::HttpConfig::new(auth);
    http.max_body_bytes = args.max_body_bytes;
    http.cors_origins = args.cors_origins.iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect();
    if args.demo {
        http.cors_origins.extend(tessera_http::DEMO_CORS_ORIGINS.iter().map(|o| o.to_string()));
    }
    if http.cors_origins.iter().any(|o| o == "*") {
        tracing::warn!("CORS allows any origin (--cors-origin '*'): any web page may call this API with a token it holds");
    }
    open_interfaces(&engine, &args).await?;
    if args.no_outbox {
        tracing::info!("the outbox is not delivered by this server (--no-outbox)");
    } else {
        anyhow::ensure!(args.outbox_backoff_seconds > 0.0 && args.outbox_max_backoff_seconds >= args.outbox_backoff_seconds, "--outbox-backoff-seconds must be positive and at most --outbox-max-backoff-seconds");
        let config = tessera_outbound::Config {
            max_attempts: args.outbox_max_attempts.max(1),
            backoff_base: std::time::Duration::from_secs_f64(args.outbox_backoff_seconds),
            backoff_cap: std::time::Duration::from_secs_f64(args.outbox_max_backoff_seconds),
            ..tessera_outbound::Config::default()
        };
        tessera_outbound::start(engine.clone(), config);
    }
    let router = tessera_web::app(engine.clone(), http, tessera_web::WebConfig::from_env());
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(backend = engine.backend(), %base_url, "Tessera is serving FHIR R4");
    tracing::info!(web = %base_url.trim_end_matches("/fhir"), portal = %format!("{}/portal", base_url.trim_end_matches("/fhir")), "the clinicians' web application and the patient portal are on the same address");
    let options = tessera_http::ServeOptions { idle_timeout: std::time::Duration::from_secs(args.idle_timeout_seconds.max(1)) };
    tessera_http::serve_with(listener, router, shutdown_signal(), options).await?;
    tracing::info!("stopped");
    Ok(())
}

/// A declared interface, over TLS when it names a certificate and key.
fn declared_interface(domain: &tessera_domain::Domain, declared: &tessera_domain::Hl7Interface) -> anyhow::Result<tessera_mllp::Interface> {
    let interface = tessera_mllp::Interface::from_domain(domain, declared);
    match (&declared.tls_cert, &declared.tls_key) {
        (Some(cert), Some(key)) => interface.with_tls(std::path::Path::new(cert), std::path::Path::new(key)).map_err(|e| anyhow::anyhow!("interface {}: {e}", declared.id)),
        _ => Ok(interface),
    }
}

/// Opens the HL7 v2 interfaces: those the domain file declares with an address, and the
/// one `--mllp-listen`/`--mllp-org` name.
async fn open_interfaces(engine: &tessera_engine::Engine, args: &ServeArgs) -> anyhow::Result<()> {
    let domain = engine.domain();
    let mut interfaces: Vec<(tessera_mllp::Interface, String, bool)> = Vec::new();
    for declared in &domain.interfaces {
        if let Some(listen) = &declared.listen {
            interfaces.push((declared_interface(&domain, declared)?, listen.clone(), false));
        }
    }
    if let Some(addr) = args.mllp_listen {
        match (&args.mllp_org, domain.interfaces.first()) {
            (Some(org), _) => {
                anyhow::ensure!(domain.organisation(org).is_some(), "--mllp-org {org} is not an organisation of the domain");
                interfaces.push((tessera_mllp::Interface::new(&domain, org.clone()), addr.to_string(), true));
            }
            (None, Some(first)) => {
                interfaces.retain(|(i, _, _)| i.id != first.id);
                interfaces.insert(0, (declared_interface(&domain, first)?, addr.to_string(), true));
            }
            (None, None) => anyhow::bail!("--mllp-listen needs --mllp-org (the organisation whose interface it is): the domain file declares no [[interfaces]]"),
        }
    } else if args.demo && interfaces.is_empty() {
        // A data directory that loaded the demo before interfaces were declared.
        interfaces.push((tessera_mllp::Interface::new(&domain, "rx1"), "127.0.0.1:2575".into(), false));
    }
    for (interface, addr, explicit) in interfaces {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => {
                tracing::info!(%addr, interface = %interface.id, organisation = %interface.organisation, "HL7 v2 over MLLP");
                tokio::spawn(tessera_mllp::serve(engine.clone(), interface, listener));
            }
            // The demo's port may be taken (another demo server): serve without it.
            Err(e) if args.demo && !explicit => tracing::warn!(error = %e, %addr, "the demo's MLLP port is taken: serving without HL7 v2 (set --mllp-listen)"),
            Err(e) => return Err(e).with_context(|| format!("cannot listen for MLLP on {addr} (interface {})", interface.id)),
        }
    }
    Ok(())
}

async fn outbox_command(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::List { store, states, after, limit } => {
            let states = states
                .iter()
                .map(|s| tessera_store::OutboxState::parse(s).ok_or_else(|| anyhow::anyhow!("--state {s}: one of pending, failed, dead, delivered, suppressed")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (engine, _) = open_engine_shared(&store, EngineConfig::default()).await?;
            let items = engine.outbox_list(&tessera_store::OutboxQuery { states, after_seq: after, limit, heads_only: false }).await?;
            println!("{:>8}  {:<38} {:<60} {:<38} {:<10} {:>8}  LAST ERROR", "ID", "SUBSCRIPTION", "RESOURCE", "PATIENT", "STATE", "ATTEMPTS");
            for e in &items {
                let resource = format!("{}/{}/_history/{}", e.item.resource_type, e.item.resource_id, e.item.version);
                let patient = if e.item.patient.is_empty() { "-" } else { e.item.patient.as_str() };
                println!(
                    "{:>8}  {:<38} {:<60} {:<38} {:<10} {:>8}  {}",
                    e.seq,
                    e.item.subscription,
                    resource,
                    patient,
                    e.state.code(),
                    e.attempts,
                    e.last_error.as_deref().unwrap_or("")
                );
            }
            eprintln!("{} item(s)", items.len());
            Ok(())
        }
        OutboxCommand::Replay { store, dead, ids } => {
            anyhow::ensure!(dead || !ids.is_empty(), "name the items to replay (ids from `tessera outbox list`) or give --dead");
            // The replay is audited: on SQLite that needs the data directory's owner.
            let (engine, _) = open_engine(&store, EngineConfig::default())
                .await
                .map_err(|e| anyhow::anyhow!("{e:#}\nOn SQLite, stop the server that owns the data directory to replay its outbox (the server then delivers the items when it starts again)"))?;
            let replayed = engine.outbox_replay(&Access::bootstrap(), &ids).await?;
            for e in &replayed {
                println!("{} ({}/{}/_history/{} for Subscription/{}): was {}, now pending", e.seq, e.item.resource_type, e.item.resource_id, e.item.version, e.item.subscription, e.state.code());
            }
            let missing: Vec<String> = ids.iter().filter(|id| !replayed.iter().any(|e| e.seq == **id)).map(|id| id.to_string()).collect();
            if !missing.is_empty() {
                eprintln!("not replayed (unknown, pending or delivered): {}", missing.join(", "));
            }
            println!("{} item(s) back on the queue", replayed.len());
            Ok(())
        }
    }
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

/// `tessera migrate`: read the extracts, then match (dry run) or register each record.
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    init_logging(false);
    let (engine, _) = open_engine(&args.store, EngineConfig::default()).await?;
    let domain = engine.domain();
    if domain.organisation(&args.org).is_none() {
        anyhow::bail!("'{}' is not an organisation of the domain (see `tessera domain show`)", args.org);
    }
    let mut options = tessera_migrate::Options::new(domain.mrn_system(&args.org));
    for a in &args.authorities {
        let Some((authority, system)) = a.split_once('=') else { anyhow::bail!("--authority takes AUTHORITY=SYSTEM, not '{a}'") };
        options.authorities.insert(authority.to_string(), system.to_string());
    }
    let mut records = Vec::new();
    for path in &args.paths {
        records.extend(tessera_migrate::read_path(path, &options).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { indicatif::ProgressBar::new(records.len() as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} matching {pos}/{len} records [{bar:40}] {per_sec} eta {eta}").expect("template").progress_chars("=> "),
    );
    let access = Access::system(&args.org);
    let report = tessera_migrate::run::run(&engine, &access, records, args.dry_run, &|| bar.inc(1)).await;
    bar.finish_and_clear();
    match args.json.as_deref() {
        Some(p) if p == std::path::Path::new("-") => println!("{}", serde_json::to_string_pretty(&report)?),
        Some(p) => {
            std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
            println!("{report}");
        }
        None => println!("{report}"),
    }
    Ok(())
}

fn content_layer(code: &str) -> anyhow::Result<tessera_engine::content::Layer> {
    tessera_engine::content::Layer::parse(code).with_context(|| format!("unknown layer '{code}': model, domain, organisation or site"))
}

async fn content_command(command: ContentCommand) -> anyhow::Result<()> {
    use tessera_content::{diff, ops, package::Package};
    init_logging(false);
    match command {
        ContentCommand::Export { store, layer, org, version, out } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let (manifest, bytes) = ops::export(&engine, content_layer(&layer)?, org.as_deref(), version.as_deref()).await?;
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{}: {} items of the {} layer{}, version {}, sha256 {}, signed by {}",
                out.display(),
                manifest.items,
                manifest.layer,
                manifest.organisation.as_deref().map(|o| format!(" of {o}")).unwrap_or_default(),
                manifest.version,
                manifest.sha256,
                manifest.public_key
            );
            Ok(())
        }
        ContentCommand::Import { store, trust_key, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let report = ops::import(&engine, &bytes, &trust_key).await?;
            println!("{}: verified and loaded {} items ({} layer, version {})", file.display(), report.items, report.manifest.layer, report.manifest.version);
            for c in &report.changes {
                println!("{c}");
            }
            Ok(())
        }
        ContentCommand::Diff { a, b } => {
            let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
                let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                Ok(Package::parse(&bytes)?.content_unverified()?)
            };
            let changes = diff::diff(&read(&a)?, &read(&b)?);
            for c in &changes {
                println!("{c}");
            }
            println!("{} difference(s)", changes.len());
            Ok(())
        }
        ContentCommand::Impact { store, file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let package = Package::parse(&bytes)?;
            let (engine, _) = open_engine_shared(&store, EngineConfig::default()).await?;
            let layer = content_layer(&package.manifest.layer)?;
            let before = ops::current(&engine, layer, package.manifest.organisation.as_deref()).await?;
            let changes = diff::diff(&before, &package.content_unverified()?);
            for c in &changes {
                println!("{c}");
            }
            print!("{}", ops::impact(&engine, &changes).await?);
            Ok(())
        }
        ContentCommand::Key { store } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            println!("{}", ops::domain_key(&engine).await?.public_hex());
            Ok(())
        }
    }
}

async fn env_command(command: EnvCommand) -> anyhow::Result<()> {
    use tessera_content::env;
    init_logging(false);
    match command {
        EnvCommand::Create { kind, stores, synthetic } => {
            let kind = env::EnvKind::parse(&kind).with_context(|| format!("unknown environment '{kind}': build, test, train or cert"))?;
            let (production, _) = open_engine_shared(&stores.from()?, EngineConfig::default()).await?;
            let (target, _) = open_engine(&stores.to()?, EngineConfig::default()).await?;
            let report = env::create(&production, &target, kind).await?;
            println!("{report}");
            if !synthetic.is_empty() {
                let org = target.domain().organisations.iter().find(|o| o.parent.is_none() && o.id != tessera_domain::BOOTSTRAP_ORGANISATION).map(|o| o.id.clone()).unwrap_or_else(|| tessera_domain::BOOTSTRAP_ORGANISATION.to_string());
                let summary = tessera_import::run(&target, &Access::system(&org), &synthetic, &tessera_import::Options { concurrency: 2 }).await?;
                println!("synthetic patients: {summary}");
            }
            Ok(())
        }
        EnvCommand::Drift { stores } => {
            let (a, _) = open_engine_shared(&stores.from()?, EngineConfig::default()).await?;
            let (b, _) = open_engine_shared(&stores.to()?, EngineConfig::default()).await?;
            let lines = env::drift(&a, &b).await?;
            for l in &lines {
                println!("{l}");
            }
            println!("{} difference(s) from {} to {}", lines.len(), env::kind_of(&a).await?.code(), env::kind_of(&b).await?.code());
            Ok(())
        }
        EnvCommand::Promote { stores, request } => {
            let (from, _) = open_engine_shared(&stores.from()?, EngineConfig::default()).await?;
            let (to, _) = open_engine(&stores.to()?, EngineConfig::default()).await?;
            let moved = env::promote(&from, &to, &request).await?;
            for (a, b) in &moved {
                println!("{a} → change request {b} (to be signed off there)");
            }
            println!("{} change request(s) promoted", moved.len());
            Ok(())
        }
        EnvCommand::Refresh { stores } => {
            let (production, _) = open_engine_shared(&stores.from()?, EngineConfig::default()).await?;
            let (target, _) = open_engine(&stores.to()?, EngineConfig::default()).await?;
            let (written, deleted) = env::refresh(&production, &target).await?;
            println!("{written} content items written, {deleted} removed");
            Ok(())
        }
    }
}

async fn onboard_command(command: OnboardCommand) -> anyhow::Result<()> {
    use tessera_content::onboard;
    init_logging(false);
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let report = match command {
        OnboardCommand::NewDomain { store, domain_file } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let file = domain_file.as_ref().map(read).transpose()?;
            onboard::new_domain_from_model(&engine, file.as_deref()).await?
        }
        OnboardCommand::CopyDomain { stores } => {
            let (source, _) = open_engine_shared(&stores.from()?, EngineConfig::default()).await?;
            let (target, _) = open_engine(&stores.to()?, EngineConfig::default()).await?;
            onboard::new_domain_from_copy(&source, &target).await?
        }
        OnboardCommand::Join { store, org_file } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            onboard::join(&engine, &read(&org_file)?, 3).await?
        }
        OnboardCommand::JoinModel { store, org_file } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let first = onboard::new_domain_from_model(&engine, None).await?;
            print!("{first}");
            onboard::join(&engine, &read(&org_file)?, 4).await?
        }
        OnboardCommand::Optimise { store, title, configuration, content } => {
            let (engine, _) = open_engine(&store, EngineConfig::default()).await?;
            let configuration = configuration.as_ref().map(read).transpose()?;
            let content = match content {
                Some(p) => {
                    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                    let pkg = tessera_content::package::Package::parse(&bytes)?;
                    Some(pkg.verify(&[tessera_content::ops::domain_key(&engine).await?.public_hex()])?)
                }
                None => None,
            };
            onboard::optimise(&engine, configuration.as_deref(), content, &title).await?
        }
    };
    print!("{report}");
    Ok(())
}
