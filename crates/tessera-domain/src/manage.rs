//! Changing a domain: merging domain files, the bootstrap domain, user management.

use crate::check::{Entry, Found, Section};
use crate::error::DomainError;
use crate::model::{Domain, Organisation, PortalAccount, RoleAssignment, ServiceAccount, Settings, SmartApp, User};
use crate::roles::{default_roles, DOMAIN_ADMIN};
use crate::secret::{hash_secret, MIN_PASSWORD_LEN, MIN_SECRET_LEN};

/// Id of the organisation a fresh domain starts with.
pub const BOOTSTRAP_ORGANISATION: &str = "tessera";
/// Id of the bootstrap domain administrator (no password until an operator sets one).
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Id of the built-in system account.
pub const SYSTEM_ACCOUNT: &str = "system";

/// Replaces the entry of `into` with the same key as each of `from`, or appends it.
fn upsert<T, K: PartialEq>(into: &mut Vec<T>, from: Vec<T>, key: impl Fn(&T) -> K, combine: impl Fn(T, T) -> T) {
    for item in from {
        match into.iter().position(|existing| key(existing) == key(&item)) {
            Some(i) => {
                let old = std::mem::replace(&mut into[i], item);
                let new = into.remove(i);
                into.insert(i, combine(old, new));
            }
            None => into.push(item),
        }
    }
}

impl Domain {
    /// Merges `other` (typically a domain file) into this domain.
    ///
    /// Entries are matched by id (sharing agreements by owner and viewer): an entry of
    /// `other` replaces the one with the same id, in place; new entries are appended in
    /// `other`'s order. Nothing is removed. A user or service account of `other` without a
    /// password (secret) hash keeps the existing one, so a file that leaves passwords out
    /// does not undo `tessera user passwd`. `other`'s settings replace these (a file without
    /// `[settings]` means the defaults), and its name replaces this one unless empty.
    ///
    /// Merging is idempotent: merging the same domain twice gives the same result as once.
    pub fn merge(&mut self, other: Domain) {
        if !other.name.is_empty() {
            self.name = other.name;
        }
        self.settings = other.settings;
        self.patient_index = other.patient_index;
        // Governance changes only when the other domain declares it.
        if other.governance != crate::model::Governance::default() {
            self.governance = other.governance;
        }
        upsert(&mut self.roles, other.roles, |r| r.id.clone(), |_, new| new);
        upsert(&mut self.organisations, other.organisations, |o| o.id.clone(), |_, new| new);
        upsert(&mut self.locations, other.locations, |l| l.id.clone(), |_, new| new);
        upsert(&mut self.users, other.users, |u| u.id.clone(), |old, new| User { password_hash: new.password_hash.or(old.password_hash), ..new });
        upsert(&mut self.service_accounts, other.service_accounts, |s| s.id.clone(), |old, new| ServiceAccount {
            secret_hash: new.secret_hash.or(old.secret_hash),
            ..new
        });
        upsert(&mut self.sharing, other.sharing, |a| (a.owner.clone(), a.viewer.clone()), |_, new| new);
        upsert(&mut self.portal_accounts, other.portal_accounts, |a| a.id.clone(), |old, new| PortalAccount {
            password_hash: new.password_hash.or(old.password_hash),
            ..new
        });
        upsert(&mut self.apps, other.apps, |a| a.id.clone(), |old, new| SmartApp { secret_hash: new.secret_hash.or(old.secret_hash), ..new });
        upsert(&mut self.interfaces, other.interfaces, |i| i.id.clone(), |_, new| new);
    }

    /// What a fresh data directory starts with: the organisation `tessera` ("Tessera
    /// domain"), the built-in role catalogue, the domain administrator `admin` — who has no
    /// password: an operator sets one with `tessera user passwd admin` before anyone can log
    /// in — and the built-in `system` account (scopes `system/*.*`, no secret: it is used
    /// by Tessera's own processes, never over HTTP).
    pub fn bootstrap() -> Domain {
        Domain {
            name: "Tessera domain".into(),
            settings: Settings::default(),
            roles: default_roles(),
            organisations: vec![Organisation { id: BOOTSTRAP_ORGANISATION.into(), name: "Tessera domain".into(), ods_code: None, parent: None, mrn_system: None }],
            locations: Vec::new(),
            users: vec![User {
                id: BOOTSTRAP_ADMIN.into(),
                name: "Domain administrator".into(),
                password_hash: None,
                roles: vec![RoleAssignment { organisation: BOOTSTRAP_ORGANISATION.into(), role: DOMAIN_ADMIN.into(), locations: Vec::new() }],
                active: true,
            }],
            service_accounts: vec![ServiceAccount {
                id: SYSTEM_ACCOUNT.into(),
                name: "Tessera system".into(),
                secret_hash: None,
                organisation: BOOTSTRAP_ORGANISATION.into(),
                scopes: vec!["system/*.*".into()],
            }],
            sharing: Vec::new(),
            portal_accounts: Vec::new(),
            apps: Vec::new(),
            governance: Default::default(),
            patient_index: Default::default(),
            interfaces: Vec::new(),
        }
    }

    /// Adds a user, or replaces the user with the same id (keeping the existing password
    /// hash when `user` has none). The user's id and role assignments are checked against
    /// the domain first.
    pub fn upsert_user(&mut self, user: User) -> Result<(), DomainError> {
        let mut found = Found::default();
        let index = self.users.iter().position(|u| u.id == user.id).unwrap_or(self.users.len());
        self.check_user(&user, &Entry { section: Section::User, index, key: user.id.clone() }, &mut found);
        found.into_result(|_| None)?;
        match self.users.get_mut(index) {
            Some(existing) => {
                let kept = existing.password_hash.take();
                *existing = User { password_hash: user.password_hash.or(kept), ..user };
            }
            None => self.users.push(user),
        }
        Ok(())
    }

    fn user_mut(&mut self, id: &str) -> Result<&mut User, DomainError> {
        self.users.iter_mut().find(|u| u.id == id).ok_or_else(|| DomainError::NotFound { kind: "user", id: id.into() })
    }

    /// Sets a user's password (argon2id, random salt). Passwords shorter than
    /// [`MIN_PASSWORD_LEN`] characters are refused.
    pub fn set_password(&mut self, user: &str, clear: &str) -> Result<(), DomainError> {
        if clear.chars().count() < MIN_PASSWORD_LEN {
            return Err(DomainError::Secret(format!("the password must have at least {MIN_PASSWORD_LEN} characters")));
        }
        let hash = hash_secret(clear)?;
        self.user_mut(user)?.password_hash = Some(hash);
        Ok(())
    }

    /// Sets a service account's client secret (argon2id, random salt). Secrets shorter than
    /// [`MIN_SECRET_LEN`] characters are refused.
    pub fn set_secret(&mut self, account: &str, clear: &str) -> Result<(), DomainError> {
        if clear.chars().count() < MIN_SECRET_LEN {
            return Err(DomainError::Secret(format!("the secret must have at least {MIN_SECRET_LEN} characters")));
        }
        let hash = hash_secret(clear)?;
        let account = self
            .service_accounts
            .iter_mut()
            .find(|s| s.id == account)
            .ok_or_else(|| DomainError::NotFound { kind: "service account", id: account.into() })?;
        account.secret_hash = Some(hash);
        Ok(())
    }

    /// Gives a user a role (in an organisation, at some of its locations), after checking
    /// the role, organisation and locations exist and the locations are the organisation's.
    /// Adding an assignment the user already has changes nothing.
    pub fn add_role(&mut self, user: &str, assignment: RoleAssignment) -> Result<(), DomainError> {
        self.user_mut(user)?;
        let problems = self.assignment_problems(&assignment);
        if let Some(first) = problems.into_iter().next() {
            return Err(DomainError::one(format!("user `{user}`, role `{}` at `{}`", assignment.role, assignment.organisation), first));
        }
        let u = self.user_mut(user)?;
        if !u.roles.contains(&assignment) {
            u.roles.push(assignment);
        }
        Ok(())
    }

    /// Removes every assignment of `role` in `organisation` from a user; returns how many
    /// were removed.
    pub fn remove_role(&mut self, user: &str, organisation: &str, role: &str) -> Result<usize, DomainError> {
        let u = self.user_mut(user)?;
        let before = u.roles.len();
        u.roles.retain(|a| !(a.organisation == organisation && a.role == role));
        Ok(before - u.roles.len())
    }

    /// Removes a user and returns it.
    pub fn remove_user(&mut self, user: &str) -> Result<User, DomainError> {
        let i = self.users.iter().position(|u| u.id == user).ok_or_else(|| DomainError::NotFound { kind: "user", id: user.into() })?;
        Ok(self.users.remove(i))
    }
}
