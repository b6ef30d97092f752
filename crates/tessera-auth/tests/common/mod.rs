#![allow(dead_code)]

use std::sync::OnceLock;
use tessera_auth::{hash_client_secret, hash_password, Authenticator};
use tessera_domain::Domain;

pub const NOW: u64 = 1_800_000_000;
pub const PATEL_PASSWORD: &str = "correct horse battery";
pub const LAB_SECRET: &str = "lab-interface-secret-0123456789";

/// A small domain: a trust with a site, another trust, users and service accounts.
pub fn domain() -> &'static Domain {
    static DOMAIN: OnceLock<Domain> = OnceLock::new();
    DOMAIN.get_or_init(|| {
        let patel = hash_password(PATEL_PASSWORD);
        let jones = hash_password("nurse-password");
        let lab = hash_client_secret(LAB_SECRET);
        serde_json::from_value(serde_json::json!({
            "name": "test",
            "settings": {
                "relationship_days_after_discharge": 30,
                "break_glass_minutes": 240,
                "break_glass_marker": true,
                "default_sharing": "break-glass",
                "token_minutes": 15
            },
            "organisations": [
                { "id": "rx1", "name": "Trust One" },
                { "id": "rx1-general", "name": "General", "parent": "rx1" },
                { "id": "rx2", "name": "Trust Two" }
            ],
            "locations": [
                { "id": "ward-7a", "name": "Ward 7A", "organisation": "rx1-general" },
                { "id": "ward-7b", "name": "Ward 7B", "organisation": "rx1-general" },
                { "id": "clinic-2", "name": "Clinic", "organisation": "rx2" }
            ],
            "users": [
                {
                    "id": "dr.patel", "name": "Dr Asha Patel", "password_hash": patel,
                    "roles": [
                        { "organisation": "rx1-general", "role": "doctor", "locations": ["ward-7a", "ward-7b"] },
                        { "organisation": "rx2", "role": "consultant", "locations": ["clinic-2"] },
                        { "organisation": "rx2", "role": "doctor" }
                    ]
                },
                {
                    "id": "nurse.jones", "name": "Sam Jones", "password_hash": jones, "active": false,
                    "roles": [ { "organisation": "rx1-general", "role": "nurse", "locations": ["ward-7a"] } ]
                },
                { "id": "no.password", "name": "No Password", "roles": [ { "organisation": "rx1", "role": "admin" } ] },
                { "id": "no.roles", "name": "No Roles", "password_hash": hash_password("no-roles-password"), "roles": [] }
            ],
            "service_accounts": [
                {
                    "id": "lab", "name": "Laboratory interface", "secret_hash": lab, "organisation": "rx1-general",
                    "scopes": ["system/Observation.cruds", "system/DiagnosticReport.cruds", "system/Patient.rs"]
                },
                { "id": "no-secret", "name": "No secret", "organisation": "rx1", "scopes": ["system/*.*"] },
                // The bootstrap account, even if a domain file gave it a secret.
                { "id": "system", "name": "Tessera system", "secret_hash": lab.clone(), "organisation": "tessera", "scopes": ["system/*.*"] }
            ]
        }))
        .expect("test domain")
    })
}

pub fn auth() -> Authenticator {
    Authenticator::new(b"0123456789abcdef0123456789abcdef")
}
