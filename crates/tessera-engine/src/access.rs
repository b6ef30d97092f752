//! Who is asking: the access context every engine call carries.
//!
//! An [`Access`] is built from a verified access token (or, for the server's own work such
//! as imports and the demo, from [`Access::system`]). The engine never trusts anything a
//! client says about itself beyond what the token proves.

use crate::FhirError;
use tessera_auth::{Claims, ScopeOp, Scopes, TokenKind};
use tessera_domain::Domain;
use tessera_fhir::IssueType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A person, working in one role at one organisation (and location).
    User,
    /// A system or interface (client credentials), acting for an organisation.
    System,
    /// A patient signed in to the portal: reads their own record (`patient`), nothing else,
    /// and writes nothing.
    Patient,
}

/// The subject of an interface's access: `hl7v2-interface.{id}` (no service account may have such an id).
pub const INTERFACE_PREFIX: &str = "hl7v2-interface.";

/// The access context of one request.
#[derive(Debug, Clone)]
pub struct Access {
    pub kind: AccessKind,
    /// User id or service account id.
    pub subject: String,
    pub name: String,
    /// The active organisation: the owner of what this subject writes.
    pub organisation: String,
    /// The active location, if any.
    pub location: Option<String>,
    /// The active role id (users only).
    pub role: Option<String>,
    /// Every location of the active role assignment (the active one first).
    pub locations: Vec<String>,
    /// The SMART scopes granted.
    pub scopes: Scopes,
    /// The patient in context: a SMART launch's (`launch/patient`), or the portal patient's
    /// own record. Patient-level scopes reach only this patient's compartment.
    pub patient: Option<String>,
    /// Set only by the engine while it applies an approved change request (its Task id):
    /// governed content and configuration may then be written.
    pub governed_change: Option<String>,
}

impl Access {
    /// The access of a verified token, checked against the current domain (a user whose
    /// role was withdrawn since the token was issued is refused).
    pub fn from_claims(claims: &Claims, domain: &Domain) -> Result<Access, FhirError> {
        let scopes = Scopes::parse(&claims.scope).map_err(|e| FhirError::new(401, IssueType::Login, format!("the token's scopes are invalid: {e}")))?;
        match claims.kind {
            TokenKind::System => {
                if claims.sub != crate::SYSTEM_ACCOUNT && domain.service_account(&claims.sub).is_none() {
                    return Err(FhirError::new(401, IssueType::Login, format!("service account '{}' is not known", claims.sub)));
                }
                Ok(Access {
                    kind: AccessKind::System,
                    subject: claims.sub.clone(),
                    name: claims.name.clone(),
                    organisation: claims.org.clone(),
                    location: None,
                    role: None,
                    locations: Vec::new(),
                    scopes,
                    patient: None,
                    governed_change: None,
                })
            }
            TokenKind::Patient => {
                let account = domain
                    .portal_account(&claims.sub)
                    .filter(|a| a.active)
                    .ok_or_else(|| FhirError::new(401, IssueType::Login, format!("portal account '{}' is not active in this domain", claims.sub)))?;
                let patient = claims
                    .patient
                    .clone()
                    .ok_or_else(|| FhirError::new(401, IssueType::Login, "a patient's token must name the patient's own record"))?;
                Ok(Access {
                    kind: AccessKind::Patient,
                    subject: account.id.clone(),
                    name: account.name.clone(),
                    organisation: String::new(),
                    location: None,
                    role: None,
                    locations: Vec::new(),
                    scopes,
                    patient: Some(patient),
                    governed_change: None,
                })
            }
            TokenKind::User => {
                let user = domain
                    .user(&claims.sub)
                    .filter(|u| u.active)
                    .ok_or_else(|| FhirError::new(401, IssueType::Login, format!("user '{}' is not active in this domain", claims.sub)))?;
                let role = claims.role.as_deref().unwrap_or("");
                let assignment = user
                    .roles
                    .iter()
                    .find(|a| a.role == role && a.organisation == claims.org)
                    .ok_or_else(|| FhirError::new(401, IssueType::Login, format!("user '{}' no longer holds the role '{role}' at '{}'", claims.sub, claims.org)))?;
                let mut locations = Vec::new();
                if let Some(l) = &claims.loc {
                    locations.push(l.clone());
                }
                locations.extend(assignment.locations.iter().filter(|l| Some(*l) != claims.loc.as_ref()).cloned());
                Ok(Access {
                    kind: AccessKind::User,
                    subject: claims.sub.clone(),
                    name: claims.name.clone(),
                    organisation: claims.org.clone(),
                    location: claims.loc.clone(),
                    role: Some(role.to_string()),
                    locations,
                    scopes,
                    patient: claims.patient.clone(),
                    governed_change: None,
                })
            }
        }
    }

    /// The server's own system access (imports, demo data), acting for `organisation`.
    pub fn system(organisation: &str) -> Access {
        Access {
            kind: AccessKind::System,
            subject: crate::SYSTEM_ACCOUNT.to_string(),
            name: "Tessera system".into(),
            organisation: organisation.to_string(),
            location: None,
            role: None,
            locations: Vec::new(),
            scopes: Scopes::parse("system/*.*").expect("valid scope"),
            patient: None,
            governed_change: None,
        }
    }

    /// An HL7 v2 interface of `organisation` (the domain file's `[[interfaces]]`): the
    /// organisation's system access, named `hl7v2-interface.{id}` in the audit. It may merge the
    /// records of its own trust (ADT^A40), as a patient administration system does.
    pub fn interface(organisation: &str, id: &str) -> Access {
        let mut access = Access::system(organisation);
        access.subject = format!("{INTERFACE_PREFIX}{id}");
        access.name = format!("HL7 v2 interface {id}");
        access
    }

    /// Whether this is an HL7 v2 interface's access ([`Access::interface`]); no token can
    /// carry it (the domain refuses service accounts with such ids).
    pub fn is_interface(&self) -> bool {
        self.kind == AccessKind::System && self.subject.starts_with(INTERFACE_PREFIX)
    }

    /// The domain's bootstrap account: the built-in system account acting for the domain
    /// itself (`tessera token --system` without `--org`, and the server's own work on the
    /// domain). The one unrestricted subject; every use is audited.
    pub fn is_domain_bootstrap(&self) -> bool {
        self.kind == AccessKind::System && self.subject == crate::SYSTEM_ACCOUNT && self.organisation == tessera_domain::BOOTSTRAP_ORGANISATION
    }

    /// The domain's bootstrap access (see [`Access::is_domain_bootstrap`]): the server's own
    /// work on the domain itself.
    pub fn bootstrap() -> Access {
        Access::system(tessera_domain::BOOTSTRAP_ORGANISATION)
    }

    /// The FHIR reference of the subject: `Practitioner/…`, `Device/…`, or the portal
    /// patient's own `Patient/…`.
    pub fn reference(&self) -> String {
        match self.kind {
            AccessKind::User => format!("Practitioner/{}", self.subject),
            AccessKind::System => format!("Device/{}", self.subject),
            AccessKind::Patient => format!("Patient/{}", self.patient.as_deref().unwrap_or("")),
        }
    }

    /// The patient whose compartment bounds what this access reaches of `resource_type`:
    /// the portal patient's own record; for a user, the patient in context when only
    /// patient-level scopes (`patient/…`) cover the type — an empty id (nothing) when no
    /// patient is in context. `None`: not bounded to one patient.
    pub fn compartment_bound(&self, resource_type: &str) -> Option<&str> {
        use tessera_auth::ScopeContext;
        match self.kind {
            AccessKind::Patient => Some(self.patient.as_deref().unwrap_or("")),
            AccessKind::System => None,
            AccessKind::User => {
                if !self.scopes.has_context(ScopeContext::Patient) {
                    return None;
                }
                let user_level = [ScopeOp::Read, ScopeOp::Search, ScopeOp::Create, ScopeOp::Update, ScopeOp::Delete]
                    .into_iter()
                    .any(|op| self.scopes.allows_in(ScopeContext::User, resource_type, op));
                (!user_level).then(|| self.patient.as_deref().unwrap_or(""))
            }
        }
    }

    /// Does a SMART scope allow `op` on `resource_type`? (403 otherwise.)
    pub fn require_scope(&self, resource_type: &str, op: ScopeOp) -> Result<(), FhirError> {
        if self.scopes.allows(resource_type, op) {
            Ok(())
        } else {
            Err(FhirError::new(403, IssueType::Forbidden, format!("the token's scopes do not allow {} on {resource_type}", op_name(op))))
        }
    }
}

fn op_name(op: ScopeOp) -> &'static str {
    match op {
        ScopeOp::Create => "create",
        ScopeOp::Read => "read",
        ScopeOp::Update => "update",
        ScopeOp::Delete => "delete",
        ScopeOp::Search => "search",
    }
}
