//! SMART on FHIR scopes, v1 (`patient/*.read`, `user/Observation.write`, `system/*.*`) and v2
//! (`user/Observation.rs`, `patient/Patient.cruds`, `system/*.cruds`).
//!
//! v1 `read` means read and search (v2 `rs`), `write` means create, update and delete (v2
//! `cud`), and `*` means all five (v2 `cruds`).
//!
//! Besides resource scopes the identity and launch scopes `openid`, `fhirUser`, `profile`,
//! `launch`, `launch/patient`, `launch/encounter`, `offline_access` and `online_access` are
//! recognised; they grant no access to resources. v2 scopes with search-parameter
//! constraints (`patient/Observation.rs?category=…`) are refused: they are not supported.

use crate::error::AuthError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The interactions a resource scope permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeOp {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl ScopeOp {
    pub const ALL: [ScopeOp; 5] = [ScopeOp::Create, ScopeOp::Read, ScopeOp::Update, ScopeOp::Delete, ScopeOp::Search];

    /// The SMART v2 letter (`c`, `r`, `u`, `d`, `s`).
    pub fn letter(self) -> char {
        match self {
            ScopeOp::Create => 'c',
            ScopeOp::Read => 'r',
            ScopeOp::Update => 'u',
            ScopeOp::Delete => 'd',
            ScopeOp::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            ScopeOp::Create => 1,
            ScopeOp::Read => 2,
            ScopeOp::Update => 4,
            ScopeOp::Delete => 8,
            ScopeOp::Search => 16,
        }
    }
}

/// A set of [`ScopeOp`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpSet(u8);

impl OpSet {
    pub const NONE: OpSet = OpSet(0);
    /// `cruds` (v1 `*`).
    pub const ALL: OpSet = OpSet(31);
    /// `rs` (v1 `read`).
    pub const READ: OpSet = OpSet(2 | 16);
    /// `cud` (v1 `write`).
    pub const WRITE: OpSet = OpSet(1 | 4 | 8);

    pub fn of(ops: &[ScopeOp]) -> OpSet {
        OpSet(ops.iter().fold(0, |acc, op| acc | op.bit()))
    }

    pub fn contains(self, op: ScopeOp) -> bool {
        self.0 & op.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersection(self, other: OpSet) -> OpSet {
        OpSet(self.0 & other.0)
    }

    pub fn union(self, other: OpSet) -> OpSet {
        OpSet(self.0 | other.0)
    }

    pub fn is_subset(self, other: OpSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn ops(self) -> impl Iterator<Item = ScopeOp> {
        ScopeOp::ALL.into_iter().filter(move |op| self.contains(*op))
    }

    /// The v2 letters, in the canonical order (`cruds`).
    pub fn letters(self) -> String {
        self.ops().map(ScopeOp::letter).collect()
    }

    /// The v1 spelling, if there is one (`read`, `write`, `*`).
    pub fn v1(self) -> Option<&'static str> {
        match self {
            OpSet::READ => Some("read"),
            OpSet::WRITE => Some("write"),
            OpSet::ALL => Some("*"),
            _ => None,
        }
    }
}

/// Whose data a resource scope reaches: the patient in context, whatever the user may see,
/// or whatever the system may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

impl ScopeContext {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }

    fn parse(s: &str) -> Option<ScopeContext> {
        match s {
            "patient" => Some(ScopeContext::Patient),
            "user" => Some(ScopeContext::User),
            "system" => Some(ScopeContext::System),
            _ => None,
        }
    }
}

impl fmt::Display for ScopeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The syntax a resource scope was written in; kept so that a granted scope is spelled the
/// way the client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeSyntax {
    V1,
    V2,
}

/// `context/ResourceType.permissions`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// `None` for the wildcard `*`.
    pub resource_type: Option<String>,
    pub ops: OpSet,
    pub syntax: ScopeSyntax,
}

impl ResourceScope {
    pub fn new(context: ScopeContext, resource_type: Option<&str>, ops: OpSet) -> Self {
        ResourceScope { context, resource_type: resource_type.map(str::to_string), ops, syntax: ScopeSyntax::V2 }
    }

    /// Whether this scope permits `op` on `resource_type`.
    pub fn allows(&self, resource_type: &str, op: ScopeOp) -> bool {
        self.ops.contains(op) && self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }

    /// What both scopes permit, if anything (same context; wildcard meets anything).
    pub fn intersect(&self, other: &ResourceScope) -> Option<ResourceScope> {
        if self.context != other.context {
            return None;
        }
        let resource_type = match (&self.resource_type, &other.resource_type) {
            (None, t) | (t, None) => t.clone(),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let ops = self.ops.intersection(other.ops);
        if ops.is_empty() {
            return None;
        }
        let syntax = if self.syntax == ScopeSyntax::V1 && ops.v1().is_some() { ScopeSyntax::V1 } else { ScopeSyntax::V2 };
        Some(ResourceScope { context: self.context, resource_type, ops, syntax })
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = self.resource_type.as_deref().unwrap_or("*");
        match (self.syntax, self.ops.v1()) {
            (ScopeSyntax::V1, Some(v1)) => write!(f, "{}/{}.{}", self.context, resource, v1),
            _ => write!(f, "{}/{}.{}", self.context, resource, self.ops.letters()),
        }
    }
}

/// The scopes recognised that grant no resource access.
pub const NON_RESOURCE_SCOPES: [&str; 8] =
    ["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access"];

/// One scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource(ResourceScope),
    /// One of [`NON_RESOURCE_SCOPES`].
    Other(&'static str),
}

impl Scope {
    /// Parses one scope token.
    pub fn parse(token: &str) -> Result<Scope, AuthError> {
        if let Some(known) = NON_RESOURCE_SCOPES.iter().find(|s| **s == token) {
            return Ok(Scope::Other(known));
        }
        if token.is_empty() {
            return Err(AuthError::scope(token, "empty scope"));
        }
        if let Some(c) = token.chars().find(|c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')) {
            return Err(AuthError::scope(token, format!("character {c:?} is not allowed in a scope")));
        }
        let Some((context, rest)) = token.split_once('/') else {
            return Err(AuthError::scope(
                token,
                "unknown scope; expected context/ResourceType.permissions (e.g. user/Observation.rs) or one of openid, fhirUser, profile, launch, launch/patient, launch/encounter, offline_access, online_access",
            ));
        };
        let Some(context) = ScopeContext::parse(context) else {
            return Err(AuthError::scope(token, format!("unknown context `{context}`; expected patient, user or system")));
        };
        if rest.contains('?') {
            return Err(AuthError::scope(token, "scopes with search-parameter constraints are not supported"));
        }
        let Some((resource, permissions)) = rest.split_once('.') else {
            return Err(AuthError::scope(token, "missing permissions; expected ResourceType.permissions after the context (e.g. Observation.rs or Observation.read)"));
        };
        let resource_type = if resource == "*" {
            None
        } else if resource.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && resource.chars().all(|c| c.is_ascii_alphabetic()) {
            Some(resource.to_string())
        } else {
            return Err(AuthError::scope(token, format!("`{resource}` is not a FHIR resource type or `*`")));
        };
        let (ops, syntax) = parse_permissions(token, permissions)?;
        Ok(Scope::Resource(ResourceScope { context, resource_type, ops, syntax }))
    }

    pub fn as_resource(&self) -> Option<&ResourceScope> {
        match self {
            Scope::Resource(r) => Some(r),
            Scope::Other(_) => None,
        }
    }
}

fn parse_permissions(token: &str, permissions: &str) -> Result<(OpSet, ScopeSyntax), AuthError> {
    match permissions {
        "read" => return Ok((OpSet::READ, ScopeSyntax::V1)),
        "write" => return Ok((OpSet::WRITE, ScopeSyntax::V1)),
        "*" => return Ok((OpSet::ALL, ScopeSyntax::V1)),
        "" => return Err(AuthError::scope(token, "empty permissions; expected read, write or *, or SMART v2 letters from `cruds`")),
        _ => {}
    }
    let mut ops = OpSet::NONE;
    let mut last: Option<usize> = None;
    for c in permissions.chars() {
        let Some(position) = ScopeOp::ALL.iter().position(|op| op.letter() == c) else {
            return Err(AuthError::scope(
                token,
                format!("unknown permissions `{permissions}`; expected read, write or *, or SMART v2 letters from `cruds`"),
            ));
        };
        if last.is_some_and(|l| position <= l) {
            return Err(AuthError::scope(
                token,
                format!("permissions `{permissions}` must be distinct letters in the order c, r, u, d, s"),
            ));
        }
        last = Some(position);
        ops = ops.union(OpSet::of(&[ScopeOp::ALL[position]]));
    }
    Ok((ops, ScopeSyntax::V2))
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(r) => r.fmt(f),
            Scope::Other(s) => f.write_str(s),
        }
    }
}

/// A set of scopes, as in a `scope` parameter or claim (space separated). Order is kept;
/// duplicates are dropped. Serialises as the space-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes {
    scopes: Vec<Scope>,
}

impl Scopes {
    /// Parses a space-separated scope string; any invalid scope is an error naming it.
    /// Repeated spaces are tolerated; an empty string gives no scopes.
    pub fn parse(s: &str) -> Result<Scopes, AuthError> {
        let mut scopes = Scopes::default();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            scopes.push(Scope::parse(token)?);
        }
        Ok(scopes)
    }

    /// Parses each string as one scope (as in `ServiceAccount::scopes`); an entry may also
    /// hold several space-separated scopes.
    pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Scopes, AuthError> {
        let mut scopes = Scopes::default();
        for entry in list {
            for scope in Scopes::parse(entry.as_ref())?.scopes {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }

    pub fn push(&mut self, scope: Scope) {
        if !self.scopes.contains(&scope) {
            self.scopes.push(scope);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(Scope::as_resource)
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether a scope with this exact spelling is present (`openid`, `system/*.cruds`).
    pub fn contains(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s.to_string() == scope)
    }

    /// Whether any resource scope, in any context, permits `op` on `resource_type`.
    pub fn allows(&self, resource_type: &str, op: ScopeOp) -> bool {
        self.resource_scopes().any(|s| s.allows(resource_type, op))
    }

    /// Whether a resource scope in `context` permits `op` on `resource_type`.
    pub fn allows_in(&self, context: ScopeContext, resource_type: &str, op: ScopeOp) -> bool {
        self.resource_scopes().any(|s| s.context == context && s.allows(resource_type, op))
    }

    /// The contexts (patient, user, system) of the resource scopes present, in that order.
    pub fn contexts(&self) -> Vec<ScopeContext> {
        let mut contexts: Vec<ScopeContext> = self.resource_scopes().map(|s| s.context).collect();
        contexts.sort();
        contexts.dedup();
        contexts
    }

    pub fn has_context(&self, context: ScopeContext) -> bool {
        self.resource_scopes().any(|s| s.context == context)
    }

    /// What of `requested` may be granted given `allowed`: each requested resource scope is
    /// narrowed to what allowed scopes of the same context permit (a wildcard resource type
    /// meets a specific one; permissions are intersected), and other scopes are kept if they
    /// are allowed too. Granted scopes keep the requested spelling (v1 or v2) where it can
    /// express them.
    pub fn intersect(requested: &Scopes, allowed: &Scopes) -> Scopes {
        let mut granted: Vec<ResourceScope> = Vec::new();
        let mut others = Vec::new();
        for scope in &requested.scopes {
            match scope {
                Scope::Other(name) => {
                    if allowed.scopes.contains(scope) {
                        others.push(Scope::Other(name));
                    }
                }
                Scope::Resource(r) => {
                    for a in allowed.resource_scopes() {
                        let Some(g) = r.intersect(a) else { continue };
                        match granted.iter_mut().find(|e| e.context == g.context && e.resource_type == g.resource_type) {
                            Some(existing) => {
                                existing.ops = existing.ops.union(g.ops);
                                if existing.ops.v1().is_none() {
                                    existing.syntax = ScopeSyntax::V2;
                                }
                            }
                            None => granted.push(g),
                        }
                    }
                }
            }
        }
        let mut result = Scopes::default();
        for g in granted {
            result.push(Scope::Resource(g));
        }
        for o in others {
            result.push(o);
        }
        result
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            scope.fmt(f)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Scopes {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scopes::parse(s)
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Scopes::parse(&s).map_err(serde::de::Error::custom)
    }
}
