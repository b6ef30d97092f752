//! Non-iterating functions: collections, conversions, strings, math, boundaries.

use crate::datetime::{DateTimeValue, Temporal};
use crate::eval::{
    contains_item, single, singleton_bool, temporal_of, union_into, Coll, Evaluator, Scope,
};
use crate::item::{decimal_from_str, Item, NodeType, Prim};
use crate::ops::kind;
use crate::parser::{Expr, Func};
use crate::quantity::{is_calendar_keyword, Quantity};
use crate::EvalError;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use std::str::FromStr;

fn exec(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
}

fn one<'a>(b: bool) -> Result<Coll<'a>, EvalError> {
    Ok(vec![Item::Boolean(b)])
}

fn opt<'a>(i: Option<Item<'a>>) -> Result<Coll<'a>, EvalError> {
    Ok(i.into_iter().collect())
}

/// The input as a single string: `Ok(None)` when empty; error when not a string.
fn input_str<'x>(input: &'x [Item<'_>], f: &str) -> Result<Option<&'x str>, EvalError> {
    match single(input, f)? {
        None => Ok(None),
        Some(i) => i
            .as_str()
            .map(Some)
            .ok_or_else(|| exec(format!("{f}: input is a {}, not a string", kind(i)))),
    }
}

fn str_arg<'a>(
    ev: &Evaluator<'_, 'a>,
    args: &[Expr],
    i: usize,
    sc: Scope<'_, 'a>,
    f: &str,
) -> Result<Option<String>, EvalError> {
    let v = ev.arg(args, i, sc)?;
    match single(&v, f)? {
        None => Ok(None),
        Some(x) => x
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| exec(format!("{f}: argument is not a string"))),
    }
}

fn int_arg<'a>(
    ev: &Evaluator<'_, 'a>,
    args: &[Expr],
    i: usize,
    sc: Scope<'_, 'a>,
    f: &str,
) -> Result<Option<i64>, EvalError> {
    let v = ev.arg(args, i, sc)?;
    match single(&v, f)? {
        None => Ok(None),
        Some(x) => match x.prim() {
            Prim::Int(n) => Ok(Some(n)),
            _ => Err(exec(format!("{f}: argument is not an integer"))),
        },
    }
}

fn number_arg<'a>(
    ev: &Evaluator<'_, 'a>,
    args: &[Expr],
    i: usize,
    sc: Scope<'_, 'a>,
    f: &str,
) -> Result<Option<Decimal>, EvalError> {
    let v = ev.arg(args, i, sc)?;
    match single(&v, f)? {
        None => Ok(None),
        Some(x) => match x.prim() {
            Prim::Int(n) => Ok(Some(Decimal::from(n))),
            Prim::Dec(d) => Ok(Some(d)),
            _ => Err(exec(format!("{f}: argument is not a number"))),
        },
    }
}

fn regex(pattern: &str, full: bool) -> Result<regex::Regex, EvalError> {
    let p = if full {
        format!("(?s)^(?:{pattern})$")
    } else {
        format!("(?s){pattern}")
    };
    regex::RegexBuilder::new(&p)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| exec(format!("bad regex: {e}")))
}

pub(crate) fn call<'a>(
    ev: &Evaluator<'_, 'a>,
    f: &Func,
    args: &[Expr],
    input: Coll<'a>,
    sc: Scope<'_, 'a>,
) -> Result<Coll<'a>, EvalError> {
    match f {
        Func::Empty => one(input.is_empty()),
        Func::Count => Ok(vec![Item::Integer(input.len() as i64)]),
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut bools = Vec::with_capacity(input.len());
            for i in &input {
                match i.prim() {
                    Prim::Bool(b) => bools.push(b),
                    _ => return Err(exec(format!("{f:?}: {} is not a boolean", kind(i)))),
                }
            }
            one(match f {
                Func::AllTrue => bools.iter().all(|b| *b),
                Func::AnyTrue => bools.iter().any(|b| *b),
                Func::AllFalse => bools.iter().all(|b| !*b),
                _ => bools.iter().any(|b| !*b),
            })
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = ev.arg(args, 0, sc)?;
            let (small, big) = if matches!(f, Func::SubsetOf) {
                (&input, &other)
            } else {
                (&other, &input)
            };
            one(small.iter().all(|x| contains_item(big, x)))
        }
        Func::Distinct => {
            let mut out = Vec::with_capacity(input.len());
            union_into(&mut out, input);
            Ok(out)
        }
        Func::IsDistinct => {
            let n = input.len();
            let mut out = Vec::with_capacity(n);
            union_into(&mut out, input);
            one(out.len() == n)
        }
        Func::Single => Ok(single(&input, "single()")?.cloned().into_iter().collect()),
        Func::First => Ok(input.into_iter().take(1).collect()),
        Func::Last => Ok(input.into_iter().last().into_iter().collect()),
        Func::Tail => Ok(input.into_iter().skip(1).collect()),
        Func::Skip => {
            let n = int_arg(ev, args, 0, sc, "skip()")?.unwrap_or(0).max(0) as usize;
            Ok(input.into_iter().skip(n).collect())
        }
        Func::Take => {
            let n = int_arg(ev, args, 0, sc, "take()")?.unwrap_or(0).max(0) as usize;
            Ok(input.into_iter().take(n).collect())
        }
        Func::Intersect => {
            let other = ev.arg(args, 0, sc)?;
            let mut out = Vec::new();
            union_into(
                &mut out,
                input.into_iter().filter(|x| contains_item(&other, x)),
            );
            Ok(out)
        }
        Func::Exclude => {
            let other = ev.arg(args, 0, sc)?;
            Ok(input
                .into_iter()
                .filter(|x| !contains_item(&other, x))
                .collect())
        }
        Func::Union => {
            let other = ev.arg(args, 0, sc)?;
            let mut out = Vec::with_capacity(input.len() + other.len());
            union_into(&mut out, input);
            union_into(&mut out, other);
            Ok(out)
        }
        Func::Combine => {
            let mut out = input;
            out.extend(ev.arg(args, 0, sc)?);
            Ok(out)
        }
        Func::Not => Ok(singleton_bool(&input, "not()")?
            .map(|b| Item::Boolean(!b))
            .into_iter()
            .collect()),
        Func::HasValue => one(matches!(input.as_slice(), [i] if has_value(i))),
        Func::GetValue => Ok(match input.as_slice() {
            [i] if has_value(i) => system_value(i).into_iter().collect(),
            _ => Vec::new(),
        }),

        // Conversions.
        Func::ToBoolean => conv(&input, to_boolean),
        Func::ConvertsToBoolean => converts(&input, to_boolean),
        Func::ToInteger => conv(&input, to_integer),
        Func::ConvertsToInteger => converts(&input, to_integer),
        Func::ToDecimal => conv(&input, to_decimal),
        Func::ConvertsToDecimal => converts(&input, to_decimal),
        Func::ToStringFn => conv(&input, |i| i.to_display_string().map(|s| Item::string(&s))),
        Func::ConvertsToString => {
            converts(&input, |i| i.to_display_string().map(|s| Item::string(&s)))
        }
        Func::ToDate => conv(&input, to_date),
        Func::ConvertsToDate => converts(&input, to_date),
        Func::ToDateTime => conv(&input, to_date_time),
        Func::ConvertsToDateTime => converts(&input, to_date_time),
        Func::ToTime => conv(&input, to_time),
        Func::ConvertsToTime => converts(&input, to_time),
        Func::ToQuantity | Func::ConvertsToQuantity => {
            let unit = str_arg(ev, args, 0, sc, "toQuantity()")?;
            let Some(item) = single(&input, "toQuantity()")? else {
                return Ok(Vec::new());
            };
            let q = to_quantity(item).and_then(|q| match &unit {
                None => Some(q),
                Some(u) if *u == *q.unit => Some(q),
                Some(u) => {
                    let target = Quantity::new(Decimal::ONE, u);
                    let (_, tc) = target.canonical()?;
                    let (v, qc) = q.canonical()?;
                    (tc.dims == qc.dims && tc.calendar_months == qc.calendar_months)
                        .then(|| Quantity::new(v / tc.factor, u))
                }
            });
            if matches!(f, Func::ToQuantity) {
                opt(q.map(Item::Quantity))
            } else {
                one(q.is_some())
            }
        }

        // Strings.
        Func::IndexOf => {
            let Some(s) = input_str(&input, "indexOf()")? else {
                return Ok(Vec::new());
            };
            let Some(sub) = str_arg(ev, args, 0, sc, "indexOf()")? else {
                return Ok(Vec::new());
            };
            Ok(vec![Item::Integer(
                s.find(&sub)
                    .map(|b| s[..b].chars().count() as i64)
                    .unwrap_or(-1),
            )])
        }
        Func::Substring => {
            let Some(s) = input_str(&input, "substring()")? else {
                return Ok(Vec::new());
            };
            let Some(start) = int_arg(ev, args, 0, sc, "substring()")? else {
                return Ok(Vec::new());
            };
            let len = if args.len() > 1 {
                int_arg(ev, args, 1, sc, "substring()")?
            } else {
                None
            };
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(Vec::new());
            }
            let start = start as usize;
            let end = match len {
                Some(l) if l <= 0 => start,
                Some(l) => (start.saturating_add(l as usize)).min(chars.len()),
                None => chars.len(),
            };
            Ok(vec![Item::string(
                &chars[start..end].iter().collect::<String>(),
            )])
        }
        Func::StartsWith | Func::EndsWith | Func::ContainsStr => {
            let name = match f {
                Func::StartsWith => "startsWith()",
                Func::EndsWith => "endsWith()",
                _ => "contains()",
            };
            let Some(s) = input_str(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(arg) = str_arg(ev, args, 0, sc, name)? else {
                return Ok(Vec::new());
            };
            one(match f {
                Func::StartsWith => s.starts_with(&arg),
                Func::EndsWith => s.ends_with(&arg),
                _ => s.contains(&arg),
            })
        }
        Func::Upper | Func::Lower | Func::Trim | Func::Length | Func::ToChars => {
            let Some(s) = input_str(&input, "string function")? else {
                return Ok(Vec::new());
            };
            Ok(match f {
                Func::Upper => vec![Item::string(&s.to_uppercase())],
                Func::Lower => vec![Item::string(&s.to_lowercase())],
                Func::Trim => vec![Item::string(s.trim())],
                Func::Length => vec![Item::Integer(s.chars().count() as i64)],
                _ => s
                    .chars()
                    .map(|c| Item::string(c.encode_utf8(&mut [0; 4])))
                    .collect(),
            })
        }
        Func::Replace => {
            let Some(s) = input_str(&input, "replace()")? else {
                return Ok(Vec::new());
            };
            let (Some(pat), Some(rep)) = (
                str_arg(ev, args, 0, sc, "replace()")?,
                str_arg(ev, args, 1, sc, "replace()")?,
            ) else {
                return Ok(Vec::new());
            };
            let out = if pat.is_empty() {
                // Insert the replacement between every character.
                let mut o = rep.clone();
                for c in s.chars() {
                    o.push(c);
                    o.push_str(&rep);
                }
                o
            } else {
                s.replace(&pat, &rep)
            };
            Ok(vec![Item::string(&out)])
        }
        Func::Matches | Func::MatchesFull => {
            let Some(s) = input_str(&input, "matches()")? else {
                return Ok(Vec::new());
            };
            let Some(pat) = str_arg(ev, args, 0, sc, "matches()")? else {
                return Ok(Vec::new());
            };
            one(regex(&pat, matches!(f, Func::MatchesFull))?.is_match(s))
        }
        Func::ReplaceMatches => {
            let Some(s) = input_str(&input, "replaceMatches()")? else {
                return Ok(Vec::new());
            };
            let (Some(pat), Some(rep)) = (
                str_arg(ev, args, 0, sc, "replaceMatches()")?,
                str_arg(ev, args, 1, sc, "replaceMatches()")?,
            ) else {
                return Ok(Vec::new());
            };
            if pat.is_empty() {
                return Ok(vec![Item::string(s)]);
            }
            Ok(vec![Item::string(
                &regex(&pat, false)?.replace_all(s, rep.as_str()),
            )])
        }
        Func::Split => {
            let Some(s) = input_str(&input, "split()")? else {
                return Ok(Vec::new());
            };
            let Some(sep) = str_arg(ev, args, 0, sc, "split()")? else {
                return Ok(Vec::new());
            };
            if sep.is_empty() {
                return Ok(s
                    .chars()
                    .map(|c| Item::string(c.encode_utf8(&mut [0; 4])))
                    .collect());
            }
            Ok(s.split(sep.as_str()).map(Item::string).collect())
        }
        Func::Join => {
            let sep = str_arg(ev, args, 0, sc, "join()")?.unwrap_or_default();
            let mut parts = Vec::with_capacity(input.len());
            for i in &input {
                parts.push(
                    i.as_str()
                        .ok_or_else(|| exec("join(): items must be strings"))?,
                );
            }
            Ok(vec![Item::string(&parts.join(&sep))])
        }
        Func::Encode | Func::Decode | Func::Escape | Func::Unescape => {
            let Some(s) = input_str(&input, "encode()")? else {
                return Ok(Vec::new());
            };
            let Some(fmt) = str_arg(ev, args, 0, sc, "encode()")? else {
                return Ok(Vec::new());
            };
            let out = match f {
                Func::Encode => crate::codec::encode(s, &fmt),
                Func::Decode => crate::codec::decode(s, &fmt),
                Func::Escape => crate::codec::escape(s, &fmt),
                _ => crate::codec::unescape(s, &fmt),
            };
            opt(out.map(|s| Item::string(&s)))
        }

        // Math.
        Func::Abs
        | Func::Ceiling
        | Func::Floor
        | Func::Truncate
        | Func::Exp
        | Func::Ln
        | Func::Sqrt
        | Func::Round
        | Func::Log
        | Func::Power => {
            let Some(item) = single(&input, "math function")? else {
                return Ok(Vec::new());
            };
            math(ev, f, item, args, sc)
        }

        // Boundaries and precision.
        Func::LowBoundary | Func::HighBoundary => {
            let Some(item) = single(&input, "boundary")? else {
                return Ok(Vec::new());
            };
            let p = int_arg(ev, args, 0, sc, "boundary")?;
            let high = matches!(f, Func::HighBoundary);
            Ok(match item.prim() {
                Prim::Int(i) => dec_boundary(Decimal::from(i), p, high)
                    .map(Item::Decimal)
                    .into_iter()
                    .collect(),
                Prim::Dec(d) => dec_boundary(d, p, high)
                    .map(Item::Decimal)
                    .into_iter()
                    .collect(),
                Prim::Qty(q) => dec_boundary(q.value, p, high)
                    .map(|v| {
                        Item::Quantity(Quantity {
                            value: v,
                            unit: q.unit,
                        })
                    })
                    .into_iter()
                    .collect(),
                _ => match temporal_of(item) {
                    Some((v, k)) => v
                        .boundary(k, p, high)
                        .map(|(b, k)| match k {
                            Temporal::Date => Item::Date(b),
                            Temporal::DateTime => Item::DateTime(b),
                            Temporal::Time => Item::Time(b),
                        })
                        .into_iter()
                        .collect(),
                    None => return Err(exec(format!("boundary of a {}", kind(item)))),
                },
            })
        }
        Func::Precision => {
            let Some(item) = single(&input, "precision()")? else {
                return Ok(Vec::new());
            };
            Ok(match item.prim() {
                Prim::Int(_) => vec![Item::Integer(0)],
                Prim::Dec(d) => vec![Item::Integer(d.scale() as i64)],
                _ => match temporal_of(item) {
                    Some((v, k)) => vec![Item::Integer(v.precision_digits(k))],
                    None => return Err(exec(format!("precision() of a {}", kind(item)))),
                },
            })
        }
        Func::Comparable => {
            let other = ev.arg(args, 0, sc)?;
            let (Some(a), Some(b)) = (
                single(&input, "comparable()")?,
                single(&other, "comparable()")?,
            ) else {
                return Ok(Vec::new());
            };
            match (a.prim(), b.prim()) {
                (Prim::Qty(x), Prim::Qty(y)) => one(x.comparable(&y)),
                _ => Err(exec("comparable() needs quantities")),
            }
        }
        other => Err(EvalError::Unsupported(format!("{other:?}"))),
    }
}

fn has_value(i: &Item<'_>) -> bool {
    match i {
        Item::Node(n) => {
            matches!(n.ty, NodeType::Primitive(_)) && !n.json.is_null()
                || matches!(n.ty, NodeType::Untyped)
                    && !n.json.is_null()
                    && !n.json.is_object()
                    && !n.json.is_array()
        }
        Item::TypeInfo { .. } => false,
        _ => true,
    }
}

fn system_value(i: &Item<'_>) -> Option<Item<'static>> {
    Some(match i.prim() {
        Prim::Bool(b) => Item::Boolean(b),
        Prim::Int(n) => Item::Integer(n),
        Prim::Dec(d) => Item::Decimal(d),
        Prim::Str(s) => Item::string(s),
        Prim::Date(d) => Item::Date(d),
        Prim::DateTime(d) => Item::DateTime(d),
        Prim::Time(d) => Item::Time(d),
        Prim::Qty(q) => Item::Quantity(q),
        Prim::Other => return None,
    })
}

fn conv<'a>(
    input: &[Item<'a>],
    f: impl Fn(&Item<'a>) -> Option<Item<'a>>,
) -> Result<Coll<'a>, EvalError> {
    match single(input, "conversion")? {
        None => Ok(Vec::new()),
        Some(i) => Ok(f(i).into_iter().collect()),
    }
}

fn converts<'a>(
    input: &[Item<'a>],
    f: impl Fn(&Item<'a>) -> Option<Item<'a>>,
) -> Result<Coll<'a>, EvalError> {
    match single(input, "conversion")? {
        None => Ok(Vec::new()),
        Some(i) => one(f(i).is_some()),
    }
}

fn to_boolean<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    Some(Item::Boolean(match i.prim() {
        Prim::Bool(b) => b,
        Prim::Int(1) => true,
        Prim::Int(0) => false,
        Prim::Dec(d) if d == Decimal::ONE => true,
        Prim::Dec(d) if d.is_zero() => false,
        Prim::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => true,
            "false" | "f" | "no" | "n" | "0" | "0.0" => false,
            _ => return None,
        },
        _ => return None,
    }))
}

fn to_integer<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    Some(Item::Integer(match i.prim() {
        Prim::Int(n) => n,
        Prim::Bool(b) => b as i64,
        Prim::Str(s) => {
            let body = s.strip_prefix(['+', '-']).unwrap_or(s);
            if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    }))
}

fn to_decimal<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    Some(Item::Decimal(match i.prim() {
        Prim::Int(n) => Decimal::from(n),
        Prim::Dec(d) => d,
        Prim::Bool(b) => {
            if b {
                Decimal::new(10, 1)
            } else {
                Decimal::new(0, 1)
            }
        }
        Prim::Str(s) => decimal_from_str(s)?,
        _ => return None,
    }))
}

fn to_date<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    match i.prim() {
        Prim::Date(d) => Some(Item::Date(d)),
        Prim::DateTime(mut d) => {
            d.precision = d.precision.min(crate::datetime::Precision::Day);
            d.offset = None;
            Some(Item::Date(d))
        }
        Prim::Str(s) => match DateTimeValue::parse_date_time(s)? {
            (d, Temporal::Date) => Some(Item::Date(d)),
            (mut d, _) => {
                d.precision = d.precision.min(crate::datetime::Precision::Day);
                d.offset = None;
                Some(Item::Date(d))
            }
        },
        _ => None,
    }
}

fn to_date_time<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    match i.prim() {
        Prim::Date(d) | Prim::DateTime(d) => Some(Item::DateTime(d)),
        Prim::Str(s) => DateTimeValue::parse_date_time(s).map(|(d, _)| Item::DateTime(d)),
        _ => None,
    }
}

fn to_time<'a>(i: &Item<'a>) -> Option<Item<'a>> {
    match i.prim() {
        Prim::Time(t) => Some(Item::Time(t)),
        Prim::Str(s) => DateTimeValue::parse_time(s.strip_prefix('T').unwrap_or(s)).map(Item::Time),
        _ => None,
    }
}

/// Parses `1`, `1.5 'mg'`, `4 days` into a quantity.
fn parse_quantity(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let end = s
        .find(|c: char| c.is_whitespace() || c == '\'')
        .unwrap_or(s.len());
    let value = decimal_from_str(&s[..end])?;
    let rest = s[end..].trim();
    if rest.is_empty() {
        return Some(Quantity::new(value, "1"));
    }
    if let Some(unit) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if unit.contains('\'') {
            return None;
        }
        return Some(Quantity::new(value, unit));
    }
    is_calendar_keyword(rest).then(|| Quantity::new(value, rest))
}

fn to_quantity(i: &Item<'_>) -> Option<Quantity> {
    match i.prim() {
        Prim::Qty(q) => Some(q),
        Prim::Int(n) => Some(Quantity::new(Decimal::from(n), "1")),
        Prim::Dec(d) => Some(Quantity::new(d, "1")),
        Prim::Bool(b) => Some(Quantity::new(
            if b {
                Decimal::new(10, 1)
            } else {
                Decimal::new(0, 1)
            },
            "1",
        )),
        Prim::Str(s) => parse_quantity(s),
        _ => None,
    }
}

fn from_f64(x: f64) -> Option<Decimal> {
    if !x.is_finite() {
        return None;
    }
    Decimal::from_str(&format!("{x}"))
        .ok()
        .or_else(|| Decimal::from_scientific(&format!("{x:e}")).ok())
}

fn math<'a>(
    ev: &Evaluator<'_, 'a>,
    f: &Func,
    item: &Item<'a>,
    args: &[Expr],
    sc: Scope<'_, 'a>,
) -> Result<Coll<'a>, EvalError> {
    let p = item.prim();
    let not_number = || exec(format!("math function on a {}", kind(item)));
    let as_dec = |p: &Prim<'_>| match p {
        Prim::Int(n) => Some(Decimal::from(*n)),
        Prim::Dec(d) => Some(*d),
        _ => None,
    };
    let to_int = |d: Decimal| -> Result<Item<'a>, EvalError> {
        Ok(Item::Integer(
            d.to_i64().ok_or_else(|| exec("integer overflow"))?,
        ))
    };
    Ok(match f {
        Func::Abs => match p {
            Prim::Int(n) => vec![Item::Integer(
                n.checked_abs().ok_or_else(|| exec("overflow"))?,
            )],
            Prim::Dec(d) => vec![Item::Decimal(d.abs())],
            Prim::Qty(q) => vec![Item::Quantity(Quantity {
                value: q.value.abs(),
                unit: q.unit,
            })],
            _ => return Err(not_number()),
        },
        Func::Ceiling => vec![to_int(as_dec(&p).ok_or_else(not_number)?.ceil())?],
        Func::Floor => vec![to_int(as_dec(&p).ok_or_else(not_number)?.floor())?],
        Func::Truncate => vec![to_int(as_dec(&p).ok_or_else(not_number)?.trunc())?],
        Func::Round => {
            let d = as_dec(&p).ok_or_else(not_number)?;
            let digits = int_arg(ev, args, 0, sc, "round()")?.unwrap_or(0);
            if !(0..=28).contains(&digits) {
                return Err(exec("round(): precision out of range"));
            }
            vec![Item::Decimal(d.round_dp_with_strategy(
                digits as u32,
                RoundingStrategy::MidpointAwayFromZero,
            ))]
        }
        Func::Exp | Func::Ln | Func::Sqrt | Func::Log | Func::Power => {
            let d = as_dec(&p).ok_or_else(not_number)?;
            let x = d.to_f64().ok_or_else(not_number)?;
            let r = match f {
                Func::Exp => x.exp(),
                Func::Ln => x.ln(),
                Func::Sqrt => x.sqrt(),
                Func::Log => {
                    let Some(base) = number_arg(ev, args, 0, sc, "log()")? else {
                        return Ok(Vec::new());
                    };
                    x.log(base.to_f64().ok_or_else(not_number)?)
                }
                _ => {
                    let Some(e) = number_arg(ev, args, 0, sc, "power()")? else {
                        return Ok(Vec::new());
                    };
                    if let (Prim::Int(b), Some(e)) =
                        (&p, e.to_i64().filter(|_| e.fract().is_zero()))
                    {
                        if (0..=u32::MAX as i64).contains(&e) {
                            return Ok(b
                                .checked_pow(e as u32)
                                .map(Item::Integer)
                                .into_iter()
                                .collect());
                        }
                    }
                    x.powf(e.to_f64().ok_or_else(not_number)?)
                }
            };
            from_f64(r).map(Item::Decimal).into_iter().collect()
        }
        _ => return Err(not_number()),
    })
}

/// `lowBoundary`/`highBoundary` of a decimal: the range its written precision
/// allows, at `precision` digits (default 8).
fn dec_boundary(v: Decimal, precision: Option<i64>, high: bool) -> Option<Decimal> {
    let p = precision.unwrap_or(8);
    if !(0..=28).contains(&p) {
        return None;
    }
    let p = p as u32;
    let neg = v.is_sign_negative() && !v.is_zero();
    let a = v.abs();
    let half = Decimal::new(5, (a.scale() + 1).min(28));
    // For negatives, the low boundary is the negated high boundary of the magnitude.
    let up = high != neg;
    let mut r = if up {
        a.checked_add(half)?
            .round_dp_with_strategy(p, RoundingStrategy::MidpointAwayFromZero)
    } else {
        a.checked_sub(half)?
            .round_dp_with_strategy(p, RoundingStrategy::ToZero)
    };
    r.rescale(p);
    if neg {
        r.set_sign_negative(true);
    }
    Some(r)
}
