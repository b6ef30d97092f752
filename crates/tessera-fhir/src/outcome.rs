//! Issues and `OperationOutcome`.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl IssueSeverity {
    pub fn code(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// The subset of the `issue-type` value set Tessera reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    /// `code-invalid`: a code outside its value set.
    CodeInvalid,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    Conflict,
    Incomplete,
    Exception,
    TooCostly,
    Informational,
    Suppressed,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::TooLong => "too-long",
            IssueType::Conflict => "conflict",
            IssueType::Incomplete => "incomplete",
            IssueType::Exception => "exception",
            IssueType::TooCostly => "too-costly",
            IssueType::Informational => "informational",
            IssueType::Suppressed => "suppressed",
        }
    }
}

/// One problem found in a request or a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: IssueSeverity,
    pub code: IssueType,
    /// Human-readable explanation.
    pub diagnostics: String,
    /// FHIRPath expressions naming the element(s) at fault, e.g. `Patient.birthDate`
    /// or `Bundle.entry[3].resource.status`.
    pub expression: Vec<String>,
}

impl Issue {
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue { severity: IssueSeverity::Error, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn warning(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Issue { severity: IssueSeverity::Warning, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }

    /// The same issue with every expression prefixed, e.g. when a resource sits in a bundle entry.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for e in &mut self.expression {
            // `Patient.name` inside `Bundle.entry[2].resource` becomes
            // `Bundle.entry[2].resource.name` (the type name is dropped).
            let rest = e.split_once('.').map(|(_, r)| r).unwrap_or("");
            *e = if rest.is_empty() { prefix.to_string() } else { format!("{prefix}.{rest}") };
        }
        self
    }
}

/// An `OperationOutcome` resource carrying the given issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

/// An `OperationOutcome` with a single informational issue.
pub fn information(diagnostics: impl Into<String>) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics.into()}],
    })
}
