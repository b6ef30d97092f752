//! Break-glass, the patient's access log and the privacy officer's audit queries.

use crate::access::{Access, AccessKind};
use crate::bundle::BundleWriter;
use crate::prepare::{format_instant, parse_instant};
use crate::{Engine, FhirError};
use serde_json::json;
use tessera_domain::DataClass;
use tessera_fhir::IssueType;
use tessera_store::AuditQuery;

/// Reason codes for breaking the glass (v3 ActReason, purpose of use).
pub const BREAK_GLASS_REASONS: &[(&str, &str)] = &[
    ("ETREAT", "Emergency treatment"),
    ("BTG", "Break the glass"),
    ("TREAT", "Treatment"),
    ("PATSFTY", "Patient safety"),
    ("CLINTRL", "Clinical trial / urgent review"),
];

impl Engine {
    fn may_read_audit(&self, access: &Access) -> bool {
        if access.kind == AccessKind::System {
            return true;
        }
        let domain = self.domain();
        access.role.as_deref().and_then(|r| domain.role(r)).and_then(|r| r.permissions.get(&DataClass::Audit)).is_some_and(|p| p.read)
    }

    /// `POST Patient/[id]/$break-glass`: grants this user time-limited access to the
    /// patient's record for a stated reason; alerts and queues it for privacy review.
    pub async fn break_glass(&self, access: &Access, patient: &str, reason_code: &str, reason_text: &str) -> Result<serde_json::Value, FhirError> {
        if access.kind != AccessKind::User {
            return Err(FhirError::new(403, IssueType::Forbidden, "only a person can break the glass"));
        }
        let domain = self.domain();
        let may = access.role.as_deref().and_then(|r| domain.role(r)).is_some_and(|r| r.may_break_glass);
        if !may {
            return Err(FhirError::new(403, IssueType::Forbidden, "your role may not break the glass"));
        }
        if !BREAK_GLASS_REASONS.iter().any(|(c, _)| *c == reason_code) {
            let codes: Vec<&str> = BREAK_GLASS_REASONS.iter().map(|(c, _)| *c).collect();
            return Err(FhirError::bad_request(format!("reason code '{reason_code}' is not one of {}", codes.join(", "))).at("Parameters.parameter[reason]"));
        }
        if reason_text.trim().len() < 5 {
            return Err(FhirError::bad_request("give the reason in words (at least a few characters)").at("Parameters.parameter[text]"));
        }
        match self.store().read("Patient", patient).await? {
            Some(p) if !p.deleted => {}
            _ => return Err(FhirError::not_found("Patient", patient)),
        }
        let now = tessera_store::now_micros();
        let expires = now + domain.settings.break_glass_minutes as i64 * 60_000_000;
        let clean = reason_text.replace('|', "/");
        self.store().set_meta(&format!("break-glass/{}/{patient}", access.subject), &format!("{expires}|{reason_code}|{clean}")).await?;
        self.grant_changed(&access.subject, patient);
        self.count_break_glass();
        tracing::warn!(target: "tessera::alert", user = %access.subject, organisation = %access.organisation, %patient, reason = %reason_code, text = %clean, "break-glass: access to a patient record granted for review");
        let mut gate = self.gate(access);
        gate.record("break-glass", true, &[format!("Patient/{patient}")], vec![patient.to_string()], true, Some(&format!("{reason_code}: {clean}")));
        gate.finish().await?;
        Ok(json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}},
                {"name": "expires", "valueInstant": format_instant(expires)},
                {"name": "reason", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": reason_code}},
            ]
        }))
    }

    /// `GET Patient/[id]/$access-log`: who accessed the patient's record, newest first.
    /// For privacy officers, systems, and (later) the patient themselves.
    pub async fn access_log(&self, access: &Access, patient: &str, count: usize) -> Result<Vec<u8>, FhirError> {
        if !self.may_read_audit(access) {
            return Err(FhirError::new(403, IssueType::Forbidden, "the access log is for privacy officers and the patient"));
        }
        self.audit_bundle(access, AuditQuery { patient: Some(patient.to_string()), limit: count, ..Default::default() }, &format!("Patient/{patient}/$access-log")).await
    }

    /// `GET AuditEvent?agent=…&patient=…&date=ge…&date=le…&purpose=BTG`: the privacy
    /// officer's queries over the audit trail (the break-glass review queue is
    /// `purpose=BTG`).
    pub async fn audit_search(&self, access: &Access, query: &str) -> Result<Vec<u8>, FhirError> {
        if !self.may_read_audit(access) {
            return Err(FhirError::new(403, IssueType::Forbidden, "the audit trail is for privacy officers"));
        }
        let mut q = AuditQuery { limit: self.config().default_page_size, ..Default::default() };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "agent" | "user" => q.user = Some(if v.contains('/') { v.into_owned() } else { format!("Practitioner/{v}") }),
                "patient" => q.patient = Some(v.trim_start_matches("Patient/").to_string()),
                "purpose" if v == "BTG" || v.ends_with("|BTG") => q.break_glass_only = true,
                "action" | "subtype" => q.action = Some(v.into_owned()),
                "date" => {
                    let (prefix, value) = if v.len() > 2 && v.is_char_boundary(2) { v.split_at(2) } else { ("eq", v.as_ref()) };
                    let t = parse_instant(value).ok_or_else(|| FhirError::bad_request(format!("date '{v}' is not a valid date")))?;
                    match prefix {
                        "ge" | "gt" => q.since_micros = Some(t),
                        "le" | "lt" => q.until_micros = Some(t),
                        _ => return Err(FhirError::bad_request("date takes ge/gt/le/lt prefixes here")),
                    }
                }
                "_count" => q.limit = v.parse().map_err(|_| FhirError::bad_request("_count must be a number"))?,
                "_format" => {}
                other => return Err(FhirError::bad_request(format!("audit search does not support '{other}' (agent, patient, date, purpose, action, _count)"))),
            }
        }
        q.limit = q.limit.min(self.config().max_page_size);
        self.audit_bundle(access, q, &format!("AuditEvent?{query}")).await
    }

    async fn audit_bundle(&self, access: &Access, q: AuditQuery, self_path: &str) -> Result<Vec<u8>, FhirError> {
        let records = self.store().audit_query(&q).await?;
        let base = &self.config().base_url;
        let mut out = BundleWriter::new("searchset", None, &[("self", format!("{base}/{self_path}"))]);
        for r in &records {
            let Some(event) = tessera_audit::render_record(&r.event, r.seq) else {
                tracing::error!(seq = r.seq, "audit record {} is not readable as an AuditEvent", r.seq);
                continue;
            };
            let event = serde_json::to_vec(&event).unwrap_or_default();
            out.entry(None, Some(&event), &[("search", json!({"mode": "match"}))]);
        }
        let mut gate = self.gate(access);
        gate.record("audit-query", true, &[self_path.to_string()], q.patient.iter().cloned().collect(), false, None);
        gate.finish().await?;
        Ok(out.finish())
    }
}

impl Engine {
    /// Records a login attempt at the token endpoint (successful or not).
    pub async fn record_login(&self, subject: &str, claims: Option<&tessera_auth::Claims>, ok: bool) -> Result<(), FhirError> {
        let access = match claims {
            Some(c) => Access::from_claims(c, &self.domain()).unwrap_or_else(|_| Access::system(&c.org)),
            None => Access {
                kind: AccessKind::User,
                subject: if subject.is_empty() { "unknown".into() } else { subject.to_string() },
                name: subject.to_string(),
                organisation: String::new(),
                location: None,
                role: None,
                locations: Vec::new(),
                scopes: tessera_auth::Scopes::default(),
            },
        };
        let mut gate = self.gate(&access);
        gate.record("login", ok, &[], Vec::new(), false, (!ok).then_some("authentication failed"));
        gate.finish().await
    }
}
