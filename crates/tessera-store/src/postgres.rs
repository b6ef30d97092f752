//! The PostgreSQL backend.
//!
//! * A connection pool (deadpool) serves reads; every read is a single statement, so it
//!   sees one consistent snapshot.
//! * One writer task group-commits: it drains every queued [`Transaction`] (up to
//!   [`MAX_BATCH_WRITES`] writes), checks all preconditions, writes the accepted ones with a
//!   handful of array (`unnest`) statements, commits once (one WAL flush) and then
//!   acknowledges each caller.
//! * The schema is created on connect, idempotently, under an advisory lock so that any
//!   number of servers may start at the same time.
//!
//! # Tables, and how they distribute on a Citus-class engine
//!
//! The patient compartment is the distribution key: clinical data (by far the bulk) is
//! partitioned by patient, so everything about one patient lives on one shard. The
//! schema below runs unchanged on plain PostgreSQL; every unique key already includes the
//! column its table would be distributed by, so distributing is a matter of:
//!
//! ```sql
//! SELECT create_distributed_table('resource_version', 'compartment');
//! SELECT create_distributed_table('resource_current', 'id');
//! SELECT create_distributed_table('identifier_index', 'value');
//! SELECT create_distributed_table('care_link', 'patient', colocate_with => 'resource_version');
//! SELECT create_distributed_table('audit_log', 'seq');
//! SELECT create_distributed_table('audit_patient', 'patient', colocate_with => 'resource_version');
//! SELECT create_distributed_table('outbox', 'patient', colocate_with => 'resource_version');
//! SELECT create_reference_table('tessera_meta');
//! ```
//!
//! * `resource_version`: every version ever written, the resource JSON zstd-compressed
//!   (see [`crate::codec`]; the column is `STORAGE EXTERNAL` so PostgreSQL does not try to
//!   compress it a second time). Key `(res_type, id, version, compartment)`: the
//!   compartment is last so that `(res_type, id[, version])` lookups (vread, instance
//!   history) use the key's prefix on one node, and it is in the key at all because a
//!   distributed unique key must contain the distribution column. Resources outside any
//!   patient compartment (Organization, Practitioner, …) use the compartment `''` and
//!   so share one shard; they are a small fraction of the data.
//!   Uniqueness of `(res_type, id, version)` itself is guaranteed by the writer (a
//!   version must be greater than the current one, checked against `resource_current`),
//!   which is what would hold on a distributed engine too.
//!   Two more indexes, kept because each serves a history listing that would otherwise
//!   scan: `(seq)` for system history and `(res_type, seq)` for type history.
//!   `last_updated` is not indexed (`_since` filters while walking `seq`, which grows with
//!   it).
//! * `resource_current`: the *locator*, one row per resource: its current version, commit
//!   sequence, deleted flag, compartment, owner and current identifiers. Reads by
//!   `(type, id)` do not know the compartment, so this table is keyed and would be
//!   distributed by `id` (a router query to one shard), and tells where the version row
//!   lives. On plain PostgreSQL a read is one join; on Citus it becomes two router
//!   queries (locator, then the version row with its compartment). The identifiers of
//!   the current version are kept here (a small JSON array) so that an update can remove
//!   exactly the index rows it replaces by primary key, without an extra
//!   `(res_type, id)` index on `identifier_index` (which on Citus would also fan out to
//!   every shard). For the same reason `link_patients` lists the patients of the
//!   resource's current care links.
//! * `identifier_index`: `(res_type, value, system, id)` for each business identifier of
//!   each current, non-deleted resource; conditional creates and `identifier=` searches
//!   look values up, so it would be distributed by `value` (router lookups).
//! * `care_link`: the care links (encounter, appointment, referral, care team, consent
//!   denial …) of each resource's current version, keyed
//!   `(patient, source_type, source_id, n)`: distributed by patient and co-located with
//!   the patient's clinical data, so "the links of this patient" (what access decisions
//!   need) is a router query. A write deletes the previous links by that key (their
//!   patients come from `resource_current.link_patients`) and inserts the new ones.
//! * `audit_log`: the append-only, hash-chained audit trail, one row per record, keyed
//!   by its chain position `seq` (gapless, assigned by the writer), the AuditEvent
//!   zstd-compressed; indexed by `(user_id, seq)`, `recorded` and (partially) the
//!   break-glass records. Distributed by `seq` (verification walks it in `seq` order; a
//!   query by user fans out). The code never updates or deletes its rows.
//! * `audit_patient`: `(patient, seq)` for "who accessed this patient" queries;
//!   distributed by patient.
//! * `outbox`: the notifications of subscriptions, added by the writer in the transaction
//!   of the change they notify, keyed `(patient, seq)` (`seq` from `outbox_seq`, drawn in
//!   commit order): distributed by patient and co-located with the patient's data, since
//!   delivery is in order per subscription and patient. Resources outside every
//!   compartment use the patient `''`.
//! * `tessera_meta`: a tiny key/value table for server state; a reference table
//!   (replicated to every node).
//! * `resource_seq`: the global commit sequence (`seq`), drawn by the single writer.
//!
//! The writer takes a transaction-level advisory lock for each group commit, so writers
//! in several server processes against one database are serialised too and the
//! precondition checks stay race-free; on Citus that lock lives on the coordinator. The
//! head of the audit chain is read inside that transaction, under that lock, so servers
//! sharing a database extend one chain.
//!
//! The statements are written for one PostgreSQL node. On Citus, the two that join
//! tables distributed by different columns (`read`: locator → version; `find`: identifier
//! index → locator) would each become two router queries.
//!
//! Space per resource (measured with 1.3 KB Observations, UUID ids): the version row is
//! the compressed JSON plus ~190 bytes, its three indexes ~230 bytes, the locator row and
//! its key ~340 bytes, and each business identifier ~220 bytes (row and key): about
//! 1.6 KB in all for a resource whose JSON compresses to 560 bytes.

use crate::{
    codec, parse_patients, token_matches, AuditQuery, AuditRecord, CareLink, ChainHead, ConflictReason, Criteria,
    HistoryQuery, NewAudit, OutboxEntry, OutboxItem, OutboxQuery, OutboxState, PendingAudit, Precondition, Result, Store,
    StoreError, StoreMetrics, StoreStats, Stored, Transaction, Write,
};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

const SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS resource_seq AS bigint;
CREATE TABLE IF NOT EXISTS resource_version (
    seq          bigint  NOT NULL,
    version      bigint  NOT NULL,
    last_updated bigint  NOT NULL,
    deleted      boolean NOT NULL,
    compartment  text    NOT NULL DEFAULT '',
    res_type     text    NOT NULL,
    id           text    NOT NULL,
    owner        text,
    data         bytea   NOT NULL,
    PRIMARY KEY (res_type, id, version, compartment)
);
ALTER TABLE resource_version ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS resource_version_seq ON resource_version (seq);
CREATE INDEX IF NOT EXISTS resource_version_type_seq ON resource_version (res_type, seq);
CREATE TABLE IF NOT EXISTS resource_current (
    version     bigint  NOT NULL,
    seq         bigint  NOT NULL,
    deleted     boolean NOT NULL,
    res_type    text    NOT NULL,
    id          text    NOT NULL,
    compartment text    NOT NULL DEFAULT '',
    owner       text,
    identifiers text,
    PRIMARY KEY (res_type, id)
);
CREATE INDEX IF NOT EXISTS resource_current_type_seq ON resource_current (res_type, seq);
CREATE INDEX IF NOT EXISTS resource_current_compartment ON resource_current (compartment, seq);
CREATE TABLE IF NOT EXISTS sp_token (p bigint NOT NULL, code text COLLATE "C" NOT NULL, system text COLLATE "C" NOT NULL,
    seq bigint NOT NULL, PRIMARY KEY (p, code, system, seq));
CREATE INDEX IF NOT EXISTS sp_token_seq ON sp_token (seq);
CREATE TABLE IF NOT EXISTS sp_token_pc (p bigint NOT NULL, patient text COLLATE "C" NOT NULL, code text COLLATE "C" NOT NULL,
    seq bigint NOT NULL, system text COLLATE "C" NOT NULL, PRIMARY KEY (p, patient, code, seq, system));
CREATE INDEX IF NOT EXISTS sp_token_pc_seq ON sp_token_pc (seq);
CREATE TABLE IF NOT EXISTS sp_string (p bigint NOT NULL, norm text COLLATE "C" NOT NULL, exact text NOT NULL, seq bigint NOT NULL);
CREATE INDEX IF NOT EXISTS sp_string_key ON sp_string (p, norm);
CREATE INDEX IF NOT EXISTS sp_string_seq ON sp_string (seq);
CREATE TABLE IF NOT EXISTS sp_date (p bigint NOT NULL, low bigint NOT NULL, high bigint NOT NULL, seq bigint NOT NULL);
CREATE INDEX IF NOT EXISTS sp_date_key ON sp_date (p, low, high);
CREATE INDEX IF NOT EXISTS sp_date_seq ON sp_date (seq);
CREATE INDEX IF NOT EXISTS sp_date_high ON sp_date (p, high);
CREATE TABLE IF NOT EXISTS sp_quantity (p bigint NOT NULL, value float8 NOT NULL, low float8 NOT NULL, high float8 NOT NULL,
    system text COLLATE "C" NOT NULL, code text COLLATE "C" NOT NULL, seq bigint NOT NULL);
CREATE INDEX IF NOT EXISTS sp_quantity_key ON sp_quantity (p, value);
CREATE INDEX IF NOT EXISTS sp_quantity_seq ON sp_quantity (seq);
CREATE TABLE IF NOT EXISTS sp_reference (p bigint NOT NULL, target_id text COLLATE "C" NOT NULL,
    target_type text COLLATE "C" NOT NULL, url text COLLATE "C" NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (p, target_id, target_type, url, seq));
CREATE INDEX IF NOT EXISTS sp_reference_seq ON sp_reference (seq);
CREATE TABLE IF NOT EXISTS sp_uri (p bigint NOT NULL, uri text COLLATE "C" NOT NULL, seq bigint NOT NULL, PRIMARY KEY (p, uri, seq));
CREATE INDEX IF NOT EXISTS sp_uri_seq ON sp_uri (seq);
CREATE TABLE IF NOT EXISTS sp_token_quantity (p bigint NOT NULL, code text COLLATE "C" NOT NULL, seq bigint NOT NULL,
    system text COLLATE "C" NOT NULL, value float8 NOT NULL, low float8 NOT NULL, high float8 NOT NULL,
    unit_system text COLLATE "C" NOT NULL, unit text COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS sp_token_quantity_key ON sp_token_quantity (p, code, value);
CREATE INDEX IF NOT EXISTS sp_token_quantity_seq ON sp_token_quantity (seq);
CREATE TABLE IF NOT EXISTS sp_token_text (p bigint NOT NULL, text text COLLATE "C" NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (p, text, seq));
CREATE INDEX IF NOT EXISTS sp_token_text_seq ON sp_token_text (seq);
CREATE TABLE IF NOT EXISTS sp_token_token (p bigint NOT NULL, code text COLLATE "C" NOT NULL, code2 text COLLATE "C" NOT NULL,
    seq bigint NOT NULL, system text COLLATE "C" NOT NULL, system2 text COLLATE "C" NOT NULL);
CREATE INDEX IF NOT EXISTS sp_token_token_key ON sp_token_token (p, code, code2);
CREATE INDEX IF NOT EXISTS sp_token_token_seq ON sp_token_token (seq);
CREATE TABLE IF NOT EXISTS identifier_index (
    res_type text NOT NULL,
    value    text NOT NULL,
    system   text NOT NULL,
    id       text NOT NULL,
    PRIMARY KEY (res_type, value, system, id)
);
CREATE TABLE IF NOT EXISTS tessera_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
ALTER TABLE resource_current ADD COLUMN IF NOT EXISTS link_patients text;
CREATE TABLE IF NOT EXISTS care_link (
    patient      text    NOT NULL,
    source_type  text    NOT NULL,
    source_id    text    NOT NULL,
    n            integer NOT NULL,
    kind         text    NOT NULL,
    organisation text,
    location     text,
    practitioner text,
    start_micros bigint,
    end_micros   bigint,
    active       boolean NOT NULL,
    PRIMARY KEY (patient, source_type, source_id, n)
);
CREATE INDEX IF NOT EXISTS care_link_location ON care_link (location, kind) WHERE location IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    seq         bigint  NOT NULL PRIMARY KEY,
    recorded    bigint  NOT NULL,
    user_id     text,
    action      text    NOT NULL,
    break_glass boolean NOT NULL,
    patients    text,
    prev_hash   bytea   NOT NULL,
    hash        bytea   NOT NULL,
    event       bytea   NOT NULL
);
ALTER TABLE audit_log ALTER COLUMN event SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS audit_log_user ON audit_log (user_id, seq);
CREATE INDEX IF NOT EXISTS audit_log_recorded ON audit_log (recorded);
CREATE INDEX IF NOT EXISTS audit_log_break_glass ON audit_log (seq) WHERE break_glass;
CREATE TABLE IF NOT EXISTS audit_patient (
    patient text   NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (patient, seq)
);
CREATE TABLE IF NOT EXISTS type_count (
    res_type text   NOT NULL PRIMARY KEY,
    live     bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS token_count (
    p      bigint NOT NULL,
    code   text COLLATE "C" NOT NULL,
    system text COLLATE "C" NOT NULL,
    live   bigint NOT NULL,
    PRIMARY KEY (p, code, system)
);
CREATE SEQUENCE IF NOT EXISTS outbox_seq AS bigint;
CREATE TABLE IF NOT EXISTS outbox (
    patient      text   NOT NULL,
    seq          bigint NOT NULL,
    subscription text   NOT NULL,
    res_type     text   NOT NULL,
    res_id       text   NOT NULL,
    version      bigint NOT NULL,
    created      bigint NOT NULL,
    state        text   NOT NULL,
    attempts     integer NOT NULL,
    next_attempt bigint NOT NULL,
    last_error   text,
    updated      bigint NOT NULL,
    PRIMARY KEY (patient, seq)
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (seq) WHERE state IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (subscription, patient, seq) WHERE state IN ('pending', 'failed');
"#;

/// Every relation [`SCHEMA`] creates.
pub(crate) const SCHEMA_OBJECTS: [&str; 21] = [
    "resource_seq",
    "resource_version",
    "resource_version_seq",
    "resource_version_type_seq",
    "resource_current",
    "identifier_index",
    "tessera_meta",
    "care_link",
    "care_link_location",
    "audit_log",
    "audit_log_user",
    "audit_log_recorded",
    "audit_log_break_glass",
    "audit_patient",
    "type_count",
    "token_count",
    "outbox_seq",
    "outbox",
    "outbox_open",
    "outbox_state",
    "outbox_group",
];

/// Advisory lock class ids (first key of the two-key form; the second is the schema).
const LOCK_SCHEMA: i32 = 0x5445_5353; // "TESS"
const LOCK_WRITER: i32 = 0x5445_5357; // "TESW"

/// Upper bound of writes per group commit.
pub const MAX_BATCH_WRITES: usize = 20_000;
/// Upper bound of (compressed) resource bytes per group commit.
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Upper bound of bytes bound to one multi-row statement.
const MAX_STATEMENT_BYTES: usize = 16 << 20;
/// Queued transactions beyond which `commit` waits (back pressure).
const QUEUE_DEPTH: usize = 4096;
const POOL_SIZE: usize = 16;

/// What one caller asked the writer to commit.
struct Work {
    writes: Transaction,
    audit: Vec<PendingAudit>,
    /// Outbox items, stored if and only if the writes are.
    outbox: Vec<OutboxItem>,
}

type Job = (Work, oneshot::Sender<Result<()>>);

pub struct PostgresStore {
    pool: Pool,
    writer: Option<mpsc::Sender<Job>>,
    metrics: Arc<StoreMetrics>,
    /// For stores opened with [`PostgresStore::connect_isolated`]: the schema to drop.
    isolated: Option<(tokio_postgres::Config, String)>,
    /// The audit anchor, once [`Store::set_audit_anchor`] set one (see `audit_head_keeper`).
    anchor: AnchorSlot,
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` string),
    /// creating the schema if needed.
    pub async fn connect(url: &str) -> Result<Self> {
        let config = parse_config(url)?;
        Self::start(config, None).await
    }

    /// Connects and works in a fresh schema of its own (for tests). The schema is dropped,
    /// best effort, when the store is dropped.
    pub async fn connect_isolated(url: &str) -> Result<Self> {
        let base = parse_config(url)?;
        let schema = unique_schema_name();
        let (client, conn) = base
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {}", pg_message(&e))))?;
        let conn_task = tokio::spawn(conn);
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.map_err(pg)?;
        drop(client);
        let _ = conn_task.await;
        let mut config = base.clone();
        let options = match base.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -csearch_path={schema}"),
            _ => format!("-csearch_path={schema}"),
        };
        config.options(&options);
        Self::start(config, Some((base, schema))).await
    }

    async fn start(config: tokio_postgres::Config, isolated: Option<(tokio_postgres::Config, String)>) -> Result<Self> {
        let mut config = config;
        if config.get_application_name().is_none() {
            config.application_name("tessera");
        }
        if let Some(t) = crate::query_timeout() {
            // Every statement of this process's connections is bounded.
            let timeout = format!("-c statement_timeout={}", t.as_millis());
            let options = match config.get_options() {
                Some(o) if !o.trim().is_empty() => format!("{o} {timeout}"),
                _ => timeout,
            };
            config.options(&options);
        }
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot create PostgreSQL pool: {e}")))?;
        create_schema(&pool).await?;
        let metrics = Arc::new(StoreMetrics::default());
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        tokio::spawn(writer_loop(pool.clone(), rx, metrics.clone()));
        let anchor = AnchorSlot::default();
        tokio::spawn(audit_head_keeper(pool.clone(), metrics.clone(), anchor.clone()));
        tokio::spawn(statistics_keeper(pool.clone(), metrics.clone()));
        Ok(PostgresStore { pool, writer: Some(tx), metrics, isolated, anchor })
    }

    /// The schema an isolated store works in.
    pub fn schema(&self) -> Option<&str> {
        self.isolated.as_ref().map(|(_, s)| s.as_str())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(pool_error)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has finished what it holds.
        self.writer.take();
        self.pool.close();
        let Some((config, schema)) = self.isolated.take() else { return };
        // Drop the test schema on a thread of its own: `drop` may run inside (or outside)
        // an async runtime, and must not block it for long.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new().name("tessera-pg-drop-schema".into()).spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async move {
                    if let Ok((client, conn)) = config.connect(NoTls).await {
                        let task = tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await;
                        drop(client);
                        let _ = task.await;
                    }
                });
            }
            let _ = done_tx.send(());
        });
        if spawned.is_ok() {
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(15));
        }
    }
}

fn parse_config(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL connection string: {}", pg_message(&e))))
}

fn unique_schema_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Mix so that names from processes started in the same nanosecond still differ.
    let mut x = nanos ^ ((std::process::id() as u64) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("tessera_test_{x:016x}{n:x}")
}

async fn create_schema(pool: &Pool) -> Result<()> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {}", pool_message(&e))))?;
    let tx = client.transaction().await.map_err(pg)?;
    // The query timeout bounds what requests ask for, not the schema's creation.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", &[&LOCK_SCHEMA])
        .await
        .map_err(|e| StoreError::Backend(format!("cannot create the schema: {}", pg_message(&e))))?;
    // Only when something is missing: the script's ALTER TABLE would otherwise take a
    // brief exclusive lock on a live table at every start.
    let missing: bool = tx
        .query_one(
            "SELECT bool_or(to_regclass(name) IS NULL) FROM unnest($1::text[]) AS name",
            &[&SCHEMA_OBJECTS.to_vec()],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| StoreError::Backend(format!("cannot inspect the schema: {}", pg_message(&e))))?;
    if missing {
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot create the schema: {}", pg_message(&e))))?;
    }
    // A database written before the writer kept `type_count`: filled once, under the
    // writer's lock so that no commit changes the counts meanwhile.
    let filled = tx
        .query_opt("SELECT 1 FROM tessera_meta WHERE key = 'type_count'", &[])
        .await
        .map_err(|e| StoreError::Backend(format!("cannot inspect the schema: {}", pg_message(&e))))?
        .is_some();
    if !filled {
        tx.execute("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", &[&LOCK_WRITER]).await.map_err(pg)?;
        tx.batch_execute(
            "DELETE FROM type_count; \
             INSERT INTO type_count SELECT res_type, count(*) FROM resource_current WHERE NOT deleted GROUP BY res_type; \
             INSERT INTO tessera_meta (key, value) VALUES ('type_count', '1') ON CONFLICT (key) DO NOTHING;",
        )
        .await
        .map_err(|e| StoreError::Backend(format!("cannot count the resources: {}", pg_message(&e))))?;
    }
    // The same for `token_count` (per-code counts of the resources' own token rows).
    let filled = tx
        .query_opt("SELECT 1 FROM tessera_meta WHERE key = 'token_count'", &[])
        .await
        .map_err(|e| StoreError::Backend(format!("cannot inspect the schema: {}", pg_message(&e))))?
        .is_some();
    if !filled {
        tx.execute("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", &[&LOCK_WRITER]).await.map_err(pg)?;
        let keys: Vec<i64> = tessera_fhir::definitions::resource_types()
            .flat_map(|t| tessera_fhir::definitions::search_parameters_for(t).map(move |sp| crate::search::param_key(t, &sp.code)))
            .filter(|p| crate::search::counted_token(*p))
            .collect();
        tx.execute("DELETE FROM token_count", &[]).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO token_count SELECT p, code, system, count(*) FROM sp_token WHERE seq < $1 AND p = ANY($2::bigint[]) GROUP BY p, code, system",
            &[&crate::search::CONTAINED_BASE, &keys],
        )
        .await
        .map_err(|e| StoreError::Backend(format!("cannot count the coded values: {}", pg_message(&e))))?;
        tx.execute("INSERT INTO tessera_meta (key, value) VALUES ('token_count', '1') ON CONFLICT (key) DO NOTHING", &[]).await.map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(())
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            m.push_str(": ");
            m.push_str(detail);
        }
        return m;
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
        return StoreError::TooCostly(crate::query_timeout().unwrap_or_default());
    }
    StoreError::Backend(format!("postgresql: {}", pg_message(&e)))
}

fn pool_message(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => pg_message(e),
        other => other.to_string(),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Backend(format!("postgresql pool: {}", pool_message(&e)))
}

const COLUMNS: &str = "v.res_type, v.id, v.version, v.seq, v.last_updated, v.deleted, v.compartment, v.owner, v.data";

fn row_to_stored(row: &tokio_postgres::Row) -> Result<Stored> {
    let get_err = |e: tokio_postgres::Error| StoreError::Backend(format!("postgresql: unexpected row: {}", pg_message(&e)));
    let data: &[u8] = row.try_get(8).map_err(get_err)?;
    let compartment: String = row.try_get(6).map_err(get_err)?;
    Ok(Stored {
        resource_type: row.try_get(0).map_err(get_err)?,
        id: row.try_get(1).map_err(get_err)?,
        version: row.try_get::<_, i64>(2).map_err(get_err)? as u64,
        seq: row.try_get(3).map_err(get_err)?,
        last_updated_micros: row.try_get(4).map_err(get_err)?,
        deleted: row.try_get(5).map_err(get_err)?,
        compartment: (!compartment.is_empty()).then_some(compartment),
        owner: row.try_get(7).map_err(get_err)?,
        json: codec::decode(data)?,
    })
}

const AUDIT_COLUMNS: &str =
    "a.seq, a.recorded, a.user_id, a.action, a.break_glass, a.patients, a.prev_hash, a.hash, a.event";

fn row_to_audit(row: &tokio_postgres::Row) -> Result<AuditRecord> {
    audit_row(row, false)
}

/// [`row_to_audit`] for verification: a damaged row is returned as well as it can be read
/// (see [`Store::audit_scan`]), never an error.
fn row_to_audit_lenient(row: &tokio_postgres::Row) -> Result<AuditRecord> {
    audit_row(row, true)
}

fn audit_row(row: &tokio_postgres::Row, lenient: bool) -> Result<AuditRecord> {
    let get_err = |e: tokio_postgres::Error| StoreError::Backend(format!("postgresql: unexpected row: {}", pg_message(&e)));
    let patients: Option<&str> = row.try_get(5).map_err(get_err)?;
    let event: &[u8] = row.try_get(8).map_err(get_err)?;
    Ok(AuditRecord {
        seq: row.try_get(0).map_err(get_err)?,
        recorded_micros: row.try_get(1).map_err(get_err)?,
        user: row.try_get(2).map_err(get_err)?,
        action: row.try_get(3).map_err(get_err)?,
        break_glass: row.try_get(4).map_err(get_err)?,
        patients: if lenient { crate::parse_patients_lenient(patients) } else { parse_patients(patients)? },
        prev_hash: row.try_get(6).map_err(get_err)?,
        hash: row.try_get(7).map_err(get_err)?,
        event: if lenient { codec::decode(event).unwrap_or_else(|_| event.to_vec()) } else { codec::decode(event)? },
    })
}

type Param = Box<dyn ToSql + Sync + Send>;

/// The head of the audit chain as stored.
async fn read_audit_head(pool: &Pool) -> Result<ChainHead> {
    let c = pool.get().await.map_err(pool_error)?;
    let stmt = c.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").await.map_err(pg)?;
    match c.query_opt(&stmt, &[]).await.map_err(pg)? {
        Some(row) => {
            let seq: i64 = row.try_get(0).map_err(pg)?;
            let hash: &[u8] = row.try_get(1).map_err(pg)?;
            ChainHead::from_stored(seq, hash)
        }
        None => Ok(ChainHead::GENESIS),
    }
}

/// The stored hash of audit record `seq`, if there is one.
async fn audit_hash_at(pool: &Pool, seq: i64) -> Result<Option<Vec<u8>>> {
    let c = pool.get().await.map_err(pool_error)?;
    let stmt = c.prepare_cached("SELECT hash FROM audit_log WHERE seq = $1").await.map_err(pg)?;
    match c.query_opt(&stmt, &[&seq]).await.map_err(pg)? {
        Some(row) => Ok(Some(row.try_get(0).map_err(pg)?)),
        None => Ok(None),
    }
}

/// Where [`PostgresStore`] keeps its audit anchor writer.
#[derive(Clone, Default)]
struct AnchorSlot(Arc<std::sync::Mutex<Option<crate::anchor::AnchorWriter>>>);

/// Follows the head of the audit chain (every [`HEAD_POLL`], whoever appends to it):
/// exports it ([`StoreMetrics::audit_head_seq`]) and keeps the anchor, if one is set, at
/// it — never backwards, nor past a record the anchor saw that changed (it stays as the
/// evidence; see [`crate::anchor::AnchorWriter::update`]). Ends, making the anchor durable,
/// when the store is dropped.
/// A pooled connection running a search statement. When the request is dropped before the
/// statement finishes (the client went away), the statement is cancelled on the server at
/// once rather than at the statement timeout, and the connection is closed instead of going
/// back to the pool (so that a late cancel can never hit the next request's statement).
struct Running(Option<deadpool_postgres::Client>);

impl Running {
    fn new(client: deadpool_postgres::Client) -> Running {
        Running(Some(client))
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.0.as_ref().expect("a running statement has its connection")
    }

    /// The statement finished: the connection goes back to the pool.
    fn done(mut self) {
        self.0.take();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let token = client.cancel_token();
        let detached = deadpool_postgres::Object::take(client);
        runtime.spawn(async move {
            let _ = token.cancel_query(NoTls).await;
            drop(detached);
        });
    }
}

/// How often [`statistics_keeper`] looks at what was written.
const STATISTICS_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// Does autovacuum's work where autovacuum is off: PostgreSQL with `autovacuum = off`
/// never analyzes a table, so its planner takes every table for empty and reads and
/// searches turn into sequential scans that grow with the data; nor does it vacuum, so
/// index-only scans (counts) visit the heap and replaced index rows are never reclaimed.
/// With autovacuum off this task warns once and runs `VACUUM (ANALYZE)` on Tessera's tables
/// 30 s after start and then whenever the versions written since the last one reach a
/// tenth of the live resources (at least 500). With autovacuum on it does nothing.
async fn statistics_keeper(pool: Pool, metrics: Arc<StoreMetrics>) {
    let autovacuum = async {
        let c = pool.get().await.ok()?;
        let row = c.query_one("SELECT current_setting('autovacuum') = 'on'", &[]).await.ok()?;
        row.try_get::<_, bool>(0).ok()
    };
    if autovacuum.await != Some(false) {
        return;
    }
    tracing::warn!(
        "PostgreSQL runs with autovacuum off: Tessera will ANALYZE its own tables as they grow \
         (turn autovacuum on, or VACUUM them on a schedule, to also reclaim space)"
    );
    let mut tick = tokio::time::interval(STATISTICS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut analyzed_at: Option<u64> = None;
    let mut threshold = 0u64;
    loop {
        tick.tick().await;
        if pool.is_closed() {
            break;
        }
        let writes = metrics.writes.load(std::sync::atomic::Ordering::Relaxed);
        if analyzed_at.is_some_and(|w| writes.saturating_sub(w) < threshold) {
            continue;
        }
        let Ok(c) = pool.get().await else { continue };
        let started = std::time::Instant::now();
        let tables: Vec<&str> = ANALYZED.iter().copied().chain(crate::search::Table::ALL.iter().map(|t| t.name())).collect();
        // VACUUM cannot run inside a transaction block: one statement per call.
        let vacuum = async {
            c.batch_execute("SET statement_timeout = 0").await?;
            let done = c.batch_execute(&format!("VACUUM (ANALYZE) {}", tables.join(", "))).await;
            c.batch_execute("RESET statement_timeout").await?;
            done
        };
        match vacuum.await {
            Ok(()) => {
                let live: i64 = match c.query_one("SELECT COALESCE(sum(live), 0)::bigint FROM type_count", &[]).await {
                    Ok(row) => row.try_get(0).unwrap_or(0),
                    Err(_) => 0,
                };
                threshold = (live.max(0) as u64 / 10).max(500);
                analyzed_at = Some(writes);
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, live, "vacuumed and analyzed the tables");
            }
            Err(e) => tracing::warn!("VACUUM (ANALYZE) failed: {}", pg_message(&e)),
        }
    }
}

/// The tables (besides the search index's) that [`statistics_keeper`] keeps.
const ANALYZED: [&str; 9] = [
    "resource_version",
    "resource_current",
    "identifier_index",
    "care_link",
    "audit_log",
    "audit_patient",
    "type_count",
    "token_count",
    "tessera_meta",
];

async fn audit_head_keeper(pool: Pool, metrics: Arc<StoreMetrics>, anchor: AnchorSlot) {
    let mut tick = tokio::time::interval(HEAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<ChainHead> = None;
    loop {
        tick.tick().await;
        if pool.is_closed() {
            break;
        }
        let Ok(head) = read_audit_head(&pool).await else { continue };
        metrics.audit_head_seq.store(head.seq, std::sync::atomic::Ordering::Relaxed);
        let anchored = anchor.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|w| w.current());
        let Some(anchored) = anchored else {
            seen = Some(head);
            continue;
        };
        if seen == Some(head) {
            continue;
        }
        // Past the anchored record: is it still the one the anchor saw?
        let rewritten = head.seq > anchored.seq
            && anchored.seq > 0
            && match audit_hash_at(&pool, anchored.seq).await {
                Ok(hash) => hash.as_deref() != Some(&anchored.hash[..]),
                Err(_) => continue,
            };
        let mut slot = anchor.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = slot.as_mut() {
            if rewritten {
                w.pin("the audit record the anchor saw has changed: the chain was rewritten");
            } else {
                w.update(head.seq, &head.hash);
            }
            w.sync_and_log(false);
        }
        seen = Some(head);
    }
    if let Some(w) = anchor.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        w.sync_and_log(true);
    }
}

/// How often [`audit_head_keeper`] reads the head of the chain.
const HEAD_POLL: std::time::Duration = std::time::Duration::from_millis(500);

fn param_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

fn history_filter(q: &HistoryQuery, paged: bool) -> (String, Vec<Param>) {
    let mut clauses = vec!["TRUE".to_string()];
    let mut args: Vec<Param> = Vec::new();
    if let Some(t) = &q.resource_type {
        args.push(Box::new(t.clone()));
        clauses.push(format!("v.res_type = ${}", args.len()));
    }
    if let Some(id) = &q.id {
        args.push(Box::new(id.clone()));
        clauses.push(format!("v.id = ${}", args.len()));
    }
    if let Some(since) = q.since_micros {
        args.push(Box::new(since));
        clauses.push(format!("v.last_updated >= ${}", args.len()));
    }
    if paged {
        if let Some(before) = q.before_seq {
            args.push(Box::new(before));
            clauses.push(format!("v.seq < ${}", args.len()));
        }
    }
    (clauses.join(" AND "), args)
}

/// Ids of current, non-deleted resources matching the criteria (one statement).
async fn find_ids<C: GenericClient>(c: &C, criteria: &Criteria) -> Result<Vec<String>> {
    let mut sql = String::from("SELECT r.id FROM resource_current r WHERE r.res_type = $1 AND NOT r.deleted");
    let mut args: Vec<Param> = vec![Box::new(criteria.resource_type.clone())];
    if let Some(id) = &criteria.id {
        args.push(Box::new(id.clone()));
        sql.push_str(&format!(" AND r.id = ${}", args.len()));
    }
    for m in &criteria.identifiers {
        args.push(Box::new(crate::search::index_key(&m.value).into_owned()));
        sql.push_str(&format!(
            " AND r.id IN (SELECT i.id FROM identifier_index i WHERE i.res_type = $1 AND i.value = ${}",
            args.len()
        ));
        if let Some(system) = &m.system {
            args.push(Box::new(crate::search::index_key(system).into_owned()));
            sql.push_str(&format!(" AND i.system = ${}", args.len()));
        }
        sql.push(')');
    }
    if criteria.id.is_some() || !criteria.identifiers.is_empty() {
        sql.push_str(" ORDER BY r.id");
    }
    let stmt = c.prepare_cached(&sql).await.map_err(pg)?;
    let rows = c.query(&stmt, &param_refs(&args)).await.map_err(pg)?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(pg)).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn clear_search_index(&self) -> Result<()> {
        let c = self.client().await?;
        let tables: Vec<&str> = crate::search::Table::ALL.iter().map(|t| t.name()).collect();
        c.batch_execute(&format!("TRUNCATE {}", tables.join(", "))).await.map_err(pg)?;
        Ok(())
    }

    async fn reindex_chunk(&self, after_seq: i64, limit: usize) -> Result<Option<(i64, usize)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM resource_current r JOIN resource_version v \
                 ON v.res_type = r.res_type AND v.id = r.id AND v.version = r.version AND v.compartment = r.compartment \
                 WHERE NOT r.deleted AND r.seq > $1 ORDER BY r.seq LIMIT $2"
            ))
            .await
            .map_err(pg)?;
        let rows = tx.query(&stmt, &[&after_seq, &(limit as i64)]).await.map_err(pg)?;
        let mut versions = Vec::with_capacity(rows.len());
        for row in &rows {
            versions.push(row_to_stored(row)?);
        }
        let Some(last) = versions.last().map(|v| v.seq) else { return Ok(None) };
        let old: Vec<i64> = versions.iter().map(|v| v.seq).collect();
        let mut new_rows = Vec::with_capacity(versions.len());
        for v in &versions {
            let value: serde_json::Value =
                serde_json::from_slice(&v.json).map_err(|e| StoreError::Backend(format!("stored {} at {}: {e}", v.resource_type, v.seq)))?;
            new_rows.push((v.seq, crate::search::rows(&v.resource_type, &tessera_search::index_all(&value))));
        }
        write_search_index(&tx, old, new_rows).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Some((last, versions.len())))
    }

    async fn search(&self, q: &crate::search::IndexQuery) -> Result<Vec<i64>> {
        let b = crate::search::select_sql(q, crate::search::Dialect::Postgres);
        let args: Vec<Param> = b
            .args
            .into_iter()
            .map(|a| -> Param {
                match a {
                    crate::search::Arg::Int(i) => Box::new(i),
                    crate::search::Arg::Real(f) => Box::new(f),
                    crate::search::Arg::Text(t) => Box::new(t),
                }
            })
            .collect();
        let running = Running::new(self.client().await?);
        let c = running.client();
        let stmt = c.prepare_cached(&b.sql).await.map_err(pg)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = c.query(&stmt, &refs).await.map_err(pg)?;
        running.done();
        rows.iter().map(|r| r.try_get::<_, i64>(0).map_err(pg)).collect()
    }

    async fn count(&self, q: &crate::search::IndexQuery) -> Result<u64> {
        let running = Running::new(self.client().await?);
        let c = running.client();
        if let Some(ty) = crate::search::counts_whole_type(q) {
            let stmt = c.prepare_cached("SELECT live FROM type_count WHERE res_type = $1").await.map_err(pg)?;
            let n: Option<i64> = c.query_opt(&stmt, &[&ty]).await.map_err(pg)?.map(|r| r.try_get(0)).transpose().map_err(pg)?;
            return Ok(n.unwrap_or(0).max(0) as u64);
        }
        if let Some((p, system, code)) = crate::search::counts_one_token(q) {
            let stmt = c.prepare_cached("SELECT live FROM token_count WHERE p = $1 AND code = $2 AND system = $3").await.map_err(pg)?;
            let n: Option<i64> = c.query_opt(&stmt, &[&p, &code, &system]).await.map_err(pg)?.map(|r| r.try_get(0)).transpose().map_err(pg)?;
            return Ok(n.unwrap_or(0).max(0) as u64);
        }
        let b = crate::search::count_sql(q, crate::search::Dialect::Postgres);
        let args: Vec<Param> = b
            .args
            .into_iter()
            .map(|a| -> Param {
                match a {
                    crate::search::Arg::Int(i) => Box::new(i),
                    crate::search::Arg::Real(f) => Box::new(f),
                    crate::search::Arg::Text(t) => Box::new(t),
                }
            })
            .collect();
        let stmt = c.prepare_cached(&b.sql).await.map_err(pg)?;
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let n: i64 = c.query_one(&stmt, &refs).await.map_err(pg)?.try_get(0).map_err(pg)?;
        running.done();
        Ok(n.max(0) as u64)
    }

    async fn load(&self, seqs: &[i64]) -> Result<Vec<Stored>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM resource_version v WHERE v.seq = ANY($1::bigint[])")).await.map_err(pg)?;
        let rows = c.query(&stmt, &[&seqs]).await.map_err(pg)?;
        let mut by_seq: HashMap<i64, Stored> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let s = row_to_stored(row)?;
            by_seq.insert(s.seq, s);
        }
        Ok(seqs.iter().filter_map(|s| by_seq.remove(s)).collect())
    }

    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Stored>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM resource_current r JOIN resource_version v \
                 ON v.res_type = r.res_type AND v.id = r.id AND v.version = r.version AND v.compartment = r.compartment \
                 WHERE r.res_type = $1 AND r.id = $2"
            ))
            .await
            .map_err(pg)?;
        c.query_opt(&stmt, &[&resource_type, &id]).await.map_err(pg)?.as_ref().map(row_to_stored).transpose()
    }

    async fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<Option<Stored>> {
        let Ok(version) = i64::try_from(version) else { return Ok(None) };
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM resource_version v WHERE v.res_type = $1 AND v.id = $2 AND v.version = $3 \
                 ORDER BY v.seq DESC LIMIT 1"
            ))
            .await
            .map_err(pg)?;
        c.query_opt(&stmt, &[&resource_type, &id, &version]).await.map_err(pg)?.as_ref().map(row_to_stored).transpose()
    }

    async fn history(&self, q: &HistoryQuery) -> Result<Vec<Stored>> {
        if q.count == 0 {
            return Ok(Vec::new());
        }
        let (filter, mut args) = history_filter(q, true);
        args.push(Box::new(i64::try_from(q.count).unwrap_or(i64::MAX)));
        let sql = format!("SELECT {COLUMNS} FROM resource_version v WHERE {filter} ORDER BY v.seq DESC LIMIT ${}", args.len());
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await.map_err(pg)?;
        let rows = c.query(&stmt, &param_refs(&args)).await.map_err(pg)?;
        rows.iter().map(row_to_stored).collect()
    }

    async fn history_count(&self, q: &HistoryQuery) -> Result<u64> {
        let (filter, args) = history_filter(q, false);
        let sql = format!("SELECT count(*) FROM resource_version v WHERE {filter}");
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await.map_err(pg)?;
        let row = c.query_one(&stmt, &param_refs(&args)).await.map_err(pg)?;
        Ok(row.try_get::<_, i64>(0).map_err(pg)? as u64)
    }

    async fn find(&self, criteria: &Criteria) -> Result<Vec<String>> {
        let c = self.client().await?;
        find_ids(&c, criteria).await
    }

    async fn commit_outbox(&self, tx: Transaction, audit: Vec<NewAudit>, outbox: Vec<OutboxItem>) -> Result<()> {
        if tx.is_empty() && !outbox.is_empty() {
            return Err(StoreError::Backend("outbox items are committed with the writes they notify".into()));
        }
        if tx.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let mut tx = tx;
        for w in &mut tx {
            w.json = codec::encode(&w.json)?;
        }
        let audit = PendingAudit::prepare(audit);
        let (ack, done) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        writer.send((Work { writes: tx, audit, outbox }, ack)).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let mut args: Vec<Param> = Vec::new();
        let mut from = String::from("audit_log a");
        let mut clauses = vec!["TRUE".to_string()];
        if let Some(p) = &q.patient {
            args.push(Box::new(p.clone()));
            from = format!("audit_patient p JOIN audit_log a ON a.seq = p.seq AND p.patient = ${}", args.len());
        }
        if let Some(u) = &q.user {
            args.push(Box::new(u.clone()));
            clauses.push(format!("a.user_id = ${}", args.len()));
        }
        if let Some(since) = q.since_micros {
            args.push(Box::new(since));
            clauses.push(format!("a.recorded >= ${}", args.len()));
        }
        if let Some(until) = q.until_micros {
            args.push(Box::new(until));
            clauses.push(format!("a.recorded < ${}", args.len()));
        }
        if q.break_glass_only {
            clauses.push("a.break_glass".into());
        }
        if let Some(action) = &q.action {
            args.push(Box::new(action.clone()));
            clauses.push(format!("a.action = ${}", args.len()));
        }
        if let Some(before) = q.before_seq {
            args.push(Box::new(before));
            clauses.push(format!("a.seq < ${}", args.len()));
        }
        args.push(Box::new(i64::try_from(q.limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM {from} WHERE {} ORDER BY a.seq DESC LIMIT ${}",
            clauses.join(" AND "),
            args.len()
        );
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await.map_err(pg)?;
        let rows = c.query(&stmt, &param_refs(&args)).await.map_err(pg)?;
        rows.iter().map(row_to_audit).collect()
    }

    async fn audit_scan(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log a WHERE a.seq > $1 ORDER BY a.seq LIMIT $2"))
            .await
            .map_err(pg)?;
        let rows = c.query(&stmt, &[&after_seq, &limit]).await.map_err(pg)?;
        rows.iter().map(row_to_audit_lenient).collect()
    }

    async fn audit_index_lookup(&self, pairs: &[(i64, String)]) -> Result<Vec<bool>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = pairs.iter().map(|(s, _)| *s).collect();
        let patients: Vec<&str> = pairs.iter().map(|(_, p)| p.as_str()).collect();
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT q.i FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS q(seq, patient, i) \
                 WHERE EXISTS (SELECT 1 FROM audit_patient p WHERE p.patient = q.patient AND p.seq = q.seq)",
            )
            .await
            .map_err(pg)?;
        let rows = c.query(&stmt, &[&seqs, &patients]).await.map_err(pg)?;
        let mut found = vec![false; pairs.len()];
        for row in rows {
            let i: i64 = row.try_get(0).map_err(pg)?;
            if let Some(f) = usize::try_from(i - 1).ok().and_then(|i| found.get_mut(i)) {
                *f = true;
            }
        }
        Ok(found)
    }

    async fn audit_index_extra(&self, limit: usize) -> Result<Vec<(i64, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT p.seq, p.patient FROM audit_patient p LEFT JOIN audit_log a ON a.seq = p.seq \
                 WHERE a.seq IS NULL OR strpos(coalesce(a.patients, ''), '\"' || p.patient || '\"') = 0 \
                 ORDER BY p.seq, p.patient LIMIT $1",
            )
            .await
            .map_err(pg)?;
        let rows = c.query(&stmt, &[&limit]).await.map_err(pg)?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?))).collect()
    }

    async fn audit_index_upto(&self) -> Result<i64> {
        // Index rows are written with their records.
        Ok(read_audit_head(&self.pool).await?.seq)
    }

    async fn set_audit_anchor(&self, path: &std::path::Path) -> Result<()> {
        use crate::anchor::{AnchorState, AnchorWriter};
        use crate::{AuditDamage, DamageKind};
        let anchor_error = |e: std::io::Error| StoreError::Backend(format!("audit anchor {}: {e}", path.display()));
        let mut w = AnchorWriter::open(path).map_err(anchor_error)?;
        let head = read_audit_head(&self.pool).await?;
        // Does the chain still hold what the anchor saw? If not, say so in the chain
        // before the anchor moves on.
        let mut damage = Vec::new();
        match &w.found {
            AnchorState::Valid(a) if a.seq > head.seq => damage.push(AuditDamage {
                kind: DamageKind::ChainTruncated,
                first: head.seq + 1,
                last: Some(a.seq),
                placeholder: false,
                message: format!(
                    "the audit log ends at record {} but reached record {} before (anchor written {}): audit records {}..={} lost (at least)",
                    head.seq,
                    a.seq,
                    crate::format_instant(a.written_micros),
                    head.seq + 1,
                    a.seq
                ),
            }),
            AnchorState::Valid(a) if a.seq > 0 && audit_hash_at(&self.pool, a.seq).await?.as_deref() != Some(&a.hash[..]) => {
                damage.push(AuditDamage {
                    kind: DamageKind::ChainRewritten,
                    first: a.seq,
                    last: None,
                    placeholder: false,
                    message: format!(
                        "audit record {} is not the one the anchor saw (or is gone; anchor written {}): the chain was rewritten",
                        a.seq,
                        crate::format_instant(a.written_micros)
                    ),
                })
            }
            other => damage.extend(crate::anchor::unanchored_damage(other, w.new_key, head.seq > 0, head.seq + 1)),
        }
        if damage.is_empty() {
            w.update(head.seq, &head.hash);
        } else {
            let now = crate::now_micros();
            for d in &damage {
                tracing::error!(
                    kind = d.kind.code(),
                    first = d.first,
                    last = d.last,
                    anchor = %path.display(),
                    "audit trail damage, recorded in the chain: {} (run `tessera audit verify`)",
                    d.message
                );
            }
            let records = damage
                .iter()
                .map(|d| {
                    let r = d.record(now, None);
                    NewAudit {
                        recorded_micros: r.recorded_micros,
                        user: r.user,
                        patients: r.patients,
                        action: r.action,
                        break_glass: r.break_glass,
                        event: r.event,
                    }
                })
                .collect();
            if damage.iter().any(|d| d.kind == DamageKind::ChainTruncated) {
                // By-patient index rows of the removed records would attach to the records
                // that take their `seq`s.
                let c = self.client().await?;
                let stale = c
                    .execute(
                        "DELETE FROM audit_patient p WHERE p.seq > $1 AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.seq = p.seq)",
                        &[&head.seq],
                    )
                    .await
                    .map_err(pg)?;
                if stale > 0 {
                    tracing::warn!(rows = stale, head = head.seq, "removed by-patient audit index rows of records that are not in the log");
                }
            }
            self.append_audit(records).await?;
            let head = read_audit_head(&self.pool).await?;
            w.force(head.seq, &head.hash);
        }
        w.sync_and_log(true);
        self.metrics.audit_head_seq.store(head.seq, std::sync::atomic::Ordering::Relaxed);
        *self.anchor.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        Ok(())
    }

    async fn ongoing_at(&self, location: &str, kind: &str) -> Result<Vec<(String, String)>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT DISTINCT source_type, source_id FROM care_link \
                 WHERE location = $1 AND kind = $2 AND active AND end_micros IS NULL ORDER BY source_type, source_id",
            )
            .await
            .map_err(pg)?;
        let rows = c.query(&stmt, &[&location, &kind]).await.map_err(pg)?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?))).collect()
    }

    async fn care_links(&self, patient: &str) -> Result<Vec<CareLink>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT kind, patient, organisation, location, practitioner, start_micros, end_micros, active \
                 FROM care_link WHERE patient = $1 ORDER BY source_type, source_id, n",
            )
            .await
            .map_err(pg)?;
        let rows = c.query(&stmt, &[&patient]).await.map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(CareLink {
                    kind: r.try_get(0).map_err(pg)?,
                    patient: r.try_get(1).map_err(pg)?,
                    organisation: r.try_get(2).map_err(pg)?,
                    location: r.try_get(3).map_err(pg)?,
                    practitioner: r.try_get(4).map_err(pg)?,
                    start_micros: r.try_get(5).map_err(pg)?,
                    end_micros: r.try_get(6).map_err(pg)?,
                    active: r.try_get(7).map_err(pg)?,
                })
            })
            .collect()
    }

    async fn outbox_list(&self, q: &OutboxQuery) -> Result<Vec<OutboxEntry>> {
        let c = self.client().await?;
        let states: Vec<&str> = q.states.iter().map(|s| s.code()).collect();
        let all: Vec<&str> = OutboxState::ALL.iter().map(|s| s.code()).collect();
        let states = if states.is_empty() { all } else { states };
        let limit = q.limit.min(i64::MAX as usize) as i64;
        let rows = c
            .query(
                &format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq > $1 AND state = ANY($2::text[]){} ORDER BY seq LIMIT $3",
                    if q.heads_only {
                        " AND (patient, seq) IN (SELECT patient, min(seq) FROM outbox WHERE state IN ('pending', 'failed') GROUP BY subscription, patient)"
                    } else {
                        ""
                    }
                ),
                &[&q.after_seq, &states, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(row_to_outbox).collect()
    }

    async fn outbox_update(&self, e: &OutboxEntry) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET state = $3, attempts = $4, next_attempt = $5, last_error = $6, updated = $7 WHERE patient = $1 AND seq = $2",
            &[&e.item.patient, &e.seq, &e.state.code(), &(e.attempts as i32), &e.next_attempt_micros, &e.last_error, &e.updated_micros],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn outbox_replay(&self, seqs: &[i64]) -> Result<Vec<OutboxEntry>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let rows = if seqs.is_empty() {
            tx.query(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'dead' ORDER BY seq FOR UPDATE"), &[]).await
        } else {
            tx.query(
                &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq = ANY($1::bigint[]) AND state IN ('dead', 'failed', 'suppressed') ORDER BY seq FOR UPDATE"),
                &[&seqs.to_vec()],
            )
            .await
        }
        .map_err(pg)?;
        let chosen: Vec<OutboxEntry> = rows.iter().map(row_to_outbox).collect::<Result<_>>()?;
        let now = crate::now_micros();
        for e in &chosen {
            tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = $3, last_error = NULL, updated = $3 WHERE patient = $1 AND seq = $2",
                &[&e.item.patient, &e.seq, &now],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(chosen)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        let stmt = c.prepare_cached("SELECT value FROM tessera_meta WHERE key = $1").await.map_err(pg)?;
        match c.query_opt(&stmt, &[&key]).await.map_err(pg)? {
            Some(row) => Ok(Some(row.try_get(0).map_err(pg)?)),
            None => Ok(None),
        }
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO tessera_meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .await
            .map_err(pg)?;
        c.execute(&stmt, &[&key, &value]).await.map_err(pg)?;
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM resource_current WHERE NOT deleted), \
                        (SELECT count(*) FROM resource_version), \
                        (pg_total_relation_size('resource_version'::regclass) \
                         + pg_total_relation_size('resource_current'::regclass) \
                         + pg_total_relation_size('identifier_index'::regclass) \
                         + pg_total_relation_size('tessera_meta'::regclass))::bigint",
                &[],
            )
            .await
            .map_err(pg)?;
        let get = |i: usize| row.try_get::<_, i64>(i).map(|n| n.max(0) as u64).map_err(pg);
        Ok(StoreStats { current_resources: get(0)?, versions: get(1)?, bytes: get(2)? })
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn backend(&self) -> &'static str {
        "postgresql"
    }
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

async fn writer_loop(pool: Pool, mut rx: mpsc::Receiver<Job>, metrics: Arc<StoreMetrics>) {
    let size = |w: &Work| w.writes.len() + w.audit.len();
    let bytes = |w: &Work| {
        w.writes.iter().map(|w| w.json.len()).sum::<usize>() + w.audit.iter().map(|a| a.event.len()).sum::<usize>()
    };
    while let Some(first) = rx.recv().await {
        let mut count = size(&first.0);
        let mut total_bytes = bytes(&first.0);
        let mut jobs = vec![first];
        while count < MAX_BATCH_WRITES && total_bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    count += size(&job.0);
                    total_bytes += bytes(&job.0);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let works: Vec<&Work> = jobs.iter().map(|(w, _)| w).collect();
        match group_commit(&pool, &works).await {
            Ok(results) => {
                let succeeded = || works.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(w, _)| *w);
                let transactions = succeeded().filter(|w| !w.writes.is_empty()).count() as u64;
                let written: u64 = succeeded().map(|w| w.writes.len() as u64).sum();
                let audited: u64 = succeeded().map(|w| w.audit.len() as u64).sum();
                metrics.record_batch(transactions, written);
                metrics.record_audit(audited);
                metrics.record_commit_ok();
                for ((_, ack), result) in jobs.into_iter().zip(results) {
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                metrics.record_commit_failure(&e.to_string());
                let message = match &e {
                    StoreError::Backend(m) => m.clone(),
                    other => other.to_string(),
                };
                for (_, ack) in jobs {
                    let _ = ack.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

/// Commits the jobs in one database transaction. Returns each job's outcome, or an error
/// if nothing was committed.
///
/// Preconditions are evaluated for the whole batch up front (the current state of every
/// resource involved is fetched in one statement, and the effect of each accepted job is
/// tracked in memory), so a job whose precondition fails never touches the database and
/// the accepted writes go in with a few multi-row statements. Should that fast path hit a
/// database error (for instance a constraint violated by data written outside this
/// writer), the batch is retried with each job in a savepoint of its own, so that the
/// error is reported to the job that caused it only.
///
/// The audit records of the accepted jobs are chained after the head of the chain, read
/// inside the transaction once the writer lock is held.
async fn group_commit(pool: &Pool, jobs: &[&Work]) -> Result<Vec<Result<()>>> {
    let audited = jobs.iter().any(|j| !j.audit.is_empty());
    let mut client = pool.get().await.map_err(pool_error)?;
    let fast = async {
        let tx = client.transaction().await.map_err(pg)?;
        let mut head = begin_batch(&tx, audited).await?;
        let results = apply_jobs(&tx, jobs, &mut head).await?;
        tx.commit().await.map_err(pg)?;
        Ok::<_, StoreError>(results)
    }
    .await;
    match fast {
        Ok(results) => Ok(results),
        // With a single job there is nothing to isolate: report the error as is.
        Err(e) if jobs.len() == 1 => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "group commit failed; retrying each transaction in a savepoint");
            if client.is_closed() {
                drop(client);
                client = pool.get().await.map_err(pool_error)?;
            }
            let mut tx = client.transaction().await.map_err(pg)?;
            let mut head = begin_batch(&tx, audited).await?;
            let mut results = Vec::with_capacity(jobs.len());
            for job in jobs {
                let sp = tx.savepoint("job").await.map_err(pg)?;
                let before = head;
                match apply_jobs(&sp, std::slice::from_ref(job), &mut head).await {
                    Ok(mut r) => {
                        sp.commit().await.map_err(pg)?;
                        let outcome = r.pop().unwrap_or(Ok(()));
                        if outcome.is_err() {
                            head = before;
                        }
                        results.push(outcome);
                    }
                    Err(e) => {
                        sp.rollback().await.map_err(pg)?;
                        head = before;
                        results.push(Err(e));
                    }
                }
            }
            tx.commit().await.map_err(pg)?;
            Ok(results)
        }
    }
}

/// Takes the writer lock and, if the batch appends audit records, then reads the head of
/// the audit chain. The read is a statement of its own issued once the lock is held, so
/// its snapshot includes whatever another server committed before releasing the lock
/// (not pipelined: a pipelined read could be sent, and run, before the lock statement).
async fn begin_batch(tx: &deadpool_postgres::Transaction<'_>, audited: bool) -> Result<ChainHead> {
    lock_writer(tx).await?;
    if !audited {
        return Ok(ChainHead::GENESIS);
    }
    let stmt = tx.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").await.map_err(pg)?;
    match tx.query_opt(&stmt, &[]).await.map_err(pg)? {
        Some(row) => {
            let seq: i64 = row.try_get(0).map_err(pg)?;
            let hash: &[u8] = row.try_get(1).map_err(pg)?;
            ChainHead::from_stored(seq, hash)
        }
        None => Ok(ChainHead::GENESIS),
    }
}

async fn lock_writer(tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
    // Writes are bounded by the request limits (body, bundle entries), not the query
    // timeout: a group commit is never cut off half-way through its statements.
    if crate::query_timeout().is_some() {
        tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg)?;
    }
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))").await.map_err(pg)?;
    tx.execute(&stmt, &[&LOCK_WRITER]).await.map_err(pg)?;
    Ok(())
}

type Key = (String, String);

/// What a precondition needs to know of a resource's current version.
#[derive(Debug, Clone)]
struct Current {
    version: u64,
    /// `seq` of the stored version (0 for the effect of a job in the batch).
    seq: i64,
    deleted: bool,
    /// `(system, value)`, sorted and distinct; empty when deleted.
    identifiers: Vec<(String, String)>,
    /// Patients of the care links, sorted and distinct; empty when deleted.
    link_patients: Vec<String>,
}

/// The state of the resources a batch touches: as stored before the batch, overlaid with
/// the effect of the jobs accepted so far.
struct Plan {
    stored: HashMap<Key, Current>,
    overlay: HashMap<Key, Current>,
    /// `(type, identifier value)` → ids in the overlay that had it at some point (checked
    /// against the overlay before use).
    overlay_by_value: HashMap<(String, String), HashSet<String>>,
}

impl Plan {
    fn current(&self, key: &Key) -> Option<&Current> {
        self.overlay.get(key).or_else(|| self.stored.get(key))
    }

    fn set(&mut self, key: Key, state: Current, undo: &mut Vec<(Key, Option<Current>)>) {
        for (_, value) in &state.identifiers {
            self.overlay_by_value.entry((key.0.clone(), value.clone())).or_default().insert(key.1.clone());
        }
        let previous = self.overlay.insert(key.clone(), state);
        undo.push((key, previous));
    }

    fn undo(&mut self, undo: Vec<(Key, Option<Current>)>) {
        for (key, previous) in undo.into_iter().rev() {
            match previous {
                Some(p) => self.overlay.insert(key, p),
                None => self.overlay.remove(&key),
            };
        }
    }

    /// First id matching `criteria` now, given the ids that matched before the batch.
    fn first_match(&self, criteria: &Criteria, stored_matches: &[String]) -> Option<String> {
        let ty = &criteria.resource_type;
        for id in stored_matches {
            if !self.overlay.contains_key(&(ty.clone(), id.clone())) {
                return Some(id.clone());
            }
        }
        let matches = |id: &String| {
            self.overlay.get(&(ty.clone(), id.clone())).is_some_and(|s| {
                !s.deleted
                    && criteria.id.as_ref().is_none_or(|want| want == id)
                    && criteria
                        .identifiers
                        .iter()
                        .all(|m| s.identifiers.iter().any(|(system, value)| token_matches(m, system, value)))
            })
        };
        if let Some(id) = &criteria.id {
            return matches(id).then(|| id.clone());
        }
        if let Some(m) = criteria.identifiers.first() {
            let mut ids: Vec<&String> = self
                .overlay_by_value
                .get(&(ty.clone(), m.value.clone()))
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            ids.sort();
            return ids.into_iter().find(|id| matches(id)).cloned();
        }
        let mut ids: Vec<&String> = self.overlay.keys().filter(|(t, _)| t == ty).map(|(_, id)| id).collect();
        ids.sort();
        ids.into_iter().find(|id| matches(id)).cloned()
    }
}

fn link_patients(w: &Write) -> Vec<String> {
    if w.deleted {
        return Vec::new();
    }
    w.links.iter().map(|l| l.patient.clone()).collect::<BTreeSet<_>>().into_iter().collect()
}

fn identifier_set(w: &Write) -> Vec<(String, String)> {
    if w.deleted {
        return Vec::new();
    }
    w.identifiers.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// An audit record chained by the writer: `(seq, prev_hash, hash, record)`.
type Chained<'a> = (i64, [u8; 32], [u8; 32], &'a PendingAudit);

/// Checks every job's preconditions and writes the accepted jobs, with their audit records
/// chained after `head` (which advances), inside `tx`. Returns each job's outcome
/// (`Err(Conflict)` for a failed precondition), or a database error.
async fn apply_jobs<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[&'a Work],
    head: &mut ChainHead,
) -> Result<Vec<Result<()>>> {
    if jobs.iter().all(|j| j.writes.is_empty()) {
        // Audit records only (reads): nothing to check.
        let chained: Vec<Chained<'a>> =
            jobs.iter().flat_map(|j| j.audit.iter()).map(|a| { let (s, p, h) = head.chain(a); (s, p, h, a) }).collect();
        write_audit(tx, &chained).await?;
        return Ok(jobs.iter().map(|_| Ok(())).collect());
    }
    // 1. The stored state of every resource the batch writes, in one statement.
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    for w in jobs.iter().flat_map(|j| j.writes.iter()) {
        keys.insert((&w.resource_type, &w.id));
    }
    let (key_types, key_ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let stmt = tx
        .prepare_cached(
            "SELECT r.res_type, r.id, r.version, r.deleted, r.identifiers, r.link_patients, r.seq FROM resource_current r \
             JOIN unnest($1::text[], $2::text[]) AS k(res_type, id) ON r.res_type = k.res_type AND r.id = k.id",
        )
        .await
        .map_err(pg)?;
    // 2. Before-batch matches of every conditional create's criteria, pipelined with 1.
    let criteria: Vec<&Criteria> = jobs
        .iter()
        .flat_map(|j| j.writes.iter())
        .filter_map(|w| match &w.precondition {
            Precondition::NoneMatching(c) => Some(c),
            _ => None,
        })
        .collect();
    let (rows, stored_matches) = futures::try_join!(
        async { tx.query(&stmt, &[&key_types, &key_ids]).await.map_err(pg) },
        futures::future::try_join_all(criteria.iter().map(|c| find_ids(tx, c))),
    )?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in &rows {
        let identifiers: Option<&str> = row.try_get(4).map_err(pg)?;
        let identifiers: Vec<(String, String)> = match identifiers {
            Some(text) => {
                let mut identifiers: Vec<(String, String)> = serde_json::from_str(text).map_err(|e| {
                    StoreError::Backend(format!("postgresql: malformed identifiers in resource_current: {e}"))
                })?;
                identifiers.sort();
                identifiers.dedup();
                identifiers
            }
            None => Vec::new(),
        };
        let link_patients: Option<&str> = row.try_get(5).map_err(pg)?;
        let link_patients: Vec<String> = match link_patients {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                StoreError::Backend(format!("postgresql: malformed link_patients in resource_current: {e}"))
            })?,
            None => Vec::new(),
        };
        stored.insert(
            (row.try_get::<_, String>(0).map_err(pg)?, row.try_get::<_, String>(1).map_err(pg)?),
            Current {
                version: row.try_get::<_, i64>(2).map_err(pg)? as u64,
                seq: row.try_get::<_, i64>(6).map_err(pg)?,
                deleted: row.try_get(3).map_err(pg)?,
                identifiers,
                link_patients,
            },
        );
    }
    let mut plan = Plan { stored, overlay: HashMap::new(), overlay_by_value: HashMap::new() };

    // 3. Preconditions, job by job, each seeing the jobs accepted before it.
    let mut results = Vec::with_capacity(jobs.len());
    let mut accepted: Vec<&Write> = Vec::new();
    let mut outbox: Vec<&OutboxItem> = Vec::new();
    let mut chained: Vec<Chained<'a>> = Vec::new();
    let mut criteria_slot = 0; // index into `stored_matches` of the next conditional create
    for work in jobs {
        let job = &work.writes;
        let mut undo = Vec::new();
        let mut outcome = Ok(());
        let job_criteria_end =
            criteria_slot + job.iter().filter(|w| matches!(w.precondition, Precondition::NoneMatching(_))).count();
        for (index, w) in job.iter().enumerate() {
            let key = (w.resource_type.clone(), w.id.clone());
            let current = plan.current(&key);
            let current_version = current.map(|c| c.version);
            let failed = match &w.precondition {
                Precondition::None => None,
                Precondition::Absent => current.map(|_| ConflictReason::Exists),
                Precondition::AbsentOrDeleted => match current {
                    Some(c) if !c.deleted => Some(ConflictReason::Exists),
                    _ => None,
                },
                Precondition::Version(v) => {
                    (current_version != Some(*v)).then_some(ConflictReason::VersionMismatch { current: current_version })
                }
                Precondition::NoneMatching(criteria) => {
                    let before = &stored_matches[criteria_slot];
                    criteria_slot += 1;
                    plan.first_match(criteria, before).map(ConflictReason::Matches)
                }
            };
            // Versions are strictly increasing per resource whatever the caller computed.
            let failed = failed.or(match current_version {
                Some(cur) if w.version <= cur => Some(ConflictReason::VersionMismatch { current: Some(cur) }),
                _ => None,
            });
            if let Some(reason) = failed {
                outcome = Err(StoreError::Conflict { index, resource_type: w.resource_type.clone(), id: w.id.clone(), reason });
                break;
            }
            let state =
                Current { version: w.version, seq: 0, deleted: w.deleted, identifiers: identifier_set(w), link_patients: link_patients(w) };
            plan.set(key, state, &mut undo);
        }
        criteria_slot = job_criteria_end;
        if outcome.is_err() {
            plan.undo(undo);
        } else {
            accepted.extend(job.iter());
            outbox.extend(work.outbox.iter());
            for a in &work.audit {
                let (seq, prev, hash) = head.chain(a);
                chained.push((seq, prev, hash, a));
            }
        }
        results.push(outcome);
    }

    // 4. Write the accepted versions and audit records.
    if accepted.is_empty() {
        write_audit(tx, &chained).await?;
    } else {
        futures::try_join!(write_accepted(tx, &plan, &accepted), write_audit(tx, &chained))?;
        write_outbox(tx, &outbox).await?;
    }
    Ok(results)
}

/// Replaces search index rows: deletes those of `old_seqs`, inserts `new_rows`.
async fn write_search_index(
    tx: &deadpool_postgres::Transaction<'_>,
    old_seqs: Vec<i64>,
    new_rows: Vec<(i64, Vec<crate::search::Row>)>,
) -> Result<()> {
    use crate::search::{Row, Table};
    // Per-code count changes: rows removed (of the versions replaced) and rows added.
    let mut counts = crate::search::TokenCounts::default();
    if !old_seqs.is_empty() {
        // The replaced versions' rows, and those of their contained resources (at
        // `contained_seq(seq, 1..=63)`).
        let first: Vec<i64> = old_seqs.iter().map(|&s| crate::search::contained_seq(s, 1)).collect();
        for table in Table::ALL {
            if table == Table::Token {
                // Version seqs only (never contained ones): every row deleted here counts.
                let stmt = tx
                    .prepare_cached(
                        "WITH d AS (DELETE FROM sp_token WHERE seq = ANY($1::bigint[]) RETURNING p, code, system) \
                         SELECT p, code, system, count(*) FROM d GROUP BY p, code, system",
                    )
                    .await
                    .map_err(pg)?;
                for r in tx.query(&stmt, &[&old_seqs]).await.map_err(pg)? {
                    let n: i64 = r.try_get(3).map_err(pg)?;
                    counts.add_key(r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?, -n);
                }
            } else {
                let stmt = tx.prepare_cached(&format!("DELETE FROM {} WHERE seq = ANY($1::bigint[])", table.name())).await.map_err(pg)?;
                tx.execute(&stmt, &[&old_seqs]).await.map_err(pg)?;
            }
            let stmt = tx
                .prepare_cached(&format!("DELETE FROM {} x USING unnest($1::bigint[]) o(lo) WHERE x.seq BETWEEN o.lo AND o.lo + 62", table.name()))
                .await
                .map_err(pg)?;
            tx.execute(&stmt, &[&first]).await.map_err(pg)?;
        }
    }
    let mut token: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    let mut string: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    type QuantityColumns<'a> = (Vec<i64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<&'a str>, Vec<&'a str>, Vec<i64>);
    type ReferenceColumns<'a> = (Vec<i64>, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<i64>);
    let mut patient_token: ReferenceColumns = Default::default();
    let mut date: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
    let mut quantity: QuantityColumns = Default::default();
    let mut reference: ReferenceColumns = Default::default();
    let mut uri: (Vec<i64>, Vec<&str>, Vec<i64>) = Default::default();
    let mut composites: Vec<(i64, &Row)> = Vec::new();
    for (seq, rows) in &new_rows {
        for (seq, row) in crate::search::placed(*seq, rows) {
            let seq = &seq;
            match row {
                Row::Token { p, system, code } => {
                    token.0.push(*p);
                    token.1.push(code);
                    token.2.push(system);
                    token.3.push(*seq);
                }
                Row::PatientToken { p, patient, system, code } => {
                    patient_token.0.push(*p);
                    patient_token.1.push(patient);
                    patient_token.2.push(code);
                    patient_token.3.push(system);
                    patient_token.4.push(*seq);
                }
                Row::String { p, norm, exact } => {
                    string.0.push(*p);
                    string.1.push(norm);
                    string.2.push(exact);
                    string.3.push(*seq);
                }
                Row::Date { p, low, high } => {
                    date.0.push(*p);
                    date.1.push(*low);
                    date.2.push(*high);
                    date.3.push(*seq);
                }
                Row::Quantity { p, value, low, high, system, code } => {
                    quantity.0.push(*p);
                    quantity.1.push(*value);
                    quantity.2.push(*low);
                    quantity.3.push(*high);
                    quantity.4.push(system);
                    quantity.5.push(code);
                    quantity.6.push(*seq);
                }
                Row::Reference { p, target_type, target_id, url } => {
                    reference.0.push(*p);
                    reference.1.push(target_id);
                    reference.2.push(target_type);
                    reference.3.push(url);
                    reference.4.push(*seq);
                }
                Row::Uri { p, uri: u } => {
                    uri.0.push(*p);
                    uri.1.push(u);
                    uri.2.push(*seq);
                }
                Row::TokenQuantity { .. } | Row::TokenToken { .. } | Row::TokenText { .. } => composites.push((*seq, row)),
                Row::Contained { .. } => unreachable!("placed() unwraps contained rows"),
            }
        }
    }
    if !token.0.is_empty() {
        let stmt = tx
            .prepare_cached(
                "WITH i AS (INSERT INTO sp_token (p, code, system, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
                 ON CONFLICT DO NOTHING RETURNING p, code, system, seq) \
                 SELECT p, code, system, count(*) FROM i WHERE seq < $5 GROUP BY p, code, system",
            )
            .await
            .map_err(pg)?;
        for r in tx.query(&stmt, &[&token.0, &token.1, &token.2, &token.3, &crate::search::CONTAINED_BASE]).await.map_err(pg)? {
            let n: i64 = r.try_get(3).map_err(pg)?;
            counts.add_key(r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?, n);
        }
    }
    // In key order, so that concurrent writers lock the count rows in the same order.
    let (mut ps, mut codes, mut systems, mut deltas) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((p, code, system), delta) in counts.changes() {
        ps.push(*p);
        codes.push(code.as_str());
        systems.push(system.as_str());
        deltas.push(delta);
    }
    if !ps.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO token_count (p, code, system, live) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
                 ON CONFLICT (p, code, system) DO UPDATE SET live = token_count.live + excluded.live",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&ps, &codes, &systems, &deltas]).await.map_err(pg)?;
    }
    if !patient_token.0.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sp_token_pc (p, patient, code, system, seq) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&patient_token.0, &patient_token.1, &patient_token.2, &patient_token.3, &patient_token.4]).await.map_err(pg)?;
    }
    if !string.0.is_empty() {
        let stmt = tx
            .prepare_cached("INSERT INTO sp_string (p, norm, exact, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[])")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&string.0, &string.1, &string.2, &string.3]).await.map_err(pg)?;
    }
    if !date.0.is_empty() {
        let stmt = tx
            .prepare_cached("INSERT INTO sp_date (p, low, high, seq) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&date.0, &date.1, &date.2, &date.3]).await.map_err(pg)?;
    }
    if !quantity.0.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sp_quantity (p, value, low, high, system, code, seq) \
                 SELECT * FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::float8[], $5::text[], $6::text[], $7::bigint[])",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&quantity.0, &quantity.1, &quantity.2, &quantity.3, &quantity.4, &quantity.5, &quantity.6])
            .await
            .map_err(pg)?;
    }
    if !reference.0.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sp_reference (p, target_id, target_type, url, seq) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&reference.0, &reference.1, &reference.2, &reference.3, &reference.4]).await.map_err(pg)?;
    }
    // Composite and token-text rows: one statement each.
    for (seq, row) in composites {
        match row {
            Row::TokenQuantity { p, system, code, value, low, high, unit_system, unit } => {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO sp_token_quantity (p, code, seq, system, value, low, high, unit_system, unit) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .await
                    .map_err(pg)?;
                tx.execute(&stmt, &[p, code, &seq, system, value, low, high, unit_system, unit]).await.map_err(pg)?;
            }
            Row::TokenText { p, text } => {
                let stmt = tx
                    .prepare_cached("INSERT INTO sp_token_text (p, text, seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .await
                    .map_err(pg)?;
                tx.execute(&stmt, &[p, text, &seq]).await.map_err(pg)?;
            }
            Row::TokenToken { p, system, code, system2, code2 } => {
                let stmt = tx
                    .prepare_cached("INSERT INTO sp_token_token (p, code, code2, seq, system, system2) VALUES ($1, $2, $3, $4, $5, $6)")
                    .await
                    .map_err(pg)?;
                tx.execute(&stmt, &[p, code, code2, &seq, system, system2]).await.map_err(pg)?;
            }
            _ => {}
        }
    }
    if !uri.0.is_empty() {
        let stmt = tx
            .prepare_cached("INSERT INTO sp_uri (p, uri, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&uri.0, &uri.1, &uri.2]).await.map_err(pg)?;
    }
    Ok(())
}

/// Inserts chained audit records.
const OUTBOX_COLUMNS: &str = "seq, subscription, res_type, res_id, version, patient, created, state, attempts, next_attempt, last_error, updated";

fn row_to_outbox(r: &tokio_postgres::Row) -> Result<OutboxEntry> {
    let state: &str = r.try_get(7).map_err(pg)?;
    Ok(OutboxEntry {
        seq: r.try_get(0).map_err(pg)?,
        item: OutboxItem {
            subscription: r.try_get(1).map_err(pg)?,
            resource_type: r.try_get(2).map_err(pg)?,
            resource_id: r.try_get(3).map_err(pg)?,
            version: r.try_get::<_, i64>(4).map_err(pg)? as u64,
            patient: r.try_get(5).map_err(pg)?,
            created_micros: r.try_get(6).map_err(pg)?,
        },
        state: OutboxState::parse(state).unwrap_or(OutboxState::Failed),
        attempts: r.try_get::<_, i32>(8).map_err(pg)? as u32,
        next_attempt_micros: r.try_get(9).map_err(pg)?,
        last_error: r.try_get(10).map_err(pg)?,
        updated_micros: r.try_get(11).map_err(pg)?,
    })
}

/// Adds the outbox items of the accepted jobs (pending, due now), numbered in order.
async fn write_outbox(tx: &deadpool_postgres::Transaction<'_>, items: &[&OutboxItem]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let stmt = tx.prepare_cached("SELECT nextval('outbox_seq') FROM generate_series(1, $1::bigint)").await.map_err(pg)?;
    let mut seqs: Vec<i64> =
        tx.query(&stmt, &[&n]).await.map_err(pg)?.iter().map(|r| r.try_get::<_, i64>(0)).collect::<std::result::Result<_, _>>().map_err(pg)?;
    seqs.sort_unstable();
    let patient: Vec<&str> = items.iter().map(|i| i.patient.as_str()).collect();
    let subscription: Vec<&str> = items.iter().map(|i| i.subscription.as_str()).collect();
    let res_type: Vec<&str> = items.iter().map(|i| i.resource_type.as_str()).collect();
    let res_id: Vec<&str> = items.iter().map(|i| i.resource_id.as_str()).collect();
    let version: Vec<i64> = items.iter().map(|i| i.version as i64).collect();
    let created: Vec<i64> = items.iter().map(|i| i.created_micros).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO outbox (patient, seq, subscription, res_type, res_id, version, created, state, attempts, next_attempt, last_error, updated) \
             SELECT p, s, sub, t, i, v, c, 'pending', 0, c, NULL, c \
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[]) AS x(p, s, sub, t, i, v, c)",
        )
        .await
        .map_err(pg)?;
    tx.execute(&stmt, &[&patient, &seqs, &subscription, &res_type, &res_id, &version, &created]).await.map_err(pg)?;
    Ok(())
}

async fn write_audit(tx: &deadpool_postgres::Transaction<'_>, chained: &[Chained<'_>]) -> Result<()> {
    if chained.is_empty() {
        return Ok(());
    }
    let log = async {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO audit_log (seq, recorded, user_id, action, break_glass, patients, prev_hash, hash, event) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::boolean[], $6::text[], \
                                      $7::bytea[], $8::bytea[], $9::bytea[])",
            )
            .await
            .map_err(pg)?;
        let mut start = 0;
        while start < chained.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < chained.len() && (end == start || bytes + chained[end].3.event.len() <= MAX_STATEMENT_BYTES) {
                bytes += chained[end].3.event.len() + 160;
                end += 1;
            }
            let chunk = &chained[start..end];
            let seq: Vec<i64> = chunk.iter().map(|c| c.0).collect();
            let recorded: Vec<i64> = chunk.iter().map(|c| c.3.recorded_micros).collect();
            let user: Vec<Option<&str>> = chunk.iter().map(|c| c.3.user.as_deref()).collect();
            let action: Vec<&str> = chunk.iter().map(|c| c.3.action.as_str()).collect();
            let break_glass: Vec<bool> = chunk.iter().map(|c| c.3.break_glass).collect();
            let patients: Vec<Option<String>> = chunk.iter().map(|c| c.3.patients_column()).collect();
            let prev: Vec<&[u8]> = chunk.iter().map(|c| &c.1[..]).collect();
            let hash: Vec<&[u8]> = chunk.iter().map(|c| &c.2[..]).collect();
            let event: Vec<Vec<u8>> = chunk.iter().map(|c| c.3.stored_event()).collect::<Result<_>>()?;
            tx.execute(&stmt, &[&seq, &recorded, &user, &action, &break_glass, &patients, &prev, &hash, &event])
                .await
                .map_err(pg)?;
            start = end;
        }
        Ok::<_, StoreError>(())
    };
    let by_patient = async {
        let mut patient: Vec<&str> = Vec::new();
        let mut seq: Vec<i64> = Vec::new();
        for c in chained {
            for p in &c.3.patients {
                patient.push(p);
                seq.push(c.0);
            }
        }
        if patient.is_empty() {
            return Ok(());
        }
        let stmt = tx
            .prepare_cached("INSERT INTO audit_patient (patient, seq) SELECT * FROM unnest($1::text[], $2::bigint[])")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&patient, &seq]).await.map_err(pg)?;
        Ok::<_, StoreError>(())
    };
    futures::try_join!(log, by_patient)?;
    Ok(())
}

async fn write_accepted(tx: &deadpool_postgres::Transaction<'_>, plan: &Plan, accepted: &[&Write]) -> Result<()> {
    // Commit sequence numbers, in write order.
    let n = i64::try_from(accepted.len()).unwrap_or(i64::MAX);
    let stmt = tx.prepare_cached("SELECT nextval('resource_seq') FROM generate_series(1, $1::bigint)").await.map_err(pg)?;
    let mut seqs: Vec<i64> =
        tx.query(&stmt, &[&n]).await.map_err(pg)?.iter().map(|r| r.try_get::<_, i64>(0)).collect::<std::result::Result<_, _>>().map_err(pg)?;
    if seqs.len() != accepted.len() {
        return Err(StoreError::Backend("postgresql: could not allocate commit sequence numbers".into()));
    }
    seqs.sort_unstable();

    // The last write of each resource determines its locator row.
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, w) in accepted.iter().enumerate() {
        last.insert((&w.resource_type, &w.id), i);
    }
    let mut finals: Vec<usize> = last.into_values().collect();
    finals.sort_unstable();

    // Identifier index changes: remove what the stored version had and the final one has
    // not, add the reverse.
    // Identifier values and systems go into the index as keys (`search::index_key`): long
    // ones are cut and marked, so that any valid identifier fits a B-tree row.
    type Keys<'a> = (Vec<&'a str>, Vec<std::borrow::Cow<'a, str>>, Vec<std::borrow::Cow<'a, str>>, Vec<&'a str>);
    let mut del: Keys<'_> = Default::default();
    let mut ins: Keys<'_> = Default::default();
    let mut cur_identifiers: Vec<Option<String>> = Vec::with_capacity(finals.len());
    // Care links: remove every link of the stored version, insert those of the final one.
    let mut link_del: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    let mut link_ins: Vec<(&Write, i32, &CareLink)> = Vec::new();
    let mut cur_link_patients: Vec<Option<String>> = Vec::with_capacity(finals.len());
    for &i in &finals {
        let w = accepted[i];
        let key = (w.resource_type.clone(), w.id.clone());
        if let Some(stored) = plan.stored.get(&key) {
            for p in &stored.link_patients {
                link_del.0.push(p);
                link_del.1.push(&w.resource_type);
                link_del.2.push(&w.id);
            }
        }
        if !w.deleted {
            for (n, l) in w.links.iter().enumerate() {
                link_ins.push((w, i32::try_from(n).unwrap_or(i32::MAX), l));
            }
        }
        let patients = link_patients(w);
        cur_link_patients.push(if patients.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&patients).map_err(|e| StoreError::Backend(format!("link patients: {e}")))?)
        });
        let new: &[(String, String)] = plan.overlay.get(&key).map(|c| c.identifiers.as_slice()).unwrap_or(&[]);
        let old: &[(String, String)] = plan.stored.get(&key).map(|c| c.identifiers.as_slice()).unwrap_or(&[]);
        for (system, value) in old {
            if new.binary_search(&(system.clone(), value.clone())).is_err() {
                del.0.push(&w.resource_type);
                del.1.push(crate::search::index_key(value));
                del.2.push(crate::search::index_key(system));
                del.3.push(&w.id);
            }
        }
        for (system, value) in new {
            if old.binary_search(&(system.clone(), value.clone())).is_err() {
                ins.0.push(&w.resource_type);
                ins.1.push(crate::search::index_key(value));
                ins.2.push(crate::search::index_key(system));
                ins.3.push(&w.id);
            }
        }
        cur_identifiers.push(if new.is_empty() {
            None
        } else {
            Some(serde_json::to_string(new).map_err(|e| StoreError::Backend(format!("identifiers: {e}")))?)
        });
    }

    let versions = async {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO resource_version (seq, version, last_updated, deleted, compartment, res_type, id, owner, data) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], $5::text[], $6::text[], \
                                      $7::text[], $8::text[], $9::bytea[])",
            )
            .await
            .map_err(pg)?;
        let mut start = 0;
        while start < accepted.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < accepted.len() && (end == start || bytes + accepted[end].json.len() <= MAX_STATEMENT_BYTES) {
                bytes += accepted[end].json.len() + 128;
                end += 1;
            }
            let chunk = &accepted[start..end];
            let seq: Vec<i64> = seqs[start..end].to_vec();
            let version: Vec<i64> = chunk.iter().map(|w| w.version as i64).collect();
            let last_updated: Vec<i64> = chunk.iter().map(|w| w.last_updated_micros).collect();
            let deleted: Vec<bool> = chunk.iter().map(|w| w.deleted).collect();
            let compartment: Vec<&str> = chunk.iter().map(|w| w.compartment.as_deref().unwrap_or("")).collect();
            let res_type: Vec<&str> = chunk.iter().map(|w| w.resource_type.as_str()).collect();
            let id: Vec<&str> = chunk.iter().map(|w| w.id.as_str()).collect();
            let owner: Vec<Option<&str>> = chunk.iter().map(|w| w.owner.as_deref()).collect();
            let data: Vec<&[u8]> = chunk.iter().map(|w| w.json.as_slice()).collect();
            tx.execute(&stmt, &[&seq, &version, &last_updated, &deleted, &compartment, &res_type, &id, &owner, &data])
                .await
                .map_err(pg)?;
            start = end;
        }
        Ok::<_, StoreError>(())
    };

    let current = async {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO resource_current (version, seq, deleted, res_type, id, compartment, owner, identifiers, \
                                               link_patients) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::boolean[], $4::text[], $5::text[], $6::text[], \
                                      $7::text[], $8::text[], $9::text[]) \
                 ON CONFLICT (res_type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
                 deleted = excluded.deleted, compartment = excluded.compartment, owner = excluded.owner, \
                 identifiers = excluded.identifiers, link_patients = excluded.link_patients",
            )
            .await
            .map_err(pg)?;
        let version: Vec<i64> = finals.iter().map(|&i| accepted[i].version as i64).collect();
        let seq: Vec<i64> = finals.iter().map(|&i| seqs[i]).collect();
        let deleted: Vec<bool> = finals.iter().map(|&i| accepted[i].deleted).collect();
        let res_type: Vec<&str> = finals.iter().map(|&i| accepted[i].resource_type.as_str()).collect();
        let id: Vec<&str> = finals.iter().map(|&i| accepted[i].id.as_str()).collect();
        let compartment: Vec<&str> = finals.iter().map(|&i| accepted[i].compartment.as_deref().unwrap_or("")).collect();
        let owner: Vec<Option<&str>> = finals.iter().map(|&i| accepted[i].owner.as_deref()).collect();
        tx.execute(
            &stmt,
            &[&version, &seq, &deleted, &res_type, &id, &compartment, &owner, &cur_identifiers, &cur_link_patients],
        )
            .await
            .map_err(pg)?;
        Ok::<_, StoreError>(())
    };

    let delete_identifiers = async {
        if del.0.is_empty() {
            return Ok(());
        }
        let stmt = tx
            .prepare_cached(
                "DELETE FROM identifier_index i USING unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                 AS d(res_type, value, system, id) \
                 WHERE i.res_type = d.res_type AND i.value = d.value AND i.system = d.system AND i.id = d.id",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&del.0, &del.1, &del.2, &del.3]).await.map_err(pg)?;
        Ok::<_, StoreError>(())
    };

    let insert_identifiers = async {
        if ins.0.is_empty() {
            return Ok(());
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO identifier_index (res_type, value, system, id) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&ins.0, &ins.1, &ins.2, &ins.3]).await.map_err(pg)?;
        Ok::<_, StoreError>(())
    };

    // The new links may have the keys of old ones: delete, then insert.
    let care_links = async {
        if !link_del.0.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM care_link c USING unnest($1::text[], $2::text[], $3::text[]) \
                     AS d(patient, source_type, source_id) \
                     WHERE c.patient = d.patient AND c.source_type = d.source_type AND c.source_id = d.source_id",
                )
                .await
                .map_err(pg)?;
            tx.execute(&stmt, &[&link_del.0, &link_del.1, &link_del.2]).await.map_err(pg)?;
        }
        if !link_ins.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO care_link (patient, source_type, source_id, n, kind, organisation, location, \
                                            practitioner, start_micros, end_micros, active) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::text[], \
                                          $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::boolean[])",
                )
                .await
                .map_err(pg)?;
            let patient: Vec<&str> = link_ins.iter().map(|(_, _, l)| l.patient.as_str()).collect();
            let source_type: Vec<&str> = link_ins.iter().map(|(w, _, _)| w.resource_type.as_str()).collect();
            let source_id: Vec<&str> = link_ins.iter().map(|(w, _, _)| w.id.as_str()).collect();
            let n: Vec<i32> = link_ins.iter().map(|(_, n, _)| *n).collect();
            let kind: Vec<&str> = link_ins.iter().map(|(_, _, l)| l.kind.as_str()).collect();
            let organisation: Vec<Option<&str>> = link_ins.iter().map(|(_, _, l)| l.organisation.as_deref()).collect();
            let location: Vec<Option<&str>> = link_ins.iter().map(|(_, _, l)| l.location.as_deref()).collect();
            let practitioner: Vec<Option<&str>> = link_ins.iter().map(|(_, _, l)| l.practitioner.as_deref()).collect();
            let start: Vec<Option<i64>> = link_ins.iter().map(|(_, _, l)| l.start_micros).collect();
            let end: Vec<Option<i64>> = link_ins.iter().map(|(_, _, l)| l.end_micros).collect();
            let active: Vec<bool> = link_ins.iter().map(|(_, _, l)| l.active).collect();
            tx.execute(
                &stmt,
                &[&patient, &source_type, &source_id, &n, &kind, &organisation, &location, &practitioner, &start, &end, &active],
            )
            .await
            .map_err(pg)?;
        }
        Ok::<_, StoreError>(())
    };

    // The search index: rows of the replaced versions out, those of the final ones in.
    let old_seqs: Vec<i64> = finals
        .iter()
        .filter_map(|&i| plan.stored.get(&(accepted[i].resource_type.clone(), accepted[i].id.clone())))
        .filter(|c| !c.deleted)
        .map(|c| c.seq)
        .collect();
    let new_rows: Vec<(i64, Vec<crate::search::Row>)> = finals
        .iter()
        .filter(|&&i| !accepted[i].deleted)
        .map(|&i| (seqs[i], crate::search::rows(&accepted[i].resource_type, &accepted[i].index)))
        .collect();
    let search_index = write_search_index(tx, old_seqs, new_rows);

    // Live resources per type: +1 for each that becomes live, -1 for each deleted.
    let mut deltas: BTreeMap<&str, i64> = BTreeMap::new();
    for &i in &finals {
        let w = accepted[i];
        let was_live = plan.stored.get(&(w.resource_type.clone(), w.id.clone())).is_some_and(|c| !c.deleted);
        if was_live == w.deleted {
            *deltas.entry(w.resource_type.as_str()).or_default() += if w.deleted { -1 } else { 1 };
        }
    }
    deltas.retain(|_, d| *d != 0);
    let counts = async {
        if deltas.is_empty() {
            return Ok(());
        }
        let types: Vec<&str> = deltas.keys().copied().collect();
        let delta: Vec<i64> = deltas.values().copied().collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO type_count (res_type, live) SELECT * FROM unnest($1::text[], $2::bigint[]) \
                 ON CONFLICT (res_type) DO UPDATE SET live = type_count.live + excluded.live",
            )
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&types, &delta]).await.map_err(pg)?;
        Ok::<_, StoreError>(())
    };

    // Independent statements: issued together, they are pipelined on the connection.
    futures::try_join!(versions, current, delete_identifiers, insert_identifiers, care_links, search_index, counts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement whose request is dropped is cancelled on the server at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_statement_is_cancelled() {
        let Ok(url) = std::env::var("TESSERA_TEST_DATABASE_URL") else {
            eprintln!("TESSERA_TEST_DATABASE_URL is not set: not run");
            return;
        };
        let store = PostgresStore::connect_isolated(&url).await.unwrap();
        let marker = format!("cancel-me-{}", std::process::id());
        let sql = format!("SELECT pg_sleep(30) /* {marker} */");
        let pool = store.pool.clone();
        let task = tokio::spawn(async move {
            let running = Running::new(pool.get().await.unwrap());
            let _ = running.client().simple_query(&sql).await;
            running.done();
        });
        let watcher = store.client().await.unwrap();
        async fn active(watcher: &tokio_postgres::Client, marker: &str) -> i64 {
            watcher
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_activity%'", &[&marker])
                .await
                .unwrap()
                .get(0)
        }
        let mut started = false;
        for _ in 0..50 {
            if active(&watcher, &marker).await == 1 {
                started = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(started, "the statement never started");
        task.abort();
        let _ = task.await;
        let t = std::time::Instant::now();
        while active(&watcher, &marker).await > 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "the statement still runs 5 s after its request was dropped");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
