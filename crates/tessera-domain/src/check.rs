//! The semantic checks of a domain ([`Domain::validate`]).

use crate::error::{DomainError, Problem};
use crate::model::{Domain, RoleAssignment, ServiceAccount, User};
use crate::secret::is_argon2_phc;
use std::collections::{BTreeMap, BTreeSet};

/// Is `s` a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`)? Every id in the domain becomes the
/// id of a FHIR resource.
pub fn is_valid_fhir_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The part of a domain an entry belongs to (the arrays of the domain file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Settings,
    Role,
    Organisation,
    Location,
    User,
    ServiceAccount,
    Sharing,
    PortalAccount,
    App,
    Interface,
}

/// An entry a problem is about: its section, its index there and its key (id, or
/// `owner→viewer` for sharing agreements).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub section: Section,
    pub index: usize,
    pub key: String,
}

/// Problems found so far, each with the entry it is about.
#[derive(Default)]
pub(crate) struct Found {
    pub problems: Vec<(Problem, Option<Entry>)>,
}

impl Found {
    fn push(&mut self, entry: Option<Entry>, at: String, message: String) {
        self.problems.push((Problem { line: None, at, message }, entry));
    }

    pub fn into_result(self, line_of: impl Fn(&Entry) -> Option<usize>) -> Result<(), DomainError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(DomainError::Invalid(
            self.problems
                .into_iter()
                .map(|(mut p, entry)| {
                    p.line = entry.as_ref().and_then(&line_of);
                    p
                })
                .collect(),
        ))
    }
}

fn quoted_list<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let ids: Vec<String> = ids.map(|i| format!("`{i}`")).collect();
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }
}

impl Domain {
    /// Checks the domain is consistent: ids are valid FHIR ids and unique within their
    /// kind; every reference (parent organisation, a location's organisation and parent, a
    /// user's roles, organisations and locations, a service account's organisation, the
    /// organisations of sharing agreements) names an existing entry; the organisation and
    /// location hierarchies have no cycles; sharing agreements are between trusts. Reports
    /// every problem found.
    pub fn validate(&self) -> Result<(), DomainError> {
        self.check().into_result(|_| None)
    }

    pub(crate) fn check(&self) -> Found {
        let mut found = Found::default();
        self.check_settings(&mut found);
        self.check_roles(&mut found);
        self.check_organisations(&mut found);
        self.check_locations(&mut found);
        let mut seen = BTreeMap::new();
        for (i, user) in self.users.iter().enumerate() {
            let entry = Entry { section: Section::User, index: i, key: user.id.clone() };
            let at = format!("user `{}`", user.id);
            if let Some(first) = seen.insert(user.id.as_str(), i) {
                found.push(Some(entry.clone()), at.clone(), format!("duplicate user id (also users[{first}])"));
            }
            self.check_user(user, &entry, &mut found);
        }
        let mut seen = BTreeMap::new();
        for (i, account) in self.service_accounts.iter().enumerate() {
            let entry = Entry { section: Section::ServiceAccount, index: i, key: account.id.clone() };
            if let Some(first) = seen.insert(account.id.as_str(), i) {
                found.push(
                    Some(entry.clone()),
                    format!("service account `{}`", account.id),
                    format!("duplicate service account id (also service_accounts[{first}])"),
                );
            }
            if account.id.starts_with("hl7v2-interface.") {
                found.push(Some(entry.clone()), format!("service account `{}`", account.id), "ids beginning `hl7v2-interface.` name the HL7 v2 interfaces' own access".into());
            }
            self.check_service_account(account, &entry, &mut found);
        }
        self.check_sharing(&mut found);
        self.check_portal_accounts(&mut found);
        self.check_apps(&mut found);
        self.check_interfaces(&mut found);
        self.check_governance(&mut found);
        found
    }

    fn check_governance(&self, found: &mut Found) {
        let g = &self.governance;
        let entry = || Some(Entry { section: Section::Settings, index: 0, key: String::new() });
        let user = |found: &mut Found, u: &str, what: &str| {
            if self.user(u).is_none() {
                found.push(entry(), "governance".into(), format!("{what} `{u}` is not a user of the domain"));
            }
        };
        for lead in &g.leads {
            match self.organisation(&lead.organisation) {
                None => found.push(entry(), "governance".into(), format!("leads: `{}` is not an organisation of the domain", lead.organisation)),
                Some(o) if o.parent.is_some() => found.push(entry(), "governance".into(), format!("leads: `{}` is a site; governance leads are per trust", lead.organisation)),
                Some(_) => {}
            }
            if lead.users.is_empty() {
                found.push(entry(), "governance".into(), format!("leads of `{}`: no users", lead.organisation));
            }
            for u in &lead.users {
                user(found, u, "governance lead");
            }
        }
        for u in &g.clinical_safety_officers {
            user(found, u, "clinical safety officer");
        }
        for u in &g.emergency_approvers {
            user(found, u, "emergency approver");
        }
        if g.emergency_approvals as usize > g.emergency_approvers.len() && !g.emergency_approvers.is_empty() {
            found.push(entry(), "governance".into(), format!("emergency_approvals ({}) is more than there are emergency approvers", g.emergency_approvals));
        }
        for w in &g.freeze {
            let parse = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
            match (parse(&w.start), parse(&w.end)) {
                (Some(a), Some(b)) if a < b => {}
                (Some(_), Some(_)) => found.push(entry(), "governance".into(), format!("freeze `{}`: it ends before it starts", w.reason)),
                _ => found.push(entry(), "governance".into(), format!("freeze `{}`: start and end must be RFC 3339 instants (2027-01-04T00:00:00Z)", w.reason)),
            }
        }
        if g.enforced && g.leads.is_empty() {
            found.push(entry(), "governance".into(), "governance is enforced but no trust has a governance lead: no change could ever be approved".into());
        }
    }

    fn check_portal_accounts(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, account) in self.portal_accounts.iter().enumerate() {
            let entry = Some(Entry { section: Section::PortalAccount, index: i, key: account.id.clone() });
            let at = format!("portal account `{}`", account.id);
            if let Some(first) = seen.insert(account.id.as_str(), i) {
                found.push(entry.clone(), at.clone(), format!("duplicate portal account id (also portal_accounts[{first}])"));
            }
            if account.id.trim().is_empty() || account.id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                found.push(entry.clone(), at.clone(), "the id must be a sign-in name without spaces".into());
            }
            if self.user(&account.id).is_some() {
                found.push(entry.clone(), at.clone(), "a user has the same id: sign-in names must be distinct".into());
            }
            if account.name.trim().is_empty() {
                found.push(entry.clone(), at.clone(), "the name is empty".into());
            }
            if tessera_empi::nhs::NhsNumber::parse(&account.nhs_number).is_err() {
                found.push(entry.clone(), at.clone(), format!("`{}` is not a valid NHS number (ten digits with a correct check digit)", account.nhs_number));
            }
            if account.password_hash.as_deref().is_some_and(|h| !is_argon2_phc(h)) {
                found.push(entry.clone(), at.clone(), "password_hash is not an argon2 PHC string (`$argon2id$v=19$…`)".into());
            }
        }
    }

    fn check_interfaces(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for (i, interface) in self.interfaces.iter().enumerate() {
            let entry = Some(Entry { section: Section::Interface, index: i, key: interface.id.clone() });
            let at = format!("interface `{}`", interface.id);
            let mut problem = |message: String| found.push(entry.clone(), at.clone(), message);
            if let Some(first) = seen.insert(interface.id.as_str(), i) {
                problem(format!("duplicate interface id (also interfaces[{first}])"));
            }
            if !is_valid_fhir_id(&interface.id) {
                problem("the id must be letters, digits, '-' and '.', at most 64".into());
            }
            if self.organisation(&interface.organisation).is_none() {
                problem(format!("organisation `{}` is not an organisation of the domain", interface.organisation));
            }
            if let Some(listen) = &interface.listen {
                if listen.parse::<std::net::SocketAddr>().is_err() {
                    problem(format!("listen `{listen}` is not an address and port (`0.0.0.0:2575`)"));
                } else if let Some(first) = addresses.insert(listen.as_str(), i) {
                    problem(format!("listens on the address of interfaces[{first}]"));
                }
            }
            for (ward, location) in &interface.wards {
                match self.location(location) {
                    None => problem(format!("ward `{ward}` maps to `{location}`, which is not a location of the domain")),
                    Some(l) if self.trust_of(&l.organisation) != self.trust_of(&interface.organisation) => {
                        problem(format!("ward `{ward}` maps to `{location}`, a location of another organisation"))
                    }
                    Some(_) => {}
                }
            }
            for (authority, system) in &interface.identifier_systems {
                if !(system.starts_with("http://") || system.starts_with("https://") || system.starts_with("urn:")) {
                    problem(format!("identifier system of `{authority}` is not a URI: `{system}`"));
                }
            }
            if interface.tls_cert.is_some() != interface.tls_key.is_some() {
                problem("TLS needs both tls_cert and tls_key".into());
            }
            if interface.read_timeout_seconds == 0 || interface.max_message_bytes < 1024 {
                problem("read_timeout_seconds must be at least 1 and max_message_bytes at least 1024".into());
            }
        }
    }

    fn check_apps(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, app) in self.apps.iter().enumerate() {
            let entry = Some(Entry { section: Section::App, index: i, key: app.id.clone() });
            let at = format!("app `{}`", app.id);
            if let Some(first) = seen.insert(app.id.as_str(), i) {
                found.push(entry.clone(), at.clone(), format!("duplicate app id (also apps[{first}])"));
            }
            if !is_valid_fhir_id(&app.id) {
                found.push(entry.clone(), at.clone(), "the id (its client_id) must be letters, digits, '-' and '.', at most 64".into());
            }
            if self.service_account(&app.id).is_some() {
                found.push(entry.clone(), at.clone(), "a service account has the same id: client ids must be distinct".into());
            }
            if app.name.trim().is_empty() {
                found.push(entry.clone(), at.clone(), "the name is empty".into());
            }
            if self.organisation(&app.organisation).is_none() {
                found.push(entry.clone(), at.clone(), format!("organisation `{}` is not an organisation of the domain", app.organisation));
            }
            if app.redirect_uris.is_empty() {
                found.push(entry.clone(), at.clone(), "has no redirect_uris".into());
            }
            for uri in app.redirect_uris.iter().chain(app.launch_url.iter().filter(|u| !u.starts_with('/'))) {
                let ok = (uri.starts_with("https://") || uri.starts_with("http://")) && !uri.contains('#') && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    found.push(entry.clone(), at.clone(), format!("`{uri}` is not an absolute http(s) URL without a fragment"));
                }
            }
            if app.secret_hash.as_deref().is_some_and(|h| !is_argon2_phc(h)) {
                found.push(entry.clone(), at.clone(), "secret_hash is not an argon2 PHC string (`$argon2id$v=19$…`)".into());
            }
            if app.scopes.is_empty() {
                found.push(entry.clone(), at.clone(), "has no scopes (e.g. `launch`, `patient/*.rs`)".into());
            }
        }
    }

    fn check_settings(&self, found: &mut Found) {
        let entry = || Some(Entry { section: Section::Settings, index: 0, key: String::new() });
        if self.settings.break_glass_minutes == 0 {
            found.push(entry(), "settings".into(), "break_glass_minutes must be at least 1".into());
        }
        if self.settings.token_minutes == 0 {
            found.push(entry(), "settings".into(), "token_minutes must be at least 1".into());
        }
        let index = &self.patient_index;
        if !(index.lower.is_finite() && index.upper.is_finite() && index.lower <= index.upper) {
            found.push(entry(), "patient_index".into(), format!("lower ({}) must be a number no greater than upper ({})", index.lower, index.upper));
        }
        for (name, f) in [
            ("nhs_number", index.nhs_number),
            ("family", index.family),
            ("given", index.given),
            ("birth_date", index.birth_date),
            ("sex", index.sex),
            ("postcode", index.postcode),
            ("address", index.address),
            ("phone", index.phone),
        ] {
            if !(f.m > 0.0 && f.m < 1.0 && f.u > 0.0 && f.u < 1.0) {
                found.push(entry(), "patient_index".into(), format!("{name}: m and u are probabilities strictly between 0 and 1 (m = {}, u = {})", f.m, f.u));
            }
        }
        if index.blocking.is_empty() {
            found.push(entry(), "patient_index".into(), "blocking needs at least one key, or no registration would ever be compared".into());
        }
    }

    fn check_id(found: &mut Found, entry: &Entry, at: &str, id: &str) {
        if !is_valid_fhir_id(id) {
            found.push(
                Some(entry.clone()),
                at.into(),
                format!("`{id}` is not a valid id: use 1 to 64 letters, digits, `-` and `.` (it becomes a FHIR resource id)"),
            );
        }
    }

    fn check_roles(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, role) in self.roles.iter().enumerate() {
            let entry = Entry { section: Section::Role, index: i, key: role.id.clone() };
            let at = format!("role `{}`", role.id);
            Self::check_id(found, &entry, &at, &role.id);
            if let Some(first) = seen.insert(role.id.as_str(), i) {
                found.push(Some(entry.clone()), at.clone(), format!("duplicate role id (also roles[{first}])"));
            }
            if role.name.trim().is_empty() {
                found.push(Some(entry.clone()), at.clone(), "the name is empty".into());
            }
            let code = role.nrbac_code.as_bytes();
            if !(code.len() == 5 && code[0].is_ascii_uppercase() && code[1..].iter().all(u8::is_ascii_digit)) {
                found.push(
                    Some(entry),
                    at,
                    format!("nrbac_code `{}` is not an NHS national RBAC job role code (like `R8000`)", role.nrbac_code),
                );
            }
        }
    }

    fn check_organisations(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, org) in self.organisations.iter().enumerate() {
            let entry = Entry { section: Section::Organisation, index: i, key: org.id.clone() };
            let at = format!("organisation `{}`", org.id);
            Self::check_id(found, &entry, &at, &org.id);
            if let Some(first) = seen.insert(org.id.as_str(), i) {
                found.push(Some(entry.clone()), at.clone(), format!("duplicate organisation id (also organisations[{first}])"));
            }
            if org.name.trim().is_empty() {
                found.push(Some(entry.clone()), at.clone(), "the name is empty".into());
            }
            if let Some(ods) = &org.ods_code {
                if ods.is_empty() || ods.len() > 10 || !ods.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    found.push(Some(entry.clone()), at.clone(), format!("ods_code `{ods}` is not an ODS code (letters and digits, like `RX1`)"));
                }
            }
            if let Some(parent) = &org.parent {
                if parent == &org.id {
                    found.push(Some(entry.clone()), at.clone(), "is its own parent".into());
                } else if self.organisation(parent).is_none() {
                    found.push(
                        Some(entry.clone()),
                        at.clone(),
                        format!("parent `{parent}` is not an organisation of the domain (known: {})", quoted_list(self.organisations.iter().map(|o| o.id.as_str()))),
                    );
                }
            }
        }
        // Cycles longer than one (a self-parent is reported above).
        let parent_of = |id: &str| self.organisation(id).and_then(|o| o.parent.clone());
        let mut reported = BTreeSet::new();
        for (i, org) in self.organisations.iter().enumerate() {
            if let Some(cycle) = find_cycle(&org.id, parent_of) {
                if cycle.len() > 2 && reported.insert(sorted(&cycle)) {
                    found.push(
                        Some(Entry { section: Section::Organisation, index: i, key: org.id.clone() }),
                        format!("organisation `{}`", org.id),
                        format!("the organisation hierarchy has a cycle: {}", cycle.join(" → ")),
                    );
                }
            }
        }
    }

    /// Is organisation `org` the organisation `ancestor` or below it?
    pub(crate) fn is_within(&self, org: &str, ancestor: &str) -> bool {
        let mut current = Some(org.to_string());
        for _ in 0..=self.organisations.len() {
            match current {
                Some(c) if c == ancestor => return true,
                Some(c) => current = self.organisation(&c).and_then(|o| o.parent.clone()),
                None => return false,
            }
        }
        false
    }

    fn check_locations(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, loc) in self.locations.iter().enumerate() {
            let entry = Entry { section: Section::Location, index: i, key: loc.id.clone() };
            let at = format!("location `{}`", loc.id);
            Self::check_id(found, &entry, &at, &loc.id);
            if let Some(first) = seen.insert(loc.id.as_str(), i) {
                found.push(Some(entry.clone()), at.clone(), format!("duplicate location id (also locations[{first}])"));
            }
            if loc.name.trim().is_empty() {
                found.push(Some(entry.clone()), at.clone(), "the name is empty".into());
            }
            let org_known = self.organisation(&loc.organisation).is_some();
            if !org_known {
                found.push(
                    Some(entry.clone()),
                    at.clone(),
                    format!(
                        "organisation `{}` is not an organisation of the domain (known: {})",
                        loc.organisation,
                        quoted_list(self.organisations.iter().map(|o| o.id.as_str()))
                    ),
                );
            }
            if let Some(parent) = &loc.parent {
                match self.location(parent) {
                    _ if parent == &loc.id => found.push(Some(entry.clone()), at.clone(), "is its own parent".into()),
                    None => found.push(Some(entry.clone()), at.clone(), format!("parent `{parent}` is not a location of the domain")),
                    Some(p) => {
                        if org_known
                            && self.organisation(&p.organisation).is_some()
                            && self.trust_of(&p.organisation) != self.trust_of(&loc.organisation)
                        {
                            found.push(
                                Some(entry.clone()),
                                at.clone(),
                                format!(
                                    "parent `{parent}` belongs to another trust (`{}`, not `{}`)",
                                    self.trust_of(&p.organisation),
                                    self.trust_of(&loc.organisation)
                                ),
                            );
                        }
                    }
                }
            }
        }
        let parent_of = |id: &str| self.location(id).and_then(|l| l.parent.clone());
        let mut reported = BTreeSet::new();
        for (i, loc) in self.locations.iter().enumerate() {
            if let Some(cycle) = find_cycle(&loc.id, parent_of) {
                if cycle.len() > 2 && reported.insert(sorted(&cycle)) {
                    found.push(
                        Some(Entry { section: Section::Location, index: i, key: loc.id.clone() }),
                        format!("location `{}`", loc.id),
                        format!("the location hierarchy has a cycle: {}", cycle.join(" → ")),
                    );
                }
            }
        }
    }

    pub(crate) fn check_user(&self, user: &User, entry: &Entry, found: &mut Found) {
        let at = format!("user `{}`", user.id);
        Self::check_id(found, entry, &at, &user.id);
        // PractitionerRole ids are `{user}-{n}`: they must stay valid ids too.
        let longest = format!("{}-{}", user.id, user.roles.len().max(1));
        if is_valid_fhir_id(&user.id) && longest.len() > 64 {
            found.push(
                Some(entry.clone()),
                at.clone(),
                format!("the id is too long: its PractitionerRole ids (`{longest}`) must fit in 64 characters"),
            );
        }
        if user.name.trim().is_empty() {
            found.push(Some(entry.clone()), at.clone(), "the name is empty".into());
        }
        if let Some(hash) = &user.password_hash {
            if !is_argon2_phc(hash) {
                found.push(Some(entry.clone()), at.clone(), "password_hash is not an argon2 PHC string (`$argon2id$v=19$…`)".into());
            }
        }
        for (n, assignment) in user.roles.iter().enumerate() {
            let at = format!("user `{}`, role assignment {}", user.id, n + 1);
            for message in self.assignment_problems(assignment) {
                found.push(Some(entry.clone()), at.clone(), message);
            }
        }
    }

    pub(crate) fn assignment_problems(&self, a: &RoleAssignment) -> Vec<String> {
        let mut out = Vec::new();
        if self.role(&a.role).is_none() {
            out.push(format!("role `{}` is not in the role catalogue (known: {})", a.role, quoted_list(self.roles.iter().map(|r| r.id.as_str()))));
        }
        let org_known = self.organisation(&a.organisation).is_some();
        if !org_known {
            out.push(format!(
                "organisation `{}` is not an organisation of the domain (known: {})",
                a.organisation,
                quoted_list(self.organisations.iter().map(|o| o.id.as_str()))
            ));
        }
        let mut seen = BTreeSet::new();
        for loc in &a.locations {
            if !seen.insert(loc.as_str()) {
                out.push(format!("location `{loc}` is listed twice"));
                continue;
            }
            match self.location(loc) {
                None => out.push(format!("location `{loc}` is not a location of the domain")),
                Some(l) if org_known && !self.is_within(&l.organisation, &a.organisation) => out.push(format!(
                    "location `{loc}` belongs to `{}`, which is not `{}` nor part of it",
                    l.organisation, a.organisation
                )),
                Some(_) => {}
            }
        }
        out
    }

    fn check_service_account(&self, account: &ServiceAccount, entry: &Entry, found: &mut Found) {
        let at = format!("service account `{}`", account.id);
        Self::check_id(found, entry, &at, &account.id);
        if account.name.trim().is_empty() {
            found.push(Some(entry.clone()), at.clone(), "the name is empty".into());
        }
        if self.organisation(&account.organisation).is_none() {
            found.push(
                Some(entry.clone()),
                at.clone(),
                format!(
                    "organisation `{}` is not an organisation of the domain (known: {})",
                    account.organisation,
                    quoted_list(self.organisations.iter().map(|o| o.id.as_str()))
                ),
            );
        }
        if let Some(hash) = &account.secret_hash {
            if !is_argon2_phc(hash) {
                found.push(Some(entry.clone()), at.clone(), "secret_hash is not an argon2 PHC string (`$argon2id$v=19$…`)".into());
            }
        }
        if account.scopes.is_empty() {
            found.push(Some(entry.clone()), at.clone(), "has no scopes (e.g. `system/*.*`, `system/Observation.write`)".into());
        }
        for scope in &account.scopes {
            if !is_system_scope(scope) {
                found.push(
                    Some(entry.clone()),
                    at.clone(),
                    format!("scope `{scope}` is not a SMART system scope (`system/<Type or *>.<read|write|*|cruds>`)"),
                );
            }
        }
    }

    fn check_sharing(&self, found: &mut Found) {
        let mut seen = BTreeMap::new();
        for (i, agreement) in self.sharing.iter().enumerate() {
            let key = format!("{}→{}", agreement.owner, agreement.viewer);
            let entry = Entry { section: Section::Sharing, index: i, key: key.clone() };
            let at = format!("sharing `{}` → `{}`", agreement.owner, agreement.viewer);
            if let Some(first) = seen.insert(key, i) {
                found.push(Some(entry.clone()), at.clone(), format!("duplicate agreement for this owner and viewer (also sharing[{first}])"));
            }
            let trust = |org: &str, what: &str, found: &mut Found| match self.organisation(org) {
                None => found.push(
                    Some(entry.clone()),
                    at.clone(),
                    format!("{what} `{org}` is not an organisation of the domain (known: {})", quoted_list(self.organisations.iter().map(|o| o.id.as_str()))),
                ),
                Some(o) if o.parent.is_some() => found.push(
                    Some(entry.clone()),
                    at.clone(),
                    format!("{what} `{org}` is part of `{}`: sharing agreements are between trusts", self.trust_of(org)),
                ),
                Some(_) => {}
            };
            trust(&agreement.owner, "owner", found);
            if agreement.viewer != "*" {
                trust(&agreement.viewer, "viewer", found);
            }
            if agreement.owner == agreement.viewer {
                found.push(Some(entry.clone()), at.clone(), "owner and viewer are the same organisation (a trust always sees its own data)".into());
            }
            if agreement.classes.is_empty() {
                found.push(Some(entry.clone()), at.clone(), "names no data class".into());
            }
        }
    }
}

/// `system/Patient.read`, `system/*.*`, `system/Observation.cruds`, `system/*.write`.
fn is_system_scope(scope: &str) -> bool {
    let Some(rest) = scope.strip_prefix("system/") else { return false };
    let Some((ty, perm)) = rest.split_once('.') else { return false };
    let ty_ok = ty == "*" || (ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && ty.chars().all(|c| c.is_ascii_alphanumeric()));
    let perm_ok = matches!(perm, "*" | "read" | "write")
        || (!perm.is_empty() && perm.chars().all(|c| "cruds".contains(c)) && {
            // v2 permissions appear at most once each, in order c, r, u, d, s.
            let order: Vec<usize> = perm.chars().map(|c| "cruds".find(c).unwrap_or(0)).collect();
            order.windows(2).all(|w| w[0] < w[1])
        });
    ty_ok && perm_ok
}

/// Follows `parent_of` from `start`; if it comes back to a node already visited, returns
/// the cycle (`a → b → a`) when `start` is on it.
fn find_cycle(start: &str, parent_of: impl Fn(&str) -> Option<String>) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut current = start.to_string();
    while let Some(parent) = parent_of(&current) {
        if parent == start {
            path.push(parent);
            return Some(path);
        }
        if path.contains(&parent) {
            return None; // a cycle further up, reported from one of its members
        }
        path.push(parent.clone());
        current = parent;
    }
    None
}

fn sorted(cycle: &[String]) -> Vec<String> {
    let mut v: Vec<String> = cycle[..cycle.len() - 1].to_vec();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_scopes() {
        for ok in ["system/*.*", "system/Patient.read", "system/Observation.write", "system/Encounter.cru", "system/*.rs"] {
            assert!(is_system_scope(ok), "{ok}");
        }
        for bad in ["user/*.*", "system/*", "system/patient.read", "system/Patient.rc", "system/Patient.", "launch"] {
            assert!(!is_system_scope(bad), "{bad}");
        }
    }
}
