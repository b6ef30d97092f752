//! Errors the engine reports: an HTTP status and the issues of an OperationOutcome.

use tessera_fhir::{outcome::operation_outcome, Issue, IssueType};

#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl std::fmt::Display for FhirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        for i in &self.issues {
            write!(f, ": {}", i.diagnostics)?;
            if !i.expression.is_empty() {
                write!(f, " (at {})", i.expression.join(", "))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for FhirError {}

impl FhirError {
    pub fn new(status: u16, code: IssueType, diagnostics: impl Into<String>) -> Self {
        FhirError { status, issues: vec![Issue::error(code, diagnostics)] }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(i) = self.issues.last_mut() {
            i.expression.push(expression.into());
        }
        self
    }

    pub fn invalid(issues: Vec<Issue>) -> Self {
        FhirError { status: 400, issues }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(400, IssueType::Invalid, diagnostics)
    }

    pub fn not_found(resource_type: &str, id: &str) -> Self {
        Self::new(404, IssueType::NotFound, format!("{resource_type}/{id} is not known"))
    }

    pub fn gone(resource_type: &str, id: &str) -> Self {
        Self::new(410, IssueType::Deleted, format!("{resource_type}/{id} has been deleted"))
    }

    pub fn unknown_type(resource_type: &str) -> Self {
        Self::new(404, IssueType::NotSupported, format!("'{resource_type}' is not a FHIR R4 resource type"))
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(412, IssueType::Conflict, diagnostics)
    }

    pub fn conflict(diagnostics: impl Into<String>) -> Self {
        Self::new(409, IssueType::Conflict, diagnostics)
    }

    pub fn method_not_allowed(diagnostics: impl Into<String>) -> Self {
        Self::new(405, IssueType::NotSupported, diagnostics)
    }

    pub fn unprocessable(diagnostics: impl Into<String>) -> Self {
        Self::new(422, IssueType::Processing, diagnostics)
    }

    pub fn internal(diagnostics: impl Into<String>) -> Self {
        Self::new(500, IssueType::Exception, diagnostics)
    }

    /// The OperationOutcome resource.
    pub fn outcome(&self) -> serde_json::Value {
        operation_outcome(&self.issues)
    }

    /// The same error with every issue's expression placed under `prefix`
    /// (e.g. `Bundle.entry[3].resource`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.issues = self.issues.into_iter().map(|i| i.prefixed(prefix)).collect();
        self
    }
}

impl From<tessera_store::StoreError> for FhirError {
    fn from(e: tessera_store::StoreError) -> Self {
        match e {
            tessera_store::StoreError::Conflict { reason, resource_type, id, .. } => {
                FhirError::precondition_failed(format!("{resource_type}/{id}: {reason}"))
            }
            tessera_store::StoreError::Closed => FhirError::new(503, IssueType::Exception, "the server is shutting down"),
            tessera_store::StoreError::TooCostly(limit) => FhirError::new(
                400,
                IssueType::TooCostly,
                format!(
                    "the request's database query ran longer than {} s and was stopped: narrow the search (add criteria, a smaller _count), or raise `tessera serve --query-timeout-seconds`",
                    limit.as_secs()
                ),
            ),
            tessera_store::StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "storage failure");
                FhirError::internal("storage failure; see the server log")
            }
        }
    }
}
