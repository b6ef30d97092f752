//! Worklists: the patients currently at a ward or clinic (`Location/[id]/$worklist`).
//! A worklist is a read path like any other: each entry goes through the gate, so an
//! organisation's sharing dials segregate its workflows, not only its data.

use crate::access::Access;
use crate::bundle::BundleWriter;
use crate::guard::Visibility;
use crate::{Engine, FhirError};
use serde_json::json;
use tessera_auth::ScopeOp;

impl Engine {
    /// `GET Location/[id]/$worklist[?kind=encounter|appointment]`: the ongoing encounters
    /// (or appointments) at a location that this subject may see, as a searchset.
    pub async fn worklist(&self, access: &Access, location: &str, kind: &str) -> Result<Vec<u8>, FhirError> {
        let resource_type = match kind {
            "encounter" => "Encounter",
            "appointment" => "Appointment",
            other => return Err(FhirError::bad_request(format!("a worklist lists encounters or appointments, not '{other}'")).at("kind")),
        };
        access.require_scope(resource_type, ScopeOp::Search)?;
        let sources = self.store().ongoing_at(location, kind).await?;
        let mut gate = self.gate(access);
        let mut visible = Vec::new();
        let mut behind_glass = 0usize;
        for (ty, id) in &sources {
            let Some(s) = self.store().read(ty, id).await? else { continue };
            if s.deleted {
                continue;
            }
            match gate.visibility(&s).await? {
                Visibility::Visible => visible.push(s),
                Visibility::BehindGlass => behind_glass += 1,
                Visibility::Hidden => {}
            }
        }
        let base = &self.config().base_url;
        let mut out = BundleWriter::new("searchset", Some(visible.len() as u64), &[("self", format!("{base}/Location/{location}/$worklist?kind={kind}"))]);
        let mut patients = Vec::new();
        let mut entities = Vec::new();
        for s in &visible {
            for p in crate::rest::patients_of(s) {
                if !patients.contains(&p) {
                    patients.push(p);
                }
            }
            entities.push(format!("{}/{}", s.resource_type, s.id));
            out.entry(Some(&format!("{base}/{}/{}", s.resource_type, s.id)), Some(&s.json), &[("search", json!({"mode": "match"}))]);
        }
        if behind_glass > 0 {
            let oo = tessera_fhir::outcome::operation_outcome(&[tessera_fhir::Issue {
                severity: tessera_fhir::IssueSeverity::Information,
                code: tessera_fhir::IssueType::Suppressed,
                diagnostics: "more patients are on this list but protected: break the glass for a patient to view them".into(),
                expression: Vec::new(),
            }]);
            out.entry(None, Some(&serde_json::to_vec(&oo).expect("outcome serialises")), &[("search", json!({"mode": "outcome"}))]);
        }
        gate.record_access("worklist", true, &entities, patients, Some(&format!("Location/{location}")));
        gate.finish().await?;
        Ok(out.finish())
    }
}
