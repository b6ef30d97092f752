//! The tree-walking evaluator.

use crate::datetime::{DateTimeValue, Precision, Temporal};
use crate::funcs;
use crate::item::{Item, Node, NodeType, NULL};
use crate::ops::{arith, compare_items, eq_items, equiv_items, kind};
use crate::parser::{BinOp, EnvVar, Expr, Func, Name};
use crate::types::{item_as, item_is};
use crate::{Context, EvalError};
use serde_json::Value;
use std::cmp::Ordering;
use std::sync::LazyLock;
use tessera_fhir::definitions::{definitions, Target, TypeDef, TypeKind};

pub(crate) type Coll<'a> = Vec<Item<'a>>;

/// Most items `repeat()`/`descendants()` may produce.
const MAX_ITEMS: usize = 1_000_000;

static EXTENSION: LazyLock<Option<&'static TypeDef>> =
    LazyLock::new(|| definitions().type_def("Extension"));

/// The variables in scope while evaluating a sub-expression.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'s, 'a> {
    pub this: &'s [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'s [Item<'a>]>,
}

pub(crate) struct Evaluator<'c, 'a> {
    pub root: Option<Node<'a>>,
    pub ctx: &'c Context<'a>,
}

/// A node for a JSON resource, typed by its `resourceType` when known.
pub(crate) fn resource_node(json: &Value) -> Node<'_> {
    let ty = json
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|rt| definitions().resource(rt))
        .map(NodeType::Complex)
        .unwrap_or(NodeType::Untyped);
    Node::new(json, None, ty)
}

fn target_type(target: Target) -> NodeType {
    match target {
        Target::Primitive(p) => NodeType::Primitive(p),
        Target::Complex(id) => NodeType::Complex(definitions().get(id)),
        // Resolved per value from `resourceType`.
        Target::Resource => NodeType::Untyped,
    }
}

/// Appends the values of one JSON property (with its `_name` sibling) as nodes.
fn push_values<'a>(
    value: &'a Value,
    ext: Option<&'a Value>,
    ty: NodeType,
    resource: bool,
    out: &mut Coll<'a>,
) {
    let mk = |v: &'a Value, e: Option<&'a Value>| {
        if resource && v.is_object() {
            resource_node(v)
        } else {
            Node::new(v, e.filter(|e| !e.is_null()), ty)
        }
    };
    match value {
        Value::Array(values) => {
            let exts = ext.and_then(Value::as_array);
            for (i, v) in values.iter().enumerate() {
                let e = exts.and_then(|x| x.get(i));
                if v.is_null() && e.is_none_or(Value::is_null) {
                    continue;
                }
                out.push(Item::Node(mk(v, e)));
            }
            // `_given` longer than `given` (values all null): extension-only items.
            if let Some(exts) = exts {
                for e in exts.iter().skip(values.len()) {
                    if !e.is_null() {
                        out.push(Item::Node(Node::new(&NULL, Some(e), ty)));
                    }
                }
            }
        }
        Value::Null => match ext {
            Some(Value::Array(exts)) => {
                for e in exts.iter().filter(|e| !e.is_null()) {
                    out.push(Item::Node(Node::new(&NULL, Some(e), ty)));
                }
            }
            Some(e) if !e.is_null() => out.push(Item::Node(Node::new(&NULL, Some(e), ty))),
            _ => {}
        },
        v => out.push(Item::Node(mk(v, ext))),
    }
}

fn semantic(msg: String) -> EvalError {
    EvalError::Semantic(msg)
}

fn exec(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
}

/// Empty → `None`; a single Boolean → its value; another single item → `true`;
/// more than one item → error.
pub(crate) fn singleton_bool(c: &[Item<'_>], what: &str) -> Result<Option<bool>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(match one.prim() {
            crate::item::Prim::Bool(b) => b,
            _ => true,
        })),
        _ => Err(exec(format!(
            "{what}: expected a single boolean, got {} items",
            c.len()
        ))),
    }
}

/// Single item of a collection: `Ok(None)` when empty, error when several.
pub(crate) fn single<'x, 'a>(
    c: &'x [Item<'a>],
    what: &str,
) -> Result<Option<&'x Item<'a>>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(exec(format!(
            "{what}: expected a single item, got {}",
            c.len()
        ))),
    }
}

/// Collection membership by equality.
pub(crate) fn contains_item(c: &[Item<'_>], x: &Item<'_>) -> bool {
    c.iter().any(|y| same_or_equal(x, y))
}

fn same_or_equal(x: &Item<'_>, y: &Item<'_>) -> bool {
    match (x, y) {
        (Item::Node(a), Item::Node(b)) if a.same(b) => true,
        _ => eq_items(x, y) == Some(true),
    }
}

/// Appends the items of `from` not already present (by equality).
pub(crate) fn union_into<'a>(out: &mut Coll<'a>, from: impl IntoIterator<Item = Item<'a>>) {
    for x in from {
        if !contains_item(out, &x) {
            out.push(x);
        }
    }
}

impl<'c, 'a> Evaluator<'c, 'a> {
    pub(crate) fn eval(&self, e: &Expr, sc: Scope<'_, 'a>) -> Result<Coll<'a>, EvalError> {
        match e {
            Expr::Lit(item) => Ok(vec![item.clone()]),
            Expr::Empty => Ok(Vec::new()),
            Expr::This => Ok(sc.this.to_vec()),
            Expr::Index => Ok(sc
                .index
                .map(|i| Item::Integer(i as i64))
                .into_iter()
                .collect()),
            Expr::Total => Ok(sc.total.map(<[Item<'a>]>::to_vec).unwrap_or_default()),
            Expr::Env(v) => Ok(match v {
                EnvVar::Resource | EnvVar::RootResource | EnvVar::Context => {
                    self.root.map(Item::Node).into_iter().collect()
                }
            }),
            Expr::Var(name) => self
                .ctx
                .variable(name)
                .map(<[Item<'a>]>::to_vec)
                .ok_or_else(|| exec(format!("undefined variable %{name}"))),
            Expr::Ident(name) => {
                let mut out = Vec::new();
                for item in sc.this {
                    self.ident(item, name, &mut out)?;
                }
                Ok(out)
            }
            Expr::Member(target, name) => {
                let base = self.eval(target, sc)?;
                let mut out = Vec::with_capacity(base.len());
                for item in &base {
                    self.member(item, name, &mut out)?;
                }
                Ok(out)
            }
            Expr::Call(target, f, args) => match target {
                Some(t) => {
                    let input = self.eval(t, sc)?;
                    self.call(f, args, input, sc, true)
                }
                None => self.call(f, args, sc.this.to_vec(), sc, false),
            },
            Expr::Indexer(target, index) => {
                let mut base = self.eval(target, sc)?;
                let idx = self.eval(index, sc)?;
                let Some(i) = single(&idx, "indexer")? else {
                    return Ok(Vec::new());
                };
                let i = match i {
                    Item::Integer(i) => *i,
                    other => match other.prim() {
                        crate::item::Prim::Int(i) => i,
                        _ => return Err(exec("indexer must be an integer")),
                    },
                };
                if i < 0 || i as usize >= base.len() {
                    return Ok(Vec::new());
                }
                Ok(vec![base.swap_remove(i as usize)])
            }
            Expr::Neg(x) => {
                let v = self.eval(x, sc)?;
                let Some(item) = single(&v, "unary minus")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![match item.prim() {
                    crate::item::Prim::Int(i) => {
                        Item::Integer(i.checked_neg().ok_or_else(|| exec("overflow"))?)
                    }
                    crate::item::Prim::Dec(d) if d.is_zero() => Item::Decimal(d.abs()),
                    crate::item::Prim::Dec(d) => Item::Decimal(-d),
                    crate::item::Prim::Qty(q) => Item::Quantity(crate::Quantity {
                        value: -q.value,
                        unit: q.unit,
                    }),
                    _ => return Err(exec(format!("cannot negate {}", kind(item)))),
                }])
            }
            Expr::Binary(op, l, r) => self.binary(*op, l, r, sc),
            Expr::StrictError(inner, problem) => {
                if self.ctx.strict {
                    return Err(semantic(problem.to_string()));
                }
                self.eval(inner, sc)
            }
            Expr::Is(x, spec) => {
                let v = self.eval(x, sc)?;
                let Some(item) = single(&v, "is")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::Boolean(
                    item_is(item, spec, true).map_err(|n| exec(format!("unknown type {n}")))?,
                )])
            }
            Expr::As(x, spec) => {
                let v = self.eval(x, sc)?;
                let Some(item) = single(&v, "as")? else {
                    return Ok(Vec::new());
                };
                if item_as(item, spec).map_err(|n| exec(format!("unknown type {n}")))? {
                    Ok(v)
                } else {
                    Ok(Vec::new())
                }
            }
        }
    }

    /// An identifier at the start of a path: a type name matching the item, or a member.
    fn ident(&self, item: &Item<'a>, name: &Name, out: &mut Coll<'a>) -> Result<(), EvalError> {
        if name.type_like {
            if let Item::Node(n) = item {
                if let NodeType::Complex(td) = n.ty {
                    if td.kind == TypeKind::Resource
                        && (td.name.as_str() == &*name.name
                            || &*name.name == "Resource"
                            || (&*name.name == "DomainResource"
                                && !matches!(td.name.as_str(), "Bundle" | "Binary" | "Parameters")))
                    {
                        out.push(item.clone());
                        return Ok(());
                    }
                }
                if n.is_resource()
                    || matches!(n.ty, NodeType::Untyped) && n.json.get("resourceType").is_some()
                {
                    if self.ctx.strict {
                        return Err(semantic(format!(
                            "{} does not match type {}",
                            n.type_name(),
                            name.name
                        )));
                    }
                    return Ok(());
                }
            }
        }
        self.member(item, name, out)
    }

    /// `item.name`: the element's values (choice elements matched by prefix).
    pub(crate) fn member(
        &self,
        item: &Item<'a>,
        name: &Name,
        out: &mut Coll<'a>,
    ) -> Result<(), EvalError> {
        let node = match item {
            Item::Node(n) => n,
            Item::TypeInfo {
                namespace,
                name: tn,
            } => {
                match &*name.name {
                    "name" => out.push(Item::string(tn)),
                    "namespace" => out.push(Item::string(namespace)),
                    _ => {}
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        match node.ty {
            NodeType::Complex(td) => {
                let Some(obj) = node.json.as_object() else {
                    return Ok(());
                };
                let element = td.lookup(&name.name).map(|(e, t)| (&td.elements[e], t));
                let direct = obj.get(&*name.name);
                // Only primitives have `_name` siblings; a short scan beats hashing again.
                let ext = match element {
                    Some((el, t)) if !matches!(el.types[t].target, Target::Primitive(_)) => None,
                    _ => ext_of(obj, &name.name),
                };
                if direct.is_some() || ext.is_some() {
                    let (ty, resource) = match element {
                        Some((el, t)) => {
                            if self.ctx.strict && el.choice {
                                return Err(semantic(format!(
                                    "{} is not an element of {} (use {})",
                                    name.name, td.name, el.name
                                )));
                            }
                            let target = el.types[t].target;
                            (target_type(target), target == Target::Resource)
                        }
                        None => {
                            if self.ctx.strict && td.element(&name.name).is_none() {
                                return Err(semantic(format!(
                                    "{} is not an element of {}",
                                    name.name, td.name
                                )));
                            }
                            (NodeType::Untyped, false)
                        }
                    };
                    push_values(direct.unwrap_or(&NULL), ext, ty, resource, out);
                    return Ok(());
                }
                // Choice element: `value` → `valueQuantity`, `valueString`, …
                let n = name.name.len();
                let mut found = false;
                for (k, v) in obj {
                    let (key, is_ext) = match k.strip_prefix('_') {
                        Some(rest) => (rest, true),
                        None => (k.as_str(), false),
                    };
                    if key.len() > n
                        && key.starts_with(&*name.name)
                        && key.as_bytes()[n].is_ascii_uppercase()
                    {
                        let Some((e, t)) = td.lookup(key) else {
                            continue;
                        };
                        let el = &td.elements[e];
                        if !el.choice || el.name != *name.name {
                            continue;
                        }
                        let ty = target_type(el.types[t].target);
                        if is_ext {
                            if obj.contains_key(key) {
                                continue; // handled with its value
                            }
                            push_values(&NULL, Some(v), ty, false, out);
                        } else {
                            let ext = if matches!(ty, NodeType::Primitive(_)) {
                                ext_of(obj, key)
                            } else {
                                None
                            };
                            push_values(v, ext, ty, false, out);
                        }
                        found = true;
                    }
                }
                if !found && self.ctx.strict && td.element(&name.name).is_none() {
                    return Err(semantic(format!(
                        "{} is not an element of {}",
                        name.name, td.name
                    )));
                }
                Ok(())
            }
            NodeType::Primitive(_) => {
                // `id` and `extension` of a primitive live in its `_name` sibling.
                if let (Some(ext), Some(el)) = (node.ext, definitions().type_def("Element")) {
                    let child = Item::Node(Node::new(ext, None, NodeType::Complex(el)));
                    return self.member(&child, name, out);
                }
                Ok(())
            }
            NodeType::Untyped => {
                if let Some(obj) = node.json.as_object() {
                    let direct = obj.get(&*name.name);
                    let ext = obj.get(&*name.underscore);
                    if direct.is_some() || ext.is_some() {
                        push_values(direct.unwrap_or(&NULL), ext, NodeType::Untyped, true, out);
                    }
                }
                Ok(())
            }
            NodeType::Unresolved(_) => Ok(()),
        }
    }

    fn binary(
        &self,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        sc: Scope<'_, 'a>,
    ) -> Result<Coll<'a>, EvalError> {
        let boolean = |b: Option<bool>| -> Coll<'a> { b.map(Item::Boolean).into_iter().collect() };
        match op {
            BinOp::And => {
                let a = singleton_bool(&self.eval(l, sc)?, "and")?;
                if a == Some(false) {
                    return Ok(boolean(Some(false)));
                }
                let b = singleton_bool(&self.eval(r, sc)?, "and")?;
                Ok(boolean(match (a, b) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }))
            }
            BinOp::Or => {
                let a = singleton_bool(&self.eval(l, sc)?, "or")?;
                if a == Some(true) {
                    return Ok(boolean(Some(true)));
                }
                let b = singleton_bool(&self.eval(r, sc)?, "or")?;
                Ok(boolean(match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }))
            }
            BinOp::Xor => {
                let a = singleton_bool(&self.eval(l, sc)?, "xor")?;
                let b = singleton_bool(&self.eval(r, sc)?, "xor")?;
                Ok(boolean(match (a, b) {
                    (Some(x), Some(y)) => Some(x != y),
                    _ => None,
                }))
            }
            BinOp::Implies => {
                let a = singleton_bool(&self.eval(l, sc)?, "implies")?;
                if a == Some(false) {
                    return Ok(boolean(Some(true)));
                }
                let b = singleton_bool(&self.eval(r, sc)?, "implies")?;
                Ok(boolean(match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                }))
            }
            BinOp::Union => {
                let mut a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                if a.is_empty() {
                    let mut out = Vec::with_capacity(b.len());
                    union_into(&mut out, b);
                    return Ok(out);
                }
                let mut out = Vec::with_capacity(a.len() + b.len());
                union_into(&mut out, a.drain(..));
                union_into(&mut out, b);
                Ok(out)
            }
            BinOp::In | BinOp::Contains => {
                let (elem, coll) = if op == BinOp::In {
                    (self.eval(l, sc)?, self.eval(r, sc)?)
                } else {
                    (self.eval(r, sc)?, self.eval(l, sc)?)
                };
                let Some(x) = single(&elem, "in/contains")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::Boolean(contains_item(&coll, x))])
            }
            BinOp::Eq | BinOp::Ne => {
                // Fast path: a literal on the right (the usual `code = 'x'`).
                let a = self.eval(l, sc)?;
                let b = match r {
                    Expr::Lit(item) => {
                        if a.is_empty() {
                            return Ok(Vec::new());
                        }
                        if a.len() != 1 {
                            return Ok(boolean(Some(op == BinOp::Ne)));
                        }
                        let eq = eq_items(&a[0], item);
                        return Ok(boolean(eq.map(|e| e == (op == BinOp::Eq))));
                    }
                    _ => self.eval(r, sc)?,
                };
                if a.is_empty() || b.is_empty() {
                    return Ok(Vec::new());
                }
                let eq = coll_eq(&a, &b);
                Ok(boolean(eq.map(|e| e == (op == BinOp::Eq))))
            }
            BinOp::Equiv | BinOp::NotEquiv => {
                let a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                let eq = coll_equiv(&a, &b);
                Ok(boolean(Some(eq == (op == BinOp::Equiv))))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                let (Some(x), Some(y)) = (single(&a, "comparison")?, single(&b, "comparison")?)
                else {
                    return Ok(Vec::new());
                };
                let ord = compare_items(x, y)?;
                Ok(boolean(ord.map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Le => o != Ordering::Greater,
                    BinOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })))
            }
            BinOp::Concat => {
                let a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                let s = |c: &Coll<'a>| -> Result<String, EvalError> {
                    match single(c, "&")? {
                        None => Ok(String::new()),
                        Some(i) => i
                            .as_str()
                            .map(str::to_string)
                            .ok_or_else(|| exec(format!("& expects strings, got {}", kind(i)))),
                    }
                };
                Ok(vec![Item::string(&(s(&a)? + &s(&b)?))])
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => {
                let a = self.eval(l, sc)?;
                let b = self.eval(r, sc)?;
                let (Some(x), Some(y)) = (single(&a, "arithmetic")?, single(&b, "arithmetic")?)
                else {
                    return Ok(Vec::new());
                };
                Ok(arith(op, x, y)?.into_iter().collect())
            }
        }
    }

    /// Evaluates `arg` once per input item, with `$this`/`$index` bound to it.
    pub(crate) fn each<F>(
        &self,
        arg: &Expr,
        input: &[Item<'a>],
        sc: Scope<'_, 'a>,
        mut f: F,
    ) -> Result<(), EvalError>
    where
        F: FnMut(usize, &Item<'a>, Coll<'a>) -> Result<bool, EvalError>,
    {
        for (i, item) in input.iter().enumerate() {
            let scope = Scope {
                this: std::slice::from_ref(item),
                index: Some(i),
                total: sc.total,
            };
            let r = self.eval(arg, scope)?;
            if !f(i, item, r)? {
                break;
            }
        }
        Ok(())
    }

    /// Evaluates a non-iterating function argument (relative to the caller's `$this`).
    pub(crate) fn arg(
        &self,
        args: &[Expr],
        i: usize,
        sc: Scope<'_, 'a>,
    ) -> Result<Coll<'a>, EvalError> {
        match args.get(i) {
            Some(e) => self.eval(e, sc),
            None => Ok(Vec::new()),
        }
    }

    fn call(
        &self,
        f: &Func,
        args: &[Expr],
        input: Coll<'a>,
        sc: Scope<'_, 'a>,
        has_target: bool,
    ) -> Result<Coll<'a>, EvalError> {
        match f {
            Func::Where => {
                let mut out = Vec::new();
                self.each(&args[0], &input, sc, |_, item, r| {
                    if singleton_bool(&r, "where")? == Some(true) {
                        out.push(item.clone());
                    }
                    Ok(true)
                })?;
                Ok(out)
            }
            Func::Select => {
                let mut out = Vec::new();
                self.each(&args[0], &input, sc, |_, _, r| {
                    out.extend(r);
                    Ok(true)
                })?;
                Ok(out)
            }
            Func::Exists => {
                if args.is_empty() {
                    return Ok(vec![Item::Boolean(!input.is_empty())]);
                }
                let mut any = false;
                self.each(&args[0], &input, sc, |_, _, r| {
                    any = singleton_bool(&r, "exists")? == Some(true);
                    Ok(!any)
                })?;
                Ok(vec![Item::Boolean(any)])
            }
            Func::All => {
                let mut all = true;
                self.each(&args[0], &input, sc, |_, _, r| {
                    all = singleton_bool(&r, "all")? == Some(true);
                    Ok(all)
                })?;
                Ok(vec![Item::Boolean(all)])
            }
            Func::Repeat => {
                let mut out: Coll<'a> = Vec::new();
                let mut frontier = input;
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    self.each(&args[0], &frontier, sc, |_, _, r| {
                        for x in r {
                            if !contains_item(&out, &x) {
                                out.push(x.clone());
                                next.push(x);
                            }
                        }
                        Ok(true)
                    })?;
                    if out.len() > MAX_ITEMS {
                        return Err(exec("repeat() produced too many items"));
                    }
                    frontier = next;
                }
                Ok(out)
            }
            Func::Aggregate => {
                let mut total = if args.len() > 1 {
                    self.arg(args, 1, sc)?
                } else {
                    Vec::new()
                };
                for (i, item) in input.iter().enumerate() {
                    let scope = Scope {
                        this: std::slice::from_ref(item),
                        index: Some(i),
                        total: Some(&total),
                    };
                    total = self.eval(&args[0], scope)?;
                }
                Ok(total)
            }
            Func::Iif => {
                if input.len() > 1 {
                    return Err(exec("iif() on a collection of more than one item"));
                }
                let scope = if has_target {
                    Scope {
                        this: &input,
                        index: sc.index,
                        total: sc.total,
                    }
                } else {
                    sc
                };
                let crit = self.eval(&args[0], scope)?;
                if self.ctx.strict {
                    if let [one] = crit.as_slice() {
                        if !matches!(one.prim(), crate::item::Prim::Bool(_)) {
                            return Err(semantic("iif() criterion is not a boolean".into()));
                        }
                    }
                }
                if singleton_bool(&crit, "iif")? == Some(true) {
                    self.eval(&args[1], scope)
                } else if args.len() > 2 {
                    self.eval(&args[2], scope)
                } else {
                    Ok(Vec::new())
                }
            }
            Func::Trace => {
                if let Some(tracer) = self.ctx.tracer {
                    let label = self.arg(args, 0, sc)?;
                    let label = label
                        .first()
                        .and_then(Item::as_str)
                        .unwrap_or("")
                        .to_string();
                    if args.len() > 1 {
                        let mut projected = Vec::new();
                        self.each(&args[1], &input, sc, |_, _, r| {
                            projected.extend(r);
                            Ok(true)
                        })?;
                        tracer(&label, &projected);
                    } else {
                        tracer(&label, &input);
                    }
                }
                Ok(input)
            }
            Func::Sort => {
                let mut keyed: Vec<(Vec<Option<Item<'a>>>, Item<'a>)> =
                    Vec::with_capacity(input.len());
                for (i, item) in input.iter().enumerate() {
                    let scope = Scope {
                        this: std::slice::from_ref(item),
                        index: Some(i),
                        total: sc.total,
                    };
                    let mut keys = Vec::with_capacity(args.len().max(1));
                    if args.is_empty() {
                        keys.push(Some(item.clone()));
                    }
                    for a in args {
                        let e = match a {
                            Expr::Neg(inner) => inner,
                            other => other,
                        };
                        let r = self.eval(e, scope)?;
                        keys.push(single(&r, "sort key")?.cloned());
                    }
                    keyed.push((keys, item.clone()));
                }
                let desc: Vec<bool> = args.iter().map(|a| matches!(a, Expr::Neg(_))).collect();
                let mut err = None;
                keyed.sort_by(|(ka, _), (kb, _)| {
                    for (k, (a, b)) in ka.iter().zip(kb).enumerate() {
                        // Items without a key sort first, whatever the direction.
                        let o = match (a, b) {
                            (None, None) => Ordering::Equal,
                            (None, Some(_)) => Ordering::Less,
                            (Some(_), None) => Ordering::Greater,
                            (Some(a), Some(b)) => {
                                let o = match compare_items(a, b) {
                                    Ok(o) => o.unwrap_or(Ordering::Equal),
                                    Err(e) => {
                                        err.get_or_insert(e);
                                        Ordering::Equal
                                    }
                                };
                                if desc.get(k).copied().unwrap_or(false) {
                                    o.reverse()
                                } else {
                                    o
                                }
                            }
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    Ordering::Equal
                });
                if let Some(e) = err {
                    return Err(e);
                }
                Ok(keyed.into_iter().map(|(_, i)| i).collect())
            }
            Func::OfType(spec) => {
                let mut out = Vec::new();
                for item in input {
                    if item_as(&item, spec).map_err(|n| exec(format!("unknown type {n}")))? {
                        out.push(item);
                    }
                }
                Ok(out)
            }
            Func::Is(spec) => {
                let Some(item) = single(&input, "is()")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::Boolean(
                    item_is(item, spec, true).map_err(|n| exec(format!("unknown type {n}")))?,
                )])
            }
            Func::As(spec) => {
                let Some(item) = single(&input, "as()")? else {
                    return Ok(Vec::new());
                };
                if item_as(item, spec).map_err(|n| exec(format!("unknown type {n}")))? {
                    Ok(input)
                } else {
                    Ok(Vec::new())
                }
            }
            Func::Children => {
                let mut out = Vec::new();
                for item in &input {
                    self.children(item, &mut out);
                }
                Ok(out)
            }
            Func::Descendants => {
                let mut out = Vec::new();
                let mut frontier = input;
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for item in &frontier {
                        self.children(item, &mut next);
                    }
                    out.extend(next.iter().cloned());
                    if out.len() > MAX_ITEMS {
                        return Err(exec("descendants() produced too many items"));
                    }
                    frontier = next;
                }
                Ok(out)
            }
            Func::Extension => {
                let url = self.arg(args, 0, sc)?;
                let Some(url) = single(&url, "extension()")? else {
                    return Ok(Vec::new());
                };
                let url = url
                    .as_str()
                    .ok_or_else(|| exec("extension() needs a string url"))?;
                let mut out = Vec::new();
                for item in &input {
                    let Item::Node(n) = item else { continue };
                    let holder = if matches!(n.ty, NodeType::Primitive(_)) {
                        n.ext
                    } else {
                        Some(n.json)
                    };
                    let Some(Value::Array(exts)) = holder.and_then(|h| h.get("extension")) else {
                        continue;
                    };
                    for e in exts {
                        if e.get("url").and_then(Value::as_str) == Some(url) {
                            let ty = EXTENSION
                                .map(NodeType::Complex)
                                .unwrap_or(NodeType::Untyped);
                            out.push(Item::Node(Node::new(e, None, ty)));
                        }
                    }
                }
                Ok(out)
            }
            Func::Resolve => {
                let mut out = Vec::new();
                for item in &input {
                    self.resolve(item, &mut out);
                }
                Ok(out)
            }
            Func::TypeFn => Ok(input
                .iter()
                .map(|i| {
                    let (namespace, name) = crate::types::type_info(i);
                    Item::TypeInfo { namespace, name }
                })
                .collect()),
            Func::Now => Ok(vec![Item::DateTime(
                self.ctx.now.unwrap_or_else(DateTimeValue::now),
            )]),
            Func::Today => {
                let mut d = self.ctx.now.unwrap_or_else(DateTimeValue::now);
                d.precision = Precision::Day;
                d.offset = None;
                d.hour = 0;
                d.minute = 0;
                d.second = 0;
                d.nanos = 0;
                d.frac_digits = 0;
                Ok(vec![Item::Date(d)])
            }
            Func::TimeOfDay => Ok(vec![Item::Time(
                self.ctx.now.unwrap_or_else(DateTimeValue::now).time_part(),
            )]),
            Func::MemberOf => Err(EvalError::Unsupported(
                "memberOf() needs a terminology service".into(),
            )),
            Func::ConformsTo => {
                let url = self.arg(args, 0, sc)?;
                let Some(url) = single(&url, "conformsTo()")?.and_then(Item::as_str) else {
                    return Ok(Vec::new());
                };
                let Some(name) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                else {
                    return Err(EvalError::Unsupported(format!(
                        "conformsTo({url}): only core resource profiles are known"
                    )));
                };
                if definitions().type_def(name).is_none() {
                    return Err(exec(format!("unknown profile {url}")));
                }
                let Some(item) = single(&input, "conformsTo()")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::Boolean(
                    matches!(item, Item::Node(n) if n.type_name() == name),
                )])
            }
            _ => funcs::call(self, f, args, input, sc),
        }
    }

    /// The child nodes of an item (`children()`).
    pub(crate) fn children(&self, item: &Item<'a>, out: &mut Coll<'a>) {
        let Item::Node(n) = item else { return };
        let (obj, td) = match n.ty {
            NodeType::Complex(td) => (n.json.as_object(), Some(td)),
            NodeType::Untyped => (n.json.as_object(), None),
            NodeType::Primitive(_) => (
                n.ext.and_then(Value::as_object),
                definitions().type_def("Element"),
            ),
            NodeType::Unresolved(_) => (None, None),
        };
        let Some(obj) = obj else { return };
        for (k, v) in obj {
            if k == "resourceType" {
                continue;
            }
            if let Some(base) = k.strip_prefix('_') {
                if obj.contains_key(base) {
                    continue;
                }
                let ty = td
                    .and_then(|td| td.lookup(base))
                    .map(|(e, t)| target_type(td.unwrap().elements[e].types[t].target));
                push_values(&NULL, Some(v), ty.unwrap_or(NodeType::Untyped), false, out);
                continue;
            }
            let (ty, resource) =
                match td.and_then(|td| td.lookup(k).map(|(e, t)| td.elements[e].types[t].target)) {
                    Some(target) => (target_type(target), target == Target::Resource),
                    None => (NodeType::Untyped, td.is_none()),
                };
            let ext = if matches!(ty, NodeType::Primitive(_)) || td.is_none() {
                ext_of(obj, k)
            } else {
                None
            };
            push_values(v, ext, ty, resource, out);
        }
    }

    /// `resolve()`: contained (`#id`) and Bundle references resolve to the resource;
    /// other references to a placeholder typed by the reference's resource type.
    fn resolve(&self, item: &Item<'a>, out: &mut Coll<'a>) {
        let (reference, type_hint, holder) = match item {
            Item::Node(n) if n.json.is_object() => (
                n.json.get("reference").and_then(Value::as_str),
                n.json.get("type").and_then(Value::as_str),
                n.json,
            ),
            Item::Node(n) => (n.json.as_str(), None, n.json),
            _ => return,
        };
        if let (Some(r), Some(root)) = (reference, self.root) {
            if let Some(id) = r.strip_prefix('#') {
                if let Some(Value::Array(contained)) = root.json.get("contained") {
                    if let Some(res) = contained
                        .iter()
                        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    {
                        out.push(Item::Node(resource_node(res)));
                    }
                }
                return;
            }
            if let Some(Value::Array(entries)) = root.json.get("entry") {
                if root.json.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                    for e in entries {
                        if e.get("fullUrl").and_then(Value::as_str) == Some(r) {
                            if let Some(res) = e.get("resource") {
                                out.push(Item::Node(resource_node(res)));
                                return;
                            }
                        }
                    }
                }
            }
        }
        let ty = reference
            .and_then(reference_type)
            .or(type_hint)
            .and_then(|t| definitions().resource(t));
        if let Some(td) = ty {
            out.push(Item::Node(Node::new(
                holder,
                None,
                NodeType::Unresolved(td),
            )));
        }
    }
}

/// The `_key` sibling of `key` in an object, without allocating.
fn ext_of<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.len() == key.len() + 1 && k.starts_with('_') && &k[1..] == key)
        .map(|(_, v)| v)
}

/// The resource type named by a literal reference: `Patient/1`,
/// `http://x/fhir/Patient/1/_history/2`.
pub(crate) fn reference_type(r: &str) -> Option<&str> {
    // A conditional reference names its type before the query: `Patient?identifier=x`.
    if let Some((ty, _)) = r.split_once('?') {
        if !ty.contains('/') {
            return ty
                .starts_with(|c: char| c.is_ascii_uppercase())
                .then_some(ty);
        }
    }
    let r = r.split(['?', '#']).next().unwrap_or(r);
    let r = match r.find("/_history/") {
        Some(i) => &r[..i],
        None => r,
    };
    let mut parts = r.rsplit('/');
    let _id = parts.next()?;
    let ty = parts.next()?;
    ty.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some(ty)
}

/// `=` on collections: same length and pairwise equal, in order.
pub(crate) fn coll_eq(a: &[Item<'_>], b: &[Item<'_>]) -> Option<bool> {
    if a.len() != b.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (x, y) in a.iter().zip(b) {
        match eq_items(x, y) {
            Some(false) => return Some(false),
            None => unknown = true,
            _ => {}
        }
    }
    if unknown {
        None
    } else {
        Some(true)
    }
}

/// `~` on collections: same length and each item equivalent to a distinct item, in any order.
pub(crate) fn coll_equiv(a: &[Item<'_>], b: &[Item<'_>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && equiv_items(x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

pub(crate) fn temporal_of(item: &Item<'_>) -> Option<(DateTimeValue, Temporal)> {
    match item.prim() {
        crate::item::Prim::Date(d) => Some((d, Temporal::Date)),
        crate::item::Prim::DateTime(d) => Some((d, Temporal::DateTime)),
        crate::item::Prim::Time(d) => Some((d, Temporal::Time)),
        _ => None,
    }
}
