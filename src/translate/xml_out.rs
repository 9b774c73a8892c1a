//! JSON → XML following the convention in `adapters/README.md`.
//!
//! The JSON is parsed into a borrowed tree first (see `json_in`): XML needs all attributes
//! of an element before its children while JSON allows `"@attr"` members anywhere, so a
//! purely streaming writer would have to buffer anyway. Namespace declarations are collected
//! while writing and spliced into the root start tag at the end, so only namespaces that are
//! actually used get declared.

use super::chars::{escape_xml_text, is_ncname, same, split_qname};
use super::error::{invalid, too_large, TranslateError};
use super::json_in::{self, JVal};
use super::{JsonToXmlOptions, Limits, XMLNS_NS, XML_NS, XSI_NS};
use std::collections::{BTreeMap, HashMap};

pub(crate) fn json_to_xml(
    input: &[u8],
    opts: &JsonToXmlOptions,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let v = json_in::parse(input, &opts.limits)?;
    if opts.xml_declaration {
        out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    }
    let mut w = XmlWriter::new(&opts.namespaces, &opts.limits, out);
    match &opts.root {
        Some(r) => w.write_root(r, &v),
        None => match &v {
            JVal::Obj(m) if m.len() == 1 => w.write_root(&m[0].0, &m[0].1),
            _ => Err(invalid(
                "JSON must be an object with exactly one member naming the root element \
                 (or configure a root element name)",
            )),
        },
    }
}

pub(crate) struct XmlWriter<'o, 'w> {
    ns: &'o BTreeMap<String, String>,
    prefix_to_uri: HashMap<&'o str, &'o str>,
    default_uri: Option<&'o str>,
    limits: &'o Limits,
    out: &'w mut Vec<u8>,
    out_base: usize,
    /// (prefix, uri) declared on the current root element, in order of first use.
    used: Vec<(String, String)>,
    generated: usize,
    path: String,
    attr_names: Vec<(String, String)>,
}

impl<'o, 'w> XmlWriter<'o, 'w> {
    pub(crate) fn new(
        ns: &'o BTreeMap<String, String>,
        limits: &'o Limits,
        out: &'w mut Vec<u8>,
    ) -> Self {
        let mut prefix_to_uri = HashMap::new();
        let mut default_uri = None;
        for (uri, p) in ns {
            if p.is_empty() {
                default_uri = Some(uri.as_str());
            } else {
                prefix_to_uri.insert(p.as_str(), uri.as_str());
            }
        }
        let out_base = out.len();
        XmlWriter {
            ns,
            prefix_to_uri,
            default_uri,
            limits,
            out,
            out_base,
            used: Vec::new(),
            generated: 0,
            path: String::new(),
            attr_names: Vec::new(),
        }
    }

    fn err(&self, m: impl Into<String>) -> TranslateError {
        let p = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        invalid(m).with_path(p)
    }

    fn use_ns(&mut self, prefix: &str, uri: &str) {
        if !self.used.iter().any(|(p, _)| same(p, prefix)) {
            self.used.push((prefix.to_string(), uri.to_string()));
        }
    }

    /// Prefix for `uri`, from the map or generated (`ns1`, `ns2`, ...) avoiding clashes.
    fn prefix_for(&mut self, uri: &str, attr: bool) -> String {
        if uri == XML_NS {
            return "xml".to_string();
        }
        if let Some(p) = self.ns.get(uri) {
            if !(attr && p.is_empty()) {
                let p = p.clone();
                self.use_ns(&p, uri);
                return p;
            }
        }
        if let Some((p, _)) = self
            .used
            .iter()
            .find(|(p, u)| !p.is_empty() && same(u, uri))
        {
            return p.clone();
        }
        loop {
            self.generated += 1;
            let p = format!("ns{}", self.generated);
            if !self.prefix_to_uri.contains_key(p.as_str())
                && !self.used.iter().any(|(q, _)| *q == p)
            {
                self.use_ns(&p, uri);
                return p;
            }
        }
    }

    /// Turns a JSON key (`local`, `p:local`, `{uri}local`) into an XML qualified name.
    fn qname(&mut self, key: &str, attr: bool) -> Result<String, TranslateError> {
        if let Some(rest) = key.strip_prefix('{') {
            let Some(close) = rest.find('}') else {
                return Err(self.err(format!("malformed key \"{key}\": missing '}}'")));
            };
            let (uri, local) = (&rest[..close], &rest[close + 1..]);
            if !is_ncname(local) {
                return Err(self.err(format!("key \"{key}\" is not a valid XML name")));
            }
            // `{}xmlns` would be a namespace declaration, and the xmlns namespace is
            // bound to no prefix: declarations come from the namespace map only.
            if (uri.is_empty() && local == "xmlns") || uri == XMLNS_NS {
                return Err(self.err(format!(
                    "key \"{key}\": namespace declarations come from the namespace map, not from JSON"
                )));
            }
            if uri.is_empty() {
                if !attr && self.default_uri.is_some() {
                    return Err(self.err(format!(
                        "key \"{key}\": an element in no namespace cannot be written while a default namespace is mapped"
                    )));
                }
                return Ok(local.to_string());
            }
            let p = self.prefix_for(uri, attr);
            // The declarations go on the root element: they count as its attributes,
            // and bound the namespace lists searched for every name.
            if self.used.len() > self.limits.max_attributes {
                return Err(too_large(format!(
                    "more than {} namespaces in the document",
                    self.limits.max_attributes
                ))
                .with_path(if self.path.is_empty() {
                    "/"
                } else {
                    &self.path
                }));
            }
            return Ok(if p.is_empty() {
                local.to_string()
            } else {
                format!("{p}:{local}")
            });
        }
        let Some((p, local)) = split_qname(key) else {
            return Err(self.err(format!("key \"{key}\" is not a valid XML name")));
        };
        if p == "xmlns" || (p.is_empty() && local == "xmlns") {
            return Err(self.err(format!(
                "key \"{key}\": namespace declarations come from the namespace map, not from JSON"
            )));
        }
        if p.is_empty() {
            if !attr {
                if let Some(d) = self.default_uri {
                    self.use_ns("", d);
                }
            }
            return Ok(local.to_string());
        }
        if p == "xml" {
            return Ok(key.to_string());
        }
        match self.prefix_to_uri.get(p) {
            Some(uri) => {
                let uri = *uri;
                self.use_ns(p, uri);
                Ok(key.to_string())
            }
            None => Err(self.err(format!(
                "key \"{key}\": prefix '{p}' is not in the namespace map"
            ))),
        }
    }

    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    pub(crate) fn escaped(&mut self, s: &str) -> Result<(), TranslateError> {
        self.text(s, false)
    }

    pub(crate) fn escaped_attr(&mut self, s: &str) -> Result<(), TranslateError> {
        self.text(s, true)
    }

    fn check_out(&self) -> Result<(), TranslateError> {
        if self.out.len() - self.out_base > self.limits.max_output_bytes {
            return Err(too_large("translated output exceeds max_output_bytes"));
        }
        Ok(())
    }

    fn text(&mut self, s: &str, attr: bool) -> Result<(), TranslateError> {
        escape_xml_text(self.out, s, attr).map_err(|c| {
            self.err(format!(
                "character U+{:04X} cannot be represented in XML 1.0",
                c as u32
            ))
        })
    }

    /// Writes one element with its own namespace declarations (a document root, a SOAP body
    /// entry, a header block or a fault detail entry).
    pub(crate) fn write_root(&mut self, key: &str, v: &JVal<'_>) -> Result<(), TranslateError> {
        self.used.clear();
        self.generated = 0;
        self.path.clear();
        let decl_at = self.out.len() + 1;
        if matches!(v, JVal::Arr(_)) {
            return Err(self.err("the root element value cannot be an array"));
        }
        self.element(key, v)?;
        let mut decls = Vec::new();
        for (p, uri) in &self.used {
            if p.is_empty() {
                decls.extend_from_slice(b" xmlns=\"");
            } else {
                decls.extend_from_slice(b" xmlns:");
                decls.extend_from_slice(p.as_bytes());
                decls.extend_from_slice(b"=\"");
            }
            escape_xml_text(&mut decls, uri, true)
                .map_err(|_| invalid("namespace URI contains a forbidden character"))?;
            decls.push(b'"');
        }
        // insert right after the root's qualified name
        let name_end = self.out[decl_at..]
            .iter()
            .position(|&b| b == b' ' || b == b'>' || b == b'/')
            .map(|p| decl_at + p)
            .unwrap_or(self.out.len());
        self.out.splice(name_end..name_end, decls);
        self.check_out()
    }

    fn element(&mut self, key: &str, v: &JVal<'_>) -> Result<(), TranslateError> {
        let path_len = self.path.len();
        self.path.push('/');
        self.path.push_str(key);
        let q = self.qname(key, false)?;
        self.out.push(b'<');
        self.out.extend_from_slice(q.as_bytes());
        match v {
            JVal::Null => {
                let p = self.prefix_for(XSI_NS, true);
                self.out.push(b' ');
                self.out.extend_from_slice(p.as_bytes());
                self.out.extend_from_slice(b":nil=\"true\"/>");
            }
            JVal::Bool(b) => {
                self.out.push(b'>');
                self.out
                    .extend_from_slice(if *b { b"true" } else { b"false" });
                self.close(&q);
            }
            JVal::Num(n) => {
                self.out.push(b'>');
                self.out.extend_from_slice(n.as_bytes());
                self.close(&q);
            }
            JVal::Str(s) => {
                if s.is_empty() {
                    self.out.extend_from_slice(b"/>");
                } else {
                    self.out.push(b'>');
                    self.text(s, false)?;
                    self.close(&q);
                }
            }
            JVal::Arr(_) => return Err(self.err("an array item cannot itself be an array")),
            JVal::Obj(members) => self.object(&q, members)?,
        }
        self.path.truncate(path_len);
        self.check_out()
    }

    fn close(&mut self, q: &str) {
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(q.as_bytes());
        self.out.push(b'>');
    }

    fn scalar_text<'v>(&self, v: &'v JVal<'_>, what: &str) -> Result<&'v str, TranslateError> {
        match v {
            JVal::Str(s) => Ok(s),
            JVal::Num(n) => Ok(n),
            JVal::Bool(true) => Ok("true"),
            JVal::Bool(false) => Ok("false"),
            _ => Err(self.err(format!("{what} must be a string, number or boolean"))),
        }
    }

    fn object(
        &mut self,
        q: &str,
        members: &[(std::borrow::Cow<'_, str>, JVal<'_>, usize)],
    ) -> Result<(), TranslateError> {
        let mut names = std::mem::take(&mut self.attr_names);
        names.clear();
        for (k, v, _) in members {
            let Some(an) = k.strip_prefix('@') else {
                continue;
            };
            // As on the XML side: each new attribute is checked against the others.
            if names.len() >= self.limits.max_attributes {
                return Err(too_large(format!(
                    "more than {} attributes on one element",
                    self.limits.max_attributes
                ))
                .with_path(if self.path.is_empty() {
                    "/"
                } else {
                    &self.path
                }));
            }
            let aq = self.qname(an, true)?;
            // Expanded-name duplicates (`@p:a` and `@{uri}a`) would be ill-formed XML.
            let uri = match aq.split_once(':') {
                Some((p, _)) => self
                    .used
                    .iter()
                    .find(|(x, _)| x == p)
                    .map(|(_, u)| u.clone())
                    .unwrap_or_else(|| p.to_string()),
                None => String::new(),
            };
            let local = aq.rsplit(':').next().unwrap_or(&aq).to_string();
            if names.iter().any(|(u, l)| same(u, &uri) && same(l, &local)) {
                return Err(self.err(format!("duplicate attribute \"{k}\"")));
            }
            names.push((uri, local));
            let t = self.scalar_text(v, "an attribute value")?;
            self.out.push(b' ');
            self.out.extend_from_slice(aq.as_bytes());
            self.out.extend_from_slice(b"=\"");
            self.text(t, true)?;
            self.out.push(b'"');
        }
        self.attr_names = names;
        let has_content = members.iter().any(|(k, _, _)| !k.starts_with('@'));
        if !has_content {
            self.out.extend_from_slice(b"/>");
            return Ok(());
        }
        self.out.push(b'>');
        for (k, v, _) in members {
            if k.starts_with('@') {
                continue;
            }
            match k.as_ref() {
                "#text" => {
                    let t = self.scalar_text(v, "\"#text\"")?;
                    self.text(t, false)?;
                }
                "#mixed" => {
                    let JVal::Arr(items) = v else {
                        return Err(self.err("\"#mixed\" must be an array"));
                    };
                    for it in items {
                        match it {
                            JVal::Obj(m) if m.len() == 1 => self.member(&m[0].0, &m[0].1)?,
                            JVal::Obj(_) | JVal::Arr(_) | JVal::Null => {
                                return Err(self.err(
                                    "\"#mixed\" items must be strings or objects with exactly one member",
                                ))
                            }
                            other => {
                                let t = self.scalar_text(other, "a \"#mixed\" text item")?;
                                self.text(t, false)?;
                            }
                        }
                    }
                }
                _ if k.starts_with('#') => {
                    return Err(self.err(format!("unknown special key \"{k}\"")));
                }
                _ => self.member(k, v)?,
            }
        }
        self.close(q);
        Ok(())
    }

    fn member(&mut self, k: &str, v: &JVal<'_>) -> Result<(), TranslateError> {
        match v {
            JVal::Arr(items) => {
                for it in items {
                    self.element(k, it)?;
                }
                Ok(())
            }
            _ => self.element(k, v),
        }
    }
}
