//! Running a migration: each legacy record through the engine's patient index.
//!
//! A **dry run** changes nothing: every valid record is matched against the domain as a
//! registration would be (`Engine::registration_preview`) and reported as would-link
//! (with the record it would join and the score), would-create, to-review (created, with
//! a candidate for the worklist) or invalid (with the reason: unreadable, or refused by
//! the server's validation, such as an NHS number whose check digit is wrong). Since a dry
//! run writes nothing, it also matches each record that would be new against the earlier
//! new ones of the same extracts (in memory, with the domain's settings): the same person
//! twice in a legacy system is reported as would-link (to that record) or to-review.
//!
//! A **real run** registers each record as its own write (`Engine::register_reporting`):
//! atomic per patient, linked or created by the patient index, the organisation's MRN
//! attached to the record it joins. Each migrated record is remembered by the digest of
//! its content (`import.migrate.<org>.<sha-256>`), so repeating a run is harmless: a
//! record migrated before is reported as linked to the Patient it went to and not
//! registered again (records with an MRN would link by it anyway; this also covers the
//! sparse ones that carry nothing to match on).

use crate::Record;
use serde::Serialize;
use std::fmt;
use tessera_engine::{Access, Engine};

/// What happened (or would happen) to one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    /// `link`, `create`, `review` or `invalid`.
    pub decision: &'static str,
    /// The Patient the record joined (link), became (create, review) — or would join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The review candidate, for `review`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The patient index's reasoning, or why the record is invalid.
    pub detail: String,
}

/// The result of a migration run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub organisation: String,
    pub link: usize,
    pub create: usize,
    pub review: usize,
    pub invalid: usize,
    pub records: Vec<Outcome>,
}

/// Matches (dry run) or registers every record, calling `progress` after each.
pub async fn run(engine: &Engine, access: &Access, records: Vec<Record>, dry_run: bool, progress: &dyn Fn()) -> Report {
    let mut report = Report { dry_run, organisation: access.organisation.clone(), ..Report::default() };
    // Dry run: the records that would be new so far, to match the next ones against.
    let config = engine.domain().patient_index.clone();
    let mut extract = tessera_empi::Index::with_blocking(config.blocking.clone());
    let mut extract_sources: Vec<String> = Vec::new();
    for r in records {
        let mut out = Outcome { source: r.source, local_id: r.local_id, decision: "invalid", patient: None, candidate: None, score: None, detail: String::new() };
        match r.patient {
            Err(reason) => out.detail = reason,
            Ok(patient) => {
                let key = format!("import.migrate.{}.{}", access.organisation, digest(&patient));
                let person = dry_run.then(|| tessera_empi::Person::from_patient(&patient));
                let before = match engine.setting(&key).await {
                    Ok(Some(id)) => engine.patient_in_force(&id).await.ok().flatten(),
                    _ => None,
                };
                let result = if let Some(id) = before {
                    Ok((None, tessera_engine::patient_index::MatchReport {
                        decision: "link",
                        other: Some(id.clone()),
                        score: None,
                        note: format!("migrated before: the record went to Patient/{id}"),
                    }))
                } else if dry_run {
                    engine.registration_preview(access, patient).await.map(|m| (None, m))
                } else {
                    engine.register_reporting(access, patient).await.map(|(w, m)| (Some(w.resource.id().to_string()), m))
                };
                match result {
                    Err(e) => out.detail = e.issues.iter().map(|i| format!("{}{}", i.diagnostics, i.expression.first().map(|x| format!(" ({x})")).unwrap_or_default())).collect::<Vec<_>>().join("; "),
                    Ok((written, m)) => {
                        if let Some(id) = written.as_ref().filter(|_| !dry_run) {
                            // Remembered only once written; a failure here means a repeat
                            // registers the record again, and the patient index links it.
                            let _ = engine.set_setting(&key, id).await;
                        }
                        out.decision = m.decision;
                        out.score = m.score;
                        out.detail = m.note;
                        match m.decision {
                            "link" => out.patient = m.other,
                            "review" => {
                                out.patient = written;
                                out.candidate = m.other;
                            }
                            _ => out.patient = written,
                        }
                        if let Some(person) = person.filter(|_| out.decision != "link") {
                            // Would be new: is it an earlier new record of these extracts?
                            if let Some((slot, score)) = extract.search(&person, &config).into_iter().find(|(_, s)| s.decision != tessera_empi::Decision::Distinct) {
                                let earlier = &extract_sources[slot as usize];
                                if score.decision == tessera_empi::Decision::Link {
                                    out.decision = "link";
                                    out.detail = format!("the same person as {earlier} of this extract (score {:.1}): would join the record that one creates", score.total);
                                } else if out.decision == "create" {
                                    out.decision = "review";
                                    out.detail = format!("possible duplicate of {earlier} of this extract (score {:.1})", score.total);
                                }
                                out.score = Some((score.total * 10.0).round() / 10.0);
                                out.candidate = Some(earlier.clone());
                            }
                            if out.decision != "link" {
                                extract.insert(person);
                                extract_sources.push(out.source.clone());
                            }
                        }
                    }
                }
            }
        }
        match out.decision {
            "link" => report.link += 1,
            "create" => report.create += 1,
            "review" => report.review += 1,
            _ => report.invalid += 1,
        }
        report.records.push(out);
        progress();
    }
    report
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (link, create, review) = if self.dry_run { ("would link", "would create", "to review") } else { ("linked", "created", "created for review") };
        writeln!(f, "{:<44} {:<18} {:<38} {:>6}  detail", "record", "decision", "patient", "score")?;
        for r in &self.records {
            let decision = match r.decision {
                "link" => link,
                "create" => create,
                "review" => review,
                _ => "invalid",
            };
            let patient = match (&r.patient, &r.candidate) {
                (Some(p), Some(c)) => format!("{p} ~ {c}"),
                (None, Some(c)) => format!("~ {c}"),
                (Some(p), None) => p.clone(),
                (None, None) => "—".into(),
            };
            let score = r.score.map(|s| format!("{s:.1}")).unwrap_or_default();
            writeln!(f, "{:<44} {:<18} {:<38} {:>6}  {}", r.source, decision, patient, score, r.detail)?;
        }
        write!(
            f,
            "{}: {} {link}, {} {create}, {} {review}, {} invalid ({} records, organisation {})",
            if self.dry_run { "dry run, nothing changed" } else { "migrated" },
            self.link,
            self.create,
            self.review,
            self.invalid,
            self.records.len(),
            self.organisation
        )
    }
}

/// The SHA-256 of a record's content, in hex.
fn digest(patient: &serde_json::Value) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(patient).unwrap_or_default();
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}
