//! What access decisions need to know about a patient, cached across requests.
//!
//! Deciding on a read needs the patient's care links (relationships, consent dissent),
//! the patient's confidentiality and the reader's break-glass grant: three store
//! look-ups. They change only when something about that patient is written, so the engine
//! keeps them in memory, drops a patient's entry whenever it commits a write concerning
//! that patient (or a grant for them), and re-reads after [`TTL`] in any case, which
//! bounds staleness when several servers share one PostgreSQL database.

use crate::{Engine, FhirError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_policy::Confidentiality;
use tessera_store::CareLink;

/// How long a cached entry may be used without re-reading the store.
pub const TTL: Duration = Duration::from_secs(5);
/// Entries kept at most (the cache is cleared when it grows beyond this).
const CAPACITY: usize = 200_000;

/// The subject-independent facts of a patient.
#[derive(Debug, Clone)]
pub struct PatientRecord {
    pub links: Arc<Vec<CareLink>>,
    pub confidentiality: Option<Confidentiality>,
}

#[derive(Default)]
pub struct FactsCache {
    patients: Mutex<HashMap<String, (Instant, PatientRecord)>>,
    grants: Mutex<HashMap<(String, String), (Instant, i64)>>,
}

impl FactsCache {
    /// Forgets what is known of these patients (after a write concerning them).
    pub fn invalidate<'a>(&self, patients: impl IntoIterator<Item = &'a str>) {
        let mut map = self.patients.lock().expect("facts cache");
        for p in patients {
            map.remove(p);
        }
    }

    fn forget_grant(&self, user: &str, patient: &str) {
        self.grants.lock().expect("grant cache").remove(&(user.to_string(), patient.to_string()));
    }
}

impl Engine {
    /// The cached (or freshly read) facts of a patient.
    pub async fn patient_record(&self, patient: &str) -> Result<PatientRecord, FhirError> {
        if let Some((at, rec)) = self.cache().patients.lock().expect("facts cache").get(patient) {
            if at.elapsed() < TTL {
                return Ok(rec.clone());
            }
        }
        let links = self.store().care_links(patient).await?;
        // A deleted Patient keeps the confidentiality of its last version: the record of
        // a very restricted patient stays so.
        let mut person = self.store().read("Patient", patient).await?;
        while let Some(p) = person.as_ref().filter(|p| p.deleted && p.version > 1) {
            let (id, version) = (p.id.clone(), p.version - 1);
            person = self.store().vread("Patient", &id, version).await?;
        }
        let confidentiality = match person {
            Some(p) if !p.deleted => crate::guard::confidentiality_of(&p.json),
            _ => None,
        };
        let rec = PatientRecord { links: Arc::new(links), confidentiality };
        let mut map = self.cache().patients.lock().expect("facts cache");
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(patient.to_string(), (Instant::now(), rec.clone()));
        Ok(rec)
    }

    /// When `user`'s break-glass grant for `patient` expires (microseconds; 0: none).
    pub async fn break_glass_expiry(&self, user: &str, patient: &str) -> Result<i64, FhirError> {
        let key = (user.to_string(), patient.to_string());
        if let Some((at, expires)) = self.cache().grants.lock().expect("grant cache").get(&key) {
            if at.elapsed() < TTL {
                return Ok(*expires);
            }
        }
        let stored = self.store().get_meta(&format!("break-glass/{user}/{patient}")).await?;
        let expires = stored.and_then(|g| g.split('|').next().and_then(|e| e.parse::<i64>().ok())).unwrap_or(0);
        let mut map = self.cache().grants.lock().expect("grant cache");
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, (Instant::now(), expires));
        Ok(expires)
    }

    /// Called after a grant is stored.
    pub(crate) fn grant_changed(&self, user: &str, patient: &str) {
        self.cache().forget_grant(user, patient);
    }
}
