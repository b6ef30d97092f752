//! A labelled evaluation of the matcher: each original person is registered again as
//! corrupted copies (typos, nicknames, swapped names, transposed day and month, a missing
//! NHS number, a new address, a married name), which should link to the original; twins
//! and strangers are registered too, which should not link. The originals sit in an index
//! among a synthetic background population, so that false links have somewhere to go.

use crate::nhs::{check_digit, NhsNumber};
use crate::person::{Birth, Person};
use crate::score::{Config, Decision};
use crate::index::Index;
use serde::Serialize;

/// A small deterministic random source (SplitMix64): the same seed, the same data set.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts",
    "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel", "Khan", "Lewis", "James", "Phillips", "Mason", "Mitchell", "Rose", "Davis", "Rodriguez", "Cox",
    "Alexander", "Morgan", "Moore", "Martin", "Price", "Bell", "Baker", "Ali", "Hussain", "Begum", "Ahmed", "Shah", "Singh", "Kaur", "Okafor", "Adeyemi",
    "Nowak", "Kowalski", "Murphy", "Kelly", "O'Brien", "Byrne", "Ryan", "Walsh", "Campbell", "Stewart", "Anderson", "Scott", "Murray", "MacDonald", "Reid",
    "Young", "King", "Harris", "Clark", "Lee", "Turner", "Hill", "Cooper", "Ward", "Morris", "Moore", "Harrison", "Hughes", "Edwards", "Collins", "Bennett",
    "Cook", "Shaw", "Lloyd", "Chapman", "Ellis", "Hunt", "Palmer", "Griffiths", "Richards", "Fox", "Grant", "Marshall", "Owen", "Knight", "Hunter", "Mills",
    "Gray", "Russell", "Barker", "Lawrence", "Chen", "Wang", "Nguyen", "Silva", "Santos", "Costa", "Rossi", "Mueller", "Schmidt", "Novak", "Popescu", "Ivanov",
];
const GIVEN_F: &[&str] = &[
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Emily", "Grace", "Sophia", "Lily", "Freya", "Margaret", "Elizabeth", "Susan", "Patricia", "Jennifer",
    "Catherine", "Rebecca", "Victoria", "Deborah", "Abigail", "Eleanor", "Helen", "Fatima", "Aisha", "Priya", "Ngozi", "Zofia", "Maria", "Anna", "Chloe",
    "Jessica", "Sarah", "Laura", "Emma", "Hannah", "Charlotte", "Lucy", "Ruby", "Poppy", "Evie", "Jade", "Leah", "Megan", "Holly", "Amy", "Joanne", "Karen",
];
const GIVEN_M: &[&str] = &[
    "Oliver", "George", "Harry", "Noah", "Jack", "Leo", "Arthur", "Muhammad", "Oscar", "Charlie", "William", "Robert", "Richard", "James", "John",
    "Michael", "Thomas", "Joseph", "Edward", "Alexander", "Anthony", "Christopher", "Daniel", "David", "Samuel", "Benjamin", "Matthew", "Nicholas",
    "Stephen", "Andrew", "Henry", "Frederick", "Alfred", "Ahmed", "Raj", "Chidi", "Piotr", "Jan", "Liam", "Ethan", "Jacob", "Lewis", "Ryan", "Adam",
];
const STREETS: &[&str] = &["High Street", "Station Road", "Church Lane", "Mill Lane", "Park Road", "Victoria Road", "Green Lane", "Manor Road", "Kings Road", "Queens Road"];
const AREAS: &[&str] = &["LS", "M", "B", "L", "S", "NE", "SW", "SE", "N", "E", "W", "EX", "BS", "CF", "G", "EH", "NG", "LE", "CV", "OX"];

fn nhs_number(rng: &mut Rng) -> NhsNumber {
    loop {
        let mut first = [0u8; 9];
        for d in &mut first {
            *d = rng.below(10) as u8;
        }
        if let Some(c) = check_digit(&first) {
            let text: String = first.iter().chain(std::iter::once(&c)).map(|d| char::from(b'0' + d)).collect();
            return NhsNumber::parse(&text).expect("valid by construction");
        }
    }
}

fn postcode(rng: &mut Rng) -> String {
    let letters = b"ABDEFGHJLNPQRSTUWXYZ";
    format!(
        "{}{}{}{}{}",
        rng.pick(AREAS),
        1 + rng.below(30),
        rng.below(10),
        char::from(*rng.pick(letters)),
        char::from(*rng.pick(letters))
    )
}

fn address(rng: &mut Rng) -> (String, String, String) {
    let line = format!("{} {}", 1 + rng.below(200), rng.pick(STREETS));
    let phone = format!("07{:09}", rng.next_u64() % 1_000_000_000);
    (line, postcode(rng), phone)
}

/// A synthetic person (for the background population and strangers).
pub fn synthetic(rng: &mut Rng) -> Person {
    let female = rng.chance(0.5);
    let given = if female { rng.pick(GIVEN_F) } else { rng.pick(GIVEN_M) };
    let (line, pc, phone) = address(rng);
    Person {
        nhs_number: rng.chance(0.9).then(|| nhs_number(rng)),
        family: vec![rng.pick(FAMILY).to_string()],
        given: vec![given.to_string()],
        birth: Some(Birth { year: 1930 + rng.below(90) as i32, month: Some(1 + rng.below(12) as u8), day: Some(1 + rng.below(28) as u8) }),
        sex: Some(if female { "female" } else { "male" }.to_string()),
        postcodes: vec![pc],
        address_lines: vec![line],
        phones: vec![phone],
    }
}

fn typo(rng: &mut Rng, s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.len() < 3 {
        return s.to_string();
    }
    let i = 1 + rng.below(c.len() - 2);
    match rng.below(3) {
        0 => c.swap(i, i + 1),
        1 => {
            c.remove(i);
        }
        _ => c[i] = char::from(b'a' + rng.below(26) as u8),
    }
    c.into_iter().collect()
}

/// The kinds of corruption applied to the copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Corruption {
    FamilyTypo,
    GivenTypo,
    Nickname,
    Swapped,
    Transposed,
    NoNhsNumber,
    Moved,
    MarriedName,
}

const ALL: [Corruption; 8] = [
    Corruption::FamilyTypo,
    Corruption::GivenTypo,
    Corruption::Nickname,
    Corruption::Swapped,
    Corruption::Transposed,
    Corruption::NoNhsNumber,
    Corruption::Moved,
    Corruption::MarriedName,
];

/// Applies `kind` to a copy of `p` (a kind that does not apply changes nothing).
pub fn corrupt(rng: &mut Rng, p: &Person, kind: Corruption, config: &Config) -> Person {
    let mut q = p.clone();
    match kind {
        Corruption::FamilyTypo => q.family = q.family.iter().map(|f| typo(rng, f)).collect(),
        Corruption::GivenTypo => q.given = q.given.iter().take(1).map(|g| typo(rng, g)).collect(),
        Corruption::Nickname => {
            let first = q.given.first().map(|g| crate::text::name(g)).unwrap_or_default();
            if let Some(group) = config.nicknames.iter().find(|g| g.contains(&first)) {
                let other: Vec<&String> = group.iter().filter(|n| **n != first).collect();
                if !other.is_empty() {
                    q.given = vec![rng.pick(&other).to_string()];
                }
            }
        }
        Corruption::Swapped => std::mem::swap(&mut q.family, &mut q.given),
        Corruption::Transposed => {
            if let Some(b) = &mut q.birth {
                if let (Some(m), Some(d)) = (b.month, b.day) {
                    if d <= 12 {
                        b.month = Some(d);
                        b.day = Some(m);
                    }
                }
            }
        }
        Corruption::NoNhsNumber => q.nhs_number = None,
        Corruption::Moved => {
            let (line, pc, phone) = address(rng);
            q.address_lines = vec![line];
            q.postcodes = vec![pc];
            q.phones = vec![phone];
        }
        Corruption::MarriedName => {
            if q.sex.as_deref() == Some("female") {
                q.family = vec![rng.pick(FAMILY).to_string()];
            }
        }
    }
    q
}

/// What an evaluation found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub originals: usize,
    pub background: usize,
    /// Copies that should link to their original.
    pub matches: usize,
    /// Twins and strangers, which should link to no one.
    pub non_matches: usize,
    pub true_links: usize,
    pub false_links: usize,
    /// Copies not linked (to review or new).
    pub missed: usize,
    /// Copies sent to review (included in `missed`).
    pub to_review: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Pairs scored that are not the same person (every candidate but the true original).
    pub non_match_pairs: usize,
    /// False links as a fraction of the non-matching pairs scored.
    pub false_link_rate: f64,
    /// Registrations (copies, twins, strangers) that linked to the wrong person, as a
    /// fraction of all registrations.
    pub false_links_per_registration: f64,
    /// Missed copies by the corruptions they carried.
    pub missed_by_corruption: Vec<(String, usize)>,
}

/// Evaluates `config` on `originals` (real records, each given an NHS number when it has
/// none), placed among `background` synthetic people.
pub fn evaluate(originals: &[Person], background: usize, copies_per_original: usize, config: &Config, seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let mut index = Index::new();
    for _ in 0..background {
        index.insert(synthetic(&mut rng));
    }
    let mut ids = Vec::new();
    let mut people = Vec::new();
    for o in originals {
        let mut o = o.clone();
        if o.nhs_number.is_none() {
            o.nhs_number = Some(nhs_number(&mut rng));
        }
        ids.push(index.insert(o.clone()));
        people.push(o);
    }
    let mut report = Report { originals: originals.len(), background, ..Default::default() };
    let mut missed: std::collections::BTreeMap<String, usize> = Default::default();
    let mut non_match_pairs = 0usize;
    let mut best = |q: &Person, truth: Option<u32>| {
        let scored = index.search(q, config);
        non_match_pairs += scored.iter().filter(|(id, _)| Some(*id) != truth).count();
        scored.into_iter().next()
    };
    for (o, id) in people.iter().zip(&ids) {
        for _ in 0..copies_per_original {
            // One to three corruptions; the NHS number is dropped in half the copies.
            let mut kinds: Vec<Corruption> = (0..1 + rng.below(3)).map(|_| *rng.pick(&ALL)).collect();
            if rng.chance(0.5) {
                kinds.push(Corruption::NoNhsNumber);
            }
            kinds.sort_by_key(|k| *k as u8);
            kinds.dedup();
            let mut q = o.clone();
            for k in &kinds {
                q = corrupt(&mut rng, &q, *k, config);
            }
            report.matches += 1;
            match best(&q, Some(*id)) {
                Some((got, s)) if s.decision == Decision::Link && got == *id => report.true_links += 1,
                Some((_, s)) if s.decision == Decision::Link => {
                    report.false_links += 1;
                    report.missed += 1;
                }
                other => {
                    report.missed += 1;
                    if other.is_some_and(|(_, s)| s.decision == Decision::Review) {
                        report.to_review += 1;
                    }
                    let label = kinds.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join("+");
                    *missed.entry(label).or_default() += 1;
                }
            }
        }
        // A twin: same family name, birth date, address and phone; another given name and
        // NHS number.
        let mut twin = o.clone();
        twin.nhs_number = Some(nhs_number(&mut rng));
        let pool = if o.sex.as_deref() == Some("female") { GIVEN_F } else { GIVEN_M };
        let first = o.given.first().map(|g| crate::text::name(g)).unwrap_or_default();
        let names: Vec<&&str> = pool.iter().filter(|n| crate::text::name(n) != first && !config.nicknames.iter().any(|g| g.contains(&first) && g.contains(&crate::text::name(n)))).collect();
        twin.given = vec![rng.pick(&names).to_string()];
        if rng.chance(0.5) {
            twin.nhs_number = None;
        }
        // And a stranger.
        for q in [twin, synthetic(&mut rng)] {
            report.non_matches += 1;
            if best(&q, None).is_some_and(|(_, s)| s.decision == Decision::Link) {
                report.false_links += 1;
            }
        }
    }
    let tp = report.true_links as f64;
    report.precision = if report.true_links + report.false_links == 0 { 1.0 } else { tp / (report.true_links + report.false_links) as f64 };
    report.recall = if report.matches == 0 { 1.0 } else { tp / report.matches as f64 };
    report.f1 = if report.precision + report.recall == 0.0 { 0.0 } else { 2.0 * report.precision * report.recall / (report.precision + report.recall) };
    report.non_match_pairs = non_match_pairs;
    report.false_link_rate = if non_match_pairs == 0 { 0.0 } else { report.false_links as f64 / non_match_pairs as f64 };
    report.false_links_per_registration = report.false_links as f64 / (report.matches + report.non_matches).max(1) as f64;
    let mut by: Vec<(String, usize)> = missed.into_iter().collect();
    by.sort_by_key(|b| std::cmp::Reverse(b.1));
    report.missed_by_corruption = by;
    report
}
