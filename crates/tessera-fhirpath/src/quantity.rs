//! Quantities and a small UCUM subset: enough to compare and convert common
//! clinical units (mass, length, volume, time, amount, a few customary units) and
//! the FHIRPath calendar-duration keywords.

use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;

/// A FHIRPath `System.Quantity`: a decimal value and a unit.
///
/// `unit` is a UCUM code (`mg`, `[lb_av]`, `1`) or a calendar-duration keyword
/// (`year`, `months`, `week`, …), which is displayed unquoted.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: Arc<str>,
}

/// Dimensions: g, m, s, mol, K, A, cd.
type Dims = [i8; 7];

/// A unit reduced to a factor over base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Canonical {
    pub factor: Decimal,
    pub dims: Dims,
    /// Calendar `year`/`month` keywords: comparable only with each other.
    pub calendar_months: bool,
}

const CALENDAR: &[(&str, &str)] = &[
    ("year", ""),
    ("years", ""),
    ("month", ""),
    ("months", ""),
    ("week", "wk"),
    ("weeks", "wk"),
    ("day", "d"),
    ("days", "d"),
    ("hour", "h"),
    ("hours", "h"),
    ("minute", "min"),
    ("minutes", "min"),
    ("second", "s"),
    ("seconds", "s"),
    ("millisecond", "ms"),
    ("milliseconds", "ms"),
];

/// Is `unit` one of the FHIRPath calendar-duration keywords?
pub(crate) fn is_calendar_keyword(unit: &str) -> bool {
    CALENDAR.iter().any(|(k, _)| *k == unit)
}

/// The calendar unit a duration denotes, for date arithmetic:
/// `Some("year" | "month" | "week" | "day" | "hour" | "minute" | "second" | "millisecond")`.
/// UCUM `a` and `mo` are not calendar durations (their length is not a whole number of days).
pub(crate) fn calendar_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "year" | "years" => "year",
        "month" | "months" => "month",
        "week" | "weeks" | "wk" => "week",
        "day" | "days" | "d" => "day",
        "hour" | "hours" | "h" => "hour",
        "minute" | "minutes" | "min" => "minute",
        "second" | "seconds" | "s" => "second",
        "millisecond" | "milliseconds" | "ms" => "millisecond",
        _ => return None,
    })
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or(Decimal::ONE)
}

/// Base atoms: (code, factor, dims, prefixable).
fn atom(code: &str) -> Option<(Decimal, Dims, bool)> {
    const G: Dims = [1, 0, 0, 0, 0, 0, 0];
    const M: Dims = [0, 1, 0, 0, 0, 0, 0];
    const S: Dims = [0, 0, 1, 0, 0, 0, 0];
    const MOL: Dims = [0, 0, 0, 1, 0, 0, 0];
    const K: Dims = [0, 0, 0, 0, 1, 0, 0];
    const A: Dims = [0, 0, 0, 0, 0, 1, 0];
    const CD: Dims = [0, 0, 0, 0, 0, 0, 1];
    const ONE: Dims = [0; 7];
    const L: Dims = [0, 3, 0, 0, 0, 0, 0];
    Some(match code {
        "g" => (Decimal::ONE, G, true),
        "m" => (Decimal::ONE, M, true),
        "s" => (Decimal::ONE, S, true),
        "mol" => (Decimal::ONE, MOL, true),
        "K" => (Decimal::ONE, K, true),
        "A" => (Decimal::ONE, A, true),
        "cd" => (Decimal::ONE, CD, true),
        "l" | "L" => (d("0.001"), L, true),
        "min" => (d("60"), S, false),
        "h" => (d("3600"), S, false),
        "d" => (d("86400"), S, false),
        "wk" => (d("604800"), S, false),
        "mo" => (d("2629800"), S, false),
        "a" => (d("31557600"), S, false),
        "Hz" => (Decimal::ONE, [0, 0, -1, 0, 0, 0, 0], true),
        "N" => (d("1000"), [1, 1, -2, 0, 0, 0, 0], true),
        "Pa" => (d("1000"), [1, -1, -2, 0, 0, 0, 0], true),
        "J" => (d("1000"), [1, 2, -2, 0, 0, 0, 0], true),
        "W" => (d("1000"), [1, 2, -3, 0, 0, 0, 0], true),
        "cal" => (d("4184"), [1, 2, -2, 0, 0, 0, 0], true),
        "[lb_av]" => (d("453.59237"), G, false),
        "[oz_av]" => (d("28.349523125"), G, false),
        "[in_i]" => (d("0.0254"), M, false),
        "[ft_i]" => (d("0.3048"), M, false),
        "[mi_i]" => (d("1609.344"), M, false),
        "mm[Hg]" => (d("133322.387415"), [1, -1, -2, 0, 0, 0, 0], false),
        "[degF]" | "Cel" | "[iU]" | "[IU]" => return None,
        "%" => (d("0.01"), ONE, false),
        "1" => (Decimal::ONE, ONE, false),
        "10*3" => (d("1000"), ONE, false),
        "10*6" => (d("1000000"), ONE, false),
        "10*9" => (d("1000000000"), ONE, false),
        "10*12" => (d("1000000000000"), ONE, false),
        _ => return None,
    })
}

fn prefix(p: &str) -> Option<Decimal> {
    Some(match p {
        "k" => d("1000"),
        "h" => d("100"),
        "da" => d("10"),
        "d" => d("0.1"),
        "c" => d("0.01"),
        "m" => d("0.001"),
        "u" => d("0.000001"),
        "n" => d("0.000000001"),
        "p" => d("0.000000000001"),
        "M" => d("1000000"),
        "G" => d("1000000000"),
        _ => return None,
    })
}

/// One factor of a unit term with its exponent: `cm2`, `[in_i]`, `10*3`.
fn simple_unit(s: &str) -> Option<(Decimal, Dims)> {
    if let Some((f, dims, _)) = atom(s) {
        return Some((f, dims));
    }
    // Trailing exponent (not for `10*n`, handled as atoms).
    let bytes = s.as_bytes();
    let mut end = bytes.len();
    while end > 0 && (bytes[end - 1].is_ascii_digit()) {
        end -= 1;
    }
    if end > 0 && bytes[end - 1] == b'-' {
        end -= 1;
    }
    if end < bytes.len() && end > 0 {
        let exp: i32 = s[end..].parse().ok()?;
        let (f, dims) = simple_unit(&s[..end])?;
        if !(-9..=9).contains(&exp) {
            return None;
        }
        let mut factor = Decimal::ONE;
        let mut out = [0i8; 7];
        for (o, d) in out.iter_mut().zip(dims) {
            *o = d.checked_mul(exp as i8)?;
        }
        for _ in 0..exp.unsigned_abs() {
            factor = factor.checked_mul(f)?;
        }
        if exp < 0 {
            factor = Decimal::ONE.checked_div(factor)?;
        }
        return Some((factor, out));
    }
    for split in 1..s.len().min(3) {
        if !s.is_char_boundary(split) {
            continue;
        }
        let (p, rest) = s.split_at(split);
        if let (Some(pf), Some((f, dims, true))) = (prefix(p), atom(rest)) {
            return Some((pf.checked_mul(f)?, dims));
        }
    }
    None
}

impl Canonical {
    /// Reduces a UCUM expression (`mg`, `g/m`, `kg.m2`, `m2`) or calendar keyword.
    pub(crate) fn of(unit: &str) -> Option<Canonical> {
        if let Some((_, ucum)) = CALENDAR.iter().find(|(k, _)| *k == unit) {
            if ucum.is_empty() {
                let factor = if unit.starts_with("year") {
                    Decimal::from(12)
                } else {
                    Decimal::ONE
                };
                return Some(Canonical {
                    factor,
                    dims: [0; 7],
                    calendar_months: true,
                });
            }
            return Canonical::of(ucum);
        }
        let unit = unit.trim();
        if unit.is_empty() {
            return Some(Canonical {
                factor: Decimal::ONE,
                dims: [0; 7],
                calendar_months: false,
            });
        }
        let mut factor = Decimal::ONE;
        let mut dims = [0i8; 7];
        let mut divide = false;
        let mut term = String::new();
        let apply =
            |term: &str, divide: bool, factor: &mut Decimal, dims: &mut Dims| -> Option<()> {
                let (f, d) = simple_unit(term)?;
                if divide {
                    *factor = factor.checked_div(f)?;
                    for (o, x) in dims.iter_mut().zip(d) {
                        *o = o.checked_sub(x)?;
                    }
                } else {
                    *factor = factor.checked_mul(f)?;
                    for (o, x) in dims.iter_mut().zip(d) {
                        *o = o.checked_add(x)?;
                    }
                }
                Some(())
            };
        let mut depth = 0;
        for (i, c) in unit.char_indices() {
            match c {
                '[' => {
                    depth += 1;
                    term.push(c);
                }
                ']' => {
                    depth -= 1;
                    term.push(c);
                }
                '.' | '/' if depth == 0 && i > 0 => {
                    apply(&term, divide, &mut factor, &mut dims)?;
                    term.clear();
                    divide = c == '/';
                }
                '{' | '}' => return None,
                _ => term.push(c),
            }
        }
        apply(&term, divide, &mut factor, &mut dims)?;
        Some(Canonical {
            factor,
            dims,
            calendar_months: false,
        })
    }

    /// A unit string for a canonical value (base units): `g.m-1`, `m2`, `1`.
    pub(crate) fn unit_string(&self) -> String {
        const NAMES: [&str; 7] = ["g", "m", "s", "mol", "K", "A", "cd"];
        let mut parts = Vec::new();
        for (n, &e) in NAMES.iter().zip(&self.dims) {
            match e {
                0 => {}
                1 => parts.push(n.to_string()),
                e => parts.push(format!("{n}{e}")),
            }
        }
        if parts.is_empty() {
            "1".to_string()
        } else {
            parts.join(".")
        }
    }
}

impl Quantity {
    pub fn new(value: Decimal, unit: &str) -> Quantity {
        Quantity {
            value,
            unit: Arc::from(unit),
        }
    }

    /// Value in base units, with the canonical unit (for comparison).
    pub(crate) fn canonical(&self) -> Option<(Decimal, Canonical)> {
        let c = Canonical::of(&self.unit)?;
        Some((self.value.checked_mul(c.factor)?, c))
    }

    /// The two values converted to a common unit, when the units are comparable.
    pub(crate) fn common(&self, other: &Quantity) -> Option<(Decimal, Decimal)> {
        if self.unit == other.unit
            || (calendar_unit(&self.unit).is_some()
                && calendar_unit(&self.unit) == calendar_unit(&other.unit))
        {
            return Some((self.value, other.value));
        }
        let (a, ca) = self.canonical()?;
        let (b, cb) = other.canonical()?;
        if ca.dims != cb.dims || ca.calendar_months != cb.calendar_months {
            return None;
        }
        Some((a, b))
    }

    /// Are the units comparable (same dimensions)?
    pub(crate) fn comparable(&self, other: &Quantity) -> bool {
        self.common(other).is_some()
    }

    /// Display form: `4 'mg'`, `1 week`.
    pub fn format(&self) -> String {
        if is_calendar_keyword(&self.unit) {
            format!("{} {}", self.value, self.unit)
        } else {
            format!("{} '{}'", self.value, self.unit)
        }
    }

    /// Multiplies or divides two quantities, producing base units.
    pub(crate) fn mul_div(&self, other: &Quantity, divide: bool) -> Option<Quantity> {
        let (a, ca) = self.canonical()?;
        let (b, cb) = other.canonical()?;
        if ca.calendar_months || cb.calendar_months {
            return None;
        }
        let mut dims = ca.dims;
        for (o, x) in dims.iter_mut().zip(cb.dims) {
            *o = if divide {
                o.checked_sub(x)?
            } else {
                o.checked_add(x)?
            };
        }
        let value = if divide {
            a.checked_div(b)?
        } else {
            a.checked_mul(b)?
        };
        let unit = Canonical {
            factor: Decimal::ONE,
            dims,
            calendar_months: false,
        }
        .unit_string();
        Some(Quantity {
            value: value.normalize(),
            unit: Arc::from(unit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let q = |v: &str, u: &str| Quantity::new(d(v), u);
        assert_eq!(
            q("4", "g").common(&q("4000", "mg")).map(|(a, b)| a == b),
            Some(true)
        );
        assert!(q("1", "cm").comparable(&q("1", "[in_i]")));
        assert!(!q("1", "cm").comparable(&q("1", "s")));
        assert!(!q("1", "cm").comparable(&q("1", "[s]")));
        assert!(q("7", "days").comparable(&q("1", "wk")));
        assert!(!q("1", "year").comparable(&q("1", "a")));
        let m2 = q("2.0", "cm").mul_div(&q("2.0", "m"), false).unwrap();
        assert_eq!(
            m2.common(&q("0.040", "m2")).map(|(a, b)| a == b),
            Some(true)
        );
        let gm = q("4.0", "g").mul_div(&q("2.0", "m"), true).unwrap();
        assert_eq!(gm.common(&q("2", "g/m")).map(|(a, b)| a == b), Some(true));
    }
}
