//! `tessera bench empi`: the patient index's matching quality on a labelled evaluation set
//! built from real records (precision, recall, F1, false links), and its speed with a large
//! index (build time, memory, time per registration match).

use crate::files;
use std::path::PathBuf;
use std::time::Instant;
use tessera_empi::eval::{self, Corruption, Rng};
use tessera_empi::{Config, Index, Person};

/// What to run.
#[derive(Debug, Clone)]
pub struct EmpiOptions {
    /// Bundle files or folders holding the original Patients (Synthea).
    pub paths: Vec<PathBuf>,
    /// Synthetic people around the originals in the quality evaluation.
    pub background: usize,
    /// Corrupted copies registered per original.
    pub copies: usize,
    /// People in the index for the speed run (0: none).
    pub population: usize,
    /// Registrations timed in the speed run.
    pub queries: usize,
    pub seed: u64,
}

/// The results.
#[derive(Debug, Clone)]
pub struct EmpiReport {
    pub quality: eval::Report,
    pub population: usize,
    pub build_seconds: f64,
    pub index_mib: f64,
    pub match_ms: (f64, f64, f64, f64),
    pub candidates_mean: f64,
}

/// The Patients of the bundles (entries whose resource is a Patient).
fn patients(paths: &[PathBuf]) -> anyhow::Result<Vec<Person>> {
    let mut out = Vec::new();
    for bundle in files::read_all(&files::discover(paths)?)? {
        let v: serde_json::Value = serde_json::from_slice(&bundle.body)?;
        for e in v["entry"].as_array().into_iter().flatten() {
            if e["resource"]["resourceType"] == "Patient" {
                out.push(Person::from_patient(&e["resource"]));
            }
        }
    }
    Ok(out)
}

fn rss_mib() -> f64 {
    crate::soak::rss_kib(std::process::id()).unwrap_or(0) as f64 / 1024.0
}

pub fn run(options: &EmpiOptions) -> anyhow::Result<EmpiReport> {
    let config = Config::default();
    let originals = patients(&options.paths)?;
    anyhow::ensure!(!originals.is_empty(), "no Patient resources found in the given files");
    let quality = eval::evaluate(&originals, options.background, options.copies, &config, options.seed);
    let mut report = EmpiReport { quality, population: options.population, build_seconds: 0.0, index_mib: 0.0, match_ms: (0.0, 0.0, 0.0, 0.0), candidates_mean: 0.0 };
    if options.population == 0 {
        return Ok(report);
    }
    let mut rng = Rng::new(options.seed ^ 0x5eed);
    let before = rss_mib();
    let started = Instant::now();
    let mut index = Index::new();
    for _ in 0..options.population {
        index.insert(eval::synthetic(&mut rng));
    }
    report.build_seconds = started.elapsed().as_secs_f64();
    report.index_mib = rss_mib() - before;
    // Registrations: half copies of indexed people (with a corruption), half strangers.
    let mut times = Vec::with_capacity(options.queries);
    let mut candidates = 0usize;
    let kinds = [Corruption::FamilyTypo, Corruption::GivenTypo, Corruption::Transposed, Corruption::NoNhsNumber, Corruption::Moved];
    for i in 0..options.queries {
        let q = if i % 2 == 0 {
            let p = index.get(rng.below(index.len()) as u32).expect("indexed").clone();
            let kind = *rng.pick(&kinds);
            eval::corrupt(&mut rng, &p, kind, &config)
        } else {
            eval::synthetic(&mut rng)
        };
        let t = Instant::now();
        let scored = index.search(&q, &config);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        candidates += scored.len();
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    report.match_ms = (at(0.5), at(0.95), at(0.99), *times.last().unwrap_or(&0.0));
    report.candidates_mean = candidates as f64 / options.queries.max(1) as f64;
    Ok(report)
}

impl std::fmt::Display for EmpiReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = &self.quality;
        writeln!(f, "quality: {} originals among {} synthetic people; {} copies to link, {} twins and strangers not to", q.originals, q.background, q.matches, q.non_matches)?;
        writeln!(f, "  linked right {}, linked wrong {}, not linked {} (to review {})", q.true_links, q.false_links, q.missed, q.to_review)?;
        writeln!(f, "  precision {:.4}  recall {:.4}  F1 {:.4}", q.precision, q.recall, q.f1)?;
        writeln!(
            f,
            "  false links: {} of {} non-matching pairs scored ({:.5} %), {:.4} % of registrations",
            q.false_links,
            q.non_match_pairs,
            q.false_link_rate * 100.0,
            q.false_links_per_registration * 100.0
        )?;
        for (kinds, n) in q.missed_by_corruption.iter().take(8) {
            writeln!(f, "  not linked: {n:>4} with {kinds}")?;
        }
        if self.population > 0 {
            writeln!(f, "speed: {} people indexed in {:.1} s, {:.0} MiB", self.population, self.build_seconds, self.index_mib)?;
            let (p50, p95, p99, max) = self.match_ms;
            write!(f, "  registration match: p50 {p50:.3} ms  p95 {p95:.3} ms  p99 {p99:.3} ms  max {max:.3} ms; {:.0} candidates scored on average", self.candidates_mean)?;
        }
        Ok(())
    }
}
