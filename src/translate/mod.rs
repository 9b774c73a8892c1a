//! Streaming XML ↔ JSON translation for the gateway.
//!
//! The convention is documented in `adapters/README.md` ("XML ↔ JSON convention"); in short:
//! attributes are `"@name"` members, text is the element's string value or `"#text"`, mixed
//! content is an ordered `"#mixed"` array, every value is a string (no type guessing), arrays
//! only come from declared paths, `xsi:nil="true"` is `null`, namespaces are resolved and
//! rendered through a configurable URI → prefix map (`{uri}local` when unmapped).
//!
//! This module is self-contained on purpose (std, quick-xml, serde, serde_json, thiserror,
//! bytes only) so that it can be tested and benchmarked on its own.

mod chars;
mod error;
mod json_in;
pub mod soap;
mod xml_in;
mod xml_out;

#[cfg(test)]
mod tests_corpora;
#[cfg(test)]
mod tests_golden;
#[cfg(test)]
mod tests_prop;

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub(crate) use chars::escape_json;
pub use error::{Position, TranslateError, TranslateErrorKind};

/// Namespace URI of `xsi:nil` / `xsi:type`.
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Namespace URI permanently bound to the `xml` prefix.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace URI reserved for `xmlns` declarations (never a real element namespace).
pub const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Resource limits. Inputs above a limit fail with [`TranslateErrorKind::TooLarge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum element (XML) or container (JSON) nesting depth. Capped internally at 1000
    /// because the JSON side recurses.
    pub max_depth: usize,
    /// Maximum input size in bytes.
    pub max_total_bytes: usize,
    /// Maximum number of attributes on one element (namespace declarations included).
    pub max_attributes: usize,
    /// Maximum length in bytes of an element/attribute name or JSON key.
    pub max_name_len: usize,
    /// Maximum length in bytes of one text value (element text, attribute value, JSON string).
    pub max_text_len: usize,
    /// Maximum output size in bytes; guards against amplification (e.g. `{uri}local` keys
    /// repeating a long namespace URI on every element).
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_total_bytes: 16 << 20,
            max_attributes: 64,
            max_name_len: 256,
            max_text_len: 4 << 20,
            max_output_bytes: 64 << 20,
        }
    }
}

impl Limits {
    pub(crate) fn depth(&self) -> usize {
        self.max_depth.min(1000)
    }
}

/// FNV-1a: path lookups happen once per run of sibling elements, and the set is built from
/// trusted configuration, so hash flooding is not a concern while SipHash would be.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The set of element paths that are always rendered as JSON arrays.
///
/// Paths are written with the JSON keys (i.e. after namespace mapping), separated by `/`:
/// * `/Resp/Item` — absolute, from the translated root (for SOAP, the Body's first child);
/// * `//Item` or `//Resp/Item` — suffix, matches wherever the path ends that way.
#[derive(Debug, Clone, Default)]
pub struct ArrayPaths {
    absolute: HashSet<String, BuildHasherDefault<Fnv>>,
    suffixes: Vec<String>,
    /// Last segment of every suffix: a path whose last segment is not here matches none.
    suffix_last: HashSet<String, BuildHasherDefault<Fnv>>,
    /// Bloom-style prefilter over the last segment of every path (absolute and suffix), see
    /// [`last_segment_bit`]: most elements are not declared, and this rejects them without
    /// hashing the path or the key.
    last_filter: [u64; 4],
}

/// Filter bit of a path's last segment, from its length and last byte.
#[inline]
fn last_segment_bit(last: &str) -> usize {
    let b = last.as_bytes();
    (b.len().wrapping_mul(31) + b.last().map_or(0, |&c| c as usize)) & 255
}

impl ArrayPaths {
    pub fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut a = ArrayPaths::default();
        for p in paths {
            a.insert(p.as_ref());
        }
        a
    }

    pub fn insert(&mut self, path: &str) {
        let suffix = if let Some(rest) = path.strip_prefix("//") {
            // keep the leading '/' so that `//Item` does not match `/a/xItem`
            format!("/{rest}")
        } else if path.starts_with('/') {
            self.set_filter(path);
            self.absolute.insert(path.to_string());
            return;
        } else {
            format!("/{path}")
        };
        self.set_filter(&suffix);
        let last = suffix.rsplit('/').next().unwrap_or_default();
        self.suffix_last.insert(last.to_string());
        self.suffixes.push(suffix);
    }

    fn set_filter(&mut self, path: &str) {
        let bit = last_segment_bit(path.rsplit('/').next().unwrap_or_default());
        self.last_filter[bit / 64] |= 1 << (bit % 64);
    }

    pub fn is_empty(&self) -> bool {
        self.absolute.is_empty() && self.suffixes.is_empty()
    }

    pub fn matches(&self, path: &str) -> bool {
        self.matches_segment(path, path.rsplit('/').next().unwrap_or_default())
    }

    /// [`ArrayPaths::matches`] for `path` = `…/key`, without scanning the whole path for
    /// its last `/` (a key may itself hold one: `{http://x/y}Item`).
    pub(crate) fn matches_last(&self, path: &str, key: &str) -> bool {
        // Keys are short: a byte loop beats memrchr's call overhead here.
        let last = match key.bytes().rposition(|b| b == b'/') {
            Some(i) => &key[i + 1..],
            None => key,
        };
        self.matches_segment(path, last)
    }

    /// [`ArrayPaths::matches`] for `path` = `…/last` where the caller knows that `last`
    /// holds no `/`. Inlined: it runs for every element, and the filter alone rejects most.
    #[inline]
    pub(crate) fn matches_segment(&self, path: &str, last: &str) -> bool {
        let bit = last_segment_bit(last);
        self.last_filter[bit / 64] & (1 << (bit % 64)) != 0 && self.matches_filtered(path, last)
    }

    /// [`ArrayPaths::matches_segment`] for a `last` segment that passed the filter.
    #[inline(never)]
    fn matches_filtered(&self, path: &str, last: &str) -> bool {
        if !self.absolute.is_empty() && self.absolute.contains(path) {
            return true;
        }
        self.suffix_last.contains(last) && self.suffixes.iter().any(|s| path.ends_with(s.as_str()))
    }
}

/// Options for [`xml_to_json`].
#[derive(Debug, Clone)]
pub struct XmlToJsonOptions {
    /// Element paths rendered as arrays even with a single occurrence.
    pub arrays: ArrayPaths,
    /// Namespace URI → JSON key prefix. A prefix of `""` renders names of that namespace
    /// unprefixed. Unmapped namespaces render as `{uri}local`. Names in no namespace are
    /// always unprefixed.
    pub namespaces: BTreeMap<String, String>,
    pub limits: Limits,
    /// `true` (default): an undeclared element repeated under one parent is an error.
    /// `false`: it becomes an array, and non-adjacent repeats switch the parent to `#mixed`.
    pub strict_repeats: bool,
}

impl Default for XmlToJsonOptions {
    fn default() -> Self {
        XmlToJsonOptions {
            arrays: ArrayPaths::default(),
            namespaces: default_namespaces(),
            limits: Limits::default(),
            strict_repeats: true,
        }
    }
}

/// Options for [`json_to_xml`].
#[derive(Debug, Clone)]
pub struct JsonToXmlOptions {
    /// Root element name. If `None`, the JSON must be an object with exactly one member whose
    /// key names the root element.
    pub root: Option<String>,
    /// Namespace URI → XML prefix. The same prefix is used to recognise JSON keys (`p:local`);
    /// `""` makes the URI the default namespace (unprefixed keys). Keys may also use the
    /// `{uri}local` form; unmapped URIs get generated prefixes `ns1`, `ns2`, ...
    pub namespaces: BTreeMap<String, String>,
    pub limits: Limits,
    /// Emit `<?xml version="1.0" encoding="UTF-8"?>` first (default true).
    pub xml_declaration: bool,
}

impl Default for JsonToXmlOptions {
    fn default() -> Self {
        JsonToXmlOptions {
            root: None,
            namespaces: default_namespaces(),
            limits: Limits::default(),
            xml_declaration: true,
        }
    }
}

/// `xsi` and `xml` are mapped by default because `xsi:type`/`xml:lang` are ubiquitous.
pub fn default_namespaces() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(XSI_NS.to_string(), "xsi".to_string());
    m.insert(XML_NS.to_string(), "xml".to_string());
    m
}

/// Translates an XML document into JSON text appended to `out` (on error `out` is restored to
/// its original length). The result is always an object with one member named after the root.
pub fn xml_to_json(
    input: &[u8],
    opts: &XmlToJsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let start = out.len();
    let r = xml_in::convert(input, opts, xml_in::Capture::Document, out).map(|_| ());
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Translates a JSON document into XML appended to `out` (on error `out` is restored).
pub fn json_to_xml(
    input: &[u8],
    opts: &JsonToXmlOptions,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let start = out.len();
    let r = xml_out::json_to_xml(input, opts, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Strict RFC 8259 check: UTF-8, no duplicate keys, no lone surrogates, depth/size limits.
/// Any JSON value is accepted at the top level.
pub fn validate_json(input: &[u8], limits: &Limits) -> Result<(), TranslateError> {
    json_in::parse(input, limits).map(|_| ())
}

/// Convenience wrapper returning a fresh buffer as `bytes::Bytes` for hyper bodies.
pub fn xml_to_json_bytes(
    input: &[u8],
    opts: &XmlToJsonOptions,
) -> Result<bytes::Bytes, TranslateError> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 4);
    xml_to_json(input, opts, &mut out)?;
    Ok(bytes::Bytes::from(out))
}

/// Convenience wrapper returning a fresh buffer as `bytes::Bytes` for hyper bodies.
pub fn json_to_xml_bytes(
    input: &[u8],
    opts: &JsonToXmlOptions,
) -> Result<bytes::Bytes, TranslateError> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 2);
    json_to_xml(input, opts, &mut out)?;
    Ok(bytes::Bytes::from(out))
}

/// Benchmark hook: translates `input` `iterations` times reusing one output buffer and returns
/// the total number of output bytes (so the work cannot be optimised away).
pub fn bench_xml_to_json(
    input: &[u8],
    opts: &XmlToJsonOptions,
    iterations: usize,
) -> Result<usize, TranslateError> {
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut total = 0;
    for _ in 0..iterations {
        out.clear();
        xml_to_json(input, opts, &mut out)?;
        total += out.len();
    }
    Ok(total)
}

/// Locates the shared corpora directory for tests: `$LIENTHONG_SHARED`, then
/// `<manifest>/../shared`, then `<manifest>/../../shared`.
#[cfg(test)]
pub(crate) fn shared_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("LIENTHONG_SHARED") {
        candidates.push(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    candidates.push(manifest.join("../shared"));
    candidates.push(manifest.join("../../shared"));
    for c in &candidates {
        if c.join("corpora").is_dir() {
            return c.clone();
        }
    }
    panic!(
        "shared corpora not found; set LIENTHONG_SHARED (tried {:?})",
        candidates
    );
}
