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
}

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
        }
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

    /// The FHIR reference of the subject: `Practitioner/…` or `Device/…`.
    pub fn reference(&self) -> String {
        match self.kind {
            AccessKind::User => format!("Practitioner/{}", self.subject),
            AccessKind::System => format!("Device/{}", self.subject),
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
