//! An in-memory index of people by blocking key: the candidates for a new registration are
//! the people who share a key with it, and only those are scored.

use crate::person::Person;
use crate::score::{default_blocking, keys_of, BlockingKey, Config, Score};
use std::collections::HashMap;

/// People by blocking key. Ids are the order of insertion.
#[derive(Debug)]
pub struct Index {
    people: Vec<Person>,
    blocks: HashMap<String, Vec<u32>>,
    keys: Vec<BlockingKey>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

/// Blocks larger than this are not used to find candidates (a key shared by very many
/// people, such as a common name born in a populous year, tells little and costs much).
pub const MAX_BLOCK: usize = 2_000;

impl Index {
    /// An index blocking on the default keys.
    pub fn new() -> Index {
        Index::with_blocking(default_blocking())
    }

    /// An index blocking on `keys` (the domain's `patientIndex.blocking`).
    pub fn with_blocking(keys: Vec<BlockingKey>) -> Index {
        Index { people: Vec::new(), blocks: HashMap::new(), keys }
    }

    /// Adds a person; returns their id.
    pub fn insert(&mut self, person: Person) -> u32 {
        let id = self.people.len() as u32;
        for key in keys_of(&self.keys, &person) {
            self.blocks.entry(key).or_default().push(id);
        }
        self.people.push(person);
        id
    }

    pub fn len(&self) -> usize {
        self.people.len()
    }

    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&Person> {
        self.people.get(id as usize)
    }

    /// The ids sharing a blocking key with `person`, each once.
    pub fn candidates(&self, person: &Person) -> Vec<u32> {
        let mut out: Vec<u32> = keys_of(&self.keys, person)
            .iter()
            .filter_map(|k| self.blocks.get(k))
            .filter(|b| b.len() <= MAX_BLOCK)
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every candidate scored, best first.
    pub fn search(&self, person: &Person, config: &Config) -> Vec<(u32, Score)> {
        let mut scored: Vec<(u32, Score)> = self.candidates(person).into_iter().map(|id| (id, config.score(person, &self.people[id as usize]))).collect();
        scored.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
        scored
    }
}
