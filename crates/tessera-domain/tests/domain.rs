//! The domain file, its checks, merging, the FHIR resources and the bootstrap domain.

use tessera_domain::{
    default_roles, is_valid_fhir_id, nrbac_display, parse_domain_file, to_fhir_resources, verify_secret, DataClass, Domain, DomainError,
    RelationshipScope, RoleAssignment, Sharing, User,
};

const DEMO: &str = include_str!("../demo/demo-domain.toml");

fn demo() -> Domain {
    parse_domain_file(DEMO).unwrap_or_else(|e| panic!("the demo domain file is invalid: {e}"))
}

/// A small valid file the error tests alter.
const BASE: &str = r#"
name = "Test"

[[organisations]]
id = "rx1"
name = "Northgate Hospitals NHS Trust"
ods_code = "RX1"

[[organisations]]
id = "rx1-general"
name = "Northgate General Hospital"
parent = "rx1"

[[organisations]]
id = "rx2"
name = "Southbank Community NHS Trust"

[[locations]]
id = "ward-7a"
name = "Ward 7A"
organisation = "rx1-general"

[[users]]
id = "dr.patel"
name = "Dr Asha Patel"
password = "demo-doctor-1"
roles = [{ organisation = "rx1-general", role = "doctor", locations = ["ward-7a"] }]

[[service_accounts]]
id = "engine"
name = "Interface engine"
secret = "a-long-enough-secret"
organisation = "rx1"
scopes = ["system/*.*"]

[[sharing]]
owner = "rx1"
viewer = "rx2"
classes = { demographics = "shared", clinical = "break-glass" }
"#;

/// Parses `text`, expecting it to be refused; returns the error's text.
fn refused(text: &str) -> String {
    match parse_domain_file(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "expected {part:?} in:\n{message}");
    }
}

#[test]
fn base_file_is_valid() {
    let d = parse_domain_file(BASE).unwrap();
    assert_eq!(d.name, "Test");
    assert_eq!(d.roles, default_roles(), "no [[roles]]: the built-in catalogue");
    let patel = d.user("dr.patel").unwrap();
    assert!(verify_secret(patel.password_hash.as_deref().unwrap(), "demo-doctor-1"));
    assert!(verify_secret(d.service_account("engine").unwrap().secret_hash.as_deref().unwrap(), "a-long-enough-secret"));
    assert!(!DEMO.is_empty());
}

#[test]
fn demo_domain_parses_and_validates() {
    let d = demo();
    d.validate().unwrap();
    assert_eq!(d.roles, default_roles());
    assert_eq!(d.organisations.len(), 9);
    assert_eq!(d.organisations.iter().filter(|o| o.parent.is_none()).count(), 3, "three trusts");
    assert_eq!(d.locations.len(), 13);
    assert_eq!(d.users.len(), 25);
    assert_eq!(d.service_accounts.len(), 2);
    assert_eq!(d.sharing.len(), 5);

    // Every role of the catalogue has a user; every user has a password.
    for role in &d.roles {
        assert!(d.users.iter().any(|u| u.roles.iter().any(|a| a.role == role.id)), "no demo user is a {}", role.id);
    }
    for user in &d.users {
        assert!(user.password_hash.is_some(), "{} has no password", user.id);
    }
    // The documented password pattern.
    let hash = |id: &str| d.user(id).unwrap().password_hash.clone().unwrap();
    assert!(verify_secret(&hash("dr.patel"), "demo-doctor-1"));
    assert!(verify_secret(&hash("nurse.okoro"), "demo-nurse-3"));
    assert!(verify_secret(&hash("privacy.adeyemi"), "demo-privacy-officer-2"));
    assert!(verify_secret(&hash("domain.carter"), "demo-domain-admin-1"));
    assert!(!verify_secret(&hash("dr.patel"), "demo-doctor-2"));

    // The stories of docs/demo-domain.md.
    assert_eq!(d.trust_of("ward-7a"), "ward-7a", "locations are not organisations");
    assert_eq!(d.trust_of(&d.location("ward-7a").unwrap().organisation), "rx1");
    assert_eq!(d.sharing("rx1-general", "rx2-southbank-hc", DataClass::Demographics), Sharing::Shared);
    assert_eq!(d.sharing("rx1-general", "rx2-southbank-hc", DataClass::Clinical), Sharing::BreakGlass);
    assert_eq!(d.sharing("rx1", "rx1-st-annes", DataClass::Hiv), Sharing::Shared, "same trust");
    for viewer in ["rx1", "rx1-general", "rx2", "rx2-millbrook"] {
        assert_eq!(d.sharing("rx3-riverside-house", viewer, DataClass::Psychiatry), Sharing::Hidden, "{viewer}");
    }
    assert_eq!(d.sharing("rx3", "rx1-general", DataClass::Administrative), Sharing::Shared);
    assert_eq!(d.sharing("rx3", "rx2", DataClass::Administrative), Sharing::BreakGlass);
    assert_eq!(d.sharing("rx1", "rx3", DataClass::Clinical), Sharing::Shared);
    assert_eq!(d.sharing("rx1", "rx2", DataClass::Restricted), Sharing::BreakGlass);
    assert_eq!(d.sharing("rx1", "rx2", DataClass::Audit), Sharing::BreakGlass, "default sharing");

    // Each dial value is used for several classes.
    for dial in [Sharing::Shared, Sharing::BreakGlass, Sharing::Hidden] {
        let classes: std::collections::BTreeSet<_> =
            d.sharing.iter().flat_map(|a| a.classes.iter()).filter(|(_, s)| **s == dial).map(|(c, _)| *c).collect();
        assert!(classes.len() >= 3, "{dial:?}: {classes:?}");
    }
}

#[test]
fn parsing_is_deterministic() {
    assert_eq!(demo(), demo(), "same file, same domain (file passwords have a derived salt)");
}

#[test]
fn syntax_errors_name_line_and_column() {
    let err = parse_domain_file("name = \"x\"\n\n[[organisations]]\nid = rx1\n").unwrap_err();
    match &err {
        DomainError::Syntax { line, column, .. } => assert_eq!((*line, *column), (4, 6), "{err}"),
        other => panic!("{other:?}"),
    }
    assert_mentions(&err.to_string(), &["line 4, column 6"]);

    let err = refused(&BASE.replace("ods_code = \"RX1\"", "ods = \"RX1\""));
    assert_mentions(&err, &["line 7", "unknown field `ods`"]);

    let err = refused(&BASE.replace("clinical = \"break-glass\"", "clinicl = \"break-glass\""));
    assert_mentions(&err, &["clinicl", "clinical"]);

    let err = refused(&BASE.replace("clinical = \"break-glass\"", "clinical = \"sometimes\""));
    assert_mentions(&err, &["sometimes", "break-glass"]);

    let err = refused(&format!("{BASE}\n[[organisation]]\nid = \"x\"\nname = \"X\"\n"));
    assert_mentions(&err, &["organisation"]);
}

#[test]
fn unknown_references_are_reported() {
    let err = refused(&BASE.replace("role = \"doctor\"", "role = \"docter\""));
    assert_mentions(&err, &["line 23", "user `dr.patel`, role assignment 1", "role `docter` is not in the role catalogue", "`doctor`"]);

    let err = refused(&BASE.replace("organisation = \"rx1-general\", role", "organisation = \"rx9\", role"));
    assert_mentions(&err, &["organisation `rx9` is not an organisation of the domain", "`rx1-general`"]);

    let err = refused(&BASE.replace("locations = [\"ward-7a\"]", "locations = [\"ward-9z\"]"));
    assert_mentions(&err, &["location `ward-9z` is not a location of the domain"]);

    let err = refused(&BASE.replace("organisation = \"rx1-general\", role = \"doctor\"", "organisation = \"rx2\", role = \"doctor\""));
    assert_mentions(&err, &["location `ward-7a` belongs to `rx1-general`, which is not `rx2` nor part of it"]);

    let err = refused(&BASE.replace("parent = \"rx1\"", "parent = \"rx7\""));
    assert_mentions(&err, &["line 9", "organisation `rx1-general`", "parent `rx7` is not an organisation"]);

    let err = refused(&BASE.replace("organisation = \"rx1-general\"\n\n[[users]]", "organisation = \"rx1-genral\"\n\n[[users]]"));
    assert_mentions(&err, &["line 18", "location `ward-7a`", "organisation `rx1-genral` is not an organisation"]);

    let err = refused(&BASE.replace("name = \"Ward 7A\"", "name = \"Ward 7A\"\nparent = \"ward-1\""));
    assert_mentions(&err, &["location `ward-7a`", "parent `ward-1` is not a location"]);

    let err = refused(&BASE.replace("organisation = \"rx1\"\nscopes", "organisation = \"rx4\"\nscopes"));
    assert_mentions(&err, &["service account `engine`", "organisation `rx4`"]);

    let err = refused(&BASE.replace("viewer = \"rx2\"", "viewer = \"rx5\""));
    assert_mentions(&err, &["line 36", "sharing `rx1` → `rx5`", "viewer `rx5` is not an organisation"]);

    let err = refused(&BASE.replace("owner = \"rx1\"", "owner = \"rx6\""));
    assert_mentions(&err, &["owner `rx6` is not an organisation"]);

    let err = refused(&BASE.replace("owner = \"rx1\"", "owner = \"rx1-general\""));
    assert_mentions(&err, &["owner `rx1-general` is part of `rx1`: sharing agreements are between trusts"]);

    let err = refused(&BASE.replace("viewer = \"rx2\"", "viewer = \"rx1\""));
    assert_mentions(&err, &["owner and viewer are the same organisation"]);
}

#[test]
fn duplicates_are_reported() {
    let err = refused(&format!("{BASE}\n[[organisations]]\nid = \"rx2\"\nname = \"Again\"\n"));
    assert_mentions(&err, &["line 41", "organisation `rx2`", "duplicate organisation id (also organisations[2])"]);

    let err = refused(&format!("{BASE}\n[[locations]]\nid = \"ward-7a\"\nname = \"Again\"\norganisation = \"rx1\"\n"));
    assert_mentions(&err, &["duplicate location id"]);

    let err = refused(&format!("{BASE}\n[[users]]\nid = \"dr.patel\"\nname = \"Again\"\n"));
    assert_mentions(&err, &["user `dr.patel`", "duplicate user id (also users[0])"]);

    let err = refused(&format!("{BASE}\n[[service_accounts]]\nid = \"engine\"\nname = \"Again\"\norganisation = \"rx1\"\nscopes = [\"system/*.*\"]\n"));
    assert_mentions(&err, &["duplicate service account id"]);

    let err = refused(&format!("{BASE}\n[[sharing]]\nowner = \"rx1\"\nviewer = \"rx2\"\nclasses = {{ hiv = \"hidden\" }}\n"));
    assert_mentions(&err, &["duplicate agreement for this owner and viewer"]);

    let roles = r#"
[[roles]]
id = "doctor"
name = "Doctor"
nrbac_code = "R8000"
permissions = { clinical = "rw" }

[[roles]]
id = "doctor"
name = "Doctor again"
nrbac_code = "R8000"
"#;
    let err = refused(&format!("{BASE}{roles}"));
    assert_mentions(&err, &["line 47", "role `doctor`", "duplicate role id (also roles[0])"]);
}

#[test]
fn hierarchy_cycles_are_reported() {
    let text = BASE.replace(
        "[[organisations]]\nid = \"rx2\"\nname = \"Southbank Community NHS Trust\"\n",
        "[[organisations]]\nid = \"rx2\"\nname = \"Southbank\"\nparent = \"rx2-site\"\n\n[[organisations]]\nid = \"rx2-site\"\nname = \"Site\"\nparent = \"rx2\"\n",
    );
    let err = refused(&text);
    assert_mentions(&err, &["the organisation hierarchy has a cycle: rx2 → rx2-site → rx2"]);
    assert_eq!(err.matches("cycle").count(), 1, "reported once:\n{err}");

    let err = refused(&BASE.replace("parent = \"rx1\"", "parent = \"rx1-general\""));
    assert_mentions(&err, &["organisation `rx1-general`: is its own parent"]);

    let text = format!(
        "{BASE}\n[[locations]]\nid = \"bay-1\"\nname = \"Bay 1\"\norganisation = \"rx1-general\"\nparent = \"bay-2\"\n\n[[locations]]\nid = \"bay-2\"\nname = \"Bay 2\"\norganisation = \"rx1-general\"\nparent = \"bay-1\"\n"
    );
    assert_mentions(&refused(&text), &["the location hierarchy has a cycle: bay-1 → bay-2 → bay-1"]);

    let text = format!("{BASE}\n[[locations]]\nid = \"bay-1\"\nname = \"Bay 1\"\norganisation = \"rx2\"\nparent = \"ward-7a\"\n");
    assert_mentions(&refused(&text), &["parent `ward-7a` belongs to another trust (`rx1`, not `rx2`)"]);
}

#[test]
fn ids_must_be_fhir_ids() {
    assert!(is_valid_fhir_id("dr.patel"));
    assert!(is_valid_fhir_id(&"a".repeat(64)));
    assert!(!is_valid_fhir_id(&"a".repeat(65)));
    assert!(!is_valid_fhir_id("dr_patel"));
    assert!(!is_valid_fhir_id(""));

    let err = refused(&BASE.replace("id = \"ward-7a\"", "id = \"ward 7a\"").replace("[\"ward-7a\"]", "[]"));
    assert_mentions(&err, &["location `ward 7a`", "`ward 7a` is not a valid id", "letters, digits, `-` and `.`"]);

    let err = refused(&BASE.replace("\"dr.patel\"", "\"dr_patel\""));
    assert_mentions(&err, &["`dr_patel` is not a valid id"]);

    let long = "a".repeat(63);
    let err = refused(&BASE.replace("\"dr.patel\"", &format!("\"{long}\"")));
    assert_mentions(&err, &["PractitionerRole ids", "64 characters"]);

    let err = refused(&BASE.replace("id = \"rx2\"", "id = \"rx/2\"").replace("viewer = \"rx2\"", "viewer = \"*\""));
    assert_mentions(&err, &["`rx/2` is not a valid id"]);
}

#[test]
fn secrets_in_the_file_are_checked() {
    let err = refused(&BASE.replace("password = \"demo-doctor-1\"", "password = \"demo-doctor-1\"\npassword_hash = \"$argon2id$x\""));
    assert_mentions(&err, &["line 23", "give either password or password_hash, not both"]);

    let err = refused(&BASE.replace("password = \"demo-doctor-1\"", "password = \"short\""));
    assert_mentions(&err, &["shorter than 8 characters"]);

    let err = refused(&BASE.replace("password = \"demo-doctor-1\"", "password_hash = \"hunter2\""));
    assert_mentions(&err, &["password_hash is not an argon2 PHC string"]);

    let err = refused(&BASE.replace("secret = \"a-long-enough-secret\"", "secret = \"short\""));
    assert_mentions(&err, &["service account `engine`", "secret is shorter than 16"]);

    let err = refused(&BASE.replace("scopes = [\"system/*.*\"]", "scopes = [\"user/*.*\"]"));
    assert_mentions(&err, &["scope `user/*.*` is not a SMART system scope"]);

    // A hash given directly is kept as is.
    let hash = tessera_domain::hash_secret("another-password").unwrap();
    let d = parse_domain_file(&BASE.replace("password = \"demo-doctor-1\"", &format!("password_hash = \"{hash}\""))).unwrap();
    assert_eq!(d.user("dr.patel").unwrap().password_hash.as_deref(), Some(hash.as_str()));
}

#[test]
fn every_problem_is_reported() {
    let text = BASE.replace("role = \"doctor\"", "role = \"docter\"").replace("viewer = \"rx2\"", "viewer = \"rx5\"");
    match parse_domain_file(&text).unwrap_err() {
        DomainError::Invalid(problems) => {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert_eq!(problems[0].line, Some(23));
            assert_eq!(problems[1].line, Some(36));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn roles_and_permissions_in_the_file() {
    let roles = r#"
[[roles]]
id = "doctor"
name = "Doctor"
nrbac_code = "R8000"
may_break_glass = true
permissions = { clinical = "rw", psychiatry = "r", demographics = { read = true, write = true } }

[[roles]]
id = "auditor"
name = "Auditor"
nrbac_code = "R0001"
needs_relationship = false
permissions = { audit = "r" }
"#;
    let d = parse_domain_file(&format!("{BASE}{roles}")).unwrap();
    assert_eq!(d.roles.len(), 2);
    let doctor = d.role("doctor").unwrap();
    assert!(doctor.may_break_glass && doctor.needs_relationship && !doctor.sees_sealed);
    let p = doctor.permissions[&DataClass::Clinical];
    assert!(p.read && p.write && !p.delete);
    assert!(!doctor.permissions[&DataClass::Psychiatry].write);
    assert!(doctor.permissions[&DataClass::Demographics].write);
    assert!(!d.role("auditor").unwrap().needs_relationship);

    let err = refused(&format!("{BASE}{}", roles.replace("psychiatry = \"r\"", "psychiatry = \"rx\"")));
    assert_mentions(&err, &["use the letters r (read), w (write) and d (delete)"]);
    let err = refused(&format!("{BASE}{}", roles.replace("\"R0001\"", "\"privacy\"")));
    assert_mentions(&err, &["role `auditor`", "not an NHS national RBAC job role code"]);
}

#[test]
fn merging_is_idempotent_and_updates_by_id() {
    let file = demo();
    let mut once = Domain::bootstrap();
    once.merge(file.clone());
    let mut twice = once.clone();
    twice.merge(file.clone());
    assert_eq!(once, twice);
    twice.merge(parse_domain_file(DEMO).unwrap());
    assert_eq!(once, twice, "re-reading the file changes nothing");
    once.validate().unwrap();
    assert_eq!(once.organisations.len(), 10, "tessera + the demo's");
    assert_eq!(once.users.len(), 26);
    assert_eq!(once.name, file.name);

    let mut self_merge = file.clone();
    self_merge.merge(file.clone());
    assert_eq!(self_merge, file);

    // A later file updates entries by id, keeps their place, and keeps a password it does
    // not mention.
    let mut d = Domain::bootstrap();
    d.set_password("admin", "operator-chosen").unwrap();
    d.merge(parse_domain_file(BASE).unwrap());
    let later = BASE
        .replace("name = \"Ward 7A\"", "name = \"Ward 7A (Acute Medicine)\"")
        .replace("password = \"demo-doctor-1\"\n", "")
        .replace("classes = { demographics = \"shared\", clinical = \"break-glass\" }", "classes = { clinical = \"hidden\" }")
        + "\n[[users]]\nid = \"admin\"\nname = \"Renamed administrator\"\nroles = [{ organisation = \"tessera\", role = \"domain-admin\" }]\n";
    d.apply_file(&later).unwrap();
    assert_eq!(d.location("ward-7a").unwrap().name, "Ward 7A (Acute Medicine)");
    assert_eq!(d.locations.len(), 1);
    assert!(verify_secret(d.user("dr.patel").unwrap().password_hash.as_deref().unwrap(), "demo-doctor-1"));
    assert_eq!(d.users[0].id, "admin");
    assert_eq!(d.users[0].name, "Renamed administrator");
    assert!(verify_secret(d.users[0].password_hash.as_deref().unwrap(), "operator-chosen"));
    assert_eq!(d.sharing.len(), 1);
    assert_eq!(d.sharing("rx1", "rx2", DataClass::Clinical), Sharing::Hidden);
    assert_eq!(d.sharing("rx1", "rx2", DataClass::Demographics), Sharing::BreakGlass, "the row is replaced whole");
}

#[test]
fn apply_file_accepts_fragments_and_leaves_the_domain_alone_on_error() {
    let mut d = Domain::bootstrap();
    d.apply_file(BASE).unwrap();
    // A fragment naming organisations and locations the domain already has.
    let fragment = r#"
[[users]]
id = "nurse.jones"
name = "Rhys Jones"
password = "demo-nurse-1"
roles = [{ organisation = "rx1-general", role = "nurse", locations = ["ward-7a"] }]
"#;
    assert!(parse_domain_file(fragment).is_err(), "not a whole domain on its own");
    d.apply_file(fragment).unwrap();
    assert!(d.user("nurse.jones").is_some());
    assert!(d.user("dr.patel").is_some());

    let before = d.clone();
    let bad = "\n\n[[users]]\nid = \"nurse.smith\"\nname = \"Nurse Smith\"\nroles = [{ organisation = \"rx1\", role = \"matron\" }]\n";
    let err = d.apply_file(bad).unwrap_err();
    assert_mentions(&err.to_string(), &["line 3", "user `nurse.smith`", "role `matron`"]);
    assert_eq!(d, before);
}

#[test]
fn fhir_resources_are_valid_and_deterministic() {
    let mut d = Domain::bootstrap();
    d.merge(demo());
    let resources = to_fhir_resources(&d);
    let limits = tessera_fhir::validation::Limits::default();
    for r in &resources {
        if let Err(issues) = tessera_fhir::validation::validate(r, &limits) {
            panic!("{} is not valid R4: {issues:?}", serde_json::to_string_pretty(r).unwrap());
        }
        assert!(is_valid_fhir_id(r["id"].as_str().unwrap()), "{r}");
    }
    let count = |t: &str| resources.iter().filter(|r| r["resourceType"] == t).count();
    assert_eq!(count("Organization"), d.organisations.len());
    assert_eq!(count("Location"), d.locations.len());
    assert_eq!(count("Practitioner"), d.users.len());
    assert_eq!(count("PractitionerRole"), d.users.iter().map(|u| u.roles.len()).sum::<usize>());
    assert_eq!(count("Device"), d.service_accounts.len());

    // Unique type/id pairs.
    let mut keys: Vec<String> = resources.iter().map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), resources.len());

    // Deterministic: same domain, same resources, whatever the order of its entries.
    assert_eq!(resources, to_fhir_resources(&d));
    let mut shuffled = d.clone();
    shuffled.organisations.reverse();
    shuffled.locations.reverse();
    shuffled.users.reverse();
    shuffled.service_accounts.reverse();
    assert_eq!(serde_json::to_string(&resources).unwrap(), serde_json::to_string(&to_fhir_resources(&shuffled)).unwrap());

    // Parents come before children.
    let position = |t: &str, id: &str| resources.iter().position(|r| r["resourceType"] == t && r["id"] == id).unwrap();
    assert!(position("Organization", "rx1") < position("Organization", "rx1-general"));
    assert!(position("Location", "ward-7a") < position("Location", "ward-7a-bay-1"));

    let find = |t: &str, id: &str| resources[position(t, id)].clone();
    let site = find("Organization", "rx1-general");
    assert_eq!(site["identifier"][0]["system"], "https://fhir.nhs.uk/Id/ods-organization-code");
    assert_eq!(site["identifier"][0]["value"], "RX1AA");
    assert_eq!(site["partOf"]["reference"], "Organization/rx1");
    let bay = find("Location", "ward-7a-bay-1");
    assert_eq!(bay["managingOrganization"]["reference"], "Organization/rx1-general");
    assert_eq!(bay["partOf"]["reference"], "Location/ward-7a");
    assert_eq!(find("Practitioner", "dr.patel")["name"][0]["text"], "Dr Asha Patel");
    let role = find("PractitionerRole", "dr.patel-2");
    assert_eq!(role["practitioner"]["reference"], "Practitioner/dr.patel");
    assert_eq!(role["organization"]["reference"], "Organization/rx1-st-annes");
    assert_eq!(role["location"][0]["reference"], "Location/ward-3b");
    assert_eq!(role["code"][0]["coding"][0]["system"], "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode");
    assert_eq!(role["code"][0]["coding"][0]["code"], "R8000");
    assert_eq!(role["code"][0]["coding"][0]["display"], "Clinical Practitioner Access Role");
    assert_eq!(role["code"][1]["coding"][0]["code"], "doctor");
    assert!(find("PractitionerRole", "research.lee-1").get("location").is_none());
    let device = find("Device", "rx1-interface-engine");
    assert_eq!(device["owner"]["reference"], "Organization/rx1");

    let text = serde_json::to_string(&resources).unwrap();
    assert!(!text.contains("argon2") && !text.contains("demo-doctor"), "no secrets in the resources");
}

#[test]
fn bootstrap_domain() {
    let d = Domain::bootstrap();
    d.validate().unwrap();
    assert_eq!(d.organisations.len(), 1);
    assert_eq!(d.organisations[0].id, "tessera");
    assert_eq!(d.organisations[0].name, "Tessera domain");
    assert_eq!(d.roles, default_roles());
    let admin = d.user("admin").unwrap();
    assert_eq!(admin.password_hash, None, "set by an operator with `tessera user passwd`");
    assert!(admin.active);
    assert_eq!(admin.roles, vec![RoleAssignment { organisation: "tessera".into(), role: "domain-admin".into(), locations: vec![] }]);
    let system = d.service_account("system").unwrap();
    assert_eq!(system.scopes, vec!["system/*.*".to_string()]);
    assert_eq!(system.organisation, d.organisations[0].id);
    assert_eq!(system.secret_hash, None);
    assert_eq!(Domain::bootstrap(), d);
    for r in to_fhir_resources(&d) {
        tessera_fhir::validation::validate(&r, &Default::default()).unwrap();
    }
}

#[test]
fn default_role_catalogue() {
    let roles = default_roles();
    let ids: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    for id in ["receptionist", "nurse", "doctor", "pharmacist", "researcher", "privacy-officer", "domain-admin"] {
        assert!(ids.contains(&id), "{id}");
    }
    for r in &roles {
        assert!(nrbac_display(&r.nrbac_code).is_some(), "{}: {}", r.id, r.nrbac_code);
        assert!(is_valid_fhir_id(&r.id));
        for p in r.permissions.values() {
            assert!(!p.delete || r.id == "domain-admin", "{} deletes", r.id);
        }
    }
    let get = |id: &str| roles.iter().find(|r| r.id == id).unwrap();
    let can = |id: &str, class: DataClass| get(id).permissions.get(&class).copied().unwrap_or_default();
    assert_eq!(get("doctor").nrbac_code, "R8000");
    assert_eq!(get("nurse").nrbac_code, "R8001");
    assert!(get("doctor").may_break_glass && get("nurse").may_break_glass);
    assert!(!get("receptionist").may_break_glass && !get("pharmacist").may_break_glass);
    assert!(can("doctor", DataClass::Clinical).write && can("doctor", DataClass::Psychiatry).read);
    assert!(!can("nurse", DataClass::Demographics).write && can("nurse", DataClass::Demographics).read);
    assert!(!can("receptionist", DataClass::Clinical).read);
    assert!(can("pharmacist", DataClass::Clinical).write && !can("pharmacist", DataClass::Demographics).write);
    assert!(get("researcher").permissions.values().all(|p| !p.read && !p.write));
    let po = get("privacy-officer");
    assert!(!po.needs_relationship && can("privacy-officer", DataClass::Audit).read && !can("privacy-officer", DataClass::Clinical).read);
    assert!(can("domain-admin", DataClass::Configuration).write && !can("domain-admin", DataClass::Clinical).read);

    // The granularity of the care relationship.
    for (id, scope) in [
        ("doctor", RelationshipScope::Site),
        ("pharmacist", RelationshipScope::Site),
        ("receptionist", RelationshipScope::Site),
        ("nurse", RelationshipScope::Location),
        ("student", RelationshipScope::Location),
        ("admin-support", RelationshipScope::Location),
        ("researcher", RelationshipScope::Site),
        ("privacy-officer", RelationshipScope::Site),
        ("domain-admin", RelationshipScope::Site),
    ] {
        assert_eq!(get(id).relationship, scope, "{id}");
    }
    assert_eq!(RelationshipScope::default(), RelationshipScope::Site);
}

/// A role's `relationship`: its default, the two values, a bad value, and a round trip.
#[test]
fn relationship_granularity_in_the_file() {
    let roles = r#"
[[roles]]
id = "doctor"
name = "Doctor"
nrbac_code = "R8000"
may_break_glass = true
permissions = { clinical = "rw" }

[[roles]]
id = "nurse"
name = "Nurse"
nrbac_code = "R8001"
relationship = "location"
permissions = { clinical = "rw" }

[[roles]]
id = "receptionist"
name = "Receptionist"
nrbac_code = "R8009"
relationship = "site"
permissions = { administrative = "rw" }
"#;
    let d = parse_domain_file(&format!("{BASE}{roles}")).unwrap();
    assert_eq!(d.role("doctor").unwrap().relationship, RelationshipScope::Site, "default: site");
    assert_eq!(d.role("nurse").unwrap().relationship, RelationshipScope::Location);
    assert_eq!(d.role("receptionist").unwrap().relationship, RelationshipScope::Site);

    // A bad value names the role and its line, and says what is allowed.
    let text = format!("{BASE}{}", roles.replace("relationship = \"location\"", "relationship = \"ward\""));
    let err = parse_domain_file(&text).unwrap_err();
    let line = text.lines().position(|l| l == "id = \"nurse\"").unwrap(); // 0-based: the [[roles]] line
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].line, Some(line));
    assert_mentions(&err.to_string(), &[&format!("line {line}"), "role `nurse`", "relationship `ward`", "\"site\"", "\"location\""]);
    // Values are lower case, like the file's other keywords.
    let err = refused(&format!("{BASE}{}", roles.replace("relationship = \"location\"", "relationship = \"Location\"")));
    assert_mentions(&err, &["role `nurse`", "relationship `Location`"]);
    // Not a string: a syntax error.
    let text = format!("{BASE}{}", roles.replace("relationship = \"location\"", "relationship = true"));
    let line = text.lines().position(|l| l == "relationship = true").unwrap() + 1;
    assert_mentions(&refused(&text), &[&format!("line {line}, column 16"), "expected a relationship granularity: \"site\" or \"location\""]);
    // Every bad value is reported.
    let bad = roles.replace("relationship = \"location\"", "relationship = \"ward\"").replace("relationship = \"site\"", "relationship = \"trust\"");
    let err = refused(&format!("{BASE}{bad}"));
    assert_mentions(&err, &["2 problems", "role `nurse`: relationship `ward`", "role `receptionist`: relationship `trust`"]);

    // The stored domain (JSON) keeps the setting…
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""relationship":"location""#), "{json}");
    let back: Domain = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
    assert_eq!(back.role("nurse").unwrap().relationship, RelationshipScope::Location);
    let defaults = Domain { roles: default_roles(), ..Domain::default() };
    let back: Domain = serde_json::from_str(&serde_json::to_string(&defaults).unwrap()).unwrap();
    assert_eq!(back.roles, default_roles());
    // …and a role stored without it reads as `site`.
    let mut value = serde_json::to_value(&d).unwrap();
    for role in value["roles"].as_array_mut().unwrap() {
        role.as_object_mut().unwrap().remove("relationship");
    }
    let old: Domain = serde_json::from_value(value).unwrap();
    assert!(old.roles.iter().all(|r| r.relationship == RelationshipScope::Site));
    assert!(serde_json::from_str::<RelationshipScope>("\"ward\"").is_err());

    // Changing the granularity of a built-in role: the file declares the role whole; applied
    // to a domain, it replaces that role and leaves the others.
    let mut d = Domain::bootstrap();
    d.apply_file(BASE).unwrap();
    let mut nurse = d.role("nurse").unwrap().clone();
    assert_eq!(nurse.relationship, RelationshipScope::Location);
    let permissions: Vec<String> = nurse
        .permissions
        .iter()
        .map(|(class, p)| {
            let letters = [(p.read, "r"), (p.write, "w"), (p.delete, "d")].iter().filter(|(on, _)| *on).map(|(_, l)| *l).collect::<String>();
            format!("{} = \"{letters}\"", serde_json::to_value(class).unwrap().as_str().unwrap())
        })
        .collect();
    let fragment = format!(
        "[[roles]]\nid = \"nurse\"\nname = \"Nurse\"\nnrbac_code = \"R8001\"\nmay_break_glass = true\nrelationship = \"site\"\npermissions = {{ {} }}\n",
        permissions.join(", ")
    );
    d.apply_file(&fragment).unwrap();
    nurse.relationship = RelationshipScope::Site;
    assert_eq!(d.role("nurse").unwrap(), &nurse, "only the granularity changed");
    assert_eq!(d.roles.len(), default_roles().len(), "the other roles stay");
    for r in default_roles().iter().filter(|r| r.id != "nurse") {
        assert_eq!(d.role(&r.id).unwrap(), r);
    }
    // A file without [[roles]] applied later carries the built-in catalogue.
    d.apply_file(BASE).unwrap();
    assert_eq!(d.role("nurse").unwrap().relationship, RelationshipScope::Location);

    // The example of docs/access-control.md does the same.
    const DOC: &str = include_str!("../../../docs/access-control.md");
    let section = &DOC[DOC.find("## Relationship granularity").unwrap()..];
    let example = &section[section.find("```toml\n").unwrap() + 8..];
    let example = &example[..example.find("```").unwrap()];
    d.apply_file(example).unwrap_or_else(|e| panic!("the example of docs/access-control.md: {e}"));
    assert_eq!(d.role("nurse").unwrap(), &nurse, "the example changes only the nurses' granularity");
}

#[test]
fn user_management() {
    let mut d = Domain::bootstrap();
    d.apply_file(BASE).unwrap();

    // set_password: random salt, verified, refused when short or for an unknown user.
    d.set_password("admin", "a-good-passphrase").unwrap();
    let first = d.user("admin").unwrap().password_hash.clone().unwrap();
    assert!(verify_secret(&first, "a-good-passphrase"));
    d.set_password("admin", "a-good-passphrase").unwrap();
    assert_ne!(d.user("admin").unwrap().password_hash.clone().unwrap(), first);
    assert!(matches!(d.set_password("admin", "short"), Err(DomainError::Secret(_))));
    assert!(matches!(d.set_password("nobody", "a-good-passphrase"), Err(DomainError::NotFound { kind: "user", .. })));
    d.set_secret("engine", "a-new-long-client-secret").unwrap();
    assert!(verify_secret(d.service_account("engine").unwrap().secret_hash.as_deref().unwrap(), "a-new-long-client-secret"));
    assert!(d.set_secret("engine", "short").is_err());

    // upsert_user: checked; replaces by id, keeping the password hash.
    let nurse = User {
        id: "nurse.jones".into(),
        name: "Rhys Jones".into(),
        password_hash: None,
        roles: vec![RoleAssignment { organisation: "rx1-general".into(), role: "nurse".into(), locations: vec!["ward-7a".into()] }],
        active: true,
    };
    d.upsert_user(nurse.clone()).unwrap();
    d.set_password("nurse.jones", "demo-nurse-1").unwrap();
    d.upsert_user(User { name: "Rhys M. Jones".into(), ..nurse.clone() }).unwrap();
    let jones = d.user("nurse.jones").unwrap();
    assert_eq!(jones.name, "Rhys M. Jones");
    assert!(verify_secret(jones.password_hash.as_deref().unwrap(), "demo-nurse-1"));
    assert_eq!(d.users.iter().filter(|u| u.id == "nurse.jones").count(), 1);
    let err = d.upsert_user(User { id: "bad id".into(), ..nurse.clone() }).unwrap_err();
    assert_mentions(&err.to_string(), &["`bad id` is not a valid id"]);
    let err = d
        .upsert_user(User { id: "x".into(), roles: vec![RoleAssignment { organisation: "rx1".into(), role: "matron".into(), locations: vec![] }], ..nurse.clone() })
        .unwrap_err();
    assert_mentions(&err.to_string(), &["role `matron` is not in the role catalogue"]);
    assert!(d.user("x").is_none());

    // add_role: checked and idempotent; remove_role.
    let ed = RoleAssignment { organisation: "rx1".into(), role: "nurse".into(), locations: vec!["ward-7a".into()] };
    d.add_role("nurse.jones", ed.clone()).unwrap();
    d.add_role("nurse.jones", ed.clone()).unwrap();
    assert_eq!(d.user("nurse.jones").unwrap().roles.len(), 2, "a location of a site is within its trust");
    let err = d.add_role("nurse.jones", RoleAssignment { organisation: "rx2".into(), ..ed.clone() }).unwrap_err();
    assert_mentions(&err.to_string(), &["location `ward-7a` belongs to `rx1-general`, which is not `rx2` nor part of it"]);
    assert!(matches!(d.add_role("nobody", ed.clone()), Err(DomainError::NotFound { .. })));
    assert_eq!(d.remove_role("nurse.jones", "rx1", "nurse").unwrap(), 1);
    assert_eq!(d.user("nurse.jones").unwrap().roles.len(), 1);

    // remove_user.
    let removed = d.remove_user("nurse.jones").unwrap();
    assert_eq!(removed.id, "nurse.jones");
    assert!(d.user("nurse.jones").is_none());
    assert!(matches!(d.remove_user("nurse.jones"), Err(DomainError::NotFound { .. })));
    d.validate().unwrap();
}

#[test]
fn validate_reports_problems_of_a_built_domain() {
    let mut d = Domain::bootstrap();
    d.users[0].roles[0].organisation = "gone".into();
    d.service_accounts[0].scopes.clear();
    d.settings.token_minutes = 0;
    let err = d.validate().unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{err}");
    assert!(problems.iter().all(|p| p.line.is_none()));
    assert_mentions(&err.to_string(), &["3 problems", "settings: token_minutes", "user `admin`, role assignment 1", "service account `system`: has no scopes"]);
}

/// docs/demo-domain.md describes the demo domain: its tables must match the file.
#[test]
fn demo_documentation_matches_the_file() {
    const DOC: &str = include_str!("../../../docs/demo-domain.md");
    let d = demo();
    let cells = |line: &str| -> Vec<String> { line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };
    let unquote = |c: &str| c.trim_matches('`').to_string();

    // Users: login, name, password, role.
    let mut users = 0;
    let mut accounts = 0;
    for line in DOC.lines().filter(|l| l.starts_with("| `")) {
        let c = cells(line);
        if let Some(user) = d.user(&unquote(&c[0])) {
            users += 1;
            assert_eq!(user.name, c[1]);
            assert!(verify_secret(user.password_hash.as_deref().unwrap(), &unquote(&c[2])), "{line}");
            assert!(user.roles.iter().all(|a| a.role == c[3]), "{line}");
            assert!(c[2].starts_with(&format!("`demo-{}-", c[3])), "password pattern: {line}");
        } else if let Some(account) = d.service_account(&unquote(&c[0])) {
            accounts += 1;
            assert_eq!(account.name, c[1]);
            assert!(verify_secret(account.secret_hash.as_deref().unwrap(), &unquote(&c[2])), "{line}");
        }
    }
    assert_eq!(users, d.users.len(), "every user is documented");
    assert_eq!(accounts, d.service_accounts.len(), "every service account is documented");

    // The sharing table.
    let header = DOC.lines().find(|l| l.starts_with("| Owner → viewer")).unwrap();
    let classes: Vec<DataClass> = cells(header)[1..]
        .iter()
        .map(|h| match h.as_str() {
            "Demographics" => DataClass::Demographics,
            "Administrative" => DataClass::Administrative,
            "Clinical" => DataClass::Clinical,
            "Restricted (R)" => DataClass::Restricted,
            "Very restricted (V)" => DataClass::VeryRestricted,
            "Psychiatry" => DataClass::Psychiatry,
            "Substance abuse" => DataClass::SubstanceAbuse,
            "Domestic violence" => DataClass::DomesticViolence,
            "HIV" => DataClass::Hiv,
            "STD" => DataClass::SexuallyTransmitted,
            "Sexuality" => DataClass::Sexuality,
            other => panic!("column {other}"),
        })
        .collect();
    let trust = |name: &str| match name {
        "Northgate" => "rx1",
        "Southbank" => "rx2",
        "Riverside" => "rx3",
        "*" => "*",
        other => panic!("trust {other}"),
    };
    let mut rows = 0;
    for line in DOC.lines().filter(|l| l.starts_with("| Northgate →") || l.starts_with("| Southbank →") || l.starts_with("| Riverside →")) {
        let c = cells(line);
        let (owner, viewer) = c[0].split_once(" → ").unwrap();
        let agreement = d.sharing.iter().find(|a| a.owner == trust(owner) && a.viewer == trust(viewer)).unwrap_or_else(|| panic!("{line}"));
        for (class, cell) in classes.iter().zip(&c[1..]) {
            let dial = match cell.as_str() {
                "shared" => Sharing::Shared,
                "break-glass" => Sharing::BreakGlass,
                "hidden" => Sharing::Hidden,
                other => panic!("dial {other}"),
            };
            assert_eq!(agreement.classes.get(class), Some(&dial), "{line}: {class:?}");
        }
        assert_eq!(agreement.classes.len(), classes.len(), "{line}");
        rows += 1;
    }
    assert_eq!(rows, d.sharing.len());
}

/// The patient index's settings as docs/patient-index.md shows them: read from the file,
/// defaults for what is left out, nonsense refused with the setting named.
#[test]
fn patient_index_settings_in_the_file() {
    let text = format!(
        "{BASE}\n[patient_index]\nupper = 22.5\nlower = 12.0\nname_agree = 0.9\n\
         blocking = [\"nhs-number\", \"family-sound-year\", \"given-sound-birth-date\"]\n\
         nicknames = [[\"william\", \"bill\"], [\"elizabeth\", \"liz\"]]\n\
         family = {{ m = 0.9, u = 0.02 }}\n"
    );
    let d = parse_domain_file(&text).unwrap();
    let c = &d.patient_index;
    assert_eq!((c.upper, c.lower, c.name_agree), (22.5, 12.0, 0.9));
    assert_eq!(c.blocking.len(), 3);
    assert_eq!(c.nicknames.len(), 2);
    assert_eq!((c.family.m, c.family.u), (0.9, 0.02));
    assert_eq!(c.given, tessera_empi::Config::default().given, "the rest keeps its default");
    // The demo file spells out the defaults.
    assert_eq!(demo().patient_index, tessera_empi::Config::default());
    assert_mentions(&refused(&format!("{BASE}\n[patient_index]\nupper = 5.0\nlower = 10.0\n")), &["patient_index", "lower"]);
    assert_mentions(&refused(&format!("{BASE}\n[patient_index]\nphone = {{ m = 1.5, u = 0.1 }}\n")), &["patient_index", "phone"]);
    assert_mentions(&refused(&format!("{BASE}\n[patient_index]\nblocking = []\n")), &["blocking"]);
    assert!(parse_domain_file(&format!("{BASE}\n[patient_index]\nuper = 20.0\n")).is_err(), "a misspelt setting is refused");
    // Each organisation's MRN system: its own, its trust's, or the default.
    let demo = demo();
    assert_eq!(demo.mrn_system("rx2-millbrook"), "https://fhir.rx2.nhs.example/Id/mrn");
    assert_eq!(demo.organisation_of_mrn_system("https://fhir.rx3.nhs.example/Id/mrn").map(|o| o.id.as_str()), Some("rx3"));
    assert_eq!(parse_domain_file(BASE).unwrap().mrn_system("rx1"), "https://tessera.health/Id/mrn/rx1");
}

#[test]
fn interfaces_are_checked() {
    let ok = parse_domain_file(&format!(
        "{BASE}\n[[interfaces]]\nid = \"rx1-pas\"\nname = \"PAS\"\norganisation = \"rx1\"\nlisten = \"127.0.0.1:2575\"\nwards = {{ \"7A\" = \"ward-7a\" }}\nidentifier_systems = {{ RX1 = \"https://example.org/Id/mrn\" }}\n"
    ))
    .unwrap();
    let i = ok.interface("rx1-pas").unwrap();
    assert_eq!(i.wards["7A"], "ward-7a");
    assert_eq!(i.read_timeout_seconds, 300);
    assert!(demo().interface("rx1-pas").is_some_and(|i| i.listen.as_deref() == Some("127.0.0.1:2575")), "the demo's interface");
    let bad = |extra: &str| refused(&format!("{BASE}\n[[interfaces]]\nid = \"feed\"\nname = \"Feed\"\n{extra}\n"));
    assert_mentions(&bad("organisation = \"rx9\""), &["interface `feed`", "organisation `rx9` is not an organisation"]);
    assert_mentions(&bad("organisation = \"rx2\"\nwards = { \"7A\" = \"ward-7a\" }"), &["ward `7A` maps to `ward-7a`, a location of another organisation"]);
    assert_mentions(&bad("organisation = \"rx1\"\nwards = { \"7A\" = \"ward-9z\" }"), &["not a location of the domain"]);
    assert_mentions(&bad("organisation = \"rx1\"\nlisten = \"port 2575\""), &["is not an address and port"]);
    assert_mentions(&bad("organisation = \"rx1\"\ntls_cert = \"/etc/x.crt\""), &["TLS needs both tls_cert and tls_key"]);
    assert_mentions(&bad("organisation = \"rx1\"\nidentifier_systems = { RX1 = \"not a uri\" }"), &["is not a URI"]);
    assert_mentions(&bad("organisation = \"rx1\"\nlisten_on = \"x\""), &["listen_on"]);
}
