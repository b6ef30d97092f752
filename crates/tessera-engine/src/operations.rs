//! The operations this server declares, in one table ([`OPERATIONS`]): the
//! CapabilityStatement lists them from it, and the OperationDefinitions of the operations
//! Tessera defines itself are generated from it and served at
//! `[base]/OperationDefinition/[id]` (and listed by `GET [base]/OperationDefinition`).
//!
//! Those OperationDefinitions are server metadata, like the CapabilityStatement: generated
//! here, never stored, readable without a token (they say nothing of any patient). The
//! operations FHIR defines (`$validate`, `$everything`, `$expand`, …) are declared with
//! their standard canonical (`http://hl7.org/fhir/OperationDefinition/…`).
//!
//! To declare a new operation, add a row to [`OPERATIONS`] — and a call of it to the
//! table of `crates/tessera/tests/transport.rs`, which invokes every declared operation.

use crate::bundle::{Bundle, BundleWriter};
use crate::{Engine, FhirError};
use serde_json::{json, Value};

/// Where an operation is defined.
#[derive(Debug, Clone, Copy)]
pub enum Definition {
    /// By FHIR (or another specification): the canonical URL of its OperationDefinition.
    Standard(&'static str),
    /// By this server: the OperationDefinition with this id, generated from the row and
    /// served at `[base]/OperationDefinition/[id]` (which is also its canonical URL).
    Server { id: &'static str, title: &'static str, description: &'static str, parameters: &'static [Param] },
}

/// A parameter of a server-defined operation.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// `in` or `out`.
    pub direction: &'static str,
    pub min: u32,
    /// `1`, `*`, …
    pub max: &'static str,
    /// The FHIR type of the value (`Coding`, `string`, `Bundle`, …).
    pub kind: &'static str,
    pub documentation: &'static str,
}

/// One operation the server supports.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The name it is invoked by, without `$`.
    pub code: &'static str,
    /// The resource types it applies to (`Resource`: every type); empty for an operation
    /// at system level only.
    pub resources: &'static [&'static str],
    /// Invoked at `[base]/$code`.
    pub system: bool,
    /// Invoked at `[base]/[type]/$code`.
    pub type_level: bool,
    /// Invoked at `[base]/[type]/[id]/$code`.
    pub instance: bool,
    /// Changes data (so only by POST).
    pub affects_state: bool,
    pub definition: Definition,
    /// What the CapabilityStatement says of it.
    pub documentation: &'static str,
}

const fn standard(code: &'static str, resources: &'static [&'static str], levels: [bool; 3], canonical: &'static str, documentation: &'static str) -> Operation {
    let [system, type_level, instance] = levels;
    Operation { code, resources, system, type_level, instance, affects_state: false, definition: Definition::Standard(canonical), documentation }
}

const EVERY_TYPE: &[&str] = &["Resource"];

/// Types whose resources the server renders rather than stores: AuditEvents (from the audit
/// trail) and OperationDefinitions (from this table). Read and searched only.
pub const GENERATED_TYPES: &[&str] = &["AuditEvent", "OperationDefinition"];
/// Levels: `[system, type, instance]`.
const INSTANCE: [bool; 3] = [false, false, true];
const TYPE: [bool; 3] = [false, true, false];
const TYPE_AND_INSTANCE: [bool; 3] = [false, true, true];
const ALL_LEVELS: [bool; 3] = [true, true, true];

/// Every operation the server declares. One row per operation; the CapabilityStatement and
/// the server's OperationDefinitions follow from it.
pub const OPERATIONS: &[Operation] = &[
    // Defined by FHIR.
    standard("validate", EVERY_TYPE, TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/Resource-validate", "Validates a resource (POST a Parameters with `resource`, or the resource itself; `mode` create, update or delete) without storing it."),
    standard("meta", EVERY_TYPE, ALL_LEVELS, "http://hl7.org/fhir/OperationDefinition/Resource-meta", "The profiles, tags and security labels of a resource, or in use on a type or the whole server."),
    standard("meta-add", EVERY_TYPE, INSTANCE, "http://hl7.org/fhir/OperationDefinition/Resource-meta-add", "Adds profiles, tags and security labels to a resource (POST; a new version)."),
    standard("meta-delete", EVERY_TYPE, INSTANCE, "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete", "Removes profiles, tags and security labels from a resource (POST; a new version)."),
    standard("everything", &["Patient"], INSTANCE, "http://hl7.org/fhir/OperationDefinition/Patient-everything", "The patient's record as this user may see it (GET or POST)."),
    // Terminology (`crate::terminology`): the shipped R4 code systems and value sets, and stored ones.
    standard("expand", &["ValueSet"], TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/ValueSet-expand", "Expands a value set (`url`, or the instance)."),
    standard("validate-code", &["ValueSet"], TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code", "Whether a code is in a value set (`url`, `system`, `code`)."),
    standard("lookup", &["CodeSystem"], TYPE, "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup", "Details of a code (`system`, `code`)."),
    standard("validate-code", &["CodeSystem"], TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code", "Whether a code is in a code system (`url`, `code`)."),
    standard("subsumes", &["CodeSystem"], TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/CodeSystem-subsumes", "How two codes of a code system relate (`system`, `codeA`, `codeB`)."),
    standard("translate", &["ConceptMap"], TYPE_AND_INSTANCE, "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate", "Translates a code with a concept map the server knows."),
    // Defined by Tessera.
    Operation {
        code: "break-glass",
        resources: &["Patient"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: true,
        definition: Definition::Server {
            id: "Patient-break-glass",
            title: "Break the glass",
            description: "Grants the signed-in user time-limited access to a patient's record for a stated reason, outside a care relationship. \
                Only a person whose role may break the glass can; a very restricted patient (confidentiality V) cannot be broken into except by a role that sees sealed data. \
                Every use is audited, alerted, and queued for privacy review (`AuditEvent?purpose=BTG`).",
            parameters: &[
                Param { name: "reason", direction: "in", min: 1, max: "1", kind: "Coding", documentation: "Why (http://terminology.hl7.org/CodeSystem/v3-ActReason): ETREAT, BTG, TREAT, PATSFTY or CLINTRL. A valueCode is accepted too." },
                Param { name: "text", direction: "in", min: 1, max: "1", kind: "string", documentation: "The reason in words (at least a few characters)." },
                Param { name: "patient", direction: "out", min: 1, max: "1", kind: "Reference", documentation: "The patient whose record is opened." },
                Param { name: "expires", direction: "out", min: 1, max: "1", kind: "instant", documentation: "When the access ends." },
                Param { name: "reason", direction: "out", min: 1, max: "1", kind: "Coding", documentation: "The reason recorded." },
            ],
        },
        documentation: "Emergency access to a record outside a care relationship: audited, alerted, reviewed.",
    },
    Operation {
        code: "access-log",
        resources: &["Patient"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: false,
        definition: Definition::Server {
            id: "Patient-access-log",
            title: "Access log of a patient's record",
            description: "Who accessed the patient's record, newest first, as AuditEvents showing only this patient's entities. \
                For privacy officers (each trust's view, other trusts' hidden data redacted to its class and owner) and the patient. \
                Paged with `_count` and the `next` link (`_cursor`).",
            parameters: &[
                Param { name: "agent", direction: "in", min: 0, max: "1", kind: "string", documentation: "Only accesses by this user (`Practitioner/[id]` or the id); also `user`." },
                Param { name: "date", direction: "in", min: 0, max: "2", kind: "string", documentation: "A date or instant with a ge, gt, le or lt prefix (repeat for a range)." },
                Param { name: "purpose", direction: "in", min: 0, max: "1", kind: "string", documentation: "`BTG`: break-glass accesses only." },
                Param { name: "action", direction: "in", min: 0, max: "1", kind: "string", documentation: "Only this action (`read`, `search`, `create`, …); also `subtype`." },
                Param { name: "_count", direction: "in", min: 0, max: "1", kind: "integer", documentation: "Events per page." },
                Param { name: "_total", direction: "in", min: 0, max: "1", kind: "string", documentation: "`accurate` or `estimate`: count the events (bounded); `none`." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Bundle", documentation: "A searchset of AuditEvents." },
            ],
        },
        documentation: "Who accessed this patient's record (privacy officers, the patient).",
    },
    Operation {
        code: "worklist",
        resources: &["Location"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: false,
        definition: Definition::Server {
            id: "Location-worklist",
            title: "Worklist of a ward or clinic",
            description: "The ongoing encounters (or the appointments) at a location that the signed-in user may see, each through the same access rules as a read.",
            parameters: &[
                Param { name: "kind", direction: "in", min: 0, max: "1", kind: "code", documentation: "`encounter` (default) or `appointment`." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Bundle", documentation: "A searchset of Encounters or Appointments." },
            ],
        },
        documentation: "The patients currently at a ward or clinic.",
    },
    // The patient index (`crate::patient_index`, `crate::merge`).
    Operation {
        code: "match",
        resources: &["Patient"],
        system: false,
        type_level: true,
        instance: false,
        affects_state: false,
        definition: Definition::Standard("http://hl7.org/fhir/OperationDefinition/Patient-match"),
        documentation: "The domain's patient index: Patients that may be the person described (POST Parameters `resource`, `onlyCertainMatches`, `count`), graded certain / probable / possible with a score, only those the user may see.",
    },
    Operation {
        code: "change-request",
        resources: &["Task"],
        system: false,
        type_level: true,
        instance: false,
        affects_state: true,
        definition: Definition::Server {
            id: "Task-change-request",
            title: "Propose a governed change",
            description: "Proposes a change to layered content (a Bundle of items) or to the domain configuration (a domain file fragment) as a change request (a Task): \
                its diff, its impact and the approvals it needs (a governance lead of each affected trust; a clinical safety officer for clinical content; \
                the emergency approvers for an emergency change). Applied by $apply once every approval is given (docs/governance.md).",
            parameters: &[
                Param { name: "title", direction: "in", min: 1, max: "1", kind: "string", documentation: "What the change is." },
                Param { name: "reason", direction: "in", min: 0, max: "1", kind: "string", documentation: "Why." },
                Param { name: "content", direction: "in", min: 0, max: "1", kind: "Bundle", documentation: "The layered content items to write." },
                Param { name: "configuration", direction: "in", min: 0, max: "1", kind: "string", documentation: "A domain file fragment (TOML) to merge into the domain." },
                Param { name: "emergency", direction: "in", min: 0, max: "1", kind: "boolean", documentation: "An emergency change (may apply during a freeze, with the emergency approvals)." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Task", documentation: "The change request." },
            ],
        },
        documentation: "Proposes a governed change (docs/governance.md).",
    },
    Operation {
        code: "approve",
        resources: &["Task"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: true,
        definition: Definition::Server {
            id: "Task-approve",
            title: "Sign off (or reject) a change request",
            description: "A governance lead of an affected trust, a clinical safety officer or an emergency approver signs off the approvals of a change request they hold \
                (decision=approve), or rejects it (decision=reject: nothing changes). Audited.",
            parameters: &[
                Param { name: "decision", direction: "in", min: 1, max: "1", kind: "code", documentation: "approve | reject" },
                Param { name: "note", direction: "in", min: 0, max: "1", kind: "string", documentation: "A note for the record." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Task", documentation: "The change request." },
            ],
        },
        documentation: "Signs off or rejects a change request.",
    },
    Operation {
        code: "apply",
        resources: &["Task"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: true,
        definition: Definition::Server {
            id: "Task-apply",
            title: "Apply an approved change request",
            description: "Applies an accepted change request — content in one transaction with the request's completion, configuration merged into the domain — \
                unless a freeze is in force (an emergency change with its approvals applies, flagged in the audit).",
            parameters: &[Param { name: "return", direction: "out", min: 1, max: "1", kind: "Task", documentation: "The completed change request." }],
        },
        documentation: "Applies an approved change request.",
    },
    Operation {
        code: "withdraw",
        resources: &["Task"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: true,
        definition: Definition::Server {
            id: "Task-withdraw",
            title: "Withdraw a change request",
            description: "The requester withdraws a change request that is not applied: nothing changes.",
            parameters: &[Param { name: "return", direction: "out", min: 1, max: "1", kind: "Task", documentation: "The withdrawn change request." }],
        },
        documentation: "Withdraws a change request.",
    },
    Operation {
        code: "effective",
        resources: &["ActivityDefinition", "PlanDefinition", "Questionnaire", "ValueSet", "CodeSystem", "Library", "Measure"],
        system: false,
        type_level: true,
        instance: true,
        affects_state: false,
        definition: Definition::Server {
            id: "Resource-effective",
            title: "Effective content for an organisation and location",
            description: "Layered content (model → domain → organisation → site) as it applies to an organisation and location: the overlay of the layers, each element \
                marked (extension `https://tessera.health/StructureDefinition/effective-element`) with the layer and item it came from. On an instance: that item's content; \
                on the type: every layered item (or those of one canonical `url`), as a searchset. Read through the same access rules as a search.",
            parameters: &[
                Param { name: "organization", direction: "in", min: 0, max: "1", kind: "string", documentation: "The organisation (a trust or a site); default: the caller's." },
                Param { name: "location", direction: "in", min: 0, max: "1", kind: "string", documentation: "The location (its site applies); default: the caller's." },
                Param { name: "url", direction: "in", min: 0, max: "1", kind: "uri", documentation: "Type level: only the content with this canonical URL." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Resource", documentation: "The effective item (instance), or a searchset Bundle of them (type)." },
            ],
        },
        documentation: "The content as it applies to an organisation and location, each element marked with its layer (docs/content.md).",
    },
    Operation {
        code: "ihe-pix",
        resources: &["Patient"],
        system: false,
        type_level: true,
        instance: false,
        affects_state: false,
        definition: Definition::Standard("https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"),
        documentation: "IHE PIXm (ITI-83): the person's identifiers in other identifier domains (`sourceIdentifier=system|value`, `targetSystem`), through the same access rules as a read.",
    },
    Operation {
        code: "merge",
        resources: &["Patient"],
        system: false,
        type_level: true,
        instance: false,
        affects_state: true,
        definition: Definition::Server {
            id: "Patient-merge",
            title: "Merge two patient records",
            description: "Merges a duplicate record (source) into the record to keep (target), as R5's Patient $merge: the source becomes inactive with a `replaced-by` link, \
                the target gains a `replaces` link and the source's identifiers, and every resource of the source's record is rewritten to refer to the target. \
                `preview` reports what would change and changes nothing. Needs a role that may merge (records-manager); records held by several organisations need the domain-wide permission. \
                Recorded as a Provenance and audited; undone by `$unmerge`.",
            parameters: &[
                Param { name: "source-patient", direction: "in", min: 0, max: "1", kind: "Reference", documentation: "The duplicate record (or `source-patient-identifier`)." },
                Param { name: "source-patient-identifier", direction: "in", min: 0, max: "1", kind: "Identifier", documentation: "The duplicate record, by an identifier." },
                Param { name: "target-patient", direction: "in", min: 0, max: "1", kind: "Reference", documentation: "The record to keep (or `target-patient-identifier`)." },
                Param { name: "target-patient-identifier", direction: "in", min: 0, max: "1", kind: "Identifier", documentation: "The record to keep, by an identifier." },
                Param { name: "result-patient", direction: "in", min: 0, max: "1", kind: "Patient", documentation: "The target as it should read after the merge (its id must be the target's)." },
                Param { name: "preview", direction: "in", min: 0, max: "1", kind: "boolean", documentation: "Report only; change nothing." },
                Param { name: "input", direction: "out", min: 1, max: "1", kind: "Parameters", documentation: "The request." },
                Param { name: "outcome", direction: "out", min: 1, max: "1", kind: "OperationOutcome", documentation: "What moved (or would): counts per type the user may see, the rest counted." },
                Param { name: "result", direction: "out", min: 0, max: "1", kind: "Patient", documentation: "The target after the merge, when the user may see it." },
            ],
        },
        documentation: "Merges a duplicate patient record into another (records managers; preview available).",
    },
    Operation {
        code: "unmerge",
        resources: &["Patient"],
        system: false,
        type_level: true,
        instance: false,
        affects_state: true,
        definition: Definition::Server {
            id: "Patient-unmerge",
            title: "Undo a patient merge",
            description: "Restores the two records exactly as they were before the merge of `source-patient` (content and references), unless any resource the merge changed has changed since: \
                then it is refused with an OperationOutcome naming them. Same permission as `$merge`; audited.",
            parameters: &[
                Param { name: "source-patient", direction: "in", min: 1, max: "1", kind: "Reference", documentation: "The record that was merged away." },
                Param { name: "target-patient", direction: "in", min: 0, max: "1", kind: "Reference", documentation: "The record it was merged into (checked when given)." },
                Param { name: "outcome", direction: "out", min: 1, max: "1", kind: "OperationOutcome", documentation: "What was restored." },
            ],
        },
        documentation: "Undoes a patient merge when that is safe.",
    },
    Operation {
        code: "resolve",
        resources: &["Task"],
        system: false,
        type_level: false,
        instance: true,
        affects_state: true,
        definition: Definition::Server {
            id: "Task-resolve",
            title: "Decide a possible duplicate",
            description: "Decides a pair of the patient index's review worklist (a Task with code possible-duplicate): `merge` (the newer record into the older, as `Patient/$merge`), \
                `not-duplicate` (remembered: the pair never returns) or `defer`. Needs a role that may merge; audited.",
            parameters: &[
                Param { name: "decision", direction: "in", min: 1, max: "1", kind: "code", documentation: "merge, not-duplicate or defer." },
                Param { name: "note", direction: "in", min: 0, max: "1", kind: "string", documentation: "Why, for the record." },
                Param { name: "return", direction: "out", min: 1, max: "1", kind: "Task", documentation: "The decided Task." },
            ],
        },
        documentation: "Decides a pair of the duplicate review worklist.",
    },
];

impl Operation {
    /// The canonical URL of its definition, for a server at `base_url` (the FHIR base).
    pub fn canonical(&self, base_url: &str) -> String {
        match self.definition {
            Definition::Standard(url) => url.to_string(),
            Definition::Server { id, .. } => format!("{}/OperationDefinition/{id}", base_url.trim_end_matches('/')),
        }
    }

    /// Whether it applies to `resource_type` at type or instance level. `Resource` covers
    /// every type but those the server generates instead of storing ([`GENERATED_TYPES`]).
    pub fn applies_to(&self, resource_type: &str) -> bool {
        (self.type_level || self.instance)
            && self.resources.iter().any(|r| *r == resource_type || *r == "Resource" && !GENERATED_TYPES.contains(&resource_type))
    }

    /// The OperationDefinition of a server-defined operation.
    fn operation_definition(&self, base_url: &str) -> Option<Value> {
        let Definition::Server { id, title, description, parameters } = self.definition else { return None };
        let parameter: Vec<Value> = parameters
            .iter()
            .map(|p| json!({"name": p.name, "use": p.direction, "min": p.min, "max": p.max, "documentation": p.documentation, "type": p.kind}))
            .collect();
        Some(json!({
            "resourceType": "OperationDefinition",
            "id": id,
            "url": self.canonical(base_url),
            "version": env!("CARGO_PKG_VERSION"),
            "name": id.replace('-', "_"),
            "title": title,
            "status": "active",
            "kind": "operation",
            "publisher": "Tessera",
            "description": description,
            "affectsState": self.affects_state,
            "code": self.code,
            "resource": self.resources,
            "system": self.system,
            "type": self.type_level,
            "instance": self.instance,
            "parameter": parameter,
        }))
    }
}

/// OperationDefinitions other modules of the engine contribute, served beside the
/// table's own (each must have an `id`): the one place to add them. The terminology
/// module describes its implementation of the standard operations (their `url` is the
/// standard canonical the CapabilityStatement names).
fn contributed() -> Vec<Value> {
    crate::terminology::operation_definitions()
}

/// The search parameters `GET [base]/OperationDefinition` takes (besides `_format`,
/// `_pretty`, `_count`, `_total`), as the CapabilityStatement declares them.
pub const SEARCH_PARAMETERS: &[(&str, &str)] = &[("_id", "token"), ("url", "uri"), ("code", "token"), ("name", "string")];

impl Engine {
    /// The OperationDefinitions this server serves: those of the operations it defines.
    pub fn operation_definitions(&self) -> Vec<Value> {
        let base = &self.config().base_url;
        OPERATIONS.iter().filter_map(|o| o.operation_definition(base)).chain(contributed()).collect()
    }

    /// `GET [base]/OperationDefinition/[id]`.
    pub fn operation_definition(&self, id: &str) -> Result<Value, FhirError> {
        self.operation_definitions().into_iter().find(|d| d.get("id").and_then(Value::as_str) == Some(id)).ok_or_else(|| FhirError::not_found("OperationDefinition", id))
    }

    /// `GET [base]/OperationDefinition?…`: the server's OperationDefinitions, filtered by
    /// `_id`, `url`, `code` or `name` (comma-separated values: any of them; `name` matches
    /// a prefix, ignoring case). One page holds them all.
    pub fn operation_definition_search(&self, query: &str) -> Result<Bundle, FhirError> {
        let mut filters: Vec<(String, Vec<String>)> = Vec::new();
        let mut count: Option<usize> = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "_format" | "_pretty" | "_total" => {}
                "_count" => count = Some(v.parse().map_err(|_| FhirError::bad_request("_count must be a number").at("_count"))?),
                p if SEARCH_PARAMETERS.iter().any(|(n, _)| *n == p) => {
                    let values = v.split(',').map(|s| s.rsplit('|').next().unwrap_or(s).to_string()).collect();
                    filters.push((p.to_string(), values));
                }
                other => {
                    let names: Vec<&str> = SEARCH_PARAMETERS.iter().map(|(n, _)| *n).collect();
                    return Err(FhirError::new(400, tessera_fhir::IssueType::NotSupported, format!("OperationDefinition search does not support '{other}' (it takes {})", names.join(", "))).at(other.to_string()));
                }
            }
        }
        let field = |d: &Value, name: &str| d.get(name).and_then(Value::as_str).unwrap_or("").to_string();
        let matching: Vec<Value> = self
            .operation_definitions()
            .into_iter()
            .filter(|d| {
                filters.iter().all(|(p, values)| {
                    values.iter().any(|v| match p.as_str() {
                        "_id" => field(d, "id") == *v,
                        "url" => field(d, "url") == *v,
                        "code" => field(d, "code") == *v,
                        _ => field(d, "name").to_lowercase().starts_with(&v.to_lowercase()),
                    })
                })
            })
            .collect();
        let base = &self.config().base_url;
        let link = if query.is_empty() { format!("{base}/OperationDefinition") } else { format!("{base}/OperationDefinition?{query}") };
        let mut out = BundleWriter::new("searchset", Some(matching.len() as u64), &[("self", link)]);
        for d in matching.iter().take(count.unwrap_or(usize::MAX)) {
            let url = format!("{base}/OperationDefinition/{}", field(d, "id"));
            out.generated(Some(&url), d, &[("search", json!({"mode": "match"}))]);
        }
        Ok(out.finish())
    }
}
