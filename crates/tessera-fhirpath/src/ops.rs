//! Equality, equivalence, ordering and arithmetic on single items.

use crate::datetime::{DateTimeValue, Precision};
use crate::item::{Item, Prim};
use crate::parser::BinOp;
use crate::quantity::{calendar_unit, Quantity};
use crate::EvalError;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use std::cmp::Ordering;

fn is_calendar_month_unit(u: &str) -> bool {
    matches!(u, "year" | "years" | "month" | "months")
}

/// `a = b` for single items: `None` when unknown (differing date precision, no value).
pub(crate) fn eq_items(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    // Fast path: two JSON strings (the common case in `where(system = '…')`).
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Some(x == y);
    }
    match (a.prim(), b.prim()) {
        (Prim::Int(x), Prim::Int(y)) => Some(x == y),
        (Prim::Int(x), Prim::Dec(y)) => Some(Decimal::from(x) == y),
        (Prim::Dec(x), Prim::Int(y)) => Some(x == Decimal::from(y)),
        (Prim::Dec(x), Prim::Dec(y)) => Some(x == y),
        (Prim::Str(x), Prim::Str(y)) => Some(x == y),
        (Prim::Bool(x), Prim::Bool(y)) => Some(x == y),
        (Prim::Date(x) | Prim::DateTime(x), Prim::Date(y) | Prim::DateTime(y)) => {
            x.partial_compare(&y, false).map(|o| o == Ordering::Equal)
        }
        (Prim::Time(x), Prim::Time(y)) => x.partial_compare(&y, true).map(|o| o == Ordering::Equal),
        (Prim::Qty(x), Prim::Qty(y)) => match x.common(&y) {
            Some((p, q)) => Some(p == q),
            None if is_calendar_month_unit(&x.unit) != is_calendar_month_unit(&y.unit) => None,
            None => Some(false),
        },
        (Prim::Other, Prim::Other) => match (a, b) {
            (Item::Node(x), Item::Node(y)) => {
                if x.json.is_null() || y.json.is_null() {
                    None
                } else {
                    Some(json_eq(x.json, y.json))
                }
            }
            (
                Item::TypeInfo {
                    namespace: n1,
                    name: a1,
                },
                Item::TypeInfo {
                    namespace: n2,
                    name: a2,
                },
            ) => Some(n1 == n2 && a1 == a2),
            _ => Some(false),
        },
        (Prim::Other, _) | (_, Prim::Other) => {
            let valueless = |i: &Item<'_>| matches!(i, Item::Node(n) if n.json.is_null());
            if valueless(a) || valueless(b) {
                None
            } else {
                Some(false)
            }
        }
        _ => Some(false),
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_str() == y.as_str()
                || matches!((crate::item::parse_decimal(x.as_str()), crate::item::parse_decimal(y.as_str())), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn normalize_ws_lower(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn dec_equiv(x: Decimal, y: Decimal) -> bool {
    let scale = x.scale().min(y.scale());
    x.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
        == y.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
}

/// `a ~ b` for single items.
pub(crate) fn equiv_items(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a.prim(), b.prim()) {
        (Prim::Int(x), Prim::Int(y)) => x == y,
        (Prim::Int(x), Prim::Dec(y)) => dec_equiv(Decimal::from(x), y),
        (Prim::Dec(x), Prim::Int(y)) => dec_equiv(x, Decimal::from(y)),
        (Prim::Dec(x), Prim::Dec(y)) => dec_equiv(x, y),
        (Prim::Str(x), Prim::Str(y)) => x == y || normalize_ws_lower(x) == normalize_ws_lower(y),
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Date(x) | Prim::DateTime(x), Prim::Date(y) | Prim::DateTime(y)) => {
            x.partial_compare(&y, false) == Some(Ordering::Equal)
        }
        (Prim::Time(x), Prim::Time(y)) => x.partial_compare(&y, true) == Some(Ordering::Equal),
        (Prim::Qty(x), Prim::Qty(y)) => x.common(&y).is_some_and(|(p, q)| dec_equiv(p, q)),
        (Prim::Other, Prim::Other) => match (a, b) {
            (Item::Node(x), Item::Node(y)) => json_eq(x.json, y.json),
            _ => eq_items(a, b) == Some(true),
        },
        _ => false,
    }
}

/// Ordering of two single items (`<`, `>`, …). `Ok(None)` when unknown (precision),
/// `Err` when the types cannot be compared.
pub(crate) fn compare_items(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, EvalError> {
    Ok(match (a.prim(), b.prim()) {
        (Prim::Int(x), Prim::Int(y)) => Some(x.cmp(&y)),
        (Prim::Int(x), Prim::Dec(y)) => Some(Decimal::from(x).cmp(&y)),
        (Prim::Dec(x), Prim::Int(y)) => Some(x.cmp(&Decimal::from(y))),
        (Prim::Dec(x), Prim::Dec(y)) => Some(x.cmp(&y)),
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        (Prim::Date(x) | Prim::DateTime(x), Prim::Date(y) | Prim::DateTime(y)) => {
            x.partial_compare(&y, false)
        }
        (Prim::Time(x), Prim::Time(y)) => x.partial_compare(&y, true),
        (Prim::Qty(x), Prim::Qty(y)) => x.common(&y).map(|(p, q)| p.cmp(&q)),
        (Prim::Other, _) | (_, Prim::Other) if is_valueless(a) || is_valueless(b) => None,
        _ => {
            return Err(EvalError::Execution(format!(
                "cannot compare {} with {}",
                kind(a),
                kind(b)
            )))
        }
    })
}

fn is_valueless(i: &Item<'_>) -> bool {
    matches!(i, Item::Node(n) if n.json.is_null())
}

/// A short description of an item's type, for messages.
pub(crate) fn kind(i: &Item<'_>) -> &'static str {
    crate::types::type_info(i).1
}

fn add_duration(v: &DateTimeValue, q: &Quantity, negate: bool) -> Result<DateTimeValue, EvalError> {
    let unit = calendar_unit(&q.unit)
        .ok_or_else(|| EvalError::Execution(format!("cannot add '{}' to a date/time", q.unit)))?;
    let mut n = q.value.trunc();
    if negate {
        n = -n;
    }
    let n: i64 = n
        .try_into()
        .map_err(|_| EvalError::Execution("duration out of range".into()))?;
    // Ten thousand years in milliseconds: anything larger leaves the calendar.
    if n.unsigned_abs() > 400_000_000_000_000 {
        return Err(EvalError::Execution("duration out of range".into()));
    }
    let out = match unit {
        "year" => n.checked_mul(12).and_then(|m| v.add_months(m)),
        "month" => v.add_months(n),
        "week" => n.checked_mul(7).and_then(|d| v.add_days(d)),
        "day" => v.add_days(n),
        "hour" => n.checked_mul(60).map(|m| v.add_minutes(m)),
        "minute" => Some(v.add_minutes(n)),
        "second" => Some(v.add_nanos(n as i128 * 1_000_000_000)),
        _ => Some(v.add_nanos(n as i128 * 1_000_000)),
    };
    let out = out.ok_or_else(|| EvalError::Execution("date arithmetic out of range".into()))?;
    if !(1..=9999).contains(&out.year) && v.precision >= Precision::Year && v.year != 0 {
        return Err(EvalError::Execution("date arithmetic out of range".into()));
    }
    Ok(out)
}

fn overflow() -> EvalError {
    EvalError::Execution("arithmetic overflow".into())
}

/// Arithmetic on two single items. `Ok(None)` for an empty result (division by zero).
pub(crate) fn arith(
    op: BinOp,
    a: &Item<'_>,
    b: &Item<'_>,
) -> Result<Option<Item<'static>>, EvalError> {
    use Prim::*;
    let mismatch = || {
        EvalError::Execution(format!(
            "cannot apply {op:?} to {} and {}",
            kind(a),
            kind(b)
        ))
    };
    let (pa, pb) = (a.prim(), b.prim());
    Ok(Some(match (op, pa, pb) {
        (BinOp::Add, Int(x), Int(y)) => Item::Integer(x.checked_add(y).ok_or_else(overflow)?),
        (BinOp::Sub, Int(x), Int(y)) => Item::Integer(x.checked_sub(y).ok_or_else(overflow)?),
        (BinOp::Mul, Int(x), Int(y)) => Item::Integer(x.checked_mul(y).ok_or_else(overflow)?),
        (BinOp::IntDiv, Int(x), Int(y)) => match x.checked_div(y) {
            Some(v) => Item::Integer(v),
            None => return Ok(None),
        },
        (BinOp::Mod, Int(x), Int(y)) => match x.checked_rem(y) {
            Some(v) => Item::Integer(v),
            None => return Ok(None),
        },
        (BinOp::Add, Str(x), Str(y)) => Item::string(&format!("{x}{y}")),
        (op, x @ (Int(_) | Dec(_)), y @ (Int(_) | Dec(_))) => {
            let to_dec = |p: &Prim<'_>| match p {
                Int(i) => Decimal::from(*i),
                Dec(d) => *d,
                _ => Decimal::ZERO,
            };
            let (x, y) = (to_dec(&x), to_dec(&y));
            match op {
                BinOp::Add => Item::Decimal(x.checked_add(y).ok_or_else(overflow)?),
                BinOp::Sub => Item::Decimal(x.checked_sub(y).ok_or_else(overflow)?),
                BinOp::Mul => Item::Decimal(x.checked_mul(y).ok_or_else(overflow)?),
                BinOp::Div => match x.checked_div(y) {
                    Some(v) => Item::Decimal(v.normalize()),
                    None => return Ok(None),
                },
                BinOp::IntDiv => match x.checked_div(y) {
                    Some(v) => Item::Integer(v.trunc().try_into().map_err(|_| overflow())?),
                    None => return Ok(None),
                },
                BinOp::Mod => match x.checked_rem(y) {
                    Some(v) => Item::Decimal(v),
                    None => return Ok(None),
                },
                _ => return Err(mismatch()),
            }
        }
        (BinOp::Add | BinOp::Sub, Date(v), Qty(q)) => {
            Item::Date(add_duration(&v, &q, op == BinOp::Sub)?)
        }
        (BinOp::Add | BinOp::Sub, DateTime(v), Qty(q)) => {
            Item::DateTime(add_duration(&v, &q, op == BinOp::Sub)?)
        }
        (BinOp::Add | BinOp::Sub, Time(v), Qty(q)) => {
            let mut r = add_duration(&v, &q, op == BinOp::Sub)?;
            r.year = 0;
            r.month = 1;
            r.day = 1;
            Item::Time(r)
        }
        (BinOp::Add | BinOp::Sub, Qty(x), Qty(y)) => {
            let yv = if x.unit == y.unit {
                y.value
            } else {
                let (Some((_, cx)), Some((yc, cy))) = (x.canonical(), y.canonical()) else {
                    return Err(mismatch());
                };
                if cx.dims != cy.dims || cx.calendar_months != cy.calendar_months {
                    return Err(mismatch());
                }
                yc.checked_div(cx.factor).ok_or_else(overflow)?
            };
            let v = if op == BinOp::Add {
                x.value.checked_add(yv)
            } else {
                x.value.checked_sub(yv)
            };
            Item::Quantity(Quantity {
                value: v.ok_or_else(overflow)?,
                unit: x.unit.clone(),
            })
        }
        (BinOp::Mul | BinOp::Div, Qty(x), Qty(y)) => match x.mul_div(&y, op == BinOp::Div) {
            Some(q) => Item::Quantity(q),
            None if op == BinOp::Div => return Ok(None),
            None => return Err(mismatch()),
        },
        (BinOp::Mul | BinOp::Div, Qty(x), n @ (Int(_) | Dec(_))) => {
            let n = match n {
                Int(i) => Decimal::from(i),
                Dec(d) => d,
                _ => Decimal::ZERO,
            };
            let v = if op == BinOp::Mul {
                x.value.checked_mul(n)
            } else {
                x.value.checked_div(n)
            };
            match v {
                Some(v) => Item::Quantity(Quantity {
                    value: v,
                    unit: x.unit.clone(),
                }),
                None => return Ok(None),
            }
        }
        (BinOp::Mul, n @ (Int(_) | Dec(_)), Qty(x)) => {
            let n = match n {
                Int(i) => Decimal::from(i),
                Dec(d) => d,
                _ => Decimal::ZERO,
            };
            Item::Quantity(Quantity {
                value: x.value.checked_mul(n).ok_or_else(overflow)?,
                unit: x.unit.clone(),
            })
        }
        _ => return Err(mismatch()),
    }))
}
