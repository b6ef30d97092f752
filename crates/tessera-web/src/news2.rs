//! The National Early Warning Score 2 (NEWS2), as published by the Royal
//! College of Physicians in December 2017.
//!
//! [`score`] turns a set of bedside observations ([`Vitals`]) into the
//! aggregate score, the score of each parameter, the clinical risk category
//! and the list of parameters that were not recorded. [`check`] refuses values
//! that are not physiologically plausible, so that typing errors are caught at
//! entry rather than scored.
//!
//! Values that fall between the printed bands are normalised before scoring so
//! that every input lands in exactly one band: respiration rate, SpO2,
//! systolic blood pressure and pulse are rounded to the nearest whole number
//! (halves away from zero) and temperature to one decimal place. A value that
//! is not finite (NaN or an infinity) is treated as not recorded.
//!
//! This module is pure: no I/O, no allocation beyond the returned values, and
//! it never panics.

/// Level of consciousness on the ACVPU scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consciousness {
    /// A: alert.
    Alert,
    /// C: new confusion (or new disorientation or agitation).
    NewConfusion,
    /// V: responds to voice.
    Voice,
    /// P: responds to pain.
    Pain,
    /// U: unresponsive.
    Unresponsive,
}

impl Consciousness {
    /// Parses a one-letter ACVPU code (`"A"`, `"C"`, `"V"`, `"P"`, `"U"`),
    /// ignoring case and surrounding white space.
    pub fn parse(code: &str) -> Option<Consciousness> {
        match code.trim() {
            "A" | "a" => Some(Consciousness::Alert),
            "C" | "c" => Some(Consciousness::NewConfusion),
            "V" | "v" => Some(Consciousness::Voice),
            "P" | "p" => Some(Consciousness::Pain),
            "U" | "u" => Some(Consciousness::Unresponsive),
            _ => None,
        }
    }

    /// A human-readable label, e.g. `"New confusion"`.
    pub fn label(self) -> &'static str {
        match self {
            Consciousness::Alert => "Alert",
            Consciousness::NewConfusion => "New confusion",
            Consciousness::Voice => "Voice",
            Consciousness::Pain => "Pain",
            Consciousness::Unresponsive => "Unresponsive",
        }
    }

    /// The one-letter ACVPU code.
    pub fn code(self) -> &'static str {
        match self {
            Consciousness::Alert => "A",
            Consciousness::NewConfusion => "C",
            Consciousness::Voice => "V",
            Consciousness::Pain => "P",
            Consciousness::Unresponsive => "U",
        }
    }
}

/// One set of observations. `None` means "not recorded".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vitals {
    /// Respiration rate, breaths per minute.
    pub respiratory_rate: Option<f64>,
    /// Oxygen saturation, per cent.
    pub spo2: Option<f64>,
    /// Use SpO2 Scale 2 (target range 88–92 %) for a patient with
    /// hypercapnic respiratory failure. Must be documented by a clinician.
    pub hypercapnic: bool,
    /// Supplemental oxygen (`false` means breathing air).
    pub on_oxygen: bool,
    /// Systolic blood pressure, mmHg.
    pub systolic: Option<f64>,
    /// Pulse, beats per minute.
    pub pulse: Option<f64>,
    /// Level of consciousness (ACVPU).
    pub consciousness: Option<Consciousness>,
    /// Temperature, °C.
    pub temperature: Option<f64>,
}

/// The NEWS2 clinical risk category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Aggregate score 0–4 with no single parameter scoring 3.
    Low,
    /// Aggregate score 0–4 with a single parameter scoring 3 (a "red score").
    LowMedium,
    /// Aggregate score 5–6.
    Medium,
    /// Aggregate score 7 or more.
    High,
}

impl Risk {
    /// A short label for the category.
    pub fn label(self) -> &'static str {
        match self {
            Risk::Low => "Low",
            Risk::LowMedium => "Low–medium",
            Risk::Medium => "Medium",
            Risk::High => "High",
        }
    }

    /// The clinical response the RCP chart attaches to the category, in brief.
    pub fn response(self) -> &'static str {
        match self {
            Risk::Low => {
                "Ward-based response: assessment by a competent registered nurse, who decides \
                 whether to change the frequency of monitoring or escalate clinical care"
            }
            Risk::LowMedium => {
                "Urgent ward-based response: urgent review by a ward-based doctor or acute team \
                 nurse, who decides whether escalation of clinical care is required"
            }
            Risk::Medium => {
                "Key threshold for urgent response: urgent review by a ward-based doctor or acute \
                 team nurse, who must consider escalation to a critical care outreach team"
            }
            Risk::High => {
                "Emergency assessment by a clinical team or critical care outreach team with \
                 critical-care competencies; usually transfer to a higher level of care"
            }
        }
    }

    /// The minimum frequency of monitoring the RCP chart recommends.
    pub fn monitoring(self) -> &'static str {
        match self {
            Risk::Low => "Every 4–6 hours (every 12 hours if the score is 0)",
            Risk::LowMedium => "At least hourly",
            Risk::Medium => "At least hourly",
            Risk::High => "Continuous monitoring of vital signs",
        }
    }
}

/// The result of scoring one set of observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The aggregate score (missing parameters contribute 0).
    pub total: u32,
    /// One entry per parameter that was recorded and scored, in NEWS2 chart
    /// order: "Respiration rate", "SpO2 (Scale 1)" or "SpO2 (Scale 2)",
    /// "Air or oxygen", "Systolic blood pressure", "Pulse", "Consciousness",
    /// "Temperature". Parameters that were not recorded are listed in
    /// [`Score::missing`] instead.
    pub parts: Vec<(&'static str, u32)>,
    /// The clinical risk category.
    pub risk: Risk,
    /// All seven parameters were recorded (air or oxygen always is).
    pub complete: bool,
    /// Names of the parameters that were not recorded (or not finite), in
    /// chart order.
    pub missing: Vec<&'static str>,
}

/// Parameter name: respiration rate.
pub const RESPIRATION_RATE: &str = "Respiration rate";
/// Parameter name: SpO2 on Scale 1.
pub const SPO2_SCALE_1: &str = "SpO2 (Scale 1)";
/// Parameter name: SpO2 on Scale 2.
pub const SPO2_SCALE_2: &str = "SpO2 (Scale 2)";
/// Parameter name: air or oxygen.
pub const AIR_OR_OXYGEN: &str = "Air or oxygen";
/// Parameter name: systolic blood pressure.
pub const SYSTOLIC: &str = "Systolic blood pressure";
/// Parameter name: pulse.
pub const PULSE: &str = "Pulse";
/// Parameter name: consciousness.
pub const CONSCIOUSNESS: &str = "Consciousness";
/// Parameter name: temperature.
pub const TEMPERATURE: &str = "Temperature";

/// Rounds a finite value to the nearest whole number (halves away from
/// zero); `None` for NaN and infinities. Out-of-range magnitudes saturate,
/// which keeps them in the outermost band.
fn whole(v: Option<f64>) -> Option<i64> {
    match v {
        Some(x) if x.is_finite() => Some(x.round() as i64),
        _ => None,
    }
}

/// Temperature in tenths of a degree, rounded (so 36.05 becomes 361).
fn tenths(v: Option<f64>) -> Option<i64> {
    match v {
        // The nudge makes decimal halves such as 36.05 (stored in binary as
        // 36.04999…) round up, as a clinician reading the chart would.
        Some(x) if x.is_finite() => Some((x * 10.0 + 1e-9_f64.copysign(x)).round() as i64),
        _ => None,
    }
}

fn respiration_points(rate: i64) -> u32 {
    match rate {
        i64::MIN..=8 => 3,
        9..=11 => 1,
        12..=20 => 0,
        21..=24 => 2,
        _ => 3,
    }
}

fn spo2_scale1_points(spo2: i64) -> u32 {
    match spo2 {
        i64::MIN..=91 => 3,
        92..=93 => 2,
        94..=95 => 1,
        _ => 0,
    }
}

fn spo2_scale2_points(spo2: i64, on_oxygen: bool) -> u32 {
    match spo2 {
        i64::MIN..=83 => 3,
        84..=85 => 2,
        86..=87 => 1,
        88..=92 => 0,
        _ if !on_oxygen => 0,
        93..=94 => 1,
        95..=96 => 2,
        _ => 3,
    }
}

fn systolic_points(sbp: i64) -> u32 {
    match sbp {
        i64::MIN..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        _ => 3,
    }
}

fn pulse_points(pulse: i64) -> u32 {
    match pulse {
        i64::MIN..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        _ => 3,
    }
}

fn consciousness_points(c: Consciousness) -> u32 {
    match c {
        Consciousness::Alert => 0,
        _ => 3,
    }
}

fn temperature_points(tenths: i64) -> u32 {
    match tenths {
        i64::MIN..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        _ => 2,
    }
}

/// Scores one set of observations. Never panics; non-finite values are
/// treated as missing.
pub fn score(v: &Vitals) -> Score {
    let mut parts: Vec<(&'static str, u32)> = Vec::with_capacity(7);
    let mut missing: Vec<&'static str> = Vec::new();

    match whole(v.respiratory_rate) {
        Some(r) => parts.push((RESPIRATION_RATE, respiration_points(r))),
        None => missing.push(RESPIRATION_RATE),
    }

    let spo2_name = if v.hypercapnic {
        SPO2_SCALE_2
    } else {
        SPO2_SCALE_1
    };
    match whole(v.spo2) {
        Some(s) => {
            let points = if v.hypercapnic {
                spo2_scale2_points(s, v.on_oxygen)
            } else {
                spo2_scale1_points(s)
            };
            parts.push((spo2_name, points));
        }
        None => missing.push(spo2_name),
    }

    parts.push((AIR_OR_OXYGEN, if v.on_oxygen { 2 } else { 0 }));

    match whole(v.systolic) {
        Some(s) => parts.push((SYSTOLIC, systolic_points(s))),
        None => missing.push(SYSTOLIC),
    }

    match whole(v.pulse) {
        Some(p) => parts.push((PULSE, pulse_points(p))),
        None => missing.push(PULSE),
    }

    match v.consciousness {
        Some(c) => parts.push((CONSCIOUSNESS, consciousness_points(c))),
        None => missing.push(CONSCIOUSNESS),
    }

    match tenths(v.temperature) {
        Some(t) => parts.push((TEMPERATURE, temperature_points(t))),
        None => missing.push(TEMPERATURE),
    }

    let total: u32 = parts.iter().map(|&(_, p)| p).sum();
    let red = parts.iter().any(|&(_, p)| p >= 3);
    let risk = match total {
        0..=4 if red => Risk::LowMedium,
        0..=4 => Risk::Low,
        5..=6 => Risk::Medium,
        _ => Risk::High,
    };

    Score {
        total,
        parts,
        risk,
        complete: missing.is_empty(),
        missing,
    }
}

/// Formats a value for an error message without a spurious fraction.
fn show(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn check_range(
    problems: &mut Vec<String>,
    name: &str,
    value: Option<f64>,
    low: f64,
    high: f64,
    unit: &str,
) {
    let Some(x) = value else { return };
    if !x.is_finite() {
        problems.push(format!("{name} is not a valid number"));
    } else if x < low || x > high {
        problems.push(format!(
            "{name} {} {unit} is outside the plausible range {}–{} {unit}",
            show(x),
            show(low),
            show(high)
        ));
    }
}

/// Checks that each recorded value is physiologically plausible for entry,
/// to refuse typing errors: respiration rate 0–80 breaths/min, SpO2 50–100 %,
/// systolic blood pressure 40–300 mmHg, pulse 20–300 beats/min and
/// temperature 25–45 °C. Returns one message per problem, each naming the
/// field; an empty vector means the observations may be accepted. Values not
/// recorded are not problems here (see [`Score::missing`]).
pub fn check(v: &Vitals) -> Vec<String> {
    let mut problems = Vec::new();
    check_range(
        &mut problems,
        "Respiration rate",
        v.respiratory_rate,
        0.0,
        80.0,
        "breaths/min",
    );
    check_range(&mut problems, "SpO2", v.spo2, 50.0, 100.0, "%");
    check_range(
        &mut problems,
        "Systolic blood pressure",
        v.systolic,
        40.0,
        300.0,
        "mmHg",
    );
    check_range(&mut problems, "Pulse", v.pulse, 20.0, 300.0, "beats/min");
    check_range(&mut problems, "Temperature", v.temperature, 25.0, 45.0, "°C");
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete set of observations that scores 0 everywhere.
    fn normal() -> Vitals {
        Vitals {
            respiratory_rate: Some(16.0),
            spo2: Some(98.0),
            hypercapnic: false,
            on_oxygen: false,
            systolic: Some(120.0),
            pulse: Some(70.0),
            consciousness: Some(Consciousness::Alert),
            temperature: Some(37.0),
        }
    }

    fn part(s: &Score, name: &str) -> Option<u32> {
        s.parts.iter().find(|(n, _)| *n == name).map(|&(_, p)| p)
    }

    fn rr(x: f64) -> u32 {
        let s = score(&Vitals {
            respiratory_rate: Some(x),
            ..normal()
        });
        part(&s, RESPIRATION_RATE).unwrap_or(99)
    }

    fn sats1(x: f64) -> u32 {
        let s = score(&Vitals {
            spo2: Some(x),
            ..normal()
        });
        part(&s, SPO2_SCALE_1).unwrap_or(99)
    }

    fn sats2(x: f64, on_oxygen: bool) -> u32 {
        let s = score(&Vitals {
            spo2: Some(x),
            hypercapnic: true,
            on_oxygen,
            ..normal()
        });
        assert_eq!(part(&s, SPO2_SCALE_1), None);
        part(&s, SPO2_SCALE_2).unwrap_or(99)
    }

    fn sbp(x: f64) -> u32 {
        let s = score(&Vitals {
            systolic: Some(x),
            ..normal()
        });
        part(&s, SYSTOLIC).unwrap_or(99)
    }

    fn hr(x: f64) -> u32 {
        let s = score(&Vitals {
            pulse: Some(x),
            ..normal()
        });
        part(&s, PULSE).unwrap_or(99)
    }

    fn temp(x: f64) -> u32 {
        let s = score(&Vitals {
            temperature: Some(x),
            ..normal()
        });
        part(&s, TEMPERATURE).unwrap_or(99)
    }

    #[test]
    fn normal_observations_score_zero() {
        let s = score(&normal());
        assert_eq!(s.total, 0);
        assert_eq!(s.risk, Risk::Low);
        assert!(s.complete);
        assert!(s.missing.is_empty());
        let names: Vec<&str> = s.parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            vec![
                "Respiration rate",
                "SpO2 (Scale 1)",
                "Air or oxygen",
                "Systolic blood pressure",
                "Pulse",
                "Consciousness",
                "Temperature"
            ]
        );
    }

    #[test]
    fn respiration_rate_bands() {
        assert_eq!(rr(0.0), 3);
        assert_eq!(rr(8.0), 3);
        assert_eq!(rr(9.0), 1);
        assert_eq!(rr(11.0), 1);
        assert_eq!(rr(12.0), 0);
        assert_eq!(rr(20.0), 0);
        assert_eq!(rr(21.0), 2);
        assert_eq!(rr(24.0), 2);
        assert_eq!(rr(25.0), 3);
        assert_eq!(rr(60.0), 3);
    }

    #[test]
    fn respiration_rate_between_bands_rounds() {
        assert_eq!(rr(8.49), 3);
        assert_eq!(rr(8.5), 1);
        assert_eq!(rr(11.49), 1);
        assert_eq!(rr(11.5), 0);
        assert_eq!(rr(20.49), 0);
        assert_eq!(rr(20.5), 2);
        assert_eq!(rr(24.4), 2);
        assert_eq!(rr(24.5), 3);
    }

    #[test]
    fn spo2_scale1_bands() {
        assert_eq!(sats1(85.0), 3);
        assert_eq!(sats1(91.0), 3);
        assert_eq!(sats1(92.0), 2);
        assert_eq!(sats1(93.0), 2);
        assert_eq!(sats1(94.0), 1);
        assert_eq!(sats1(95.0), 1);
        assert_eq!(sats1(96.0), 0);
        assert_eq!(sats1(100.0), 0);
        assert_eq!(sats1(91.4), 3);
        assert_eq!(sats1(95.5), 0);
    }

    #[test]
    fn spo2_scale1_unaffected_by_oxygen() {
        let s = score(&Vitals {
            spo2: Some(99.0),
            on_oxygen: true,
            ..normal()
        });
        assert_eq!(part(&s, SPO2_SCALE_1), Some(0));
        assert_eq!(part(&s, AIR_OR_OXYGEN), Some(2));
        assert_eq!(s.total, 2);
    }

    #[test]
    fn spo2_scale2_on_air() {
        assert_eq!(sats2(80.0, false), 3);
        assert_eq!(sats2(83.0, false), 3);
        assert_eq!(sats2(84.0, false), 2);
        assert_eq!(sats2(85.0, false), 2);
        assert_eq!(sats2(86.0, false), 1);
        assert_eq!(sats2(87.0, false), 1);
        assert_eq!(sats2(88.0, false), 0);
        assert_eq!(sats2(92.0, false), 0);
        assert_eq!(sats2(93.0, false), 0);
        assert_eq!(sats2(97.0, false), 0);
        assert_eq!(sats2(100.0, false), 0);
    }

    #[test]
    fn spo2_scale2_on_oxygen() {
        assert_eq!(sats2(83.0, true), 3);
        assert_eq!(sats2(84.0, true), 2);
        assert_eq!(sats2(85.0, true), 2);
        assert_eq!(sats2(86.0, true), 1);
        assert_eq!(sats2(87.0, true), 1);
        assert_eq!(sats2(88.0, true), 0);
        assert_eq!(sats2(92.0, true), 0);
        assert_eq!(sats2(93.0, true), 1);
        assert_eq!(sats2(94.0, true), 1);
        assert_eq!(sats2(95.0, true), 2);
        assert_eq!(sats2(96.0, true), 2);
        assert_eq!(sats2(97.0, true), 3);
        assert_eq!(sats2(100.0, true), 3);
        assert_eq!(sats2(92.4, true), 0);
        assert_eq!(sats2(92.5, true), 1);
    }

    #[test]
    fn spo2_scale2_total_includes_oxygen() {
        let s = score(&Vitals {
            spo2: Some(97.0),
            hypercapnic: true,
            on_oxygen: true,
            ..normal()
        });
        // 3 for SpO2 on Scale 2 plus 2 for oxygen.
        assert_eq!(s.total, 5);
        assert_eq!(s.risk, Risk::Medium);
    }

    #[test]
    fn air_or_oxygen() {
        let air = score(&normal());
        assert_eq!(part(&air, AIR_OR_OXYGEN), Some(0));
        let o2 = score(&Vitals {
            on_oxygen: true,
            ..normal()
        });
        assert_eq!(part(&o2, AIR_OR_OXYGEN), Some(2));
        assert_eq!(o2.total, 2);
    }

    #[test]
    fn systolic_bands() {
        assert_eq!(sbp(60.0), 3);
        assert_eq!(sbp(90.0), 3);
        assert_eq!(sbp(91.0), 2);
        assert_eq!(sbp(100.0), 2);
        assert_eq!(sbp(101.0), 1);
        assert_eq!(sbp(110.0), 1);
        assert_eq!(sbp(111.0), 0);
        assert_eq!(sbp(219.0), 0);
        assert_eq!(sbp(220.0), 3);
        assert_eq!(sbp(280.0), 3);
        assert_eq!(sbp(90.4), 3);
        assert_eq!(sbp(90.5), 2);
        assert_eq!(sbp(219.49), 0);
        assert_eq!(sbp(219.5), 3);
    }

    #[test]
    fn pulse_bands() {
        assert_eq!(hr(30.0), 3);
        assert_eq!(hr(40.0), 3);
        assert_eq!(hr(41.0), 1);
        assert_eq!(hr(50.0), 1);
        assert_eq!(hr(51.0), 0);
        assert_eq!(hr(90.0), 0);
        assert_eq!(hr(91.0), 1);
        assert_eq!(hr(110.0), 1);
        assert_eq!(hr(111.0), 2);
        assert_eq!(hr(130.0), 2);
        assert_eq!(hr(131.0), 3);
        assert_eq!(hr(200.0), 3);
        assert_eq!(hr(40.5), 1);
        assert_eq!(hr(90.49), 0);
        assert_eq!(hr(130.5), 3);
    }

    #[test]
    fn consciousness_scores() {
        for (c, points) in [
            (Consciousness::Alert, 0),
            (Consciousness::NewConfusion, 3),
            (Consciousness::Voice, 3),
            (Consciousness::Pain, 3),
            (Consciousness::Unresponsive, 3),
        ] {
            let s = score(&Vitals {
                consciousness: Some(c),
                ..normal()
            });
            assert_eq!(part(&s, CONSCIOUSNESS), Some(points), "{c:?}");
        }
    }

    #[test]
    fn consciousness_parse_and_label() {
        assert_eq!(Consciousness::parse("A"), Some(Consciousness::Alert));
        assert_eq!(Consciousness::parse("a"), Some(Consciousness::Alert));
        assert_eq!(Consciousness::parse("c"), Some(Consciousness::NewConfusion));
        assert_eq!(Consciousness::parse("V"), Some(Consciousness::Voice));
        assert_eq!(Consciousness::parse("p"), Some(Consciousness::Pain));
        assert_eq!(Consciousness::parse(" U "), Some(Consciousness::Unresponsive));
        assert_eq!(Consciousness::parse(""), None);
        assert_eq!(Consciousness::parse("X"), None);
        assert_eq!(Consciousness::parse("AV"), None);
        assert_eq!(Consciousness::parse("é"), None);
        assert_eq!(Consciousness::NewConfusion.label(), "New confusion");
        assert_eq!(Consciousness::Alert.label(), "Alert");
        for c in ["A", "C", "V", "P", "U"] {
            assert_eq!(Consciousness::parse(c).map(|x| x.code()), Some(c));
        }
    }

    #[test]
    fn temperature_bands() {
        assert_eq!(temp(33.0), 3);
        assert_eq!(temp(35.0), 3);
        assert_eq!(temp(35.1), 1);
        assert_eq!(temp(36.0), 1);
        assert_eq!(temp(36.1), 0);
        assert_eq!(temp(38.0), 0);
        assert_eq!(temp(38.1), 1);
        assert_eq!(temp(39.0), 1);
        assert_eq!(temp(39.1), 2);
        assert_eq!(temp(41.0), 2);
    }

    #[test]
    fn temperature_between_bands_rounds_to_one_decimal() {
        assert_eq!(temp(35.04), 3);
        assert_eq!(temp(35.05), 1);
        assert_eq!(temp(36.04), 1);
        assert_eq!(temp(36.05), 0);
        assert_eq!(temp(38.04), 0);
        assert_eq!(temp(38.05), 1);
        assert_eq!(temp(39.04), 1);
        assert_eq!(temp(39.05), 2);
    }

    #[test]
    fn risk_low() {
        // 1 + 2 + 1 = 4, no red score.
        let s = score(&Vitals {
            respiratory_rate: Some(10.0),
            on_oxygen: true,
            temperature: Some(38.5),
            ..normal()
        });
        assert_eq!(s.total, 4);
        assert_eq!(s.risk, Risk::Low);
    }

    #[test]
    fn risk_single_red_score_is_low_medium() {
        let s = score(&Vitals {
            consciousness: Some(Consciousness::NewConfusion),
            ..normal()
        });
        assert_eq!(s.total, 3);
        assert_eq!(s.risk, Risk::LowMedium);
        // A red score with an aggregate of 4 is still low–medium.
        let s = score(&Vitals {
            pulse: Some(35.0),
            temperature: Some(35.5),
            ..normal()
        });
        assert_eq!(s.total, 4);
        assert_eq!(s.risk, Risk::LowMedium);
    }

    #[test]
    fn risk_medium_even_with_red_score() {
        let s = score(&Vitals {
            systolic: Some(85.0),
            on_oxygen: true,
            ..normal()
        });
        assert_eq!(s.total, 5);
        assert_eq!(s.risk, Risk::Medium);
        let s = score(&Vitals {
            respiratory_rate: Some(22.0),
            pulse: Some(115.0),
            temperature: Some(38.3),
            spo2: Some(95.0),
            ..normal()
        });
        assert_eq!(s.total, 6);
        assert_eq!(s.risk, Risk::Medium);
    }

    #[test]
    fn risk_high() {
        let s = score(&Vitals {
            respiratory_rate: Some(26.0),
            spo2: Some(90.0),
            on_oxygen: true,
            ..normal()
        });
        assert_eq!(s.total, 8);
        assert_eq!(s.risk, Risk::High);
        let worst = score(&Vitals {
            respiratory_rate: Some(40.0),
            spo2: Some(80.0),
            hypercapnic: false,
            on_oxygen: true,
            systolic: Some(70.0),
            pulse: Some(150.0),
            consciousness: Some(Consciousness::Unresponsive),
            temperature: Some(40.0),
        });
        assert_eq!(worst.total, 3 + 3 + 2 + 3 + 3 + 3 + 2);
        assert_eq!(worst.risk, Risk::High);
    }

    #[test]
    fn risk_labels_and_responses() {
        for r in [Risk::Low, Risk::LowMedium, Risk::Medium, Risk::High] {
            assert!(!r.label().is_empty());
            assert!(!r.response().is_empty());
            assert!(!r.monitoring().is_empty());
        }
        assert!(Risk::High.response().starts_with("Emergency assessment"));
    }

    #[test]
    fn missing_parameters_score_zero_and_are_listed() {
        let s = score(&Vitals::default());
        assert_eq!(s.total, 0);
        assert!(!s.complete);
        assert_eq!(
            s.missing,
            vec![
                RESPIRATION_RATE,
                SPO2_SCALE_1,
                SYSTOLIC,
                PULSE,
                CONSCIOUSNESS,
                TEMPERATURE
            ]
        );
        // Air or oxygen is always present.
        assert_eq!(s.parts, vec![(AIR_OR_OXYGEN, 0)]);
        assert_eq!(s.risk, Risk::Low);

        let s = score(&Vitals {
            pulse: None,
            ..normal()
        });
        assert!(!s.complete);
        assert_eq!(s.missing, vec![PULSE]);
        assert_eq!(part(&s, PULSE), None);
        assert_eq!(s.parts.len(), 6);

        let s = score(&Vitals {
            spo2: None,
            hypercapnic: true,
            ..normal()
        });
        assert_eq!(s.missing, vec![SPO2_SCALE_2]);
    }

    #[test]
    fn non_finite_values_count_as_missing() {
        let s = score(&Vitals {
            respiratory_rate: Some(f64::NAN),
            spo2: Some(f64::INFINITY),
            systolic: Some(f64::NEG_INFINITY),
            pulse: Some(f64::NAN),
            temperature: Some(f64::NAN),
            ..normal()
        });
        assert_eq!(s.total, 0);
        assert!(!s.complete);
        assert_eq!(
            s.missing,
            vec![RESPIRATION_RATE, SPO2_SCALE_1, SYSTOLIC, PULSE, TEMPERATURE]
        );
    }

    #[test]
    fn extreme_values_do_not_panic() {
        for x in [
            f64::MAX,
            f64::MIN,
            1e300,
            -1e300,
            f64::MIN_POSITIVE,
            -0.0,
            -5.0,
            9.2e18,
        ] {
            let v = Vitals {
                respiratory_rate: Some(x),
                spo2: Some(x),
                hypercapnic: true,
                on_oxygen: true,
                systolic: Some(x),
                pulse: Some(x),
                consciousness: None,
                temperature: Some(x),
            };
            let s = score(&v);
            assert!(s.total <= 20);
            let _ = check(&v);
        }
        assert_eq!(rr(f64::MAX), 3);
        assert_eq!(rr(-1e300), 3);
        assert_eq!(temp(f64::MAX), 2);
        assert_eq!(temp(f64::MIN), 3);
    }

    #[test]
    fn check_accepts_plausible_and_missing_values() {
        assert!(check(&normal()).is_empty());
        assert!(check(&Vitals::default()).is_empty());
        let edges = Vitals {
            respiratory_rate: Some(0.0),
            spo2: Some(50.0),
            systolic: Some(300.0),
            pulse: Some(20.0),
            temperature: Some(45.0),
            ..normal()
        };
        assert!(check(&edges).is_empty());
    }

    #[test]
    fn check_rejects_implausible_values() {
        let v = Vitals {
            respiratory_rate: Some(180.0),
            spo2: Some(101.0),
            systolic: Some(1200.0),
            pulse: Some(7.0),
            temperature: Some(98.6),
            ..normal()
        };
        let problems = check(&v);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].contains("Respiration rate") && problems[0].contains("180"));
        assert!(problems[1].contains("SpO2") && problems[1].contains("101"));
        assert!(problems[2].contains("Systolic blood pressure") && problems[2].contains("1200"));
        assert!(problems[3].contains("Pulse") && problems[3].contains("7"));
        assert!(problems[4].contains("Temperature") && problems[4].contains("98.6"));

        let one = check(&Vitals {
            spo2: Some(49.9),
            ..normal()
        });
        assert_eq!(one.len(), 1);
        assert!(one[0].starts_with("SpO2"));

        let negative = check(&Vitals {
            respiratory_rate: Some(-1.0),
            temperature: Some(24.9),
            ..normal()
        });
        assert_eq!(negative.len(), 2);
    }

    #[test]
    fn check_rejects_non_finite_values() {
        let problems = check(&Vitals {
            pulse: Some(f64::NAN),
            systolic: Some(f64::INFINITY),
            ..normal()
        });
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().any(|p| p.starts_with("Pulse")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("Systolic blood pressure")));
    }
}
