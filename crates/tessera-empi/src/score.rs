//! Fellegi–Sunter scoring of two people, field by field, and the decision it leads to.
//!
//! Each field compares to a level — agree, partly agree, disagree, or missing on one side —
//! and contributes a weight in bits: `log2(m / u)` when it agrees and
//! `log2((1 − m) / (1 − u))` when it disagrees, where `m` is the chance that the field
//! agrees for two records of the same person and `u` the chance that it agrees for two
//! different people; a partial agreement earns a fraction of the agreement weight; a
//! missing value earns nothing. The score is the sum; above [`Config::upper`] the records
//! are linked, between [`Config::lower`] and the upper threshold they go to review, below
//! they are different people.

use crate::person::{Birth, Person};
use crate::text;
use serde::{Deserialize, Serialize};

/// The `m` and `u` probabilities of one field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub m: f64,
    pub u: f64,
}

impl Field {
    pub fn agree(&self) -> f64 {
        (self.m / self.u).log2()
    }
    pub fn disagree(&self) -> f64 {
        ((1.0 - self.m) / (1.0 - self.u)).log2()
    }
}

/// The matcher's settings (the domain file's `[patient_index]` section); every value has a
/// documented default ([`Config::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nhs_number: Field,
    pub family: Field,
    pub given: Field,
    pub birth_date: Field,
    pub sex: Field,
    pub postcode: Field,
    pub address: Field,
    pub phone: Field,
    /// At or above: the same person (link).
    pub upper: f64,
    /// At or above, and below `upper`: perhaps the same person (review).
    pub lower: f64,
    /// Jaro–Winkler similarity at which two names agree (a typo).
    pub name_agree: f64,
    /// Groups of names that are the same given name (`William`, `Bill`, `Will`, `Liam`).
    pub nicknames: Vec<Vec<String>>,
    /// Which records are compared at all: candidates share at least one of these keys.
    pub blocking: Vec<BlockingKey>,
}

/// A blocking key: records that share one are compared (see [`Config::blocking_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockingKey {
    /// The NHS number.
    NhsNumber,
    /// The NYSIIS code of each family name (and each part of a double name) with the year
    /// of birth.
    FamilySoundYear,
    /// The full date of birth (day and month in either order) with the first letter of the
    /// first given name.
    BirthDateInitial,
    /// The full date of birth (day and month in either order) alone.
    BirthDate,
    /// Each postcode with the first letter of the first given name.
    PostcodeInitial,
    /// The NYSIIS code of the first given name with the full date of birth.
    GivenSoundBirthDate,
}

/// The default blocking keys.
pub fn default_blocking() -> Vec<BlockingKey> {
    use BlockingKey::*;
    vec![NhsNumber, FamilySoundYear, BirthDateInitial, BirthDate, PostcodeInitial]
}

impl Default for Config {
    fn default() -> Self {
        let f = |m, u| Field { m, u };
        Config {
            nhs_number: f(0.98, 0.000_001),
            family: f(0.92, 0.01),
            given: f(0.93, 0.01),
            birth_date: f(0.97, 0.000_05),
            sex: f(0.98, 0.5),
            postcode: f(0.80, 0.001),
            address: f(0.75, 0.001),
            phone: f(0.60, 0.0001),
            upper: 20.0,
            lower: 10.0,
            name_agree: 0.92,
            nicknames: default_nicknames(),
            blocking: default_blocking(),
        }
    }
}

/// A starter table of English given-name variants.
pub fn default_nicknames() -> Vec<Vec<String>> {
    [
        "william bill billy will willy liam",
        "robert bob bobby rob robbie bert",
        "richard rick ricky dick rich richie",
        "elizabeth liz lizzie beth betty eliza libby",
        "margaret maggie meg peggy madge greta",
        "catherine kate katie cathy kathryn katherine kath",
        "james jim jimmy jamie",
        "john jack johnny jon",
        "michael mike mick mikey",
        "thomas tom tommy",
        "joseph joe joey",
        "edward ed eddie ted teddy ned",
        "alexander alex sandy alec",
        "anthony tony",
        "christopher chris kit",
        "daniel dan danny",
        "david dave davy",
        "jennifer jen jenny",
        "susan sue susie suzanne",
        "rebecca becky becca",
        "patricia pat patty trish",
        "deborah debbie deb",
        "victoria vicky tori",
        "samuel sam sammy",
        "benjamin ben benny",
        "matthew matt",
        "nicholas nick nicky",
        "stephen steve steven stevie",
        "andrew andy drew",
        "charles charlie chuck chas",
        "henry harry hal",
        "frederick fred freddie",
        "alfred alf alfie",
        "abigail abby gail",
        "eleanor ellie nell nora",
        "helen nell ellen",
    ]
    .iter()
    .map(|g| g.split(' ').map(str::to_string).collect())
    .collect()
}

/// How one field compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Agree,
    /// A fraction (0–1) of the agreement weight: a typo, a nickname, swapped or transposed.
    Partial(f64),
    Disagree,
    Missing,
}

/// One field's comparison and weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldScore {
    pub field: &'static str,
    pub level: Level,
    pub weight: f64,
    /// How it compared, in words (`"nickname"`, `"day and month transposed"`).
    pub note: &'static str,
}

/// The matcher's verdict on a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// The same person: link.
    Link,
    /// Perhaps: for a person to review.
    Review,
    /// Different people.
    Distinct,
}

/// A pair's score, field by field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub total: f64,
    pub fields: Vec<FieldScore>,
    pub decision: Decision,
}

fn weight(field: &Field, level: Level) -> f64 {
    match level {
        Level::Agree => field.agree(),
        Level::Partial(f) => field.agree() * f,
        Level::Disagree => field.disagree(),
        Level::Missing => 0.0,
    }
}

impl Config {
    fn nickname(&self, a: &str, b: &str) -> bool {
        self.nicknames.iter().any(|g| g.iter().any(|n| n == a) && g.iter().any(|n| n == b))
    }

    /// Two names: equal, a typo (Jaro–Winkler), the same sound (NYSIIS), a nickname.
    fn name_level(&self, a: &str, b: &str, nicknames: bool) -> (Level, &'static str) {
        let (x, y) = (text::name(a), text::name(b));
        if x.is_empty() || y.is_empty() {
            return (Level::Missing, "");
        }
        if x == y {
            return (Level::Agree, "equal");
        }
        if nicknames && self.nickname(&x, &y) {
            return (Level::Partial(0.9), "nickname");
        }
        if strsim::jaro_winkler(&x, &y) >= self.name_agree {
            return (Level::Partial(0.8), "spelling");
        }
        if x.len().min(y.len()) >= 3 && strsim::damerau_levenshtein(&x, &y) <= 1 {
            return (Level::Partial(0.75), "one letter differs");
        }
        if text::nysiis(&x) == text::nysiis(&y) {
            return (Level::Partial(0.7), "sounds alike");
        }
        (Level::Disagree, "different")
    }

    /// The best level over every pair of names (parts of hyphenated or double names too).
    fn best_name(&self, a: &[String], b: &[String], nicknames: bool) -> (Level, &'static str) {
        let mut best = (Level::Missing, "");
        // Each side's parts once (normalising is the costly part of a comparison).
        let ys: Vec<String> = b.iter().flat_map(|n| text::name_parts(n)).collect();
        for x in a.iter().flat_map(|n| text::name_parts(n)) {
            for y in &ys {
                let l = self.name_level(&x, y, nicknames);
                if rank(l.0) > rank(best.0) {
                    best = l;
                }
            }
        }
        best
    }

    /// Compares two people and decides.
    pub fn score(&self, a: &Person, b: &Person) -> Score {
        let mut fields = Vec::new();
        let mut push = |field: &'static str, f: &Field, (level, note): (Level, &'static str)| {
            fields.push(FieldScore { field, level, weight: weight(f, level), note });
        };
        // NHS number: both valid and equal, or both valid and different.
        let nhs = match (&a.nhs_number, &b.nhs_number) {
            (Some(x), Some(y)) if x == y => (Level::Agree, "equal"),
            (Some(_), Some(_)) => (Level::Disagree, "different"),
            _ => (Level::Missing, ""),
        };
        push("nhs-number", &self.nhs_number, nhs);
        // Names, and names swapped between given and family.
        let mut family = self.best_name(&a.family, &b.family, false);
        let mut given = self.best_name(&a.given[..a.given.len().min(1)], &b.given[..b.given.len().min(1)], true);
        if given.0 == Level::Disagree {
            // A middle name used as the first, or an initial.
            let any = self.best_name(&a.given, &b.given, true);
            if rank(any.0) > rank(given.0) {
                given = (if let Level::Partial(f) = any.0 { Level::Partial(f * 0.8) } else { Level::Partial(0.7) }, "another given name");
            } else if initial(&a.given).is_some() && initial(&a.given) == initial(&b.given) && (a.given[0].len() == 1 || b.given[0].len() == 1) {
                given = (Level::Partial(0.3), "initial");
            }
        }
        if family.0 == Level::Disagree && given.0 == Level::Disagree {
            let fg = self.best_name(&a.family, &b.given, true);
            let gf = self.best_name(&a.given, &b.family, false);
            if rank(fg.0) >= rank(Level::Partial(0.7)) && rank(gf.0) >= rank(Level::Partial(0.7)) {
                family = (Level::Partial(0.8), "swapped with the given name");
                given = (Level::Partial(0.8), "swapped with the family name");
            }
        }
        push("family", &self.family, family);
        push("given", &self.given, given);
        push("birth-date", &self.birth_date, birth_level(a.birth, b.birth));
        let sex = match (a.sex.as_deref(), b.sex.as_deref()) {
            (Some(x), Some(y)) if x == "unknown" || y == "unknown" => (Level::Missing, ""),
            (Some(x), Some(y)) if x == y => (Level::Agree, "equal"),
            (Some(_), Some(_)) => (Level::Disagree, "different"),
            _ => (Level::Missing, ""),
        };
        push("sex", &self.sex, sex);
        let postcode = if a.postcodes.is_empty() || b.postcodes.is_empty() {
            (Level::Missing, "")
        } else if a.postcodes.iter().any(|x| b.postcodes.contains(x)) {
            (Level::Agree, "equal")
        } else if a.postcodes.iter().any(|x| b.postcodes.iter().any(|y| text::outward(x) == text::outward(y))) {
            (Level::Partial(0.3), "same district")
        } else {
            (Level::Disagree, "different")
        };
        push("postcode", &self.postcode, postcode);
        let address = if a.address_lines.is_empty() || b.address_lines.is_empty() || postcode.0 == Level::Disagree {
            // A move shows in the postcode already: the address line is the same fact.
            (Level::Missing, "")
        } else if a.address_lines.iter().any(|x| b.address_lines.iter().any(|y| strsim::jaro_winkler(&x.to_lowercase(), &y.to_lowercase()) >= 0.9)) {
            (Level::Agree, "equal")
        } else {
            (Level::Disagree, "different")
        };
        push("address", &self.address, address);
        let phone = if a.phones.is_empty() || b.phones.is_empty() {
            (Level::Missing, "")
        } else if a.phones.iter().any(|x| b.phones.contains(x)) {
            (Level::Agree, "equal")
        } else {
            (Level::Disagree, "different")
        };
        push("phone", &self.phone, phone);
        let total: f64 = fields.iter().map(|f| f.weight).sum();
        let mut decision = if total >= self.upper {
            Decision::Link
        } else if total >= self.lower {
            Decision::Review
        } else {
            Decision::Distinct
        };
        // Twins (same family, birth date and address, different given names, no shared NHS
        // number) and records whose NHS numbers differ are never linked on the other
        // fields' weight alone.
        let given_level = fields.iter().find(|f| f.field == "given").map(|f| f.level);
        if decision == Decision::Link && ((given_level == Some(Level::Disagree) && nhs.0 != Level::Agree) || nhs.0 == Level::Disagree) {
            decision = Decision::Review;
        }
        // Without a name to compare on either side (or an agreeing NHS number), a shared
        // date of birth and sex say too little about a person even to ask a reviewer.
        let family_level = fields.iter().find(|f| f.field == "family").map(|f| f.level);
        if nhs.0 != Level::Agree && family_level == Some(Level::Missing) && given_level == Some(Level::Missing) {
            decision = Decision::Distinct;
        }
        Score { total, fields, decision }
    }
}

fn initial(given: &[String]) -> Option<char> {
    given.first().and_then(|g| text::name(g).chars().next())
}

/// Orders levels from missing (nothing to compare) through disagree to agree.
fn rank(l: Level) -> u8 {
    match l {
        Level::Agree => 6,
        Level::Partial(f) if f >= 0.85 => 5,
        Level::Partial(f) if f >= 0.75 => 4,
        Level::Partial(f) if f >= 0.5 => 3,
        Level::Partial(_) => 2,
        Level::Disagree => 1,
        Level::Missing => 0,
    }
}

/// Birth dates: equal; day and month transposed; one part mistyped; or different.
fn birth_level(a: Option<Birth>, b: Option<Birth>) -> (Level, &'static str) {
    let (Some(a), Some(b)) = (a, b) else { return (Level::Missing, "") };
    if a == b {
        return (Level::Agree, "equal");
    }
    let (Some(am), Some(ad), Some(bm), Some(bd)) = (a.month, a.day, b.month, b.day) else {
        return if a.year == b.year { (Level::Partial(0.3), "same year") } else { (Level::Disagree, "different") };
    };
    if a.year == b.year && am == bd && ad == bm {
        return (Level::Partial(0.7), "day and month transposed");
    }
    let same = [a.year == b.year, am == bm, ad == bd].iter().filter(|x| **x).count();
    if same == 2 {
        return (Level::Partial(0.5), "one part differs");
    }
    (Level::Disagree, "different")
}

/// The blocking keys of a person under the default configuration.
pub fn blocking_keys(p: &Person) -> Vec<String> {
    keys_of(&default_blocking(), p)
}

impl Config {
    /// The blocking keys of a person: candidates for comparison share at least one.
    pub fn blocking_keys(&self, p: &Person) -> Vec<String> {
        keys_of(&self.blocking, p)
    }
}

pub(crate) fn keys_of(kinds: &[BlockingKey], p: &Person) -> Vec<String> {
    let mut keys = Vec::new();
    let first = initial(&p.given).map(String::from).unwrap_or_default();
    // Day and month in order, so that a transposition meets the original.
    let full = p.birth.and_then(|b| Some((b.year, b.month?, b.day?))).map(|(y, m, d)| format!("{y}-{}-{}", m.min(d), m.max(d)));
    for kind in kinds {
        match kind {
            BlockingKey::NhsNumber => {
                if let Some(n) = &p.nhs_number {
                    keys.push(format!("nhs:{}", n.as_str()));
                }
            }
            BlockingKey::FamilySoundYear => {
                if let Some(b) = p.birth {
                    for f in p.family.iter().flat_map(|f| text::name_parts(f)) {
                        keys.push(format!("fy:{}:{}", text::nysiis(&f), b.year));
                    }
                }
            }
            BlockingKey::BirthDateInitial => {
                if let Some(d) = &full {
                    keys.push(format!("dob:{d}:{first}"));
                }
            }
            BlockingKey::BirthDate => {
                if let Some(d) = &full {
                    keys.push(format!("dob:{d}"));
                }
            }
            BlockingKey::PostcodeInitial => {
                for pc in &p.postcodes {
                    keys.push(format!("pc:{pc}:{first}"));
                }
            }
            BlockingKey::GivenSoundBirthDate => {
                if let (Some(g), Some(d)) = (p.given.first(), &full) {
                    keys.push(format!("gd:{}:{d}", text::nysiis(&text::name(g))));
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}
