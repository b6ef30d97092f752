//! Worklists: the patients currently at a ward or clinic (`Location/[id]/$worklist`).
//! A worklist is a read path like any other: each entry goes through the gate, so an
//! organisation's sharing dials segregate its workflows, not only its data.

use crate::access::Access;
use crate::{Engine, FhirError};
use tessera_auth::ScopeOp;

impl Engine {
    /// `GET Location/[id]/$worklist[?kind=encounter|appointment]`: the ongoing encounters
    /// (or appointments) at a location that this subject may see, as a searchset.
    pub async fn worklist(&self, access: &Access, location: &str, kind: &str) -> Result<crate::bundle::Bundle, FhirError> {
        let resource_type = match kind {
            "encounter" => "Encounter",
            "appointment" => "Appointment",
            other => return Err(FhirError::bad_request(format!("a worklist lists encounters or appointments, not '{other}'")).at("kind")),
        };
        access.require_scope(resource_type, ScopeOp::Search)?;
        let sources = self.store().ongoing_at(location, kind).await?;
        let base = &self.config().base_url;
        let self_link = format!("{base}/Location/{location}/$worklist?kind={kind}");
        let mut gate = self.gate(access);
        self.searchset(&mut gate, &sources, usize::MAX, self_link, "worklist", &format!("Location/{location}")).await
    }
}
