//! FHIRPath (N1, as used by FHIR R4 4.0.1) over JSON resources.
//!
//! The evaluator works directly on borrowed [`serde_json::Value`] resources, typed with the
//! shipped R4 definitions of `tessera-fhir`. Its first consumer is search-parameter index
//! extraction: every `expression` of the R4 search parameters parses and evaluates, and
//! typical expressions take about a microsecond on a resource.
//!
//! # API
//!
//! Parse once, evaluate many times:
//!
//! ```
//! use tessera_fhirpath::{Context, Expression, Item};
//! let expr = Expression::parse("Patient.name.where(use = 'official').given").unwrap();
//! let patient = serde_json::json!({
//!     "resourceType": "Patient",
//!     "name": [{"use": "official", "given": ["Peter", "James"]}, {"use": "usual", "given": ["Jim"]}]
//! });
//! let given = expr.evaluate(&patient, &Context::new()).unwrap();
//! assert_eq!(given.len(), 2);
//! assert!(matches!(&given[0], Item::Node(n) if n.type_name() == "string" && n.json() == "Peter"));
//! ```
//!
//! * [`Expression::parse`] compiles the text: function names, arities, type specifiers and
//!   the built-in constants (`%ucum`, `%sct`, `%loinc`, `%vs-x`, `%ext-x`) are resolved once.
//! * [`Expression::evaluate`] returns a collection of [`Item`]s: a [`Node`] borrowed from the
//!   resource together with its FHIR type (`Quantity`, `dateTime`, `Patient`, …), or a
//!   computed System value (`Boolean`, `Integer`, `Decimal`, `String`, `Date`, `DateTime`,
//!   `Time`, `Quantity`).
//! * [`Context`] carries user variables (`%name`), strict mode, a fixed "now" and a trace
//!   callback. `%resource`, `%rootResource` and `%context` are the evaluated resource.
//!
//! # Supported
//!
//! * Paths with FHIR typing: choice elements (`Observation.value` finds `valueQuantity`),
//!   primitive extensions (`birthDate.extension(…)` reads `_birthDate`), the resource type as
//!   first step (`Patient.name`; `Resource`/`DomainResource` match any resource), contained and
//!   Bundle resources typed by `resourceType`.
//! * Operators: `.` `[]` unary `-`/`+`, `* / div mod`, `+ - &`, `is as`, `|`, `< <= > >=`,
//!   `= ~ != !~`, `in contains`, `and`, `or xor`, `implies` (three-valued logic), with date/time
//!   precision semantics and calendar-duration arithmetic.
//! * Functions: existence (`empty exists all allTrue anyTrue allFalse anyFalse subsetOf
//!   supersetOf count distinct isDistinct`), filtering (`where select repeat ofType`),
//!   subsetting (`single first last tail skip take intersect exclude`), combining (`union
//!   combine`), `iif`, `not`, conversions (`toX`/`convertsToX` for Boolean, Integer, Decimal,
//!   String, Date, DateTime, Time, Quantity), strings (`indexOf substring startsWith endsWith
//!   contains upper lower replace matches matchesFull replaceMatches length toChars trim split
//!   join encode decode escape unescape`), math (`abs ceiling exp floor ln log power round sqrt
//!   truncate`), tree (`children descendants`), `trace now today timeOfDay type aggregate sort
//!   is as`, FHIR (`extension hasValue getValue resolve conformsTo`), and `lowBoundary
//!   highBoundary precision comparable`.
//! * `resolve()` cannot fetch: a contained reference (`#id`) resolves to the contained
//!   resource, a reference to a `fullUrl` of the evaluated Bundle to that entry, and any other
//!   literal reference (`Patient/1`, absolute URLs, or a `type`) to a placeholder node of the
//!   referenced type, so `where(resolve() is Patient)` and `resolve().ofType(Patient)` work.
//! * Quantities: UCUM units of mass, length, volume, time, amount and a few customary units
//!   are converted for comparison and arithmetic; the calendar keywords `week(s)`, `day(s)`,
//!   `hour(s)`, `minute(s)`, `second(s)`, `millisecond(s)` equal their UCUM units, while
//!   `year(s)`/`month(s)` only compare with each other.
//!
//! # Not supported
//!
//! * `memberOf()` (needs a terminology service) returns [`EvalError::Unsupported`], as does
//!   `conformsTo()` for profiles other than the core resource definitions.
//! * Static type checking: errors that need the expression's types before evaluation
//!   (`(Observation.value as Period).unit`, ordered functions on unordered collections) are not
//!   reported. Strict mode ([`Context::strict`]) reports unknown element names and type names
//!   while evaluating.
//! * UCUM beyond the listed units (no special units such as `Cel` or `[degF]`, no annotations).
//!
//! # Invariants
//!
//! * Never panics, for any expression text or JSON input: errors are values
//!   ([`ParseError`], [`EvalError`]). Nesting is limited to a fixed depth when parsing, which
//!   bounds evaluation recursion; `repeat()`/`descendants()` are bounded in size.
//! * Evaluation never clones resource JSON: nodes borrow from the resource.
//! * An [`Expression`] is immutable, `Send` and `Sync`; evaluate it from any thread.
//!
//! Known differences from the official R4 test suite are listed in `FAILURES.md`.

mod codec;
mod datetime;
mod eval;
mod funcs;
mod item;
mod ops;
mod parser;
mod quantity;
mod types;

pub use datetime::{DateTimeValue, Precision, Temporal};
pub use item::{Item, Node};
pub use quantity::Quantity;
/// The decimal type of `Decimal` items and quantity values.
pub use rust_decimal::Decimal;

use serde_json::Value;
use std::fmt;

/// A syntax error, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath syntax error at {position}: {message}")]
pub struct ParseError {
    pub message: String,
    pub position: usize,
}

/// An evaluation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A type error found in strict mode: unknown element, wrong resource type.
    #[error("FHIRPath semantic error: {0}")]
    Semantic(String),
    /// A run-time error: several items where one is expected, incompatible operands, …
    #[error("FHIRPath evaluation error: {0}")]
    Execution(String),
    /// A feature this implementation does not provide (`memberOf`).
    #[error("FHIRPath function not supported: {0}")]
    Unsupported(String),
}

/// A callback receiving `trace(name)` output.
pub type Tracer = fn(&str, &[Item<'_>]);

/// Evaluation settings and variables.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    variables: Vec<(String, Vec<Item<'a>>)>,
    strict: bool,
    now: Option<DateTimeValue>,
    tracer: Option<Tracer>,
}

impl<'a> Context<'a> {
    /// Lenient mode, no variables, the system clock.
    pub fn new() -> Context<'a> {
        Context::default()
    }

    /// Defines `%name` (without the `%`).
    pub fn with_variable(mut self, name: impl Into<String>, value: Vec<Item<'a>>) -> Context<'a> {
        let name = name.into();
        self.variables.retain(|(n, _)| *n != name);
        self.variables.push((name, value));
        self
    }

    /// Strict mode: navigating to an element the type does not define, or starting a path
    /// with another resource type, is an [`EvalError::Semantic`] instead of an empty result;
    /// so is a non-Boolean `iif()` criterion.
    pub fn strict(mut self, strict: bool) -> Context<'a> {
        self.strict = strict;
        self
    }

    /// Fixes the value of `now()`, `today()` and `timeOfDay()`.
    pub fn with_now(mut self, now: DateTimeValue) -> Context<'a> {
        self.now = Some(now);
        self
    }

    /// Receives the output of `trace()` (ignored otherwise).
    pub fn with_tracer(mut self, tracer: Tracer) -> Context<'a> {
        self.tracer = Some(tracer);
        self
    }

    fn variable(&self, name: &str) -> Option<&[Item<'a>]> {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl<'a> Item<'a> {
    /// A JSON value as a node, typed by its `resourceType` when it is a resource.
    pub fn from_json(json: &'a Value) -> Item<'a> {
        Item::Node(eval::resource_node(json))
    }
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    source: Box<str>,
    root: parser::Expr,
}

impl Expression {
    /// Parses and compiles an expression.
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        let root = parser::parse(source)?;
        Ok(Expression {
            source: source.into(),
            root,
        })
    }

    /// The expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against a resource (`%resource`, `%context` and the initial `$this`).
    /// A JSON `null` resource is an empty input collection.
    pub fn evaluate<'a>(
        &self,
        resource: &'a Value,
        ctx: &Context<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let root = (!resource.is_null()).then(|| eval::resource_node(resource));
        let this: Vec<Item<'a>> = root.map(Item::Node).into_iter().collect();
        let ev = eval::Evaluator { root, ctx };
        ev.eval(
            &self.root,
            eval::Scope {
                this: &this,
                index: None,
                total: None,
            },
        )
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Expression, ParseError> {
        Expression::parse(s)
    }
}
