//! The working context of a user's session: which of their role assignments (role in an
//! organisation) is active, and at which location.

use crate::error::AuthError;
use serde::{Deserialize, Serialize};
use tessera_domain::User;

/// The active organisation, role and location of a user's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveContext {
    pub organisation: String,
    pub role: String,
    pub location: Option<String>,
}

/// Chooses the user's context: the first role assignment matching `role` and `organisation`
/// (each optional; with neither, the first assignment) that also covers `location` if one is
/// given. The location defaults to the assignment's first location, or none.
///
/// Refuses (with [`AuthError::Context`]) any context the user does not hold.
pub fn select_context(user: &User, role: Option<&str>, organisation: Option<&str>, location: Option<&str>) -> Result<ActiveContext, AuthError> {
    if user.roles.is_empty() {
        return Err(AuthError::Context(format!("user `{}` holds no role in any organisation", user.id)));
    }
    let matching: Vec<_> = user
        .roles
        .iter()
        .filter(|a| role.is_none_or(|r| a.role == r) && organisation.is_none_or(|o| a.organisation == o))
        .collect();
    if matching.is_empty() {
        let wanted = match (role, organisation) {
            (Some(r), Some(o)) => format!("role `{r}` in organisation `{o}`"),
            (Some(r), None) => format!("role `{r}` in any organisation"),
            (None, Some(o)) => format!("any role in organisation `{o}`"),
            (None, None) => unreachable!("a user with assignments matches an unconstrained query"),
        };
        return Err(AuthError::Context(format!("user `{}` does not hold {wanted}", user.id)));
    }
    let assignment = match location {
        None => matching[0],
        Some(loc) => match matching.iter().find(|a| a.locations.iter().any(|l| l == loc)) {
            Some(a) => a,
            None => {
                let a = matching[0];
                return Err(AuthError::Context(format!(
                    "user `{}` does not work at location `{loc}` as `{}` in `{}`",
                    user.id, a.role, a.organisation
                )));
            }
        },
    };
    Ok(ActiveContext {
        organisation: assignment.organisation.clone(),
        role: assignment.role.clone(),
        location: location.map(str::to_string).or_else(|| assignment.locations.first().cloned()),
    })
}
