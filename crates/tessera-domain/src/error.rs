//! Errors of the domain file and of the domain's management helpers.

use std::fmt;

/// One problem found in a domain: where (the entry, and the line of the domain file when
/// the domain came from one) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line of the domain file (1-based) holding the entry, when known.
    pub line: Option<usize>,
    /// The entry, e.g. `user dr.patel, role assignment 2` or `sharing rx1 → rx2`.
    pub at: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.at, self.message),
            None => write!(f, "{}: {}", self.at, self.message),
        }
    }
}

/// Why a domain file, or a change to the domain, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The text is not TOML, or does not have the shape of a domain file (unknown key,
    /// wrong type, unknown data class, …).
    #[error("domain file, line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// The domain is inconsistent: every problem found, in order.
    #[error("{}", describe(.0))]
    Invalid(Vec<Problem>),
    /// A management helper named a user or service account the domain does not have.
    #[error("no {kind} `{id}` in the domain")]
    NotFound { kind: &'static str, id: String },
    /// A password or secret could not be hashed (or was refused, e.g. too short).
    #[error("{0}")]
    Secret(String),
}

impl DomainError {
    /// The problems of an [`DomainError::Invalid`] error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            DomainError::Invalid(problems) => problems,
            _ => &[],
        }
    }

    pub(crate) fn one(at: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid(vec![Problem { line: None, at: at.into(), message: message.into() }])
    }
}

fn describe(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid domain: {one}"),
        many => {
            let mut out = format!("invalid domain ({} problems):", many.len());
            for p in many {
                out.push_str("\n  ");
                out.push_str(&p.to_string());
            }
            out
        }
    }
}
