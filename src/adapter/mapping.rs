//! Declarative adapter mappings: one JSON value in, a new JSON document out.
//!
//! A mapping file (TOML) is a list of `[[field]]` rules, each writing one output path from an
//! input path, a context value (`$ctx.NAME`), a constant or a hook. The output is an
//! [`Ordered`] tree whose object members appear in the order the rules first create them,
//! because the XML formats downstream depend on element order.
//!
//! Paths are dot-separated member names (any characters but `.`, `[` and `]`); a segment may
//! end in `[]` (iterate) or `[N]` (fixed index); `.` alone is the whole input. The k-th `[]`
//! of `to` iterates together with the k-th `[]` of `from` and of each hook argument. A level
//! that no source iterates (a `const`, or a hook whose arguments have fewer `[]`) runs over
//! the elements earlier rules created in that output array. A path through an empty string
//! finds nothing (the XML convention turns an empty `<a/>` into `""`).
//!
//! Output containers are created only when something is written below them, except arrays
//! declared with `[]`, which always exist (the national formats require empty arrays), and
//! the elements of iterated arrays of objects, which always exist so that several rules line
//! up by index. A skipped value in an array of scalars (`to = "a[]"`) is left out.
//!
//! Per value: get → if absent/null: `default`, else `required` error, else skip → `values`
//! map → `date` → `type`. A `default` goes through the rest of the pipeline like input does.
//! A hook's value is absent when every one of its arguments is (a literal never is): then
//! `default` applies, and a hook rule without one runs on empty strings.
//! Hook arguments (and `from`) may also be `$out.PATH`, a value an earlier rule wrote; an
//! argument that is an array or object counts as its compact JSON text.
//! Error messages name paths and what was expected, never input or context values.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Number, Value};
use time::format_description::well_known::Rfc3339;
use time::format_description::OwnedFormatItem;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::hooks::{Hook, HookOptions};

/// A JSON value whose object members keep their insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    pub fn to_json_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Ordered tree always serializes")
    }

    /// Converts a `serde_json::Value`; object members come out in its (sorted) order.
    pub fn from_value(v: &Value) -> Ordered {
        match v {
            Value::Null => Ordered::Null,
            Value::Bool(b) => Ordered::Bool(*b),
            Value::Number(n) => Ordered::Number(n.clone()),
            Value::String(s) => Ordered::String(s.clone()),
            Value::Array(a) => Ordered::Array(a.iter().map(Ordered::from_value).collect()),
            Value::Object(m) => Ordered::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Ordered::from_value(v)))
                    .collect(),
            ),
        }
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Null => s.serialize_unit(),
            Ordered::Bool(b) => s.serialize_bool(*b),
            Ordered::Number(n) => n.serialize(s),
            Ordered::String(v) => s.serialize_str(v),
            Ordered::Array(items) => s.collect_seq(items),
            Ordered::Object(members) => s.collect_map(members.iter().map(|(k, v)| (k, v))),
        }
    }
}

/// A mapping failure on one request (the gateway answers 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MapError {
    pub path: String,
    pub message: String,
}

fn fail(path: String, message: impl Into<String>) -> MapError {
    MapError {
        path,
        message: message.into(),
    }
}

/// Named runtime values, read as `$ctx.NAME`.
pub type Context = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Iter,
    Index(usize),
}

/// Where a value (or hook argument) comes from.
#[derive(Debug, Clone)]
enum Src {
    Path(Vec<Step>),
    /// `$out.PATH`: a value earlier rules wrote (e.g. fields a checksum covers).
    Out(Vec<Step>),
    Ctx(String),
    Literal(String),
}

#[derive(Debug, Clone)]
enum Source {
    From(Src),
    Const(Value),
    Hook(Hook, Vec<Src>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Type {
    String,
    BoolTitle,
    BoolDigit,
    Boolean,
    Integer,
    Number,
    Raw,
}

#[derive(Debug, Clone)]
enum DateFmt {
    Rfc3339,
    Pattern {
        text: String,
        items: OwnedFormatItem,
        has_time: bool,
    },
}

#[derive(Debug, Clone)]
struct DateConv {
    from: DateFmt,
    to: DateFmt,
    tz: UtcOffset,
}

#[derive(Debug, Clone)]
struct Rule {
    to: Vec<Step>,
    source: Source,
    default: Option<Value>,
    required: bool,
    values: Option<String>,
    values_default: Option<Value>,
    date: Option<DateConv>,
    ty: Type,
}

/// A validated mapping file.
#[derive(Debug, Clone)]
pub struct Mapping {
    description: Option<String>,
    values: BTreeMap<String, BTreeMap<String, Value>>,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    to: Option<String>,
    from: Option<String>,
    #[serde(rename = "const")]
    constant: Option<toml::Value>,
    hook: Option<String>,
    args: Option<Vec<String>>,
    separator: Option<String>,
    template: Option<String>,
    max_chars: Option<i64>,
    suffix: Option<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    values: Option<String>,
    values_default: Option<toml::Value>,
    date: Option<RawDate>,
    #[serde(rename = "type")]
    ty: Option<Type>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDate {
    from: String,
    to: String,
    tz: Option<String>,
}

/// Load problems of one rule, each prefixed with the rule's key path.
struct Problems<'p> {
    at: String,
    list: &'p mut Vec<String>,
}

impl Problems<'_> {
    /// Records a problem at `key` (relative to the rule; "" for the rule itself).
    fn add<T>(&mut self, key: &str, msg: impl Display) -> Option<T> {
        let dot = if key.is_empty() { "" } else { "." };
        self.list.push(format!("{}{dot}{key}: {msg}", self.at));
        None
    }

    fn ok<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_or_else(|e| self.add(key, e), Some)
    }
}

impl Mapping {
    /// Parses a mapping file (TOML text). On failure returns every problem found, each
    /// starting with its key path (`field[3].hook: unknown hook ...`).
    pub fn parse(text: &str) -> Result<Mapping, Vec<String>> {
        let table = toml::from_str::<toml::Table>(text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start].matches('\n').count() + 1);
            vec![format!("line {line}: {}", e.message().trim_end())]
        })?;
        let mut problems = Vec::new();
        let (mut description, mut values, mut fields) = (None, BTreeMap::new(), Vec::new());
        for (key, value) in table {
            match (key.as_str(), value) {
                ("description", toml::Value::String(s)) => description = Some(s),
                ("values", toml::Value::Table(maps)) => {
                    for (name, map) in maps {
                        let toml::Value::Table(map) = map else {
                            problems.push(format!("values.{name}: expected a table"));
                            continue;
                        };
                        let mut entries = BTreeMap::new();
                        for (k, v) in map {
                            match toml_to_json(v) {
                                Ok(v) if !v.is_array() && !v.is_object() => {
                                    entries.insert(k, v);
                                }
                                _ => problems.push(format!("values.{name}.{k}: expected a scalar")),
                            }
                        }
                        values.insert(name, entries);
                    }
                }
                ("field", toml::Value::Array(items)) => fields = items,
                ("description" | "values" | "field", _) => {
                    problems.push(format!("{key}: wrong type (see the mapping file format)"));
                }
                _ => problems.push(format!("{key}: unknown key")),
            }
        }
        let (mut rules, mut tos) = (Vec::new(), Vec::<(String, Vec<Step>)>::new());
        for (i, item) in fields.into_iter().enumerate() {
            let at = format!("field[{i}]");
            let raw = match item.try_into::<RawField>() {
                Ok(raw) => raw,
                Err(e) => {
                    // The last line of the error names the offending key, if any.
                    let shown = e.to_string();
                    let key = shown
                        .lines()
                        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'));
                    let dot_key = key.map(|k| format!(".{k}")).unwrap_or_default();
                    problems.push(format!("{at}{dot_key}: {}", e.message().trim_end()));
                    continue;
                }
            };
            let to_text = raw.to.clone().unwrap_or_default();
            let mut p = Problems {
                at: at.clone(),
                list: &mut problems,
            };
            let (to, rule) = build_rule(raw, &values, &mut p);
            if let Some(to) = to {
                for (other, _) in tos.iter().filter(|(_, steps)| overlaps(&to, steps)) {
                    p.add::<()>("to", format!("`{to_text}` conflicts with {other}"));
                }
                tos.push((format!("{at}.to `{to_text}`"), to));
            }
            rules.extend(rule);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Mapping {
            description,
            values,
            rules,
        })
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Context names the mapping reads (`$ctx.NAME`), sorted and deduplicated.
    pub fn context_names(&self) -> Vec<String> {
        let srcs = self.rules.iter().flat_map(Rule::sources);
        let names: BTreeSet<&String> = srcs
            .filter_map(|s| match s {
                Src::Ctx(name) => Some(name),
                _ => None,
            })
            .collect();
        names.into_iter().cloned().collect()
    }

    /// Applies the mapping. Errors name the input path (or the output path for constants,
    /// hooks and output conflicts), e.g. `documents[2].name`.
    pub fn apply(&self, input: &Value, ctx: &Context) -> Result<Ordered, MapError> {
        self.apply_within(input, ctx, DEFAULT_MAX_OUTPUT)
    }

    /// As [`Mapping::apply`], refusing to write more than about `max_bytes` of output
    /// (counted as compact JSON) or to read more than that in hook arguments: a rule
    /// that copies one input value into every element of a long array (hook arguments
    /// with fewer `[]` than `to`, constants, `$ctx`) multiplies its input, and a small
    /// request must not be able to make the gateway build gigabytes.
    pub fn apply_within(
        &self,
        input: &Value,
        ctx: &Context,
        max_bytes: usize,
    ) -> Result<Ordered, MapError> {
        let budget = Budget {
            left: std::cell::Cell::new(max_bytes),
            max: max_bytes,
        };
        let mut out = Ordered::Object(Vec::new());
        for rule in &self.rules {
            // `$out.PATH` reads a snapshot of what earlier rules wrote.
            let snapshot = if rule.sources().iter().any(|s| matches!(s, Src::Out(_))) {
                serde_json::to_value(&out).unwrap_or_default()
            } else {
                Value::Null
            };
            let run = Run {
                mapping: self,
                rule,
                input,
                ctx,
                out: &snapshot,
                budget: &budget,
            };
            run.walk(0, &mut out, &mut Vec::new())?;
        }
        Ok(out)
    }
}

/// Validates one raw rule. Returns its parsed `to` (for the conflict check) and the rule if
/// it had no problems.
fn build_rule(
    raw: RawField,
    values: &BTreeMap<String, BTreeMap<String, Value>>,
    p: &mut Problems,
) -> (Option<Vec<Step>>, Option<Rule>) {
    let start = p.list.len();
    let to = match raw.to.as_deref().map(parse_path) {
        None => p.add("to", "missing"),
        Some(Ok(steps)) if matches!(steps.first(), Some(Step::Key(_))) => Some(steps),
        Some(Ok(_)) => p.add("to", "must start with a member name"),
        Some(Err(e)) => p.add("to", e),
    };
    let to_iters = to.as_deref().map(iter_count);
    // `from` must have as many `[]` as `to`, hook arguments at most as many.
    let check_iters = |p: &mut Problems, key: &str, src: &Src, exact: bool| {
        let (Src::Path(steps) | Src::Out(steps), Some(want)) = (src, to_iters) else {
            return;
        };
        let have = iter_count(steps);
        if have > want || (exact && have < want) {
            let rel = if exact { "" } else { "at most " };
            p.add::<()>(
                key,
                format!("has {have} `[]` but `to` has {want} (must be {rel}equal)"),
            );
        }
    };
    let opts = HookOptions {
        separator: raw.separator,
        template: raw.template,
        max_chars: raw.max_chars,
        suffix: raw.suffix,
    };
    if raw.hook.is_none() {
        let given = [("args", raw.args.is_some())]
            .into_iter()
            .chain(opts.given());
        for (key, _) in given.filter(|(_, given)| *given) {
            p.add::<()>(key, "only valid with `hook`");
        }
    }
    let source = match (raw.from, raw.constant, raw.hook) {
        (Some(from), None, None) => p.ok("from", parse_src(&from, false)).map(|src| {
            check_iters(p, "from", &src, true);
            Source::From(src)
        }),
        (None, Some(c), None) => p.ok("const", toml_to_json(c)).map(Source::Const),
        (None, None, Some(name)) => {
            let mut args = Vec::new();
            for (k, text) in raw.args.iter().flatten().enumerate() {
                let key = format!("args[{k}]");
                if let Some(src) = p.ok(&key, parse_src(text, true)) {
                    check_iters(p, &key, &src, false);
                    args.push(src);
                }
            }
            match Hook::parse(&name, &opts, args.len()) {
                Ok(hook) => Some(Source::Hook(hook, args)),
                Err(e) => match e.split_once(": ") {
                    Some((key, msg)) => p.add(key, msg),
                    None => p.add("hook", e),
                },
            }
        }
        (None, None, None) => p.add("", "needs one of `from`, `const` or `hook`"),
        _ => p.add("", "`from`, `const` and `hook` are mutually exclusive"),
    };
    let default = raw.default.and_then(|v| p.ok("default", toml_to_json(v)));
    let values_default = raw
        .values_default
        .and_then(|v| p.ok("values_default", toml_to_json(v)));
    if let Some(name) = raw.values.as_deref().filter(|n| !values.contains_key(*n)) {
        p.add::<()>("values", format!("unknown value map `{name}`"));
    }
    if values_default.is_some() && raw.values.is_none() {
        p.add::<()>("values_default", "only valid with `values`");
    }
    let date = raw.date.and_then(|d| {
        let from = p.ok("date.from", parse_date_fmt(&d.from));
        let to = p.ok("date.to", parse_date_fmt(&d.to));
        let tz = p.ok(
            "date.tz",
            parse_tz(d.tz.as_deref().unwrap_or("Asia/Ho_Chi_Minh")),
        );
        Some(DateConv {
            from: from?,
            to: to?,
            tz: tz?,
        })
    });
    let structured = |v: Option<&Value>| v.is_some_and(|v| v.is_array() || v.is_object());
    let constant = match &source {
        Some(Source::Const(c)) => Some(c),
        _ => None,
    };
    let ty = match raw.ty {
        Some(ty) => ty,
        // A table or array constant without an explicit type is copied as is.
        None if structured(constant) => Type::Raw,
        None => Type::String,
    };
    if ty != Type::Raw {
        for (key, v) in [("const", constant), ("default", default.as_ref())] {
            if structured(v) {
                p.add::<()>(key, "arrays and tables need type = \"raw\"");
            }
        }
    }
    let rule = match (p.list.len() == start, to.clone(), source) {
        (true, Some(to), Some(source)) => Some(Rule {
            to,
            source,
            default,
            required: raw.required,
            values: raw.values,
            values_default,
            date,
            ty,
        }),
        _ => None,
    };
    (to, rule)
}

fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    if text == "." {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for (n, seg) in text.split('.').enumerate() {
        let (name, mut rest) = seg.split_at(seg.find('[').unwrap_or(seg.len()));
        if name.contains(']') || (name.is_empty() && (n > 0 || rest.is_empty())) {
            return Err(format!("bad member name in path `{text}`"));
        }
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        while let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| format!("unclosed `[` in path `{text}`"))?;
            let inner = &after[..end];
            steps.push(match inner.parse() {
                _ if inner.is_empty() => Step::Iter,
                Ok(n) if inner.bytes().all(|b| b.is_ascii_digit()) => Step::Index(n),
                _ => return Err(format!("bad index `[{inner}]` in path `{text}`")),
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("unexpected text after `]` in path `{text}`"));
        }
    }
    Ok(steps)
}

/// `$ctx.NAME`, `$out.PATH`, a `'literal'` (hook arguments only) or an input path.
fn parse_src(text: &str, in_args: bool) -> Result<Src, String> {
    if let Some(path) = text.strip_prefix("$out.") {
        return parse_path(path).map(Src::Out);
    }
    if let Some(name) = text.strip_prefix("$ctx.") {
        return match name {
            "" => Err("empty context name".into()),
            _ => Ok(Src::Ctx(name.to_owned())),
        };
    }
    match text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        Some(literal) if in_args => Ok(Src::Literal(literal.to_owned())),
        _ => parse_path(text).map(Src::Path),
    }
}

fn iter_count(steps: &[Step]) -> usize {
    steps.iter().filter(|s| **s == Step::Iter).count()
}

/// Renders a path with the bound iteration indices (`documents[2].name`).
fn render(steps: &[Step], idx: &[usize]) -> String {
    let (mut out, mut bound) = (String::new(), idx.iter());
    for step in steps {
        let _ = match step {
            Step::Key(k) if out.is_empty() => write!(out, "{k}"),
            Step::Key(k) => write!(out, ".{k}"),
            Step::Index(n) => write!(out, "[{n}]"),
            Step::Iter => match bound.next() {
                Some(i) => write!(out, "[{i}]"),
                None => write!(out, "[]"),
            },
        };
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Whether two output paths may write the same node or need different container kinds.
fn overlaps(a: &[Step], b: &[Step]) -> bool {
    for pair in a.iter().zip(b) {
        match pair {
            (Step::Key(p), Step::Key(q)) if p != q => return false,
            (Step::Index(p), Step::Index(q)) if p != q => return false,
            (Step::Key(_), Step::Key(_)) => {}
            (Step::Key(_), _) | (_, Step::Key(_)) => return true,
            _ => {}
        }
    }
    true
}

fn toml_to_json(v: toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::Number(Number::from_f64(f).ok_or("not a JSON number")?),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => {
            Value::Array(a.into_iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// `rfc3339`, or a pattern of `yyyy MM dd HH mm ss` and separators, as a `time` description.
fn parse_date_fmt(pattern: &str) -> Result<DateFmt, String> {
    const TOKENS: [(&str, &str); 6] = [
        ("yyyy", "[year]"),
        ("MM", "[month]"),
        ("dd", "[day]"),
        ("HH", "[hour]"),
        ("mm", "[minute]"),
        ("ss", "[second]"),
    ];
    if pattern == "rfc3339" {
        return Ok(DateFmt::Rfc3339);
    }
    let (mut desc, mut seen, mut rest) = (String::new(), Vec::new(), pattern);
    while let Some(c) = rest.chars().next() {
        if let Some((token, item)) = TOKENS.iter().find(|(t, _)| rest.starts_with(t)) {
            if seen.contains(token) {
                return Err(format!(
                    "`{token}` appears twice in date pattern `{pattern}`"
                ));
            }
            seen.push(*token);
            desc.push_str(item);
            rest = &rest[token.len()..];
        } else if "-/: T.,".contains(c) {
            desc.push(c);
            rest = &rest[c.len_utf8()..];
        } else {
            return Err(format!("unsupported `{c}` in date pattern `{pattern}`"));
        }
    }
    let has = |t: &str| seen.contains(&t);
    if !(has("yyyy") && has("MM") && has("dd"))
        || (has("mm") && !has("HH"))
        || (has("ss") && !has("mm"))
    {
        return Err(format!(
            "date pattern `{pattern}` needs yyyy, MM, dd and optionally HH[mm[ss]]"
        ));
    }
    let items = time::format_description::parse_owned::<2>(&desc).map_err(|e| e.to_string())?;
    Ok(DateFmt::Pattern {
        text: pattern.to_owned(),
        items,
        has_time: has("HH"),
    })
}

/// `Asia/Ho_Chi_Minh` is a fixed UTC+07:00: Vietnam has used that offset without daylight
/// saving time since 1975, so no time zone database is needed.
fn parse_tz(tz: &str) -> Result<UtcOffset, String> {
    let num = |r: std::ops::Range<usize>| {
        let digits = tz
            .get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))?;
        digits.parse::<i8>().ok()
    };
    let sign = match tz.as_bytes().first() {
        Some(b'+') => 1,
        _ => -1,
    };
    let offset = match (tz, tz.get(..1), tz.get(3..4), num(1..3), num(4..6)) {
        ("Asia/Ho_Chi_Minh", ..) => UtcOffset::from_hms(7, 0, 0).ok(),
        ("UTC", ..) => Some(UtcOffset::UTC),
        (_, Some("+" | "-"), Some(":"), Some(h), Some(m)) if tz.len() == 6 && h < 24 && m < 60 => {
            UtcOffset::from_hms(sign * h, sign * m, 0).ok()
        }
        _ => None,
    };
    offset.ok_or_else(|| format!("unknown time zone `{tz}` (use Asia/Ho_Chi_Minh, UTC or ±HH:MM)"))
}

impl DateConv {
    fn convert(&self, v: &Value) -> Result<String, String> {
        let expected = || match &self.from {
            DateFmt::Rfc3339 => "expected an RFC 3339 date-time".to_owned(),
            DateFmt::Pattern { text, .. } => format!("expected a date in format `{text}`"),
        };
        let text = scalar_text(v).ok_or_else(expected)?;
        if text.is_empty() {
            return Ok(String::new());
        }
        let instant = match &self.from {
            DateFmt::Rfc3339 => OffsetDateTime::parse(&text, &Rfc3339)
                .ok()
                .and_then(|t| t.checked_to_offset(self.tz)),
            DateFmt::Pattern {
                items,
                has_time: true,
                ..
            } => PrimitiveDateTime::parse(&text, items)
                .ok()
                .map(|t| t.assume_offset(self.tz)),
            DateFmt::Pattern { items, .. } => Date::parse(&text, items)
                .ok()
                .map(|d| d.midnight().assume_offset(self.tz)),
        };
        let instant = instant.ok_or_else(expected)?;
        match &self.to {
            DateFmt::Rfc3339 => instant.format(&Rfc3339),
            DateFmt::Pattern { items, .. } => instant.format(items),
        }
        .map_err(|_| "date cannot be written in the output format".to_owned())
    }
}

/// Text of a scalar: strings as is, numbers as their literal, booleans as `true`/`false`.
fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn convert(ty: Type, v: &Value) -> Result<Ordered, &'static str> {
    if ty == Type::Raw {
        return Ok(Ordered::from_value(v));
    }
    let text = scalar_text(v).ok_or("expected a scalar")?;
    let flag = || match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected a boolean (true/false/1/0)"),
    };
    let string = |s: &str| Ordered::String(s.to_owned());
    Ok(match ty {
        Type::String | Type::Raw => string(&text),
        Type::BoolTitle => string(if flag()? { "True" } else { "False" }),
        Type::BoolDigit => string(if flag()? { "1" } else { "0" }),
        Type::Boolean => Ordered::Bool(flag()?),
        Type::Integer => {
            let digits = text.strip_prefix(['+', '-']).unwrap_or(&text);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("expected an integer");
            }
            let n = text.parse::<i64>().map(Number::from);
            let n = n.or_else(|_| text.parse::<u64>().map(Number::from));
            Ordered::Number(n.map_err(|_| "integer out of range")?)
        }
        Type::Number => Ordered::Number(text.parse().map_err(|_| "expected a number")?),
    })
}

impl Rule {
    fn sources(&self) -> &[Src] {
        match &self.source {
            Source::From(src) => std::slice::from_ref(src),
            Source::Hook(_, args) => args,
            Source::Const(_) => &[],
        }
    }
}

/// One rule applied to one input.
/// What a mapping may still write (and read in hook arguments), in bytes.
struct Budget {
    left: std::cell::Cell<usize>,
    max: usize,
}

/// The output bound of [`Mapping::apply`]: the translator's default `max_output_bytes`.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;

/// About the size of a value as compact JSON, plus a few bytes of punctuation.
fn json_size(v: &Ordered) -> usize {
    match v {
        Ordered::Null | Ordered::Bool(_) => 5,
        Ordered::Number(n) => n.as_str().len() + 1,
        // As serde_json writes it: `"` and `\` take two bytes, control characters six.
        Ordered::String(s) => {
            s.len()
                + 3
                + s.bytes()
                    .map(|b| match b {
                        b'"' | b'\\' => 1,
                        0..=0x1f => 5,
                        _ => 0,
                    })
                    .sum::<usize>()
        }
        Ordered::Array(items) => items.iter().map(json_size).sum::<usize>() + 2,
        Ordered::Object(members) => {
            members
                .iter()
                .map(|(k, v)| k.len() + 3 + json_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

struct Run<'a> {
    budget: &'a Budget,
    mapping: &'a Mapping,
    rule: &'a Rule,
    input: &'a Value,
    ctx: &'a Context,
    /// Output written by earlier rules (only when the rule reads `$out`).
    out: &'a Value,
}

impl<'a> Run<'a> {
    /// Takes `n` bytes from the budget, or fails naming the output path.
    fn charge(&self, n: usize, idx: &[usize]) -> Result<(), MapError> {
        match self.budget.left.get().checked_sub(n) {
            Some(left) => {
                self.budget.left.set(left);
                Ok(())
            }
            None => Err(fail(
                render(&self.rule.to, idx),
                format!(
                    "the mapping's output would exceed {} bytes",
                    self.budget.max
                ),
            )),
        }
    }

    /// Writes the rule below `node`, the container addressed by `to[..pos]`; `idx` holds the
    /// iteration indices bound so far. Returns whether anything was written. New slots start
    /// as a `Null` placeholder and are removed again when nothing was written into them.
    fn walk(&self, pos: usize, node: &mut Ordered, idx: &mut Vec<usize>) -> Result<bool, MapError> {
        let steps = &self.rule.to;
        match (&steps[pos], node) {
            (Step::Key(name), Ordered::Object(members)) => {
                let found = members.iter().position(|(k, _)| k == name);
                let i = found.unwrap_or_else(|| {
                    members.push((name.clone(), Ordered::Null));
                    members.len() - 1
                });
                let wrote = self.fill(pos, &mut members[i].1, found.is_none(), idx)?;
                if found.is_none() && !wrote {
                    members.pop();
                }
                Ok(wrote)
            }
            (Step::Index(n), Ordered::Array(items)) => {
                let (n, len) = (*n, items.len());
                if n > len {
                    let msg = format!("index {n} is out of range (the array has {len} elements)");
                    return Err(fail(render(&steps[..=pos], idx), msg));
                }
                if n == len {
                    items.push(Ordered::Null);
                }
                let wrote = self.fill(pos, &mut items[n], n == len, idx)?;
                if n == len && !wrote {
                    items.pop();
                }
                Ok(wrote)
            }
            (Step::Iter, Ordered::Array(items)) => {
                let leaf = pos + 1 == steps.len();
                for i in 0..self.count(idx, items.len())? {
                    idx.push(i);
                    // Scalars are appended (skipped ones left out); objects line up by index.
                    let at = if leaf { items.len() } else { i };
                    let new = at == items.len();
                    if new {
                        items.push(Ordered::Null);
                    }
                    let wrote = self.fill(pos, &mut items[at], new, idx)?;
                    if leaf && !wrote {
                        items.pop();
                    }
                    idx.pop();
                }
                Ok(true) // arrays declared with `[]` always exist
            }
            _ => Err(fail(
                render(&steps[..pos], idx),
                "output path conflicts with an earlier rule",
            )),
        }
    }

    /// Fills the slot addressed by `to[..=pos]`: the value at the end of the path, else the
    /// rest of the path (a new slot first becomes the container the next step needs).
    fn fill(
        &self,
        pos: usize,
        slot: &mut Ordered,
        new: bool,
        idx: &mut Vec<usize>,
    ) -> Result<bool, MapError> {
        match self.rule.to.get(pos + 1) {
            None => Ok(self.value(idx)?.map(|v| *slot = v).is_some()),
            Some(next) => {
                if new {
                    *slot = match next {
                        Step::Key(_) => Ordered::Object(Vec::new()),
                        _ => Ordered::Array(Vec::new()),
                    };
                }
                self.walk(pos + 1, slot, idx)
            }
        }
    }

    /// Length of iteration level `idx.len()`: from the first source that iterates at that
    /// level, else the number of elements earlier rules created.
    fn count(&self, idx: &[usize], existing: usize) -> Result<usize, MapError> {
        for src in self.rule.sources() {
            let Some((root, prefix, steps)) = self.path(src) else {
                continue;
            };
            let iters = steps.iter().enumerate().filter(|(_, s)| **s == Step::Iter);
            let Some((k, _)) = iters.clone().nth(idx.len()) else {
                continue;
            };
            return match self.resolve(root, prefix, &steps[..k], idx)? {
                None | Some(Value::Null) => Ok(0),
                Some(Value::String(s)) if s.is_empty() => Ok(0),
                Some(Value::Array(a)) => Ok(a.len()),
                Some(_) => Err(fail(
                    format!("{prefix}{}", render(&steps[..k], idx)),
                    "expected an array",
                )),
            };
        }
        Ok(existing)
    }

    /// Looks up an input path; `None` when a member, element or parent is absent or null.
    /// An empty string counts as an empty container: the XML convention turns `<a/>` into
    /// `""`, which may be an element whose children are all absent.
    fn resolve(
        &self,
        root: &'a Value,
        prefix: &str,
        steps: &[Step],
        idx: &[usize],
    ) -> Result<Option<&'a Value>, MapError> {
        let (mut cur, mut bound) = (root, idx.iter());
        for (i, step) in steps.iter().enumerate() {
            let next = match (step, cur) {
                (_, Value::Null) => None,
                (_, Value::String(s)) if s.is_empty() => None,
                (Step::Key(k), Value::Object(m)) => m.get(k),
                (Step::Index(n), Value::Array(a)) => a.get(*n),
                (Step::Iter, Value::Array(a)) => bound.next().and_then(|i| a.get(*i)),
                (Step::Key(_), _) => {
                    return Err(fail(
                        format!("{prefix}{}", render(&steps[..i], idx)),
                        "expected an object",
                    ))
                }
                _ => {
                    return Err(fail(
                        format!("{prefix}{}", render(&steps[..i], idx)),
                        "expected an array",
                    ))
                }
            };
            match next {
                Some(v) => cur = v,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The root, the name prefix and the steps of a path source.
    fn path(&self, src: &'a Src) -> Option<(&'a Value, &'static str, &'a [Step])> {
        match src {
            Src::Path(steps) => Some((self.input, "", steps)),
            Src::Out(steps) => Some((self.out, "$out.", steps)),
            Src::Ctx(_) | Src::Literal(_) => None,
        }
    }

    fn get(&self, src: &'a Src, idx: &[usize]) -> Result<Option<Cow<'a, Value>>, MapError> {
        let text = |s: &String| Cow::Owned(Value::String(s.clone()));
        Ok(match (src, self.path(src)) {
            (_, Some((root, prefix, steps))) => {
                self.resolve(root, prefix, steps, idx)?.map(Cow::Borrowed)
            }
            (Src::Ctx(name), _) => self.ctx.get(name).map(text),
            (Src::Literal(s), _) => Some(text(s)),
            _ => None,
        })
    }

    /// The path to blame for a source (never its value: context values may be secrets).
    fn name(&self, src: &'a Src, idx: &[usize]) -> String {
        match (src, self.path(src)) {
            (_, Some((_, prefix, steps))) => format!("{prefix}{}", render(steps, idx)),
            (Src::Ctx(name), _) => format!("$ctx.{name}"),
            _ => render(&self.rule.to, idx),
        }
    }

    /// The value for one index tuple, through the whole pipeline; `None` = omit.
    fn value(&self, idx: &[usize]) -> Result<Option<Ordered>, MapError> {
        let rule = self.rule;
        let at = || match &rule.source {
            Source::From(src) => self.name(src, idx),
            _ => render(&rule.to, idx),
        };
        let got = match &rule.source {
            Source::From(src) => self.get(src, idx)?,
            Source::Const(v) => Some(Cow::Borrowed(v)),
            Source::Hook(hook, args) => {
                let mut texts = Vec::with_capacity(args.len());
                let mut any = false;
                let mut missing = None;
                for arg in args {
                    // Arrays and objects count as their compact JSON text.
                    let text = match self.get(arg, idx)? {
                        Some(v) if !v.is_null() => {
                            any = true;
                            scalar_text(&v).map_or_else(|| v.to_string(), Cow::into_owned)
                        }
                        _ => {
                            missing.get_or_insert(arg);
                            String::new()
                        }
                    };
                    // Arguments are read anew for every element: their text is work.
                    self.charge(text.len(), idx)?;
                    texts.push(text);
                }
                // As for `from`: with nothing to work on, a rule's `default` stands in for
                // the hook's output (which would be made of empty strings); then
                // `required` wants every argument; else the hook runs on what there is.
                if !any && !args.is_empty() && rule.default.is_some() {
                    None
                } else if let (true, Some(arg)) = (rule.required, missing) {
                    return Err(fail(self.name(arg, idx), "required value is missing"));
                } else {
                    Some(Cow::Owned(Value::String(hook.run(&texts))))
                }
            }
        };
        let mut v = match got {
            Some(v) if !v.is_null() => v,
            got => match &rule.default {
                Some(default) => Cow::Borrowed(default),
                None if rule.required => return Err(fail(at(), "required value is missing")),
                None if got.is_some() && rule.ty == Type::Raw => return Ok(Some(Ordered::Null)),
                None => return Ok(None),
            },
        };
        if let Some(name) = &rule.values {
            let text = scalar_text(&v).ok_or_else(|| fail(at(), "expected a scalar"))?;
            let found = self
                .mapping
                .values
                .get(name)
                .and_then(|m| m.get(text.as_ref()));
            let mapped = found.or(rule.values_default.as_ref());
            let missing = || fail(at(), format!("value is not in values map `{name}`"));
            v = Cow::Borrowed(mapped.ok_or_else(missing)?);
        }
        if let Some(date) = &rule.date {
            v = Cow::Owned(Value::String(date.convert(&v).map_err(|m| fail(at(), m))?));
        }
        let out = convert(rule.ty, &v).map_err(|m| fail(at(), m))?;
        self.charge(json_size(&out), idx)?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies `mapping` to `input`: the serialized output, or the error as text.
    fn run_ctx(mapping: &str, input: Value, ctx: &Context) -> String {
        let m = Mapping::parse(mapping).unwrap_or_else(|p| panic!("{p:#?}"));
        match m.apply(&input, ctx) {
            Ok(out) => String::from_utf8(out.to_json_vec()).unwrap(),
            Err(e) => format!("error {e}"),
        }
    }

    fn run(mapping: &str, input: Value) -> String {
        run_ctx(mapping, input, &Context::new())
    }

    #[test]
    fn renames_nested_objects_and_rule_order() {
        let m = r##"field = [
            { to = "z.second", from = "a" },
            { to = "@id", from = "meta.id" },
            { to = "z.first", from = "b.c" },
            { to = "edXML:From.#text", from = "meta.id" },
        ]"##;
        let out = run(m, json!({"a": "A", "b": {"c": 1}, "meta": {"id": "x"}}));
        let want = r##"{"z":{"second":"A","first":"1"},"@id":"x","edXML:From":{"#text":"x"}}"##;
        assert_eq!(out, want);
    }

    #[test]
    fn iteration_pairs_levels_including_nested_arrays() {
        let m = r#"field = [
            { to = "out[].Ten", from = "docs[].name" },
            { to = "out[].Tep[].Ten", from = "docs[].files[].n" },
            { to = "out[].Tep[].Kieu", const = "pdf" },
            { to = "out[].Ma", hook = "format", args = ["docs[].name", "'#'"], template = "{1}{0}" },
            { to = "dbs[]", from = "connected[]" },
        ]"#;
        let input = json!({
            "docs": [{"name": "A", "files": [{"n": "f1"}, {"n": "f2"}]}, {"name": "B"}],
            "connected": ["x", "y"]
        });
        let want = concat!(
            r#"{"out":[{"Ten":"A","Tep":[{"Ten":"f1","Kieu":"pdf"},{"Ten":"f2","Kieu":"pdf"}],"#,
            r##""Ma":"#A"},{"Ten":"B","Tep":[],"Ma":"#B"}],"dbs":["x","y"]}"##
        );
        assert_eq!(run(m, input), want);
    }

    /// Numbers go through as written (serde_json's `arbitrary_precision`): an amount's
    /// trailing zeros and a long identifier's digits are what a checksum signs and a
    /// counterpart compares, so none may be rounded through an f64.
    #[test]
    fn numbers_keep_the_digits_they_were_written_with() {
        let m = r#"field = [
            { to = "SoTien", from = "amount" },
            { to = "Ma", from = "id" },
            { to = "Tien", from = "amount", type = "number" },
            { to = "Mu", from = "exp" },
        ]"#;
        let input: Value = serde_json::from_str(
            r#"{"amount": 50000.00, "id": 12345678901234567890123, "exp": 1e5}"#,
        )
        .unwrap();
        let out = run(m, input);
        assert_eq!(
            out,
            // (serde_json writes an exponent with its sign: the value, not rounded.)
            r#"{"SoTien":"50000.00","Ma":"12345678901234567890123","Tien":50000.00,"Mu":"1e+5"}"#
        );
    }

    #[test]
    fn fixed_indices() {
        let m = r#"field = [
            { to = "data[0].MaHoSo", from = "code" },
            { to = "data[0].Ten", from = "items[1].name" },
            { to = "data[1].X", const = "x" },
        ]"#;
        let out = run(m, json!({"code": "H1", "items": [{}, {"name": "n"}]}));
        assert_eq!(out, r#"{"data":[{"MaHoSo":"H1","Ten":"n"},{"X":"x"}]}"#);
        let out = run(r#"field = [{ to = "data[2].X", const = "x" }]"#, json!({}));
        assert_eq!(
            out,
            "error data[2]: index 2 is out of range (the array has 0 elements)"
        );
    }

    #[test]
    fn empty_or_missing_input_arrays_give_empty_output_arrays() {
        let m = r#"field = [
            { to = "a.list[]", from = "items[].x" },
            { to = "b[].c[]", from = "m[].n[]" },
        ]"#;
        for input in [
            json!({}),
            json!({"items": null, "m": []}),
            json!({"items": []}),
        ] {
            assert_eq!(run(m, input), r#"{"a":{"list":[]},"b":[]}"#);
        }
        let out = run(m, json!({"items": {"x": 1}}));
        assert_eq!(out, "error items: expected an array");
        // Absent optional values do not create empty parent objects.
        assert_eq!(
            run(r#"field = [{ to = "p.q", from = "nope" }]"#, json!({})),
            "{}"
        );
    }

    #[test]
    fn constants() {
        let m = r#"field = [
            { to = "DanhSach", const = [] },
            { to = "Co", const = "False" },
            { to = "Obj", const = { b = 1, a = [true] } },
            { to = "N", const = 5, type = "integer" },
        ]"#;
        let want = r#"{"DanhSach":[],"Co":"False","Obj":{"a":[true],"b":1},"N":5}"#;
        assert_eq!(run(m, json!(null)), want);
    }

    #[test]
    fn defaults_required_and_null() {
        let m = r#"field = [
            { to = "a", from = "x", default = "" },
            { to = "b", from = "y", default = "d" },
            { to = "c", from = "y" },
            { to = "d", from = "y", type = "raw" },
            { to = "e", from = "x", type = "raw" },
        ]"#;
        assert_eq!(run(m, json!({"y": null})), r#"{"a":"","b":"d","d":null}"#);
        let m = r#"field = [{ to = "out[].n", from = "docs[].name", required = true }]"#;
        let out = run(m, json!({"docs": [{"name": "a"}, {}]}));
        assert_eq!(out, "error docs[1].name: required value is missing");
    }

    #[test]
    fn value_maps() {
        let maps = "values.status = { received = \"2\", 2 = \"3\" }\n";
        let m = format!(r#"{maps}field = [{{ to = "s", from = "st", values = "status" }}]"#);
        assert_eq!(run(&m, json!({"st": "received"})), r#"{"s":"2"}"#);
        assert_eq!(run(&m, json!({"st": 2})), r#"{"s":"3"}"#);
        let out = run(&m, json!({"st": "secret-value"}));
        assert_eq!(out, "error st: value is not in values map `status`");
        let m = m.replace("values = ", "values_default = \"0\", values = ");
        assert_eq!(run(&m, json!({"st": "other"})), r#"{"s":"0"}"#);
    }

    #[test]
    fn types() {
        let cases = [
            ("string", json!(1.5), r#""1.5""#),
            ("string", json!(true), r#""true""#),
            ("string", json!([1]), "error v: expected a scalar"),
            ("bool_title", json!("TRUE"), r#""True""#),
            ("bool_title", json!(false), r#""False""#),
            ("bool_digit", json!("true"), r#""1""#),
            ("bool_digit", json!("0"), r#""0""#),
            ("boolean", json!("1"), "true"),
            (
                "boolean",
                json!("yes"),
                "error v: expected a boolean (true/false/1/0)",
            ),
            ("integer", json!("-42"), "-42"),
            ("integer", json!(7), "7"),
            (
                "integer",
                json!("18446744073709551615"),
                "18446744073709551615",
            ),
            ("integer", json!("12abc"), "error v: expected an integer"),
            ("integer", json!(1.5), "error v: expected an integer"),
            (
                "integer",
                json!("99999999999999999999"),
                "error v: integer out of range",
            ),
            ("number", json!("1.25"), "1.25"),
            ("number", json!(3), "3"),
            ("number", json!("1x"), "error v: expected a number"),
            ("number", json!(" 1"), "error v: expected a number"),
            (
                "raw",
                json!({"b": [1, null], "a": "x"}),
                r#"{"a":"x","b":[1,null]}"#,
            ),
        ];
        for (ty, input, want) in cases {
            let m = format!(r#"field = [{{ to = "o", from = "v", type = "{ty}" }}]"#);
            let out = run(&m, json!({ "v": input }));
            let out = out
                .strip_prefix(r#"{"o":"#)
                .map_or(&*out, |o| &o[..o.len() - 1]);
            assert_eq!(out, want, "{ty}");
        }
    }

    #[test]
    fn dates() {
        let cases = [
            (
                "rfc3339",
                "yyyyMMddHHmmss",
                "",
                "2025-07-15T01:00:00Z",
                "20250715080000",
            ),
            (
                "rfc3339",
                "yyyy/MM/dd",
                "",
                "2025-07-14T20:30:00-05:00",
                "2025/07/15",
            ),
            (
                "yyyyMMddHHmmss",
                "rfc3339",
                "",
                "20250715080000",
                "2025-07-15T08:00:00+07:00",
            ),
            (
                "yyyy/MM/dd",
                "yyyy-MM-dd HH:mm:ss",
                "",
                "2025/07/15",
                "2025-07-15 00:00:00",
            ),
            (
                "yyyy-MM-dd HH:mm",
                "dd/MM/yyyy",
                "",
                "2025-07-15 23:59",
                "15/07/2025",
            ),
            ("yyyyMMddHHmmss", "rfc3339", "", "", ""),
            (
                "yyyyMMddHHmmss",
                "rfc3339",
                "UTC",
                "20250715080000",
                "2025-07-15T08:00:00Z",
            ),
            (
                "rfc3339",
                "yyyy-MM-dd HH:mm:ss",
                "-05:30",
                "2025-07-15T01:00:00Z",
                "2025-07-14 19:30:00",
            ),
        ];
        let conv = |from: &str, to: &str, tz: &str, input: &str| {
            let tz = if tz.is_empty() {
                String::new()
            } else {
                format!(r#", tz = "{tz}""#)
            };
            let date = format!(r#"{{ from = "{from}", to = "{to}"{tz} }}"#);
            let m = format!(r#"field = [{{ to = "o", from = "d", date = {date} }}]"#);
            run(&m, json!({ "d": input }))
        };
        for (from, to, tz, input, want) in cases {
            assert_eq!(
                conv(from, to, tz, input),
                format!(r#"{{"o":"{want}"}}"#),
                "{input}"
            );
        }
        let out = conv("yyyyMMddHHmmss", "rfc3339", "", "2025-07-15");
        assert_eq!(out, "error d: expected a date in format `yyyyMMddHHmmss`");
        let out = conv("rfc3339", "yyyyMMdd", "", "20250715");
        assert_eq!(out, "error d: expected an RFC 3339 date-time");
    }

    #[test]
    fn output_is_bounded_however_a_rule_multiplies_its_input() {
        // The shipped DVCQG batch rule: one envelope value copied into every item.
        let m = Mapping::parse(
            r#"
[[field]]
to = "items[].unit"
hook = "format"
template = "{0}"
args = ["unit", "data[]"]
"#,
        )
        .unwrap();
        let input = json!({"unit": "x".repeat(1000), "data": vec![json!({}); 1000]});
        // About 1 MB of output (and as much read): within 2 MB, not within 200 kB.
        let out = m.apply_within(&input, &Context::new(), 2 << 20).unwrap();
        assert!(out.to_json_vec().len() > 1_000_000);
        let e = m
            .apply_within(&input, &Context::new(), 200_000)
            .unwrap_err();
        assert!(e.message.contains("exceed 200000 bytes"), "{e}");
        assert!(e.path.starts_with("items["), "{e}");
        // Escapes count as serde_json writes them: a control character is six bytes.
        let input = json!({"unit": "\u{1}".repeat(1000), "data": vec![json!({}); 1000]});
        let e = m
            .apply_within(&input, &Context::new(), 2 << 20)
            .unwrap_err();
        assert!(e.message.contains("exceed"), "{e}");
        // An array argument is read as its JSON text for every element: that counts too,
        // even when the output stays small.
        let m = Mapping::parse(
            r#"
[[field]]
to = "items[].n"
hook = "format"
template = "{1}"
args = ["big", "data[]"]
"#,
        )
        .unwrap();
        let input = json!({"big": vec!["y".repeat(100); 100], "data": vec![json!({}); 1000]});
        let e = m
            .apply_within(&input, &Context::new(), 1 << 20)
            .unwrap_err();
        assert!(e.message.contains("exceed"), "{e}");
        // Constants copied per element are counted as well.
        let m = Mapping::parse("[[field]]\nto = \"items[].i\"\nfrom = \"data[]\"\n[[field]]\nto = \"items[].c\"\nconst = \"ccccccccccccccccccccc\"\n")
            .unwrap();
        let input = json!({"data": vec![json!(1); 10000]});
        assert!(m.apply_within(&input, &Context::new(), 50_000).is_err());
        assert!(m.apply_within(&input, &Context::new(), 1 << 20).is_ok());
    }

    #[test]
    fn hooks_context_and_secrets() {
        let m = r#"field = [
            { to = "MaXacThuc", hook = "sha256_hex", args = ["a", "$ctx.secret"], separator = "" },
            { to = "B64", hook = "base64_encode", args = ["'abc'"] },
            { to = "T", hook = "truncate", args = ["t"], max_chars = 4, suffix = "~" },
            { to = "U", hook = "upper", args = ["missing"] },
            { to = "Key", from = "$ctx.key", default = "none" },
            { to = "Echo", hook = "format", template = "{0}/{1}", args = ["$out.T", "obj"] },
        ]"#;
        let ctx = Context::from([("secret".to_owned(), "bc".to_owned())]);
        let out = run_ctx(m, json!({"a": "a", "t": "abcdef", "obj": {"k": 1}}), &ctx);
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let rest = r#""B64":"YWJj","T":"abc~","U":"","Key":"none","Echo":"abc~/{\"k\":1}"}"#;
        assert_eq!(out, format!(r#"{{"MaXacThuc":"{sha}",{rest}"#));
        assert_eq!(
            Mapping::parse(m).unwrap().context_names(),
            ["key", "secret"]
        );
        let m =
            r#"field = [{ to = "H", hook = "upper", args = ["$ctx.secret"], required = true }]"#;
        assert_eq!(
            run(m, json!({})),
            "error $ctx.secret: required value is missing"
        );
        // Error messages name paths, never values (context values may be secrets).
        let m = r#"field = [{ to = "I", from = "$ctx.secret", type = "integer" }]"#;
        assert_eq!(
            run_ctx(m, json!({}), &ctx),
            "error $ctx.secret: expected an integer"
        );
    }

    /// A hook rule's `default` stands in when every argument is absent or null (a
    /// literal argument is never absent); without one the hook runs on empty strings.
    #[test]
    fn a_hook_with_nothing_to_work_on_takes_its_default() {
        let m = r#"field = [
            { to = "A", hook = "upper", args = ["missing"], default = "none" },
            { to = "B", hook = "format", args = ["n", "missing"], template = "{0}{1}", default = "none" },
            { to = "C", hook = "format", args = ["n", "x"], template = "{0}{1}", default = "none" },
            { to = "D", hook = "upper", args = ["missing"] },
            { to = "E", hook = "format", args = ["missing", "'#'"], template = "{1}{0}", default = "none" },
            { to = "F", hook = "upper", args = ["missing"], default = "none", required = true },
        ]"#;
        assert_eq!(
            run(m, json!({"n": null, "x": "đ"})),
            r##"{"A":"none","B":"none","C":"đ","D":"","E":"#","F":"none"}"##
        );
    }

    #[test]
    fn load_problems_are_all_reported_with_key_paths() {
        let text = r#"
            bogus = 1
            values.status = { x = { nested = 1 } }
            field = [
                { to = "a", frm = "x" },
                { to = "b", from = "x", type = "strng" },
                { to = "c", hook = "sha512", args = ["x"] },
                { to = "d", from = "x", date = { from = "yyyy-QQ-dd", to = "rfc3339", tz = "CET" } },
                { to = "e[]", from = "x" },
                { to = "d.c", from = "y" },
                { to = "f", from = "x", const = "1", separator = "," },
                { to = "g", from = "x", values = "nope" },
                { to = "x[]", const = 1, default = [1] },
                { to = "x[0]", from = "a" },
                { to = "y", hook = "format", args = ["a[]"], template = "{0}" },
                { to = "z", from = "a", date = { from = "yyyy", to = "rfc3339" } },
                { to = "q", hook = "truncate", args = ["a"] },
            ]
        "#;
        let problems = Mapping::parse(text).unwrap_err();
        let expect = [
            "bogus: unknown key",
            "values.status.x: expected a scalar",
            "field[0]: unknown field `frm`",
            "field[1].type: unknown variant `strng`",
            "field[2].hook: unknown hook `sha512`",
            "field[3].date.from: unsupported `Q` in date pattern `yyyy-QQ-dd`",
            "field[3].date.tz: unknown time zone `CET`",
            "field[4].from: has 0 `[]` but `to` has 1",
            "field[5].to: `d.c` conflicts with field[3].to `d`",
            "field[6]: `from`, `const` and `hook` are mutually exclusive",
            "field[6].separator: only valid with `hook`",
            "field[7].values: unknown value map `nope`",
            "field[8].default: arrays and tables need type = \"raw\"",
            "field[9].to: `x[0]` conflicts with field[8].to `x[]`",
            "field[10].args[0]: has 1 `[]` but `to` has 0",
            "field[11].date.from: date pattern `yyyy` needs",
            "field[12].max_chars: required by hook `truncate`",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "no {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        let syntax = Mapping::parse("[[field]]\nto = ").unwrap_err();
        assert!(syntax[0].starts_with("line 2:"), "{syntax:?}");
    }

    #[test]
    fn description_whole_input_and_empty_containers() {
        let m = Mapping::parse("description = \"demo\"\n").unwrap();
        assert_eq!(m.description(), Some("demo"));
        assert_eq!(
            m.apply(&json!({}), &Context::new()).unwrap(),
            Ordered::Object(vec![])
        );
        let m = r#"field = [
            { to = "all", from = ".", type = "raw" },
            { to = "l[]", from = "b.c[]" },
        ]"#;
        assert_eq!(
            run(m, json!({"a": 1, "b": ""})),
            r#"{"all":{"a":1,"b":""},"l":[]}"#
        );
    }
}
