//! The domain configuration in the store: loading it at start, applying a domain file.
//!
//! The configuration is kept as one JSON document in the store (`domain` meta key) and
//! mirrored as FHIR resources (Organization, Location, Practitioner, PractitionerRole,
//! Device) so that clinical data can refer to them.

use crate::access::{Access, AccessKind};
use crate::{Engine, FhirError};
use tessera_domain::{DataClass, Domain};
use tessera_fhir::IssueType;

const DOMAIN_KEY: &str = "domain";

impl Engine {
    /// Loads the domain stored in the database; a fresh database gets the bootstrap
    /// domain (stored, so that later starts see the same one).
    pub async fn load_domain(&self) -> Result<(), FhirError> {
        match self.store().get_meta(DOMAIN_KEY).await? {
            Some(json) => {
                let domain: Domain = serde_json::from_str(&json).map_err(|e| FhirError::internal(format!("the stored domain cannot be read: {e}")))?;
                self.set_domain(domain);
            }
            None => {
                let domain = Domain::bootstrap();
                self.store_domain(&domain).await?;
                self.set_domain(domain);
            }
        }
        self.refresh_subscriptions().await
    }

    async fn store_domain(&self, domain: &Domain) -> Result<(), FhirError> {
        let json = serde_json::to_string(domain).map_err(|e| FhirError::internal(format!("cannot serialise the domain: {e}")))?;
        self.store().set_meta(DOMAIN_KEY, &json).await?;
        Ok(())
    }

    /// May this subject change the domain configuration?
    pub fn require_domain_admin(&self, access: &Access) -> Result<(), FhirError> {
        if access.is_domain_bootstrap() {
            return Ok(());
        }
        if access.kind == AccessKind::System {
            return Err(FhirError::new(403, IssueType::Forbidden, "a service account may not read or change the domain configuration"));
        }
        let domain = self.domain();
        let allowed = access
            .role
            .as_deref()
            .and_then(|r| domain.role(r))
            .and_then(|r| r.permissions.get(&DataClass::Configuration))
            .is_some_and(|p| p.write);
        if allowed {
            Ok(())
        } else {
            Err(FhirError::new(403, IssueType::Forbidden, "only a domain administrator may change the domain configuration"))
        }
    }

    /// The domain configuration for an administrator (checked and audited).
    pub async fn domain_for_admin(&self, access: &Access) -> Result<std::sync::Arc<Domain>, FhirError> {
        self.require_domain_admin(access)?;
        let mut gate = self.gate(access);
        gate.record("domain-read", true, &["Domain".to_string()], Vec::new(), false, None);
        gate.finish().await?;
        Ok(self.domain())
    }

    /// Replaces the domain configuration (after validating it) and writes its FHIR
    /// resources. Applying the same domain twice changes nothing but versions of
    /// resources whose content changed.
    pub async fn apply_domain(&self, access: &Access, domain: Domain) -> Result<usize, FhirError> {
        self.require_domain_admin(access)?;
        if self.governance_enforced() && access.governed_change.is_none() {
            let mut gate = self.gate(access);
            gate.record("domain-apply", false, &["Domain".to_string()], Vec::new(), false, None);
            gate.finish().await?;
            return Err(crate::governance::direct_change_refused("the domain configuration (organisations, users and their roles, sharing dials)"));
        }
        let mut gate = self.gate(access);
        gate.record("domain-apply", true, &["Domain".to_string()], Vec::new(), false, None);
        gate.finish().await?;
        domain.validate().map_err(|e| FhirError::bad_request(format!("the domain is not valid: {e}")))?;
        self.store_domain(&domain).await?;
        self.set_domain(domain.clone());
        let resources = tessera_domain::to_fhir_resources(&domain);
        let mut changed = 0;
        let system = Access::bootstrap();
        for r in resources {
            let ty = r["resourceType"].as_str().unwrap_or_default().to_string();
            let id = r["id"].as_str().unwrap_or_default().to_string();
            if let Some(cur) = self.store().read(&ty, &id).await? {
                if !cur.deleted && same_content(&cur.json, &r) {
                    continue;
                }
            }
            self.update(&system, &ty, &id, r, None).await?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// Equal apart from `meta`.
fn same_content(stored: &[u8], new: &serde_json::Value) -> bool {
    let Ok(mut old) = serde_json::from_slice::<serde_json::Value>(stored) else { return false };
    let mut new = new.clone();
    for v in [&mut old, &mut new] {
        if let Some(m) = v.as_object_mut() {
            m.remove("meta");
        }
    }
    old == new
}
