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
//! * [`worklist`] — the patients at a ward or clinic, through the same gate.

pub mod access;
pub mod audit;
pub mod bundle;
pub mod cache;
pub mod capability;
pub mod criteria;
pub mod domain;
pub mod error;
pub mod facts;
pub mod guard;
pub mod history;
pub mod prepare;
pub mod privacy;
mod residual;
pub mod rest;
pub mod search;
pub mod worklist;

pub use access::{Access, AccessKind};
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
    /// Access policy and read audit are enforced. Only a build with the
    /// `bench-unenforced` feature can turn this off (see [`EngineConfig::unenforced`]).
    enforce: bool,
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
}

impl Engine {
    /// An engine over `store`, starting with the bootstrap domain; call
    /// [`Engine::load_domain`] to use the domain stored in the database.
    pub fn new(store: DynStore, config: EngineConfig) -> Self {
        Engine { inner: Arc::new(Inner { store, config, domain: RwLock::new(Arc::new(Domain::bootstrap())), cache: Default::default(), break_glass: Default::default() }) }
    }

    /// Break-glass grants made since the server started.
    pub fn break_glass_total(&self) -> u64 {
        self.inner.break_glass.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_break_glass(&self) {
        self.inner.break_glass.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
}

/// A resource version as the engine hands it out: its JSON bytes and the facts the
/// transport needs for headers (`ETag`, `Last-Modified`, `Location`).
#[derive(Debug, Clone)]
pub struct VersionedResource {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    pub last_updated_micros: i64,
    pub deleted: bool,
    /// The resource JSON (empty for a deletion).
    pub json: Vec<u8>,
}

impl From<tessera_store::Stored> for VersionedResource {
    fn from(s: tessera_store::Stored) -> Self {
        VersionedResource {
            resource_type: s.resource_type,
            id: s.id,
            version: s.version,
            last_updated_micros: s.last_updated_micros,
            deleted: s.deleted,
            json: s.json,
        }
    }
}

impl VersionedResource {
    /// `W/"<version>"`
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    /// `Type/id/_history/version`
    pub fn versioned_reference(&self) -> String {
        format!("{}/{}/_history/{}", self.resource_type, self.id, self.version)
    }

    /// `meta.lastUpdated` as a FHIR instant.
    pub fn last_updated(&self) -> String {
        prepare::format_instant(self.last_updated_micros)
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
