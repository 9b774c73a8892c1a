//! Adapters: per-system translation kept as data under `adapters/<system>/`.
//!
//! An adapter is a folder with an `adapter.toml` (system id, version, formats, operations,
//! fixtures), mapping files (`mapping.rs` documents their small vocabulary) and fixture files.
//! An operation has a request and/or a response *step*; each step reads one format, optionally
//! applies a mapping, and writes one format:
//!
//! ```text
//! input bytes ──parse──▶ JSON value ──mapping (optional)──▶ ordered JSON ──render──▶ output bytes
//!   json: strict RFC 8259 check        renames, value maps,                json, xml, soap11/12
//!   xml:  translate::xml_to_json       dates, types, hooks
//!   soap: translate::soap::unwrap (a Fault stays a Fault)
//! ```
//!
//! The format side is the streaming engine of `crate::translate` with the convention of
//! `adapters/README.md`; the field side works on a parsed JSON value (adapter payloads are
//! dossiers and lookups, bounded by the route's translation cap).
//!
//! Everything is checked when the adapters load — unknown keys, files, operations, hooks,
//! types, date patterns and context names — and every fixture runs, so a broken adapter is a
//! `lienthong check` failure and never a runtime surprise.

pub mod hooks;
pub mod mapping;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::translate::{self as tr, soap, TranslateError};
pub use mapping::{Context, MapError, Mapping, Ordered};

/// Context names the gateway supplies itself: on routes `request_id`, `caller_agency` and
/// `dossier_code` (when known); on deliveries `dossier_code` and `event_seq`.
pub const BUILTIN_CONTEXT: &[&str] = &["request_id", "caller_agency", "dossier_code", "event_seq"];

/// A payload format on one side of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Json,
    Xml,
    Soap11,
    Soap12,
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "json" => Format::Json,
            "xml" => Format::Xml,
            "soap11" => Format::Soap11,
            "soap12" => Format::Soap12,
            _ => return None,
        })
    }

    /// `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml; charset=utf-8",
            Format::Soap11 => "text/xml; charset=utf-8",
            Format::Soap12 => "application/soap+xml; charset=utf-8",
        }
    }
}

/// One direction of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub input: Format,
    pub output: Format,
    /// Mapping file (relative to the adapter folder), if any.
    pub mapping_file: Option<String>,
    /// SHA-256 of the mapping file's text.
    #[serde(skip)]
    mapping_sha: Option<[u8; 32]>,
    #[serde(skip)]
    pub mapping: Option<Arc<Mapping>>,
    /// Root element when the output is XML and the JSON is not a one-member object.
    pub root: Option<String>,
    /// SOAP action of a SOAP output.
    pub soap_action: Option<String>,
    /// Element paths that are always arrays when the input is XML or SOAP.
    pub arrays: Vec<String>,
    #[serde(skip)]
    xml_opts: tr::XmlToJsonOptions,
    #[serde(skip)]
    json_opts: tr::JsonToXmlOptions,
}

/// What a step produced.
#[derive(Debug)]
pub struct StepOutput {
    pub body: Vec<u8>,
    pub content_type: String,
    /// `SOAPAction` header value for a SOAP 1.1 output.
    pub soap_action: Option<String>,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The input does not parse in its format, or the output cannot be rendered.
    #[error("{0}")]
    Translate(#[from] TranslateError),
    /// The input parses but does not fit the mapping (a required field, an unmapped value…).
    #[error("{0}")]
    Map(#[from] MapError),
    /// The SOAP input is a Fault.
    #[error("SOAP fault {}", .0.code)]
    Fault(Box<soap::SoapFault>),
}

impl Step {
    /// Runs the step on `input` with the given context.
    pub fn run(&self, input: &[u8], ctx: &Context) -> Result<StepOutput, StepError> {
        let json: Vec<u8> = match self.input {
            Format::Json => {
                tr::validate_json(input, &self.xml_opts.limits)?;
                input.to_vec()
            }
            Format::Xml => {
                let mut out = Vec::with_capacity(input.len());
                tr::xml_to_json(input, &self.xml_opts, &mut out)?;
                out
            }
            Format::Soap11 | Format::Soap12 => match soap::unwrap(input, &self.xml_opts) {
                Ok(m) => m.json,
                Err(soap::UnwrapError::Fault(f)) => return Err(StepError::Fault(f)),
                Err(soap::UnwrapError::Translate(e)) => return Err(e.into()),
            },
        };
        let json = match &self.mapping {
            None => json,
            Some(m) => {
                let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
                    TranslateError::new(tr::TranslateErrorKind::Malformed, e.to_string())
                })?;
                m.apply_within(&value, ctx, self.xml_opts.limits.max_output_bytes)?
                    .to_json_vec()
            }
        };
        let mut soap_action = None;
        let (body, content_type) = match self.output {
            Format::Json => (json, Format::Json.content_type().to_string()),
            Format::Xml => {
                let mut out = Vec::with_capacity(json.len() * 2);
                tr::json_to_xml(&json, &self.json_opts, &mut out)?;
                (out, Format::Xml.content_type().to_string())
            }
            Format::Soap11 | Format::Soap12 => {
                let version = if self.output == Format::Soap12 {
                    soap::SoapVersion::V12
                } else {
                    soap::SoapVersion::V11
                };
                let o = soap::SoapWrapOptions {
                    json: self.json_opts.clone(),
                    action: self.soap_action.clone(),
                    ..Default::default()
                };
                let r = soap::wrap(&json, version, &o)?;
                soap_action = r.soap_action;
                (r.body, r.content_type)
            }
        };
        Ok(StepOutput {
            body,
            content_type,
            soap_action,
        })
    }
}

/// One operation of an adapter.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub description: Option<String>,
    pub request: Option<Step>,
    pub response: Option<Step>,
    /// Context names the mappings read that are not built in: a route using the operation
    /// must supply them.
    pub context: Vec<String>,
}

/// A loaded adapter.
#[derive(Debug, Clone, Serialize)]
pub struct Adapter {
    pub system: String,
    pub version: String,
    pub description: Option<String>,
    pub dir: PathBuf,
    pub operations: BTreeMap<String, Arc<Operation>>,
    /// Number of fixtures that ran and passed at load.
    pub fixtures: usize,
    /// Hex SHA-256 over `adapter.toml` and its mapping files: what a reload compares, so an
    /// edited mapping counts as a change even when the version was not bumped.
    pub digest: String,
}

/// Every adapter found under the configured folder, by system id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Adapters {
    pub dir: Option<PathBuf>,
    pub systems: BTreeMap<String, Arc<Adapter>>,
}

impl Adapters {
    /// The operation `system`/`operation`, if both exist.
    pub fn operation(&self, system: &str, operation: &str) -> Option<Arc<Operation>> {
        self.systems.get(system)?.operations.get(operation).cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdapter {
    system: String,
    version: String,
    description: Option<String>,
    /// Namespace URI → prefix, for every XML side of this adapter.
    #[serde(default)]
    namespaces: BTreeMap<String, String>,
    #[serde(default)]
    operations: BTreeMap<String, RawOperation>,
    #[serde(default)]
    fixtures: Vec<RawFixture>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    description: Option<String>,
    request: Option<RawStep>,
    response: Option<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    input: String,
    output: String,
    mapping: Option<String>,
    root: Option<String>,
    soap_action: Option<String>,
    #[serde(default)]
    arrays: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    /// `Operation.request` or `Operation.response`.
    step: String,
    input: String,
    /// Expected output file; compared as JSON values (XML and SOAP outputs are read back
    /// through the engine first).
    expected: Option<String>,
    /// Instead of `expected`: the step must fail, and its message must contain this text.
    error: Option<String>,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

/// Loads every `*/adapter.toml` under `dir`. Problems are `(key path, message)` pairs whose
/// path starts with the adapter's file (`dvcqg/adapter.toml: operations.X.request.mapping`).
pub fn load_dir(dir: &Path) -> (Adapters, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let mut adapters = Adapters {
        dir: Some(dir.to_path_buf()),
        systems: BTreeMap::new(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push((
                dir.display().to_string(),
                format!("cannot read the adapters folder: {e}"),
            ));
            return (adapters, problems);
        }
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("adapter.toml").is_file())
        .collect();
    folders.sort();
    for folder in folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = format!("{name}/adapter.toml");
        let mut p = Vec::new();
        if let Some(a) = load_one(&folder, true, &mut p) {
            if a.system != name {
                p.push((
                    "system".to_string(),
                    format!("{:?} must equal the folder name {name:?}", a.system),
                ));
            }
            if p.is_empty() {
                adapters.systems.insert(a.system.clone(), Arc::new(a));
            }
        }
        problems.extend(p.into_iter().map(|(k, m)| (format!("{label}: {k}"), m)));
    }
    (adapters, problems)
}

/// Loads one adapter folder without running its fixtures (`lienthong adapter run`, which
/// helps write them). Problems as in [`load_dir`], without the file prefix.
pub fn load_unchecked(folder: &Path) -> Result<Adapter, Vec<(String, String)>> {
    let mut p = Vec::new();
    match load_one(folder, false, &mut p) {
        Some(a) if p.is_empty() => Ok(a),
        _ => Err(p),
    }
}

fn load_one(
    folder: &Path,
    run_fixtures: bool,
    problems: &mut Vec<(String, String)>,
) -> Option<Adapter> {
    let text = match std::fs::read_to_string(folder.join("adapter.toml")) {
        Ok(t) => t,
        Err(e) => {
            problems.push(("(file)".into(), format!("cannot read: {e}")));
            return None;
        }
    };
    let raw: RawAdapter = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            problems.push(("(file)".into(), e.message().to_string()));
            return None;
        }
    };
    let mut namespaces = tr::default_namespaces();
    namespaces.extend(raw.namespaces.clone());
    let mut operations = BTreeMap::new();
    for (name, op) in raw.operations {
        let mut step = |side: &str, s: Option<RawStep>| {
            s.and_then(|s| {
                load_step(
                    folder,
                    &format!("operations.{name}.{side}"),
                    s,
                    &namespaces,
                    problems,
                )
            })
        };
        let request = step("request", op.request);
        let response = step("response", op.response);
        if request.is_none() && response.is_none() {
            problems.push((
                format!("operations.{name}"),
                "an operation needs a valid request or response step".into(),
            ));
            continue;
        }
        let mut context: Vec<String> = [&request, &response]
            .into_iter()
            .flatten()
            .filter_map(|s| s.mapping.as_ref())
            .flat_map(|m| m.context_names())
            .filter(|n| !BUILTIN_CONTEXT.contains(&n.as_str()))
            .collect();
        context.sort();
        context.dedup();
        operations.insert(
            name,
            Arc::new(Operation {
                description: op.description,
                request,
                response,
                context,
            }),
        );
    }
    let mut fixtures = 0;
    for (i, f) in raw.fixtures.iter().enumerate().filter(|_| run_fixtures) {
        match run_fixture(folder, &operations, f) {
            Ok(()) => fixtures += 1,
            Err(m) => problems.push((format!("fixtures[{i}] ({})", f.input), m)),
        }
    }
    let mut all = text.into_bytes();
    for op in operations.values() {
        for step in [&op.request, &op.response].into_iter().flatten() {
            all.extend(step.mapping_sha.iter().flatten());
        }
    }
    let digest = crate::body::sha256(&all)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(Adapter {
        system: raw.system,
        version: raw.version,
        description: raw.description,
        dir: folder.to_path_buf(),
        operations,
        fixtures,
        digest,
    })
}

fn load_step(
    folder: &Path,
    path: &str,
    s: RawStep,
    namespaces: &BTreeMap<String, String>,
    problems: &mut Vec<(String, String)>,
) -> Option<Step> {
    let before = problems.len();
    let mut format = |key: &str, v: &str| {
        Format::parse(v).or_else(|| {
            problems.push((
                format!("{path}.{key}"),
                format!("unknown format {v:?} (use json, xml, soap11 or soap12)"),
            ));
            None
        })
    };
    let input = format("input", &s.input);
    let output = format("output", &s.output);
    let mapping = s.mapping.as_ref().and_then(|file| {
        let full = folder.join(file);
        match std::fs::read_to_string(&full) {
            Err(e) => {
                problems.push((
                    format!("{path}.mapping"),
                    format!("cannot read {file}: {e}"),
                ));
                None
            }
            Ok(text) => match Mapping::parse(&text) {
                Ok(m) => Some((Arc::new(m), crate::body::sha256(text.as_bytes()))),
                Err(list) => {
                    problems.extend(
                        list.into_iter()
                            .map(|m| (format!("{path}.mapping ({file})"), m)),
                    );
                    None
                }
            },
        }
    });
    if problems.len() > before {
        return None;
    }
    let (input, output) = (input?, output?);
    if input == Format::Json && output == Format::Json && mapping.is_none() {
        problems.push((
            path.to_string(),
            "a json → json step without a mapping does nothing".into(),
        ));
        return None;
    }
    let mut xml_opts = tr::XmlToJsonOptions {
        arrays: tr::ArrayPaths::new(s.arrays.iter()),
        ..Default::default()
    };
    xml_opts.namespaces.clone_from(namespaces);
    let json_opts = tr::JsonToXmlOptions {
        root: s.root.clone(),
        namespaces: namespaces.clone(),
        ..Default::default()
    };
    Some(Step {
        input,
        output,
        mapping_file: s.mapping,
        mapping_sha: mapping.as_ref().map(|(_, d)| *d),
        mapping: mapping.map(|(m, _)| m),
        root: s.root,
        soap_action: s.soap_action,
        arrays: s.arrays,
        xml_opts,
        json_opts,
    })
}

fn run_fixture(
    folder: &Path,
    operations: &BTreeMap<String, Arc<Operation>>,
    f: &RawFixture,
) -> Result<(), String> {
    let (op, side) = f
        .step
        .rsplit_once('.')
        .ok_or_else(|| format!("step {:?}: use Operation.request or .response", f.step))?;
    let op = operations
        .get(op)
        .ok_or_else(|| format!("step {:?}: no such operation", f.step))?;
    let step = match side {
        "request" => op.request.as_ref(),
        "response" => op.response.as_ref(),
        _ => return Err(format!("step {:?}: use .request or .response", f.step)),
    }
    .ok_or_else(|| format!("step {:?}: the operation has no such step", f.step))?;
    let read = |file: &str| {
        std::fs::read(folder.join(file)).map_err(|e| format!("cannot read {file}: {e}"))
    };
    let input = read(&f.input)?;
    let got = step.run(&input, &f.context);
    match (&f.expected, &f.error, got) {
        (Some(exp), None, Ok(out)) => {
            let want = read(exp)?;
            let got_v = as_json(step.output, &out.body)
                .map_err(|e| format!("the output does not read back: {e}"))?;
            let want_v = as_json(step.output, &want).map_err(|e| format!("{exp}: {e}"))?;
            if got_v == want_v {
                // XML's element order is part of the document (the national formats are
                // checked against schemas with sequences); JSON's member order is not.
                if step.output == Format::Json {
                    return Ok(());
                }
                let shape = |body: &[u8]| {
                    json_text(step.output, body).and_then(|t| {
                        serde_json::from_slice::<Shape>(&t).map_err(|e| e.to_string())
                    })
                };
                let mut want_s = shape(&want).map_err(|e| format!("{exp}: {e}"))?;
                if let Shape::Object(m) = &mut want_s {
                    m.retain(|(k, _)| k != "_comment");
                }
                let got_s =
                    shape(&out.body).map_err(|e| format!("the output does not read back: {e}"))?;
                match order_difference(&want_s, &got_s, "") {
                    None => Ok(()),
                    Some(d) => Err(format!("output differs from {exp}: {d}")),
                }
            } else {
                Err(format!(
                    "output differs from {exp}: {}",
                    first_difference(&want_v, &got_v, "")
                ))
            }
        }
        (Some(_), None, Err(e)) => Err(format!("the step failed: {e}")),
        (None, Some(msg), Err(e)) => {
            if e.to_string().contains(msg.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "failed with {e:?}, expected an error containing {msg:?}"
                ))
            }
        }
        (None, Some(msg), Ok(_)) => Err(format!("succeeded, expected an error containing {msg:?}")),
        _ => Err("a fixture has exactly one of `expected` or `error`".into()),
    }
}

/// Reads a fixture body as a JSON value; XML and SOAP bodies go through the engine (lenient
/// repeats) so that formatting and prefixes do not matter, names, order and text do.
/// `_comment` members at the top level are ignored (the national samples carry one).
pub fn as_json(format: Format, body: &[u8]) -> Result<serde_json::Value, String> {
    let json = json_text(format, body)?;
    let mut v: serde_json::Value = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
    if let Some(o) = v.as_object_mut() {
        o.remove("_comment");
    }
    Ok(v)
}

/// A fixture body as JSON text, XML and SOAP through the engine (elements in document
/// order).
fn json_text(format: Format, body: &[u8]) -> Result<Vec<u8>, String> {
    Ok(match format {
        Format::Json => body.to_vec(),
        _ => {
            let o = tr::XmlToJsonOptions {
                strict_repeats: false,
                ..Default::default()
            };
            tr::xml_to_json_bytes(body, &o)
                .map_err(|e| e.to_string())?
                .to_vec()
        }
    })
}

/// The member order of a JSON text's objects (values themselves are compared as
/// `serde_json::Value`s, which keep no order).
#[derive(Debug, PartialEq)]
enum Shape {
    Leaf,
    Array(Vec<Shape>),
    Object(Vec<(String, Shape)>),
}

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Shape::Array(items))
            }
            // Numbers arrive here too, as serde_json's one-member number map
            // (`arbitrary_precision`): harmless, both sides read the same way.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Shape>()? {
                    members.push((k, v));
                }
                Ok(Shape::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where two shapes with equal values first order their members differently.
fn order_difference(want: &Shape, got: &Shape, at: &str) -> Option<String> {
    match (want, got) {
        (Shape::Object(w), Shape::Object(g)) => {
            // Elements only: attributes (`@name` members) have no order in XML.
            let names = |m: &[(String, Shape)]| {
                m.iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| !k.starts_with('@'))
                    .collect::<Vec<_>>()
            };
            if names(w) != names(g) {
                return Some(format!(
                    "{} has its members in the order {:?}, expected {:?}",
                    if at.is_empty() { "." } else { at },
                    names(g),
                    names(w)
                ));
            }
            w.iter().find_map(|(k, wv)| {
                let gv = &g.iter().find(|(gk, _)| gk == k)?.1;
                order_difference(wv, gv, &format!("{at}.{k}"))
            })
        }
        (Shape::Array(w), Shape::Array(g)) => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (wv, gv))| order_difference(wv, gv, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// A short description of the first place two JSON values differ.
pub fn first_difference(want: &serde_json::Value, got: &serde_json::Value, at: &str) -> String {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    None => return format!("{at}.{k} is missing"),
                    Some(gv) if gv != wv => {
                        return first_difference(wv, gv, &format!("{at}.{k}"));
                    }
                    _ => {}
                }
            }
            match g.keys().find(|k| !w.contains_key(*k)) {
                Some(k) => format!("{at}.{k} is unexpected"),
                None => format!("{at} differs"),
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                if wv != gv {
                    return first_difference(wv, gv, &format!("{at}[{i}]"));
                }
            }
            format!("{at} differs")
        }
        _ => format!("{at}: expected {want}, got {got}"),
    }
}

#[cfg(test)]
mod tests {
    //! Property test over the shipped edXML adapter: a packet written from JSON (`edoc_out`
    //! request) and read back (`edoc` request) is the same JSON, for any text values and any
    //! number (one included) of the elements the adapter declares repeated.
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn edxml() -> Adapter {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/edxml");
        load_unchecked(&dir).expect("the shipped edxml adapter loads")
    }

    fn text() -> impl Strategy<Value = String> {
        // Text XML 1.0 can carry, markup characters, Vietnamese, astral and leading zeros.
        "[a-zA-Z0-9 <>&\"'\\-/:.éễĐđ😀]{0,12}|0[0-9]{0,24}"
    }

    fn organ() -> impl Strategy<Value = Value> {
        (text(), text())
            .prop_map(|(id, name)| json!({"edXML:OrganId": id, "edXML:OrganName": name}))
    }

    fn packet() -> impl Strategy<Value = Value> {
        (
            organ(),
            proptest::collection::vec(organ(), 1..4),
            proptest::collection::vec(text(), 1..3),
            text(),
            proptest::collection::vec((text(), text()), 1..3),
        )
            .prop_map(|(from, to, places, subject, attachments)| {
                json!({"edXML:edXML": {
                    "edXML:edXMLEnvelope": {"edXML:edXMLHeader": {"edXML:MessageHeader": {
                        "edXML:From": from,
                        "edXML:To": to,
                        "edXML:Subject": subject,
                        "edXML:ToPlaces": {"edXML:Place": places},
                    }}},
                    "edXML:AttachmentEncoded": {"edXML:Attachment": attachments.into_iter().map(|(n, c)| json!({
                        "edXML:AttachmentName": n, "edXML:ContentTransferEncoded": c,
                    })).collect::<Vec<_>>()},
                }})
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn edxml_json_to_xml_to_json_is_the_identity(p in packet()) {
            let a = edxml();
            let write = a.operations["edoc_out"].request.as_ref().unwrap();
            let read = a.operations["edoc"].request.as_ref().unwrap();
            let json = serde_json::to_vec(&p).unwrap();
            let xml = write.run(&json, &Context::new()).unwrap();
            let back = read.run(&xml.body, &Context::new()).unwrap();
            let v: Value = serde_json::from_slice(&back.body).unwrap();
            prop_assert_eq!(v, p);
        }
    }
}
