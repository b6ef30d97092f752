//! Lexer and precedence-climbing parser producing a compiled expression tree:
//! function names, type specifiers and built-in constants are resolved here, once.

use crate::datetime::{DateTimeValue, Temporal};
use crate::item::{decimal_from_str, Item};
use crate::quantity::{is_calendar_keyword, Quantity};
use crate::types::TypeSpec;
use crate::ParseError;

/// Deepest nesting of sub-expressions accepted while parsing.
pub(crate) const MAX_DEPTH: usize = 96;
/// Greatest height of the expression tree (bounds evaluation recursion).
pub(crate) const MAX_HEIGHT: u32 = 128;
/// Longest expression text accepted.
pub(crate) const MAX_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Backtick-delimited identifier (never a keyword).
    QIdent(String),
    Str(String),
    Num(String),
    /// Text after `@`.
    DateLit(String),
    /// `$this`, `$index`, `$total`.
    Dollar(String),
    /// `%name`, `%'name'`, `` %`name` ``.
    Percent(String),
    Op(&'static str),
    Eof,
}

struct Lexer<'s> {
    src: &'s str,
    b: &'s [u8],
    pos: usize,
}

fn err(message: impl Into<String>, position: usize) -> ParseError {
    ParseError {
        message: message.into(),
        position,
    }
}

impl<'s> Lexer<'s> {
    fn skip_ws(&mut self) -> Result<(), ParseError> {
        loop {
            while self.pos < self.b.len() && self.b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.b[self.pos..].starts_with(b"//") {
                while self.pos < self.b.len() && self.b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if self.b[self.pos..].starts_with(b"/*") {
                let start = self.pos;
                match self.src[self.pos + 2..].find("*/") {
                    Some(end) => self.pos += 2 + end + 2,
                    None => return Err(err("unterminated comment", start)),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn quoted(&mut self, quote: u8) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = &self.src[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err(err("unterminated string", start));
            };
            self.pos += c.len_utf8();
            if c as u32 == quote as u32 {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.src[self.pos..].chars().next() else {
                return Err(err("unterminated escape", start));
            };
            self.pos += e.len_utf8();
            match e {
                '\'' | '"' | '`' | '\\' | '/' => out.push(e),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex = self
                        .src
                        .get(self.pos..self.pos + 4)
                        .ok_or_else(|| err("bad \\u escape", self.pos))?;
                    let code = u32::from_str_radix(hex, 16)
                        .map_err(|_| err("bad \\u escape", self.pos))?;
                    self.pos += 4;
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                _ => return Err(err(format!("unknown escape \\{e}"), self.pos)),
            }
        }
    }

    fn ident(&mut self) -> String {
        let start = self.pos;
        while self.pos < self.b.len()
            && (self.b[self.pos].is_ascii_alphanumeric() || self.b[self.pos] == b'_')
        {
            self.pos += 1;
        }
        self.src[start..self.pos].to_string()
    }

    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        self.skip_ws()?;
        let start = self.pos;
        let Some(&c) = self.b.get(self.pos) else {
            return Ok((Tok::Eof, start));
        };
        let tok = match c {
            b'\'' => Tok::Str(self.quoted(b'\'')?),
            b'`' => Tok::QIdent(self.quoted(b'`')?),
            b'0'..=b'9' => {
                while self.pos < self.b.len() && self.b[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                if self.pos + 1 < self.b.len()
                    && self.b[self.pos] == b'.'
                    && self.b[self.pos + 1].is_ascii_digit()
                {
                    self.pos += 1;
                    while self.pos < self.b.len() && self.b[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                }
                Tok::Num(self.src[start..self.pos].to_string())
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => Tok::Ident(self.ident()),
            b'@' => {
                self.pos += 1;
                let s = self.pos;
                while self.pos < self.b.len() {
                    let ch = self.b[self.pos];
                    let next_digit = self.b.get(self.pos + 1).is_some_and(u8::is_ascii_digit);
                    let ok = ch.is_ascii_digit()
                        || ch == b':'
                        || ch == b'T'
                        || ch == b'Z'
                        || ((ch == b'.' || ch == b'-' || ch == b'+') && next_digit);
                    if !ok {
                        break;
                    }
                    self.pos += 1;
                }
                if s == self.pos {
                    return Err(err("empty date/time literal", start));
                }
                Tok::DateLit(self.src[s..self.pos].to_string())
            }
            b'$' => {
                self.pos += 1;
                let name = self.ident();
                if !matches!(name.as_str(), "this" | "index" | "total") {
                    return Err(err(format!("unknown ${name}"), start));
                }
                Tok::Dollar(name)
            }
            b'%' => {
                self.pos += 1;
                match self.b.get(self.pos) {
                    Some(b'\'') => Tok::Percent(self.quoted(b'\'')?),
                    Some(b'`') => Tok::Percent(self.quoted(b'`')?),
                    Some(c) if c.is_ascii_alphabetic() || *c == b'_' => Tok::Percent(self.ident()),
                    _ => return Err(err("bad %variable", start)),
                }
            }
            _ => {
                let two = self.src.get(self.pos..self.pos + 2).unwrap_or("");
                let op: &'static str = match two {
                    "!=" => "!=",
                    "!~" => "!~",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => match c {
                        b'.' => ".",
                        b',' => ",",
                        b'(' => "(",
                        b')' => ")",
                        b'[' => "[",
                        b']' => "]",
                        b'{' => "{",
                        b'}' => "}",
                        b'+' => "+",
                        b'-' => "-",
                        b'*' => "*",
                        b'/' => "/",
                        b'|' => "|",
                        b'&' => "&",
                        b'=' => "=",
                        b'~' => "~",
                        b'<' => "<",
                        b'>' => ">",
                        _ => {
                            let ch = self.src[self.pos..].chars().next().unwrap_or('?');
                            return Err(err(format!("unexpected character {ch:?}"), start));
                        }
                    },
                };
                self.pos += op.len();
                Tok::Op(op)
            }
        };
        Ok((tok, start))
    }
}

/// A member name, with its `_name` primitive-extension key precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Name {
    pub name: Box<str>,
    pub underscore: Box<str>,
    /// Starts with an upper-case letter: at the start of a path, a type name.
    pub type_like: bool,
}

impl Name {
    fn new(name: String) -> Name {
        Name {
            underscore: format!("_{name}").into_boxed_str(),
            type_like: name.starts_with(|c: char| c.is_ascii_uppercase()),
            name: name.into_boxed_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Eq,
    Equiv,
    Ne,
    NotEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
    IntDiv,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvVar {
    Resource,
    Context,
    RootResource,
}

/// Built-in functions, resolved at parse time.
#[derive(Debug, Clone)]
pub(crate) enum Func {
    Empty,
    Exists,
    All,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    SubsetOf,
    SupersetOf,
    Count,
    Distinct,
    IsDistinct,
    Where,
    Select,
    Repeat,
    OfType(TypeSpec),
    Is(TypeSpec),
    As(TypeSpec),
    Single,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Intersect,
    Exclude,
    Union,
    Combine,
    Iif,
    Not,
    ToBoolean,
    ConvertsToBoolean,
    ToInteger,
    ConvertsToInteger,
    ToDecimal,
    ConvertsToDecimal,
    ToStringFn,
    ConvertsToString,
    ToDate,
    ConvertsToDate,
    ToDateTime,
    ConvertsToDateTime,
    ToTime,
    ConvertsToTime,
    ToQuantity,
    ConvertsToQuantity,
    IndexOf,
    Substring,
    StartsWith,
    EndsWith,
    ContainsStr,
    Upper,
    Lower,
    Replace,
    Matches,
    MatchesFull,
    ReplaceMatches,
    Length,
    ToChars,
    Trim,
    Split,
    Join,
    Encode,
    Decode,
    Escape,
    Unescape,
    Abs,
    Ceiling,
    Exp,
    Floor,
    Ln,
    Log,
    Power,
    Round,
    Sqrt,
    Truncate,
    Children,
    Descendants,
    Trace,
    Now,
    TimeOfDay,
    Today,
    TypeFn,
    Aggregate,
    Extension,
    HasValue,
    GetValue,
    Resolve,
    MemberOf,
    ConformsTo,
    LowBoundary,
    HighBoundary,
    Precision,
    Comparable,
    Sort,
}

fn lookup_func(name: &str) -> Option<(Func, usize, usize)> {
    use Func::*;
    Some(match name {
        "empty" => (Empty, 0, 0),
        "exists" => (Exists, 0, 1),
        "all" => (All, 1, 1),
        "allTrue" => (AllTrue, 0, 0),
        "anyTrue" => (AnyTrue, 0, 0),
        "allFalse" => (AllFalse, 0, 0),
        "anyFalse" => (AnyFalse, 0, 0),
        "subsetOf" => (SubsetOf, 1, 1),
        "supersetOf" => (SupersetOf, 1, 1),
        "count" => (Count, 0, 0),
        "distinct" => (Distinct, 0, 0),
        "isDistinct" => (IsDistinct, 0, 0),
        "where" => (Where, 1, 1),
        "select" => (Select, 1, 1),
        "repeat" => (Repeat, 1, 1),
        "single" => (Single, 0, 0),
        "first" => (First, 0, 0),
        "last" => (Last, 0, 0),
        "tail" => (Tail, 0, 0),
        "skip" => (Skip, 1, 1),
        "take" => (Take, 1, 1),
        "intersect" => (Intersect, 1, 1),
        "exclude" => (Exclude, 1, 1),
        "union" => (Union, 1, 1),
        "combine" => (Combine, 1, 1),
        "iif" => (Iif, 2, 3),
        "not" => (Not, 0, 0),
        "toBoolean" => (ToBoolean, 0, 0),
        "convertsToBoolean" => (ConvertsToBoolean, 0, 0),
        "toInteger" => (ToInteger, 0, 0),
        "convertsToInteger" => (ConvertsToInteger, 0, 0),
        "toDecimal" => (ToDecimal, 0, 0),
        "convertsToDecimal" => (ConvertsToDecimal, 0, 0),
        "toString" => (ToStringFn, 0, 0),
        "convertsToString" => (ConvertsToString, 0, 0),
        "toDate" => (ToDate, 0, 0),
        "convertsToDate" => (ConvertsToDate, 0, 0),
        "toDateTime" => (ToDateTime, 0, 0),
        "convertsToDateTime" => (ConvertsToDateTime, 0, 0),
        "toTime" => (ToTime, 0, 0),
        "convertsToTime" => (ConvertsToTime, 0, 0),
        "toQuantity" => (ToQuantity, 0, 1),
        "convertsToQuantity" => (ConvertsToQuantity, 0, 1),
        "indexOf" => (IndexOf, 1, 1),
        "substring" => (Substring, 1, 2),
        "startsWith" => (StartsWith, 1, 1),
        "endsWith" => (EndsWith, 1, 1),
        "contains" => (ContainsStr, 1, 1),
        "upper" => (Upper, 0, 0),
        "lower" => (Lower, 0, 0),
        "replace" => (Replace, 2, 2),
        "matches" => (Matches, 1, 1),
        "matchesFull" => (MatchesFull, 1, 1),
        "replaceMatches" => (ReplaceMatches, 2, 2),
        "length" => (Length, 0, 0),
        "toChars" => (ToChars, 0, 0),
        "trim" => (Trim, 0, 0),
        "split" => (Split, 1, 1),
        "join" => (Join, 0, 1),
        "encode" => (Encode, 1, 1),
        "decode" => (Decode, 1, 1),
        "escape" => (Escape, 1, 1),
        "unescape" => (Unescape, 1, 1),
        "abs" => (Abs, 0, 0),
        "ceiling" => (Ceiling, 0, 0),
        "exp" => (Exp, 0, 0),
        "floor" => (Floor, 0, 0),
        "ln" => (Ln, 0, 0),
        "log" => (Log, 1, 1),
        "power" => (Power, 1, 1),
        "round" => (Round, 0, 1),
        "sqrt" => (Sqrt, 0, 0),
        "truncate" => (Truncate, 0, 0),
        "children" => (Children, 0, 0),
        "descendants" => (Descendants, 0, 0),
        "trace" => (Trace, 1, 2),
        "now" => (Now, 0, 0),
        "timeOfDay" => (TimeOfDay, 0, 0),
        "today" => (Today, 0, 0),
        "type" => (TypeFn, 0, 0),
        "aggregate" => (Aggregate, 1, 2),
        "extension" => (Extension, 1, 1),
        "hasValue" => (HasValue, 0, 0),
        "getValue" => (GetValue, 0, 0),
        "resolve" => (Resolve, 0, 0),
        "memberOf" => (MemberOf, 1, 1),
        "conformsTo" => (ConformsTo, 1, 1),
        "lowBoundary" => (LowBoundary, 0, 1),
        "highBoundary" => (HighBoundary, 0, 1),
        "precision" => (Precision, 0, 0),
        "comparable" => (Comparable, 1, 1),
        "sort" => (Sort, 0, usize::MAX),
        _ => return None,
    })
}

/// The compiled expression tree.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Item<'static>),
    Empty,
    This,
    Index,
    Total,
    Env(EnvVar),
    Var(Box<str>),
    /// An identifier starting a path: a type name matching `$this`, or a member of it.
    Ident(Name),
    Member(Box<Expr>, Name),
    /// `target.f(args)`; without a target, `f` applies to `$this`.
    Call(Option<Box<Expr>>, Func, Vec<Expr>),
    Indexer(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
    /// An expression a type checker rejects (a member the cast type does not have, an
    /// ordered function on an unordered collection): an error in strict mode.
    StrictError(Box<Expr>, Box<str>),
}

struct Parser<'s> {
    lex: Lexer<'s>,
    tok: Tok,
    pos: usize,
    depth: usize,
    /// Height of the tree last returned by a parse function.
    h: u32,
}

pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_LEN {
        return Err(err("expression too long", 0));
    }
    let mut lex = Lexer {
        src,
        b: src.as_bytes(),
        pos: 0,
    };
    let (tok, pos) = lex.next()?;
    let mut p = Parser {
        lex,
        tok,
        pos,
        depth: 0,
        h: 0,
    };
    let e = p.expr(0)?;
    if p.tok != Tok::Eof {
        return Err(err(format!("unexpected {}", p.describe()), p.pos));
    }
    Ok(e)
}

fn binop_of(tok: &Tok) -> Option<(BinOp, u8)> {
    Some(match tok {
        Tok::Ident(s) => match s.as_str() {
            "implies" => (BinOp::Implies, 1),
            "or" => (BinOp::Or, 2),
            "xor" => (BinOp::Xor, 2),
            "and" => (BinOp::And, 3),
            "in" => (BinOp::In, 4),
            "contains" => (BinOp::Contains, 4),
            "div" => (BinOp::IntDiv, 10),
            "mod" => (BinOp::Mod, 10),
            _ => return None,
        },
        Tok::Op(op) => match *op {
            "=" => (BinOp::Eq, 5),
            "~" => (BinOp::Equiv, 5),
            "!=" => (BinOp::Ne, 5),
            "!~" => (BinOp::NotEquiv, 5),
            "<" => (BinOp::Lt, 6),
            "<=" => (BinOp::Le, 6),
            ">" => (BinOp::Gt, 6),
            ">=" => (BinOp::Ge, 6),
            "|" => (BinOp::Union, 7),
            "+" => (BinOp::Add, 9),
            "-" => (BinOp::Sub, 9),
            "&" => (BinOp::Concat, 9),
            "*" => (BinOp::Mul, 10),
            "/" => (BinOp::Div, 10),
            _ => return None,
        },
        _ => return None,
    })
}

const TYPE_BP: u8 = 8;
const UNARY_BP: u8 = 11;

impl<'s> Parser<'s> {
    fn advance(&mut self) -> Result<Tok, ParseError> {
        let (tok, pos) = self.lex.next()?;
        self.pos = pos;
        Ok(std::mem::replace(&mut self.tok, tok))
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Eof => "end of expression".into(),
            Tok::Op(o) => format!("'{o}'"),
            Tok::Ident(s) | Tok::QIdent(s) => format!("identifier '{s}'"),
            Tok::Str(_) => "string".into(),
            Tok::Num(n) => format!("number {n}"),
            Tok::DateLit(d) => format!("@{d}"),
            Tok::Dollar(d) => format!("${d}"),
            Tok::Percent(v) => format!("%{v}"),
        }
    }

    /// Sets the current height, refusing trees too tall to evaluate safely.
    fn set_height(&mut self, h: u32) -> Result<(), ParseError> {
        if h > MAX_HEIGHT {
            return Err(err("expression nested too deeply", self.pos));
        }
        self.h = h;
        Ok(())
    }

    fn expect(&mut self, op: &'static str) -> Result<(), ParseError> {
        if self.tok == Tok::Op(op) {
            self.advance()?;
            Ok(())
        } else {
            Err(err(
                format!("expected '{op}', found {}", self.describe()),
                self.pos,
            ))
        }
    }

    fn expr(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err("expression nested too deeply", self.pos));
        }
        let mut lhs = self.unary()?;
        let mut lhs_h = self.h;
        loop {
            if let Tok::Ident(s) = &self.tok {
                if (s == "is" || s == "as") && TYPE_BP > min_bp {
                    let is = s == "is";
                    self.advance()?;
                    let spec = self.type_specifier()?;
                    lhs = if is {
                        Expr::Is(Box::new(lhs), spec)
                    } else {
                        Expr::As(Box::new(lhs), spec)
                    };
                    lhs_h += 1;
                    self.set_height(lhs_h)?;
                    continue;
                }
            }
            let Some((op, bp)) = binop_of(&self.tok) else {
                break;
            };
            if bp <= min_bp {
                break;
            }
            self.advance()?;
            let rhs = self.expr(bp)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
            lhs_h = lhs_h.max(self.h) + 1;
            self.set_height(lhs_h)?;
        }
        self.depth -= 1;
        self.set_height(lhs_h)?;
        Ok(lhs)
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, ParseError> {
        let first = match self.advance()? {
            Tok::Ident(s) | Tok::QIdent(s) => s,
            _ => return Err(err("expected a type name", self.pos)),
        };
        let mut parts = vec![first];
        if (parts[0] == "System" || parts[0] == "FHIR") && self.tok == Tok::Op(".") {
            self.advance()?;
            match self.advance()? {
                Tok::Ident(s) | Tok::QIdent(s) => parts.push(s),
                _ => return Err(err("expected a type name", self.pos)),
            }
        }
        Ok(TypeSpec::resolve(&parts))
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.tok {
            Tok::Op("-") | Tok::Op("+") => {
                let neg = self.tok == Tok::Op("-");
                self.advance()?;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(err("expression nested too deeply", self.pos));
                }
                let operand = self.expr(UNARY_BP)?;
                self.depth -= 1;
                if !neg {
                    return Ok(operand);
                }
                let h = self.h;
                self.set_height(h + 1)?;
                Ok(match operand {
                    Expr::Lit(Item::Integer(i)) => Expr::Lit(Item::Integer(-i)),
                    Expr::Lit(Item::Decimal(d)) => Expr::Lit(Item::Decimal(-d)),
                    Expr::Lit(Item::Quantity(q)) => Expr::Lit(Item::Quantity(Quantity {
                        value: -q.value,
                        unit: q.unit,
                    })),
                    other => Expr::Neg(Box::new(other)),
                })
            }
            _ => {
                let term = self.term()?;
                self.postfix(term)
            }
        }
    }

    fn postfix(&mut self, mut e: Expr) -> Result<Expr, ParseError> {
        let mut h = self.h;
        loop {
            match self.tok {
                Tok::Op(".") => {
                    self.advance()?;
                    let name = match self.advance()? {
                        Tok::Ident(s) | Tok::QIdent(s) => s,
                        _ => return Err(err("expected a name after '.'", self.pos)),
                    };
                    if self.tok == Tok::Op("(") {
                        let unordered =
                            matches!(&e, Expr::Call(_, Func::Children | Func::Descendants, _));
                        e = self.call(Some(Box::new(e)), &name, h)?;
                        h = self.h;
                        if unordered
                            && matches!(
                                name.as_str(),
                                "skip" | "take" | "first" | "last" | "tail" | "single"
                            )
                        {
                            e = Expr::StrictError(
                                Box::new(e),
                                format!("{name}() on an unordered collection").into(),
                            );
                        }
                    } else {
                        let problem = missing_element(&e, &name);
                        e = Expr::Member(Box::new(e), Name::new(name));
                        if let Some(problem) = problem {
                            e = Expr::StrictError(Box::new(e), problem.into());
                        }
                        h += 1;
                    }
                    self.set_height(h)?;
                }
                Tok::Op("[") => {
                    self.advance()?;
                    self.depth += 1;
                    let index = self.expr(0)?;
                    self.depth -= 1;
                    self.expect("]")?;
                    e = Expr::Indexer(Box::new(e), Box::new(index));
                    h = h.max(self.h) + 1;
                    self.set_height(h)?;
                }
                _ => {
                    self.set_height(h)?;
                    return Ok(e);
                }
            }
        }
    }

    fn call(
        &mut self,
        target: Option<Box<Expr>>,
        name: &str,
        target_h: u32,
    ) -> Result<Expr, ParseError> {
        let at = self.pos;
        self.expect("(")?;
        let mut args = Vec::new();
        let mut h = target_h;
        if self.tok != Tok::Op(")") {
            loop {
                self.depth += 1;
                args.push(self.expr(0)?);
                h = h.max(self.h);
                self.depth -= 1;
                if self.tok == Tok::Op(",") {
                    self.advance()?;
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        self.set_height(h + 1)?;
        if matches!(name, "is" | "as" | "ofType") {
            if args.len() != 1 {
                return Err(err(format!("{name}() takes one type argument"), at));
            }
            let spec = type_of_arg(&args[0])
                .ok_or_else(|| err(format!("{name}() needs a type name"), at))?;
            let f = match name {
                "is" => Func::Is(spec),
                "as" => Func::As(spec),
                _ => Func::OfType(spec),
            };
            return Ok(Expr::Call(target, f, Vec::new()));
        }
        let (func, min, max) =
            lookup_func(name).ok_or_else(|| err(format!("unknown function {name}()"), at))?;
        if args.len() < min || args.len() > max {
            return Err(err(format!("wrong number of arguments to {name}()"), at));
        }
        Ok(Expr::Call(target, func, args))
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let at = self.pos;
        self.h = 1;
        match self.advance()? {
            Tok::Op("(") => {
                self.depth += 1;
                let e = self.expr(0)?;
                self.depth -= 1;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("{") => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Str(s) => Ok(Expr::Lit(Item::string(&s))),
            Tok::Num(n) => {
                let unit = match &self.tok {
                    Tok::Str(u) => Some(u.clone()),
                    Tok::Ident(u) if is_calendar_keyword(u) => Some(u.clone()),
                    _ => None,
                };
                if let Some(unit) = unit {
                    self.advance()?;
                    let value = decimal_from_str(&n).ok_or_else(|| err("bad number", at))?;
                    return Ok(Expr::Lit(Item::Quantity(Quantity::new(value, &unit))));
                }
                if n.contains('.') {
                    let d = decimal_from_str(&n).ok_or_else(|| err("bad decimal", at))?;
                    Ok(Expr::Lit(Item::Decimal(d)))
                } else {
                    match n.parse::<i64>() {
                        Ok(i) => Ok(Expr::Lit(Item::Integer(i))),
                        Err(_) => decimal_from_str(&n)
                            .map(|d| Expr::Lit(Item::Decimal(d)))
                            .ok_or_else(|| err("number too large", at)),
                    }
                }
            }
            Tok::DateLit(d) => {
                date_literal(&d).ok_or_else(|| err(format!("bad date/time literal @{d}"), at))
            }
            Tok::Dollar(d) => Ok(match d.as_str() {
                "this" => Expr::This,
                "index" => Expr::Index,
                _ => Expr::Total,
            }),
            Tok::Percent(v) => Ok(variable(&v)),
            Tok::Ident(s) => {
                if self.tok == Tok::Op("(") {
                    return self.call(None, &s, 0);
                }
                match s.as_str() {
                    "true" => Ok(Expr::Lit(Item::Boolean(true))),
                    "false" => Ok(Expr::Lit(Item::Boolean(false))),
                    _ => Ok(Expr::Ident(Name::new(s))),
                }
            }
            Tok::QIdent(s) => Ok(Expr::Ident(Name::new(s))),
            Tok::Eof => Err(err("unexpected end of expression", at)),
            Tok::Op(o) => Err(err(format!("unexpected '{o}'"), at)),
        }
    }
}

fn type_of_arg(e: &Expr) -> Option<TypeSpec> {
    match e {
        Expr::Ident(n) => Some(TypeSpec::resolve(&[n.name.to_string()])),
        Expr::Member(inner, n) => match &**inner {
            Expr::Ident(ns) => Some(TypeSpec::resolve(&[
                ns.name.to_string(),
                n.name.to_string(),
            ])),
            _ => None,
        },
        _ => None,
    }
}

fn date_literal(text: &str) -> Option<Expr> {
    if let Some(t) = text.strip_prefix('T') {
        return DateTimeValue::parse_time(t).map(|v| Expr::Lit(Item::Time(v)));
    }
    let (v, kind) = DateTimeValue::parse_date_time(text)?;
    Some(Expr::Lit(match kind {
        Temporal::Date => Item::Date(v),
        _ => Item::DateTime(v),
    }))
}

fn variable(name: &str) -> Expr {
    let lit = |s: &str| Expr::Lit(Item::string(s));
    match name {
        "resource" => Expr::Env(EnvVar::Resource),
        "context" => Expr::Env(EnvVar::Context),
        "rootResource" => Expr::Env(EnvVar::RootResource),
        "ucum" => lit("http://unitsofmeasure.org"),
        "sct" => lit("http://snomed.info/sct"),
        "loinc" => lit("http://loinc.org"),
        _ => {
            if let Some(vs) = name.strip_prefix("vs-") {
                lit(&format!("http://hl7.org/fhir/ValueSet/{vs}"))
            } else if let Some(ext) = name.strip_prefix("ext-") {
                lit(&format!("http://hl7.org/fhir/StructureDefinition/{ext}"))
            } else {
                Expr::Var(name.into())
            }
        }
    }
}

/// When `target` is a cast to a FHIR type (`x as Period`, `x.ofType(Period)`) that has no
/// element `name`, the reason (reported in strict mode).
fn missing_element(target: &Expr, name: &str) -> Option<String> {
    use crate::types::FhirType;
    let spec = match target {
        Expr::As(_, spec) => spec,
        Expr::Call(_, Func::As(spec) | Func::OfType(spec), _) => spec,
        _ => return None,
    };
    let (TypeSpec::Fhir(FhirType::Complex(td)) | TypeSpec::Either(_, FhirType::Complex(td))) = spec
    else {
        return None;
    };
    td.element(name)
        .is_none()
        .then(|| format!("{} has no element {name}", td.name))
}
