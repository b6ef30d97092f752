//! FHIR interactions, independent of transport.
//!
//! The HTTP layer (`tessera-http`), the importer and later the HL7 v2 interfaces all call
//! the [`Engine`]; none of them touches the store directly. That makes the engine the one
//! place where every read and write passes, and so the place where access policy and audit
//! are enforced.
//!
//! Modules, one per FHIR concern:
//! * [`rest`] — read, vread, create, update, patch, delete, conditional variants.
//! * [`bundle`] — batch and transaction bundles.
//! * [`history`] — instance, type and system history.
//! * [`criteria`] — the query strings the engine itself understands
//!   (conditional create/update/delete/references: `_id` and `identifier`).
//! * [`capability`] — the CapabilityStatement.
//! * [`prepare`] — turning a validated resource into a stored version.
//! * [`invariants`] — the validation of every write: `tessera_fhir::validation`, then the
//!   FHIRPath invariants of the R4 definitions.
//! * [`references`] — a literal reference must name a resource that exists.
//! * [`worklist`] — the patients at a ward or clinic, through the same gate.
//! * [`patient_index`] — matching at registration, `$match`, IHE PIXm, the duplicate
//!   review worklist.
//! * [`merge`] — `Patient/$merge` and `$unmerge`.

pub mod access;
pub mod audit;
pub mod binary;
pub mod bundle;
pub mod cache;
pub mod capability;
pub mod content;
pub mod content_diff;
pub mod criteria;
pub mod governance;
pub mod domain;
pub mod error;
pub mod facts;
pub mod guard;
pub mod history;
pub mod invariants;
pub mod meta;
pub mod operations;
pub mod patch;
pub mod patient_index;
pub mod merge;
pub mod prepare;
pub mod privacy;
pub mod references;
mod residual;
pub mod rest;
pub mod search;
pub mod subscription;
pub mod terminology;
pub mod validate_op;
pub mod worklist;

pub use access::{Access, AccessKind};
pub use guard::{Released, VersionedResource};
pub use error::FhirError;

use std::sync::{Arc, RwLock};
use tessera_domain::Domain;

/// The id of the domain's built-in system account (full `system/*.*` rights).
pub const SYSTEM_ACCOUNT: &str = "system";
use tessera_fhir::validation::Limits;
use tessera_store::DynStore;

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Absolute base URL of the FHIR API, e.g. `http://127.0.0.1:8080/fhir` (no trailing slash).
    pub base_url: String,
    /// Whether `PUT` on an absent id creates the resource (update-as-create).
    pub update_create: bool,
    /// Validation limits.
    pub limits: Limits,
    /// Largest `_count` a client may ask for.
    pub max_page_size: usize,
    /// Page size when `_count` is not given.
    pub default_page_size: usize,
    /// Bounds on the work one search may ask for.
    pub search_limits: SearchLimits,
    /// Most entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// Writes are refused when a literal reference names a resource that does not exist
    /// on this server (`references`). Off only for bulk loads whose files arrive in any
    /// order.
    pub check_references: bool,
    /// Access policy and read audit are enforced. Only a build with the
    /// `bench-unenforced` feature can turn this off (see [`EngineConfig::unenforced`]).
    enforce: bool,
}

/// Bounds on the work one search request may ask for: each is answered, when exceeded,
/// with 400 and an OperationOutcome naming the limit and the `tessera serve` option that
/// sets it (docs/operators.md).
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    /// Search parameters in one request (`--max-search-parameters`).
    pub max_parameters: usize,
    /// Comma-separated values of one parameter (`--max-search-values`).
    pub max_values: usize,
    /// `_sort` keys (`--max-sort-keys`).
    pub max_sort_keys: usize,
    /// `_include` and `_revinclude` parameters (`--max-includes`).
    pub max_includes: usize,
    /// `_elements` names (`--max-search-values`).
    pub max_elements: usize,
    /// Largest `_offset` (`--max-offset`).
    pub max_offset: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits { max_parameters: 50, max_values: 100, max_sort_keys: 8, max_includes: 16, max_elements: 100, max_offset: 100_000 }
    }
}

impl SearchLimits {
    /// Checks the parameters of one search request against the limits.
    pub fn check(&self, pairs: &[(String, String)]) -> Result<(), FhirError> {
        let too_many = |what: &str, n: usize, limit: usize, option: &str| {
            FhirError::new(
                400,
                tessera_fhir::IssueType::TooCostly,
                format!("{what}: {n}, more than this server's limit of {limit} per request (set by `tessera serve {option}`)"),
            )
        };
        let params = pairs.iter().filter(|(k, _)| !matches!(k.as_str(), "_count" | "_format" | "_pretty" | "_total" | "_summary")).count();
        if params > self.max_parameters {
            return Err(too_many("too many search parameters", params, self.max_parameters, "--max-search-parameters"));
        }
        let mut includes = 0;
        for (k, v) in pairs {
            let base = k.split(':').next().unwrap_or(k);
            let values = v.split(',').count();
            match base {
                "_sort" if values > self.max_sort_keys => return Err(too_many("too many _sort keys", values, self.max_sort_keys, "--max-sort-keys")),
                "_elements" if values > self.max_elements => return Err(too_many("too many _elements", values, self.max_elements, "--max-search-values")),
                "_include" | "_revinclude" => includes += 1,
                "_offset" => {
                    let offset: u64 = v.parse().map_err(|_| FhirError::bad_request(format!("_offset '{v}' is not a number")).at("_offset"))?;
                    if offset > self.max_offset as u64 {
                        return Err(too_many("_offset too large", offset as usize, self.max_offset, "--max-offset").at("_offset"));
                    }
                }
                _ if values > self.max_values => {
                    return Err(too_many(&format!("too many values of '{k}'"), values, self.max_values, "--max-search-values").at(k.as_str()));
                }
                _ => {}
            }
        }
        if includes > self.max_includes {
            return Err(too_many("too many _include and _revinclude parameters", includes, self.max_includes, "--max-includes"));
        }
        Ok(())
    }
}

impl EngineConfig {
    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// The same configuration with enforcement and read audit off — for measuring their
    /// cost only. Production builds do not have this.
    #[cfg(feature = "bench-unenforced")]
    pub fn unenforced(mut self) -> Self {
        self.enforce = false;
        self
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            base_url: "http://127.0.0.1:8080/fhir".into(),
            update_create: true,
            limits: Limits::default(),
            max_page_size: 1000,
            default_page_size: 50,
            search_limits: SearchLimits::default(),
            max_bundle_entries: 20_000,
            check_references: true,
            enforce: true,
        }
    }
}

/// What the client wants back from a write (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The FHIR engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    config: EngineConfig,
    domain: RwLock<Arc<Domain>>,
    cache: cache::FactsCache,
    /// Break-glass grants made since start (an operator alert metric).
    break_glass: std::sync::atomic::AtomicU64,
    /// The patient index's in-memory candidates ([`patient_index`]).
    patient_index: patient_index::PatientIndex,
    /// The active subscriptions and the websocket clients bound to them ([`subscription`]).
    subscriptions: subscription::Subscriptions,
}

impl Engine {
    /// An engine over `store`, starting with the bootstrap domain; call
    /// [`Engine::load_domain`] to use the domain stored in the database.
    pub fn new(store: DynStore, config: EngineConfig) -> Self {
        Engine { inner: Arc::new(Inner { store, config, domain: RwLock::new(Arc::new(Domain::bootstrap())), cache: Default::default(), break_glass: Default::default(), patient_index: Default::default(), subscriptions: Default::default() }) }
    }

    /// Break-glass grants made since the server started.
    pub fn break_glass_total(&self) -> u64 {
        self.inner.break_glass.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_break_glass(&self) {
        self.inner.break_glass.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn patient_index(&self) -> &patient_index::PatientIndex {
        &self.inner.patient_index
    }

    pub(crate) fn cache(&self) -> &cache::FactsCache {
        &self.inner.cache
    }

    /// The current domain configuration.
    pub fn domain(&self) -> Arc<Domain> {
        self.inner.domain.read().expect("domain lock").clone()
    }

    fn set_domain(&self, domain: Domain) {
        *self.inner.domain.write().expect("domain lock") = Arc::new(domain);
    }

    /// The store, for the engine's own modules only: transports and tools never see a
    /// stored row except as the [`Gate`](guard::Gate) releases it.
    pub(crate) fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// The storage backend's name (`sqlite`, `postgresql`), for logs.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// The store's counters, for `/metrics`.
    pub fn store_metrics(&self) -> &tessera_store::StoreMetrics {
        self.inner.store.metrics()
    }

    /// How many resources and versions the store holds (operators' figures).
    pub async fn stats(&self) -> Result<tessera_store::StoreStats, FhirError> {
        Ok(self.inner.store.stats().await?)
    }

    /// Whether the server can do its work (for `/healthz` and `/readyz`): the database
    /// answers, and the last group commit did not fail (a server that cannot record
    /// writes and their audit is not healthy, however well it reads).
    pub async fn health(&self) -> Result<(), FhirError> {
        self.inner.store.get_meta("schema").await?;
        match self.inner.store.metrics().write_failure() {
            Some(e) => Err(FhirError::new(503, tessera_fhir::IssueType::Exception, format!("writes are failing: {e}"))),
            None => Ok(()),
        }
    }

    /// A value the server's own tools keep in the database: the token signing key
    /// (`auth.…`), the demo marker (`demo.…`), the import's resume points (`import.…`) and
    /// the content signing key (`content.…`).
    /// Other keys (the domain, break-glass grants) are the engine's and are refused.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, FhirError> {
        check_setting_key(key)?;
        Ok(self.inner.store.get_meta(key).await?)
    }

    /// Stores a value of [`Engine::setting`].
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), FhirError> {
        check_setting_key(key)?;
        Ok(self.inner.store.set_meta(key, value).await?)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// 200 (updated, or a conditional create that matched), 201 (created).
    pub status: u16,
    pub resource: VersionedResource,
}

/// Compile-time check: the engine's futures must be `Send` (transports spawn them).
#[allow(dead_code)]
fn assert_futures_are_send(e: &Engine) {
    fn is_send<T: Send>(_: T) {}
    let a = Access::system("x");
    is_send(e.bundle_json(&a, b"", None));
    is_send(e.search_identifiers(&a, "", ""));
}

/// The key spaces of [`Engine::setting`].
fn check_setting_key(key: &str) -> Result<(), FhirError> {
    if ["auth.", "demo.", "import.", "content.", "hl7."].iter().any(|p| key.starts_with(p)) {
        Ok(())
    } else {
        Err(FhirError::internal(format!("'{key}' is not a setting the server's tools may read or change")))
    }
}
