//! XML → JSON: quick-xml events straight into JSON text.
//!
//! Design notes
//! * quick-xml is used only as a tokenizer. Everything it does not check for XML 1.0 +
//!   Namespaces 1.0 well-formedness (names, attributes, references, characters, end-tag
//!   matching, declaration placement, namespace constraints) is checked here.
//! * Output is written directly into `out`. Decisions that depend on what comes later are
//!   handled by *editing the tail of the buffer* (a leaf's text turns out to be indentation
//!   before a child → truncate; an undeclared repeat in lenient mode → insert `[`), or, for
//!   the rare case of mixed content discovered late, by *restarting* the element: the output
//!   is truncated to where the element's value began and the tokenizer is re-created at the
//!   element's `<`, this time in `#mixed` mode. Every element restarts at most once and the
//!   total re-read volume is capped, so there is no quadratic blow-up.
//! * Names are borrowed from the input; the only per-element allocations are for attribute
//!   values that need normalisation and for namespace URIs with references.

use super::chars::{
    all_ws, ascii_qname_colon, ascii_qname_run, attr_value_class, escape_json,
    escape_xml_text_to_json, find_forbidden_char, is_ncname, is_ws, needs_json_escape,
    resolve_reference, same, same_bytes, split_ascii_qname_at, split_qname, NO_COLON,
};
use super::chars::{ATTR_JSON_ESCAPE, ATTR_NORMALISE};
use super::error::{invalid, malformed, too_large, unsupported, TranslateError};
use super::{XmlToJsonOptions, XMLNS_NS, XML_NS, XSI_NS};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::borrow::Cow;
use std::collections::HashSet;

pub(crate) const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub(crate) const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capture {
    /// Translate the whole document: `{"root": ...}`.
    Document,
    /// Require a SOAP envelope and translate the Body's first child: `{"child": ...}`.
    SoapBody,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Outcome {
    pub soap_ns: Option<&'static str>,
    pub fault: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No attributes, no child yet: the value is a string (possibly still open in `out`).
    Pending,
    /// A JSON object is open (attributes and/or children).
    Object,
    /// Ordered content: `{"@a":..,"#mixed":[ "text", {"child":..}, ... ]}`.
    Mixed,
    /// `xsi:nil="true"`: no content allowed; `obj` if other attributes were rendered.
    Nil { obj: bool },
    /// SOAP Envelope/Body: checked, not rendered.
    Transparent,
    /// SOAP Header and extra Body entries: checked for well-formedness only.
    Skip,
}

#[derive(Debug, Clone, Copy)]
enum JsonNs<'o> {
    NoNs,
    Prefix(&'o str),
    Unmapped,
}

struct Binding<'a, 'o> {
    prefix: &'a str,
    uri: Cow<'a, str>,
    json: JsonNs<'o>,
    /// Keys of names in this namespace need no JSON escaping (see [`push_key`]).
    plain: bool,
    /// Keys of names in this namespace may contain a `/` (then the array mapping has to look
    /// for the key's last path segment).
    slash: bool,
}

impl<'a, 'o> Binding<'a, 'o> {
    fn new(prefix: &'a str, uri: Cow<'a, str>, opts: &'o XmlToJsonOptions) -> Self {
        let json = json_ns(opts, &uri);
        let (plain, slash) = match json {
            JsonNs::NoNs => (true, false),
            JsonNs::Prefix(p) => (!needs_json_escape(p.as_bytes()), p.contains('/')),
            JsonNs::Unmapped => (false, uri.contains('/')),
        };
        Binding {
            prefix,
            uri,
            json,
            plain,
            slash,
        }
    }
}

struct RawAttr<'a> {
    qname: &'a str,
    value: Cow<'a, str>,
    offset: usize,
    /// index into `bindings` of the attribute's namespace (None = no namespace / xmlns decl)
    ns: Option<usize>,
    /// prefix and local part of `qname`, set when the name is validated
    prefix: &'a str,
    local: &'a str,
    is_decl: bool,
    /// The name consists of ASCII NameChars only (checked while scanning the tag).
    ascii: bool,
    /// Where the colon of an `ascii` name is (see [`ascii_qname_run`]).
    colon: usize,
    /// The value needs no JSON escaping (found while scanning the tag).
    json_plain: bool,
}

struct Frame<'a> {
    qname: &'a str,
    input_start: usize,
    ns_len: usize,
    path_len: usize,
    seen_start: usize,
    value_start: usize,
    mode: Mode,
    wrap_close: bool,
    is_root: bool,
    text_open: bool,
    text_nonws: bool,
    text_start: usize,
    text_len: usize,
    /// Whitespace-only text before the first child, not written yet (see [`Conv::text`]):
    /// its offset in the document and its length (0 = none).
    ws_at: usize,
    ws_len: usize,
    members: usize,
    had_child: bool,
    /// Range in `out` of the last child's key (see [`seen_insert`]).
    run_key: Option<(usize, usize)>,
    run_array: bool,
    run_value_start: usize,
    /// One bit per (length, last byte) class of the child keys in `seen`: a key whose bit is
    /// clear is new without scanning the list.
    seen_bits: u64,
    /// Boxed (8 bytes instead of 48): rarely used, and the frame is copied on every push and
    /// pop.
    #[allow(clippy::box_collection)]
    big: Option<Box<HashSet<Box<[u8]>>>>,
}

/// Past this many distinct child names the per-parent duplicate check switches from a linear
/// scan to a hash set, so a hostile document with many distinct siblings stays linear.
const SEEN_LINEAR_MAX: usize = 32;

#[derive(Clone, Copy)]
enum TextKind {
    Text,
    CData,
    Ref,
}

struct Conv<'a, 'o> {
    input: &'a [u8],
    doc: &'a str,
    opts: &'o XmlToJsonOptions,
    out: &'o mut Vec<u8>,
    out_base: usize,
    capture: Capture,
    reader: Reader<&'a [u8]>,
    base: usize,
    bom: usize,
    frames: Vec<Frame<'a>>,
    bindings: Vec<Binding<'a, 'o>>,
    attrs: Vec<RawAttr<'a>>,
    path: String,
    /// Scratch buffer for keys that need JSON escaping.
    key: Vec<u8>,
    seen: Vec<(usize, usize)>,
    mixed_starts: HashSet<usize>,
    restart_at: Option<(usize, bool, bool)>,
    reprocessed: usize,
    doc_root_done: bool,
    root_started: bool,
    root_done: bool,
    body_seen: bool,
    header_seen: bool,
    seen_event: bool,
    outcome: Outcome,
}

fn make_reader(doc: &str, at: usize) -> Reader<&[u8]> {
    let mut r = Reader::from_str(&doc[at..]);
    let c = r.config_mut();
    // End names are checked here because the tokenizer may be restarted mid-document and
    // would then not know the enclosing start tags.
    c.check_end_names = false;
    c.allow_unmatched_ends = true;
    c.check_comments = true;
    c.allow_dangling_amp = false;
    c.expand_empty_elements = false;
    c.trim_markup_names_in_closing_tags = true;
    c.trim_text(false);
    r
}

pub(crate) fn convert(
    input: &[u8],
    opts: &XmlToJsonOptions,
    capture: Capture,
    out: &mut Vec<u8>,
) -> Result<Outcome, TranslateError> {
    let limits = &opts.limits;
    if input.len() > limits.max_total_bytes {
        return Err(too_large(format!(
            "document of {} bytes exceeds the limit of {} bytes",
            input.len(),
            limits.max_total_bytes
        )));
    }
    if input.starts_with(&[0xFE, 0xFF]) || input.starts_with(&[0xFF, 0xFE]) {
        return Err(unsupported(
            "UTF-16 documents are not supported; send UTF-8",
        ));
    }
    // SIMD validation (the whole-document check was ~15% of a translation of Vietnamese
    // text with std's); std's only to locate the error.
    let doc = match simdutf8::basic::from_utf8(input) {
        Ok(d) => d,
        Err(_) => {
            let at = std::str::from_utf8(input)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return Err(malformed("invalid UTF-8").at(input, at));
        }
    };
    if let Some(off) = find_forbidden_char(doc) {
        return Err(malformed("character not allowed in XML 1.0").at(input, off));
    }
    let bom = if doc.starts_with('\u{FEFF}') { 3 } else { 0 };
    let out_base = out.len();
    let mut c = Conv {
        input,
        doc,
        opts,
        out,
        out_base,
        capture,
        reader: make_reader(doc, bom),
        base: bom,
        bom,
        frames: Vec::with_capacity(16),
        bindings: Vec::with_capacity(8),
        attrs: Vec::with_capacity(8),
        path: String::with_capacity(128),
        key: Vec::with_capacity(64),
        seen: Vec::with_capacity(32),
        mixed_starts: HashSet::new(),
        restart_at: None,
        reprocessed: 0,
        doc_root_done: false,
        root_started: false,
        root_done: false,
        body_seen: false,
        header_seen: false,
        seen_event: false,
        outcome: Outcome::default(),
    };
    c.bindings
        .push(Binding::new("xml", Cow::Borrowed(XML_NS), opts));
    c.run()?;
    Ok(c.outcome)
}

fn json_ns<'o>(opts: &'o XmlToJsonOptions, uri: &str) -> JsonNs<'o> {
    if uri.is_empty() {
        JsonNs::NoNs
    } else {
        match opts.namespaces.get(uri) {
            Some(p) => JsonNs::Prefix(p.as_str()),
            None => JsonNs::Unmapped,
        }
    }
}

impl<'a, 'o> Conv<'a, 'o> {
    fn err_at(&self, e: TranslateError, offset: usize) -> TranslateError {
        e.at(self.input, offset)
    }

    fn err_path(&self, e: TranslateError) -> TranslateError {
        let p = if self.path.is_empty() {
            "/".to_string()
        } else {
            self.path.clone()
        };
        e.with_path(p)
    }

    /// Offset of a slice handed out by the tokenizer inside the document. Events of a slice
    /// reader borrow from the input, so this is pointer arithmetic; the fallback keeps the
    /// function total without unsafe code.
    fn sub(&self, s: &str) -> Result<(usize, &'a str), TranslateError> {
        let start = (s.as_ptr() as usize).wrapping_sub(self.doc.as_ptr() as usize);
        match self.doc.get(start..start.wrapping_add(s.len())) {
            Some(d) if start <= self.doc.len() => Ok((start, d)),
            _ => Err(malformed("internal: tokenizer returned a copied buffer")),
        }
    }

    /// [`Conv::sub`] for the events that hand out their slice: it already borrows from the
    /// document, so only its offset is computed (no bounds and character boundary checks).
    #[inline]
    fn borrowed(&self, s: Cow<'a, str>) -> Result<(usize, &'a str), TranslateError> {
        match s {
            Cow::Borrowed(s) => {
                let start = (s.as_ptr() as usize).wrapping_sub(self.doc.as_ptr() as usize);
                Ok((start, s))
            }
            Cow::Owned(_) => Err(malformed("internal: tokenizer returned a copied buffer")),
        }
    }

    fn run(&mut self) -> Result<(), TranslateError> {
        loop {
            let ev_start = self.base + self.reader.buffer_position() as usize;
            let ev = match self.reader.read_event() {
                Ok(e) => e,
                Err(e) => {
                    let off = self.base + self.reader.error_position() as usize;
                    return Err(self.err_at(malformed(format!("{e}")), off));
                }
            };
            let first = !self.seen_event;
            self.seen_event = true;
            match ev {
                Event::Start(e) => {
                    let (off, content) = self.sub(&e)?;
                    self.start(content, e.name().as_ref().len(), off, ev_start, false)?;
                }
                Event::Empty(e) => {
                    let (off, content) = self.sub(&e)?;
                    self.start(content, e.name().as_ref().len(), off, ev_start, true)?;
                }
                // The end tag's name is only compared, never kept: no need to re-borrow it
                // from the document.
                Event::End(e) => self.end(&e, ev_start)?,
                Event::Text(t) => {
                    let (off, s) = self.borrowed(t.into_inner())?;
                    self.text(s.as_bytes(), off, TextKind::Text)?;
                }
                Event::CData(t) => {
                    let (off, s) = self.borrowed(t.into_inner())?;
                    self.text(s.as_bytes(), off, TextKind::CData)?;
                }
                Event::GeneralRef(r) => {
                    let (off, name) = self.borrowed(r.into_inner())?;
                    let ch = resolve_reference(name)
                        .map_err(|m| self.err_at(malformed(m), off.saturating_sub(1)))?;
                    let mut buf = [0u8; 4];
                    let s = ch.encode_utf8(&mut buf);
                    self.text(s.as_bytes(), off.saturating_sub(1), TextKind::Ref)?;
                }
                Event::Comment(t) => {
                    if t.ends_with('-') {
                        return Err(
                            self.err_at(malformed("comment must not end with '--->'"), ev_start)
                        );
                    }
                }
                Event::PI(p) => {
                    let (_, content) = self.sub(&p)?;
                    self.check_pi(content, ev_start)?;
                }
                Event::Decl(d) => {
                    if !(first && ev_start == self.bom) {
                        return Err(self.err_at(
                            malformed("XML declaration is only allowed at the very start"),
                            ev_start,
                        ));
                    }
                    let (_, content) = self.sub(&d)?;
                    check_decl(content).map_err(|e| self.err_at(e, ev_start))?;
                }
                Event::DocType(_) => {
                    return Err(self.err_at(
                        unsupported("DOCTYPE declarations are not accepted (no DTD processing)"),
                        ev_start,
                    ));
                }
                Event::Eof => break,
            }
        }
        if let Some(f) = self.frames.last() {
            let msg = format!("unexpected end of document: <{}> is not closed", f.qname);
            return Err(self.err_at(malformed(msg), self.input.len()));
        }
        if !self.doc_root_done {
            return Err(self.err_at(malformed("document has no root element"), self.input.len()));
        }
        if self.capture == Capture::SoapBody {
            if !self.body_seen {
                return Err(invalid("SOAP envelope has no Body"));
            }
            if !self.root_started {
                // An empty Body (e.g. a one-way acknowledgement) maps to an empty object.
                self.out.extend_from_slice(b"{}");
            }
        }
        Ok(())
    }

    fn check_pi(&self, content: &str, ev_start: usize) -> Result<(), TranslateError> {
        let end = content.bytes().position(is_ws).unwrap_or(content.len());
        let target = &content[..end];
        if !is_ncname(target) {
            return Err(self.err_at(malformed("invalid processing instruction target"), ev_start));
        }
        if target.eq_ignore_ascii_case("xml") {
            return Err(self.err_at(
                malformed("processing instruction target 'xml' is reserved"),
                ev_start,
            ));
        }
        Ok(())
    }

    /// Inlined (twice per element), with the error built out of line.
    #[inline]
    fn check_out(&self) -> Result<(), TranslateError> {
        if self.out.len() - self.out_base > self.opts.limits.max_output_bytes {
            return Err(self.out_too_large());
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn out_too_large(&self) -> TranslateError {
        self.err_path(too_large("translated output exceeds max_output_bytes"))
    }

    // ------------------------------------------------------------------ start tags

    /// Splits a start tag into its name (the first `name_len` bytes, up to the first
    /// whitespace: quick-xml has found it) and `attrs`. Returns the name, whether it consists
    /// of ASCII NameChars only (then [`split_ascii_qname_at`] is enough to check it) and
    /// where its colon is (see [`ascii_qname_run`]).
    fn parse_tag(
        &mut self,
        content: &'a str,
        name_len: usize,
        off: usize,
    ) -> Result<(&'a str, bool, usize), TranslateError> {
        let limits = &self.opts.limits;
        let b = content.as_bytes();
        let name_end = name_len.min(b.len());
        let qname = &content[..name_end];
        // Almost all names are ASCII: checked in one pass over the known length; anything
        // else is left to `split_qname`.
        let (ascii, colon) = match ascii_qname_colon(qname.as_bytes()) {
            Some(colon) => (true, colon),
            None => (false, NO_COLON),
        };
        if qname.len() > limits.max_name_len {
            return Err(self.err_at(too_large("element name longer than max_name_len"), off));
        }
        self.attrs.clear();
        let mut i = name_end;
        loop {
            let ws_start = i;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            if i == ws_start {
                return Err(self.err_at(malformed("whitespace required before attribute"), off + i));
            }
            let n_start = i;
            let (a_run, a_colon) = ascii_qname_run(&b[i..]);
            i += a_run;
            let a_ascii = i == b.len() || is_ws(b[i]) || b[i] == b'=';
            while i < b.len() && !is_ws(b[i]) && b[i] != b'=' {
                i += 1;
            }
            let aname = &content[n_start..i];
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                return Err(self.err_at(malformed("expected '=' after attribute name"), off + i));
            }
            i += 1;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            if i >= b.len() || (b[i] != b'"' && b[i] != b'\'') {
                return Err(self.err_at(malformed("attribute value must be quoted"), off + i));
            }
            let q = b[i];
            let v_start = i + 1;
            let Some((len, class)) = attr_value_class(&b[v_start..], q) else {
                return Err(self.err_at(malformed("unterminated attribute value"), off + i));
            };
            let v_end = v_start + len;
            i = v_end + 1;
            if aname.len() > limits.max_name_len {
                return Err(self.err_at(
                    too_large("attribute name longer than max_name_len"),
                    off + n_start,
                ));
            }
            if len > limits.max_text_len {
                return Err(self.err_at(
                    too_large("attribute value longer than max_text_len"),
                    off + v_start,
                ));
            }
            if self.attrs.len() >= limits.max_attributes {
                return Err(self.err_at(
                    too_large("more attributes than max_attributes"),
                    off + n_start,
                ));
            }
            let raw = &content[v_start..v_end];
            // Normalisation is rare: the value is then built anew and rescanned for escaping.
            let (value, json_plain) = if class & ATTR_NORMALISE == 0 {
                (Cow::Borrowed(raw), class & ATTR_JSON_ESCAPE == 0)
            } else {
                let v = self.decode_attr(raw, off + v_start)?;
                let plain = !needs_json_escape(v.as_bytes());
                (Cow::Owned(v), plain)
            };
            self.attrs.push(RawAttr {
                qname: aname,
                value,
                offset: off + n_start,
                ns: None,
                prefix: "",
                local: aname,
                is_decl: false,
                ascii: a_ascii,
                colon: a_colon,
                json_plain,
            });
        }
        Ok((qname, ascii, colon))
    }

    /// Attribute-value normalisation (XML 1.0 §3.3.3) for CDATA attributes: references are
    /// resolved, literal TAB/LF/CR (and CRLF) become one space each. Only called for values
    /// that contain one of these (see [`attr_value_class`]); the others are borrowed as is.
    fn decode_attr(&self, raw: &str, off: usize) -> Result<String, TranslateError> {
        let b = raw.as_bytes();
        let mut s = String::with_capacity(raw.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'<' => {
                    return Err(
                        self.err_at(malformed("'<' is not allowed in attribute values"), off + i)
                    )
                }
                b'&' => {
                    let Some(semi) = b[i + 1..].iter().position(|&c| c == b';') else {
                        return Err(self.err_at(malformed("unterminated reference"), off + i));
                    };
                    let name = &raw[i + 1..i + 1 + semi];
                    let ch =
                        resolve_reference(name).map_err(|m| self.err_at(malformed(m), off + i))?;
                    s.push(ch);
                    i += semi + 2;
                    continue;
                }
                b'\r' => {
                    s.push(' ');
                    if i + 1 < b.len() && b[i + 1] == b'\n' {
                        i += 1;
                    }
                }
                b'\t' | b'\n' => s.push(' '),
                _ => {
                    // copy the whole run of ordinary bytes up to the next special one
                    let run = b[i..]
                        .iter()
                        .position(|&c| matches!(c, b'&' | b'<' | b'\t' | b'\n' | b'\r'))
                        .unwrap_or(b.len() - i);
                    s.push_str(&raw[i..i + run]);
                    i += run;
                    continue;
                }
            }
            i += 1;
        }
        Ok(s)
    }

    fn lookup(&self, prefix: &str) -> Option<usize> {
        // Prefixes are short: a byte loop costs less than a `memcmp` call.
        let p = prefix.as_bytes();
        self.bindings.iter().rposition(|b| {
            b.prefix.len() == p.len() && b.prefix.bytes().zip(p).all(|(x, &y)| x == y)
        })
    }

    /// Applies namespace declarations and resolves attribute names. Returns the binding
    /// index of the element's namespace (None = no namespace) and its local name.
    fn resolve(
        &mut self,
        qname: &'a str,
        ascii: bool,
        colon: usize,
        off: usize,
    ) -> Result<(Option<usize>, &'a str), TranslateError> {
        // Declarations first: they are in scope for the element's own name and attributes.
        for idx in 0..self.attrs.len() {
            let a = &self.attrs[idx];
            let split = if a.ascii {
                split_ascii_qname_at(a.qname, a.colon)
            } else {
                split_qname(a.qname)
            };
            let Some((p, l)) = split else {
                let off = self.attrs[idx].offset;
                return Err(self.err_at(malformed("invalid attribute name"), off));
            };
            self.attrs[idx].prefix = p;
            self.attrs[idx].local = l;
            let a = &self.attrs[idx];
            let prefix = if p.is_empty() && l == "xmlns" {
                Some("")
            } else if p == "xmlns" {
                Some(l)
            } else {
                None
            };
            let Some(prefix) = prefix else {
                continue;
            };
            let uri: &str = &a.value;
            let bad = if prefix == "xmlns" {
                Some("the 'xmlns' prefix must not be declared")
            } else if prefix == "xml" {
                (uri != XML_NS).then_some("the 'xml' prefix can only be bound to its own namespace")
            } else if uri == XML_NS || uri == XMLNS_NS {
                Some("reserved namespace name bound to another prefix")
            } else if uri.is_empty() && !prefix.is_empty() {
                Some("a prefix cannot be undeclared in XML Namespaces 1.0")
            } else {
                None
            };
            if let Some(m) = bad {
                return Err(self.err_at(malformed(m), a.offset));
            }
            let value = a.value.clone();
            self.attrs[idx].is_decl = true;
            self.bindings.push(Binding::new(prefix, value, self.opts));
        }
        // Attribute names.
        for idx in 0..self.attrs.len() {
            if self.attrs[idx].is_decl {
                continue;
            }
            let a = &self.attrs[idx];
            let p = a.prefix;
            let ns = if p.is_empty() {
                None
            } else {
                match self.lookup(p) {
                    Some(i) => Some(i),
                    None => {
                        return Err(self.err_at(
                            malformed(format!("namespace prefix '{p}' is not declared")),
                            a.offset,
                        ))
                    }
                }
            };
            self.attrs[idx].ns = ns;
        }
        // Duplicates: by literal name, and by expanded name for namespaced attributes.
        let n = self.attrs.len();
        for i in 1..n {
            for j in 0..i {
                let (x, y) = (&self.attrs[i], &self.attrs[j]);
                let dup = x.qname == y.qname
                    || (!x.is_decl
                        && !y.is_decl
                        && x.local == y.local
                        && match (x.ns, y.ns) {
                            (Some(a), Some(b)) => self.bindings[a].uri == self.bindings[b].uri,
                            _ => false,
                        });
                if dup {
                    return Err(self.err_at(
                        malformed(format!("duplicate attribute '{}'", x.qname)),
                        x.offset,
                    ));
                }
            }
        }
        let split = if ascii {
            split_ascii_qname_at(qname, colon)
        } else {
            split_qname(qname)
        };
        let Some((p, l)) = split else {
            return Err(self.err_at(malformed(format!("invalid element name '{qname}'")), off));
        };
        let ns = match self.lookup(p) {
            Some(i) if !self.bindings[i].uri.is_empty() => Some(i),
            Some(_) => None,
            None if p.is_empty() => None,
            None => {
                return Err(self.err_at(
                    malformed(format!("namespace prefix '{p}' is not declared")),
                    off,
                ))
            }
        };
        Ok((ns, l))
    }

    fn ns_uri(&self, ns: Option<usize>) -> &str {
        ns.map(|i| &*self.bindings[i].uri).unwrap_or("")
    }

    fn start(
        &mut self,
        content: &'a str,
        name_len: usize,
        off: usize,
        ev_start: usize,
        empty: bool,
    ) -> Result<(), TranslateError> {
        let depth = self.frames.len();
        if depth >= self.opts.limits.depth() {
            return Err(self.err_at(too_large("element nesting deeper than max_depth"), ev_start));
        }
        if depth == 0 && self.doc_root_done {
            return Err(self.err_at(malformed("more than one root element"), ev_start));
        }
        let ns_len = self.bindings.len();
        let (qname, ascii, colon) = self.parse_tag(content, name_len, off)?;
        let (ns, local) = self.resolve(qname, ascii, colon, off)?;

        let parent_mode = self.frames.last().map(|f| f.mode);
        let path_len = self.path.len();
        // The frame is built in place at the end (moving a finished frame into the stack
        // costs a copy of the whole struct); these are the fields decided on the way.
        let mut mode = Mode::Pending;
        let mut wrap_close = false;
        let mut frame_root = false;
        let mut members = 0;
        let mut seen_start = self.seen.len();
        let mut value_start = 0;

        // Decide whether this element is rendered, and how it attaches to its parent.
        let mut render = true;
        let mut is_root = false;
        match (self.capture, parent_mode) {
            (_, Some(Mode::Skip)) => {
                render = false;
                mode = Mode::Skip;
            }
            (Capture::SoapBody, None) => {
                let uri = self.ns_uri(ns);
                let v = if uri == SOAP11_NS {
                    SOAP11_NS
                } else if uri == SOAP12_NS {
                    SOAP12_NS
                } else {
                    ""
                };
                if local != "Envelope" || v.is_empty() {
                    return Err(self.err_at(unsupported("not a SOAP 1.1/1.2 Envelope"), ev_start));
                }
                self.outcome.soap_ns = Some(v);
                render = false;
                mode = Mode::Transparent;
            }
            (Capture::SoapBody, Some(Mode::Transparent)) if depth == 1 => {
                let same = self.ns_uri(ns) == self.outcome.soap_ns.unwrap_or("");
                render = false;
                if same && local == "Header" && !self.header_seen && !self.body_seen {
                    self.header_seen = true;
                    mode = Mode::Skip;
                } else if same && local == "Body" && !self.body_seen {
                    self.body_seen = true;
                    mode = Mode::Transparent;
                } else if self.body_seen {
                    // SOAP 1.1 tolerates trailing elements after Body; they carry no payload.
                    mode = Mode::Skip;
                } else {
                    return Err(self.err_at(
                        invalid(format!("unexpected element <{qname}> in SOAP Envelope")),
                        ev_start,
                    ));
                }
            }
            (Capture::SoapBody, Some(Mode::Transparent)) => {
                // The payload root re-read in `#mixed` mode (`restart`) is the root again,
                // not extra Body content.
                let rereading = matches!(self.restart_at, Some((at, _, true)) if at == ev_start);
                if rereading {
                    // `render` picks the restart up below.
                } else if self.root_started {
                    render = false;
                    mode = Mode::Skip;
                } else {
                    is_root = true;
                    self.outcome.fault =
                        local == "Fault" && self.ns_uri(ns) == self.outcome.soap_ns.unwrap_or("");
                }
            }
            (Capture::Document, None) => is_root = true,
            _ => {}
        }

        if render {
            // The element's JSON key is built once, as the last segment of `path`.
            self.path.push('/');
            let key_start = self.path.len();
            let plain = push_key(&mut self.path, &self.bindings, false, ns, local);
            if self.path.len() - key_start > self.opts.limits.max_name_len + 2048 {
                self.path.truncate(path_len);
                return Err(self.err_at(too_large("JSON key too long"), ev_start));
            }
            let restart = match self.restart_at {
                Some((at, wrap, root)) if at == ev_start => {
                    self.restart_at = None;
                    wrap_close = wrap;
                    frame_root = root;
                    true
                }
                _ => false,
            };
            if !restart {
                if is_root {
                    self.root_started = true;
                    frame_root = true;
                    self.out.push(b'{');
                    put_key(self.out, &self.path.as_bytes()[key_start..], plain);
                } else {
                    let slash = ns.is_some_and(|i| self.bindings[i].slash);
                    match self.attach_child(key_start, plain, slash)? {
                        Attach::Restarted => {
                            // The parent is being re-read from its start tag; discard this one.
                            self.bindings.truncate(self.bindings.len().min(ns_len));
                            return Ok(());
                        }
                        Attach::Plain => {}
                        Attach::Wrapped => wrap_close = true,
                    }
                }
            }
            // The parent's bookkeeping for this child is done: this element's own children
            // start after it (popping this frame must not erase the parent's entry).
            seen_start = self.seen.len();
            value_start = self.out.len();
            // Most elements have no attributes: their value starts as a string, decided here
            // without a call.
            if !(self.attrs.is_empty() && self.mixed_starts.is_empty()) {
                (mode, members) = self.write_value_start(ev_start)?;
            }
            self.check_out()?;
        }
        self.frames.push(Frame {
            qname,
            input_start: ev_start,
            ns_len,
            path_len,
            seen_start,
            value_start,
            mode,
            wrap_close,
            is_root: frame_root,
            text_open: false,
            text_nonws: false,
            text_start: 0,
            text_len: 0,
            ws_at: 0,
            ws_len: 0,
            members,
            had_child: false,
            run_key: None,
            run_array: false,
            run_value_start: 0,
            seen_bits: 0,
            big: None,
        });
        if empty {
            self.finish_element();
        }
        Ok(())
    }

    /// Writes the beginning of an element's value according to its attributes.
    /// Returns the element's mode and its number of JSON members so far.
    /// Only called for elements with attributes or after a restart (see [`Conv::start`]).
    fn write_value_start(&mut self, input_start: usize) -> Result<(Mode, usize), TranslateError> {
        let mut nil = false;
        let mut others = 0;
        for a in &self.attrs {
            if a.is_decl {
                continue;
            }
            if same(a.local, "nil") && self.ns_uri(a.ns) == XSI_NS {
                let v = a
                    .value
                    .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
                nil = v == "true" || v == "1";
                if !nil {
                    others += 1;
                }
            } else {
                others += 1;
            }
        }
        let mixed = !self.mixed_starts.is_empty() && self.mixed_starts.contains(&input_start);
        if nil && others == 0 && !mixed {
            self.out.extend_from_slice(b"null");
            return Ok((Mode::Nil { obj: false }, 0));
        }
        if others == 0 && !mixed && !nil {
            return Ok((Mode::Pending, 0));
        }
        self.out.push(b'{');
        let mut n = 0;
        for a in &self.attrs {
            if a.is_decl {
                continue;
            }
            if n > 0 {
                self.out.push(b',');
            }
            n += 1;
            // Keys are capped as element keys are: an unmapped namespace's URI (an
            // attribute value, up to max_text_len) is repeated in every `@{uri}local`.
            let key_cap = self.opts.limits.max_name_len + 2048;
            if a.ns.is_none_or(|i| self.bindings[i].plain) {
                // No escaping needed: the key goes straight into the output.
                self.out.push(b'"');
                let key_start = self.out.len();
                push_key(self.out, &self.bindings, true, a.ns, a.local);
                if self.out.len() - key_start > key_cap {
                    return Err(self.err_path(too_large("JSON key too long")));
                }
                self.out.extend_from_slice(b"\":\"");
            } else {
                self.key.clear();
                let plain = push_key(&mut self.key, &self.bindings, true, a.ns, a.local);
                if self.key.len() > key_cap {
                    return Err(self.err_path(too_large("JSON key too long")));
                }
                put_key(self.out, &self.key, plain);
                self.out.push(b'"');
            }
            if a.json_plain {
                self.out.extend_from_slice(a.value.as_bytes());
            } else {
                escape_json(self.out, a.value.as_bytes());
            }
            self.out.push(b'"');
            self.check_out()?;
        }
        if mixed {
            if n > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"\"#mixed\":[");
            Ok((Mode::Mixed, 0))
        } else if nil {
            Ok((Mode::Nil { obj: true }, n))
        } else {
            Ok((Mode::Object, n))
        }
    }

    /// Attaches a rendered child to the parent frame: closes the parent's pending text,
    /// detects repeats and writes the child's key. The key is the last segment of `path`,
    /// from `key_start`; `slash`: the key may contain a `/`.
    fn attach_child(
        &mut self,
        key_start: usize,
        plain: bool,
        slash: bool,
    ) -> Result<Attach, TranslateError> {
        let pi = self.frames.len() - 1;
        let strict = self.opts.strict_repeats;
        match self.frames[pi].mode {
            Mode::Nil { .. } => {
                return Err(self.err_path(invalid("element with xsi:nil=\"true\" has content")));
            }
            Mode::Transparent | Mode::Skip => return Ok(Attach::Plain),
            Mode::Mixed => {
                let f = &mut self.frames[pi];
                if f.text_open {
                    self.out.push(b'"');
                    f.text_open = false;
                }
                if f.members > 0 {
                    self.out.push(b',');
                }
                f.members += 1;
                self.out.push(b'{');
                put_key(self.out, &self.path.as_bytes()[key_start..], plain);
                return Ok(Attach::Wrapped);
            }
            Mode::Pending => {
                let f = &mut self.frames[pi];
                f.ws_len = 0;
                if f.text_open && f.text_nonws {
                    self.restart(pi)?;
                    return Ok(Attach::Restarted);
                }
                // Whitespace before the first child was indentation: drop it.
                self.out.truncate(f.value_start);
                self.out.push(b'{');
                f.mode = Mode::Object;
                f.text_open = false;
                f.members = 0;
            }
            Mode::Object => {
                let f = &mut self.frames[pi];
                f.ws_len = 0;
                if f.text_open {
                    if f.text_nonws {
                        self.restart(pi)?;
                        return Ok(Attach::Restarted);
                    }
                    self.out.truncate(f.text_start);
                    f.text_open = false;
                }
            }
        }
        let key = &self.path.as_bytes()[key_start..];
        // Siblings' keys are compared in the form written to `out` (escaping is one-to-one),
        // where they stay until the parent is closed or restarted: no copy of them is kept.
        let json_key: &[u8] = if plain {
            key
        } else {
            self.key.clear();
            escape_json(&mut self.key, key);
            &self.key
        };
        let f = &mut self.frames[pi];
        f.had_child = true;
        let same_run = match f.run_key {
            Some((s, e)) => same_bytes(&self.out[s..e], json_key),
            None => false,
        };
        if same_run {
            if !f.run_array {
                if strict {
                    return Err(self.err_path(invalid(
                        "repeated element not declared as array (declare its path in the array mapping)",
                    )));
                }
                self.out.insert(f.run_value_start, b'[');
                f.run_array = true;
            }
            self.out.push(b',');
            return Ok(Attach::Plain);
        }
        if f.run_array {
            self.out.push(b']');
        }
        // Where the key will be written: after the comma and the opening quote.
        let at = self.out.len() + usize::from(f.members > 0) + 1;
        let Some(range) = seen_insert(f, &mut self.seen, self.out, json_key, at) else {
            if strict {
                return Err(self.err_path(invalid(
                    "element repeats after other siblings; not representable as a JSON object in strict mode",
                )));
            }
            self.restart(pi)?;
            return Ok(Attach::Restarted);
        };
        // Keys are valid UTF-8 (built from names and strings) and `key_start` follows a '/'.
        let declared = !self.opts.arrays.is_empty() && {
            let (arrays, key) = (&self.opts.arrays, &self.path[key_start..]);
            // Most keys are one path segment: no need to look for a `/` in them.
            if slash {
                arrays.matches_last(&self.path, key)
            } else {
                arrays.matches_segment(&self.path, key)
            }
        };
        if f.members > 0 {
            self.out.push(b',');
        }
        f.members += 1;
        f.run_key = Some(range);
        f.run_array = declared;
        self.out.push(b'"');
        self.out.extend_from_slice(json_key);
        self.out.extend_from_slice(b"\":");
        debug_assert_eq!(&self.out[range.0..range.1], json_key);
        if declared {
            self.out.push(b'[');
        }
        f.run_value_start = self.out.len();
        Ok(Attach::Plain)
    }

    /// Re-reads frame `pi` from its start tag in `#mixed` mode.
    fn restart(&mut self, pi: usize) -> Result<(), TranslateError> {
        let f = &self.frames[pi];
        let at = f.input_start;
        let here = self.base + self.reader.buffer_position() as usize;
        self.reprocessed += here.saturating_sub(at);
        if self.reprocessed > 4 * self.input.len() + 65536 {
            return Err(self.err_path(too_large("mixed content nested too deeply to translate")));
        }
        if !self.mixed_starts.insert(at) {
            return Err(self.err_path(malformed("internal: element restarted twice")));
        }
        self.restart_at = Some((at, f.wrap_close, f.is_root));
        self.out.truncate(f.value_start);
        self.bindings.truncate(f.ns_len);
        self.path.truncate(f.path_len);
        self.seen.truncate(f.seen_start);
        self.frames.truncate(pi);
        self.reader = make_reader(self.doc, at);
        self.base = at;
        Ok(())
    }

    // ------------------------------------------------------------------ text

    /// Character data of the current element. Indentation and a leaf's text are the commonest
    /// texts, so they are handled here without the general path ([`Conv::text_slow`]).
    /// Indentation between children is dropped, and before the first child it is only
    /// recorded (`ws_at`/`ws_len`): a child discards it, anything else writes it first
    /// ([`Conv::flush_ws`]).
    #[inline(always)]
    fn text(&mut self, s: &[u8], off: usize, kind: TextKind) -> Result<(), TranslateError> {
        let ws = all_ws(s);
        let Some(f) = self.frames.last_mut() else {
            return self.text_slow(s, off, kind, ws);
        };
        match f.mode {
            Mode::Object if ws && f.had_child => Ok(()),
            Mode::Pending | Mode::Object
                if ws
                    && matches!(kind, TextKind::Text)
                    && !f.text_open
                    && f.ws_len == 0
                    && !s.is_empty()
                    && s.len() <= self.opts.limits.max_text_len =>
            {
                f.ws_at = off;
                f.ws_len = s.len();
                Ok(())
            }
            // A leaf's text, with no whitespace held back: what `text_slow` does for it,
            // without the call.
            Mode::Pending if f.ws_len == 0 => {
                let pi = self.frames.len() - 1;
                self.write_text(pi, s, off, kind, ws)
            }
            _ => self.text_slow(s, off, kind, ws),
        }
    }

    /// Writes the whitespace [`Conv::text`] held back in frame `pi`.
    #[cold]
    fn flush_ws(&mut self, pi: usize) -> Result<(), TranslateError> {
        let f = &mut self.frames[pi];
        let (at, len) = (f.ws_at, f.ws_len);
        f.ws_len = 0;
        let doc = self.doc.as_bytes();
        self.write_text(pi, &doc[at..at + len], at, TextKind::Text, true)
    }

    /// [`Conv::text`] for all but indentation; `ws`: `s` is whitespace only.
    #[inline(never)]
    fn text_slow(
        &mut self,
        s: &[u8],
        off: usize,
        kind: TextKind,
        ws: bool,
    ) -> Result<(), TranslateError> {
        let Some(pi) = self.frames.len().checked_sub(1) else {
            if matches!(kind, TextKind::Text) && ws {
                return Ok(());
            }
            return Err(self.err_at(malformed("text outside the root element"), off));
        };
        let mode = self.frames[pi].mode;
        match mode {
            Mode::Transparent | Mode::Skip | Mode::Nil { .. } => {
                if !ws && matches!(kind, TextKind::Text) {
                    check_cdata_end(s).map_err(|i| {
                        self.err_at(malformed("']]>' is not allowed in text"), off + i)
                    })?;
                }
                if ws || mode == Mode::Skip {
                    return Ok(());
                }
                let m = if mode == Mode::Transparent {
                    "unexpected text in SOAP Envelope/Body"
                } else {
                    "element with xsi:nil=\"true\" has content"
                };
                return Err(self.err_path(invalid(m)));
            }
            Mode::Object if self.frames[pi].had_child => {
                if !ws {
                    self.restart(pi)?;
                }
                // Whitespace between children (indentation) is dropped; it cannot contain
                // `]]>`, so there is nothing to check.
                return Ok(());
            }
            _ => {}
        }
        if self.frames[pi].ws_len != 0 {
            self.flush_ws(pi)?;
        }
        self.write_text(pi, s, off, kind, ws)
    }

    /// Appends text to frame `pi`'s value, opening its JSON string first if needed.
    #[inline(always)]
    fn write_text(
        &mut self,
        pi: usize,
        s: &[u8],
        off: usize,
        kind: TextKind,
        ws: bool,
    ) -> Result<(), TranslateError> {
        let mode = self.frames[pi].mode;
        let f = &mut self.frames[pi];
        if !f.text_open {
            f.text_start = self.out.len();
            match mode {
                Mode::Pending => self.out.push(b'"'),
                Mode::Object => self.out.extend_from_slice(b",\"#text\":\""),
                _ => {
                    if f.members > 0 {
                        self.out.push(b',');
                    }
                    f.members += 1;
                    self.out.push(b'"');
                }
            }
            f.text_open = true;
            f.text_nonws = false;
            f.text_len = 0;
        }
        f.text_len += s.len();
        if !ws {
            f.text_nonws = true;
        }
        if f.text_len > self.opts.limits.max_text_len {
            return Err(self.err_at(too_large("text longer than max_text_len"), off));
        }
        match kind {
            TextKind::Text => escape_xml_text_to_json(self.out, s, true)
                .map_err(|i| self.err_at(malformed("']]>' is not allowed in text"), off + i))?,
            TextKind::CData => {
                let _ = escape_xml_text_to_json(self.out, s, false);
            }
            // A reference is one character, mostly a plain ASCII one (`&amp;`, `&lt;`).
            TextKind::Ref if s.len() == 1 && !needs_json_escape(s) => self.out.push(s[0]),
            TextKind::Ref => escape_json(self.out, s),
        }
        Ok(())
    }

    // ------------------------------------------------------------------ end tags

    fn end(&mut self, name: &str, ev_start: usize) -> Result<(), TranslateError> {
        let Some(f) = self.frames.last() else {
            return Err(self.err_at(
                malformed(format!("end tag </{name}> without start tag")),
                ev_start,
            ));
        };
        if !same(f.qname, name) {
            let m = format!(
                "mismatched end tag: expected </{}>, found </{}>",
                f.qname, name
            );
            return Err(self.err_at(malformed(m), ev_start));
        }
        if f.ws_len != 0 {
            self.flush_ws(self.frames.len() - 1)?;
        }
        self.finish_element();
        self.check_out()
    }

    // Inlined into `end` and `start`: a call per element, whose register saving costs more
    // than the call itself.
    #[inline(always)]
    fn finish_element(&mut self) {
        // Read in place: moving the whole frame out of the stack costs more than the few
        // fields needed here.
        let Some(f) = self.frames.last() else {
            return;
        };
        let f = FrameEnd {
            mode: f.mode,
            text_open: f.text_open,
            run_array: f.run_array,
            wrap_close: f.wrap_close,
            is_root: f.is_root,
            ns_len: f.ns_len,
            path_len: f.path_len,
            seen_start: f.seen_start,
        };
        self.frames.truncate(self.frames.len() - 1);
        match f.mode {
            Mode::Pending => {
                if f.text_open {
                    self.out.push(b'"');
                } else {
                    self.out.extend_from_slice(b"\"\"");
                }
            }
            Mode::Object => {
                if f.text_open {
                    self.out.push(b'"');
                }
                if f.run_array {
                    self.out.push(b']');
                }
                self.out.push(b'}');
            }
            Mode::Mixed => {
                if f.text_open {
                    self.out.push(b'"');
                }
                self.out.extend_from_slice(b"]}");
            }
            Mode::Nil { obj } => {
                if obj {
                    self.out.push(b'}');
                }
            }
            Mode::Transparent | Mode::Skip => {}
        }
        if f.wrap_close {
            self.out.push(b'}');
        }
        if f.is_root {
            self.out.push(b'}');
            self.root_done = true;
        }
        self.bindings.truncate(f.ns_len);
        self.path.truncate(f.path_len);
        self.seen.truncate(f.seen_start);
        if self.frames.is_empty() {
            self.doc_root_done = true;
        }
    }
}

/// What [`Conv::finish_element`] needs of the closed frame.
struct FrameEnd {
    mode: Mode,
    text_open: bool,
    run_array: bool,
    wrap_close: bool,
    is_root: bool,
    ns_len: usize,
    path_len: usize,
    seen_start: usize,
}

enum Attach {
    Plain,
    Wrapped,
    Restarted,
}

/// Where JSON keys are built: the element path (`String`) or the output itself.
trait KeySink {
    fn put(&mut self, s: &str);
}

impl KeySink for String {
    #[inline]
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl KeySink for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// Appends the JSON key of a (namespace, local) pair, prefixed with `@` for an attribute.
/// Returns whether the key is plain, i.e. needs no JSON escaping: XML names never do (no
/// controls, quotes or backslashes), only a configured prefix or an unmapped namespace URI
/// can (see [`Binding::plain`]).
#[inline]
fn push_key(
    key: &mut impl KeySink,
    bindings: &[Binding<'_, '_>],
    attr: bool,
    ns: Option<usize>,
    local: &str,
) -> bool {
    if attr {
        key.put("@");
    }
    let mut plain = true;
    if let Some(i) = ns {
        let b = &bindings[i];
        plain = b.plain;
        match b.json {
            JsonNs::NoNs => {}
            JsonNs::Prefix(p) => {
                if !p.is_empty() {
                    key.put(p);
                    key.put(":");
                }
            }
            JsonNs::Unmapped => {
                key.put("{");
                key.put(&b.uri);
                key.put("}");
            }
        }
    }
    key.put(local);
    plain
}

/// Writes `"key":`, escaping the key unless it is plain.
#[inline]
fn put_key(out: &mut Vec<u8>, key: &[u8], plain: bool) {
    out.push(b'"');
    if plain {
        out.extend_from_slice(key);
    } else {
        escape_json(out, key);
    }
    out.extend_from_slice(b"\":");
}

/// Records `key` among the children of frame `f`; the key is about to be written to `out` at
/// `at`, and the ranges in `seen` are those of the earlier siblings' keys in `out`. Returns the
/// key's range, or None if the parent already had a child with this key.
fn seen_insert(
    f: &mut Frame<'_>,
    seen: &mut Vec<(usize, usize)>,
    out: &[u8],
    key: &[u8],
    at: usize,
) -> Option<(usize, usize)> {
    if let Some(big) = &mut f.big {
        if !big.insert(key.into()) {
            return None;
        }
    } else {
        let last = key.last().copied();
        let bit = 1u64 << ((key.len().wrapping_mul(31) + last.map_or(0, usize::from)) & 63);
        // Length and last byte first: sibling names mostly differ there, and a full
        // comparison is a libc call.
        if f.seen_bits & bit != 0
            && seen[f.seen_start..].iter().any(|&(s, e)| {
                e - s == key.len() && out[s..e].last().copied() == last && &out[s..e] == key
            })
        {
            return None;
        }
        f.seen_bits |= bit;
        if seen.len() - f.seen_start >= SEEN_LINEAR_MAX {
            let mut set: HashSet<Box<[u8]>> = seen[f.seen_start..]
                .iter()
                .map(|&(s, e)| Box::from(&out[s..e]))
                .collect();
            set.insert(key.into());
            f.big = Some(Box::new(set));
        } else {
            seen.push((at, at + key.len()));
        }
    }
    Some((at, at + key.len()))
}

fn check_cdata_end(s: &[u8]) -> Result<(), usize> {
    match s.windows(3).position(|w| w == b"]]>") {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

/// Validates the XML declaration (`content` starts with `xml`). Only version 1.0 and UTF-8
/// (or its ASCII subset) are accepted because the input is decoded as UTF-8.
fn check_decl(content: &str) -> Result<(), TranslateError> {
    let b = content.as_bytes();
    let mut i = 3;
    let mut seen = 0u8; // 1 = version, 2 = encoding, 3 = standalone
    loop {
        let ws_start = i;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        if i == ws_start {
            return Err(malformed("malformed XML declaration"));
        }
        let n_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let name = &content[n_start..i];
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(malformed("malformed XML declaration"));
        }
        i += 1;
        while i < b.len() && is_ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || (b[i] != b'"' && b[i] != b'\'') {
            return Err(malformed("malformed XML declaration"));
        }
        let q = b[i];
        let Some(len) = b[i + 1..].iter().position(|&c| c == q) else {
            return Err(malformed("malformed XML declaration"));
        };
        let value = &content[i + 1..i + 1 + len];
        i += len + 2;
        let order = match name {
            "version" => 1,
            "encoding" => 2,
            "standalone" => 3,
            _ => return Err(malformed("unknown pseudo-attribute in XML declaration")),
        };
        if order <= seen || (seen == 0 && order != 1) {
            return Err(malformed(
                "XML declaration must start with version, then encoding, then standalone",
            ));
        }
        seen = order;
        match order {
            1 => {
                let ok = value.len() > 2
                    && value.starts_with("1.")
                    && value[2..].bytes().all(|c| c.is_ascii_digit());
                if !ok {
                    return Err(malformed("malformed version in XML declaration"));
                }
                if value != "1.0" {
                    return Err(unsupported(format!("XML version {value} is not supported")));
                }
            }
            2 => {
                let vb = value.as_bytes();
                let ok = !vb.is_empty()
                    && vb[0].is_ascii_alphabetic()
                    && vb[1..]
                        .iter()
                        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(malformed("malformed encoding name in XML declaration"));
                }
                if !(value.eq_ignore_ascii_case("utf-8")
                    || value.eq_ignore_ascii_case("utf8")
                    || value.eq_ignore_ascii_case("us-ascii"))
                {
                    return Err(unsupported(format!(
                        "encoding {value} is not supported; send UTF-8"
                    )));
                }
            }
            _ => {
                if value != "yes" && value != "no" {
                    return Err(malformed("standalone must be 'yes' or 'no'"));
                }
            }
        }
    }
    if seen == 0 {
        return Err(malformed("XML declaration without version"));
    }
    Ok(())
}
