//! SOAP 1.1 / 1.2 envelopes around the XML ↔ JSON translation.
//!
//! * [`wrap`]: JSON body (and optional JSON header blocks) → envelope + HTTP header values.
//! * [`unwrap`]: envelope → JSON of the Body's first child, or a parsed [`SoapFault`].
//! * [`fault_to_xml`]: a [`SoapFault`] (typically built from a JSON error) → fault envelope.

use super::error::{invalid, TranslateError};
use super::json_in;
use super::xml_in::{self, Capture, SOAP11_NS, SOAP12_NS};
use super::xml_out::XmlWriter;
use super::{ArrayPaths, JsonToXmlOptions, XmlToJsonOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SoapVersion {
    #[serde(rename = "1.1")]
    V11,
    #[serde(rename = "1.2")]
    V12,
}

impl SoapVersion {
    pub fn envelope_ns(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_NS,
            SoapVersion::V12 => SOAP12_NS,
        }
    }

    fn from_ns(ns: &str) -> Option<Self> {
        match ns {
            SOAP11_NS => Some(SoapVersion::V11),
            SOAP12_NS => Some(SoapVersion::V12),
            _ => None,
        }
    }

    /// `Content-Type` value for a request/response of this version. SOAP 1.2 carries the
    /// action as a media-type parameter instead of a separate header.
    pub fn content_type(self, action: Option<&str>) -> String {
        match (self, action) {
            (SoapVersion::V11, _) => "text/xml; charset=utf-8".to_string(),
            (SoapVersion::V12, None) => "application/soap+xml; charset=utf-8".to_string(),
            (SoapVersion::V12, Some(a)) => format!(
                "application/soap+xml; charset=utf-8; action=\"{}\"",
                a.replace(['"', '\\'], "")
            ),
        }
    }
}

/// Options for [`wrap`].
#[derive(Debug, Clone)]
pub struct SoapWrapOptions {
    /// Namespace map and limits for the payload; `root` names the operation element when the
    /// JSON body is not a one-member object; `xml_declaration` controls the envelope's one.
    pub json: JsonToXmlOptions,
    /// SOAP action (SOAP 1.1 `SOAPAction` header, SOAP 1.2 `action` parameter).
    pub action: Option<String>,
    /// Optional JSON object whose members become header blocks.
    pub header: Option<Vec<u8>>,
    /// Prefix used for the envelope namespace (default `soap`).
    pub envelope_prefix: String,
}

impl Default for SoapWrapOptions {
    fn default() -> Self {
        SoapWrapOptions {
            json: JsonToXmlOptions::default(),
            action: None,
            header: None,
            envelope_prefix: "soap".to_string(),
        }
    }
}

/// A ready-to-send SOAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapRequest {
    pub body: Vec<u8>,
    pub content_type: String,
    /// Value for the `SOAPAction` HTTP header (SOAP 1.1 only; always present there, quoted).
    pub soap_action: Option<String>,
}

fn envelope_open(out: &mut Vec<u8>, version: SoapVersion, p: &str, decl: bool) {
    if decl {
        out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    }
    out.extend_from_slice(
        format!("<{p}:Envelope xmlns:{p}=\"{}\">", version.envelope_ns()).as_bytes(),
    );
}

fn check_prefix(p: &str) -> Result<(), TranslateError> {
    if super::chars::is_ncname(p) && !p.eq_ignore_ascii_case("xml") {
        Ok(())
    } else {
        Err(invalid(format!("invalid envelope prefix '{p}'")))
    }
}

/// Wraps a JSON body into a SOAP envelope.
pub fn wrap(
    json_body: &[u8],
    version: SoapVersion,
    opts: &SoapWrapOptions,
) -> Result<SoapRequest, TranslateError> {
    let p = opts.envelope_prefix.as_str();
    check_prefix(p)?;
    let body = json_in::parse(json_body, &opts.json.limits)?;
    let header = match &opts.header {
        Some(h) => Some(json_in::parse(h, &opts.json.limits)?),
        None => None,
    };
    let mut out = Vec::with_capacity(json_body.len() * 2 + 256);
    envelope_open(&mut out, version, p, opts.json.xml_declaration);
    let mut w = XmlWriter::new(&opts.json.namespaces, &opts.json.limits, &mut out);
    if let Some(h) = &header {
        let json_in::JVal::Obj(members) = h else {
            return Err(invalid(
                "SOAP header JSON must be an object of header blocks",
            ));
        };
        w.raw(format!("<{p}:Header>").as_bytes());
        for (k, v, _) in members {
            w.write_root(k, v)?;
        }
        w.raw(format!("</{p}:Header>").as_bytes());
    }
    w.raw(format!("<{p}:Body>").as_bytes());
    match (&opts.json.root, &body) {
        (Some(r), v) => w.write_root(r, v)?,
        (None, json_in::JVal::Obj(m)) if m.len() == 1 => w.write_root(&m[0].0, &m[0].1)?,
        // An empty object means an empty Body (e.g. a one-way message).
        (None, json_in::JVal::Obj(m)) if m.is_empty() => {}
        _ => {
            return Err(invalid(
                "SOAP body JSON must be an object with exactly one member (the operation element)",
            ))
        }
    }
    w.raw(format!("</{p}:Body></{p}:Envelope>").as_bytes());
    let action = opts.action.as_deref();
    Ok(SoapRequest {
        body: out,
        content_type: version.content_type(action),
        soap_action: match version {
            SoapVersion::V11 => Some(format!(
                "\"{}\"",
                action.unwrap_or("").replace(['"', '\\'], "")
            )),
            SoapVersion::V12 => None,
        },
    })
}

/// A SOAP fault, version-independent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoapFault {
    pub version: SoapVersion,
    /// 1.1 `faultcode` / 1.2 `Code/Value`, as written (a QName such as `soap:Server`).
    pub code: String,
    /// 1.2 `Subcode/Value` chain, outermost first (empty for 1.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subcodes: Vec<String>,
    /// 1.1 `faultstring` / 1.2 first `Reason/Text`.
    pub reason: String,
    /// `xml:lang` of the reason when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// 1.1 `faultactor` / 1.2 `Role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// 1.2 `Node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Content of `detail` / `Detail` translated with the XML → JSON convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl SoapFault {
    /// Local part of the code (`Server`, `Client`, `Sender`, `Receiver`, ...). SOAP 1.1
    /// refines codes with dots (`Client.Authentication` is a `Client` fault): the part
    /// before the first dot is the class.
    pub fn code_local(&self) -> &str {
        let local = self.code.rsplit(':').next().unwrap_or(&self.code);
        match self.version {
            SoapVersion::V11 => local.split('.').next().unwrap_or(local),
            _ => local,
        }
    }

    /// HTTP status for returning this fault to a SOAP client: SOAP 1.2 maps Sender faults to
    /// 400, everything else uses 500 (SOAP 1.1 always uses 500).
    pub fn http_status(&self) -> u16 {
        match (self.version, self.code_local()) {
            (SoapVersion::V12, "Sender") => 400,
            _ => 500,
        }
    }
}

/// Successful result of [`unwrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapMessage {
    pub version: SoapVersion,
    /// JSON `{"operationElement": ...}` of the Body's first child (`{}` for an empty Body).
    pub json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    #[error("SOAP fault {}: {}", .0.code, .0.reason)]
    Fault(Box<SoapFault>),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// Unwraps a SOAP 1.1/1.2 envelope. The array paths in `opts` are relative to the Body's
/// first child (e.g. `/m:GetResp/m:Item`).
pub fn unwrap(xml: &[u8], opts: &XmlToJsonOptions) -> Result<SoapMessage, UnwrapError> {
    let mut json = Vec::with_capacity(xml.len());
    let outcome = match xml_in::convert(xml, opts, Capture::SoapBody, &mut json) {
        Ok(o) => o,
        Err(e) => {
            // A fault need not follow the caller's array mapping (e.g. several Reason/Text):
            // if the message is a fault, report the fault rather than the mapping error.
            if e.kind() == super::TranslateErrorKind::Invalid {
                if let Ok(Some(f)) = read_fault(xml, opts) {
                    return Err(UnwrapError::Fault(Box::new(f)));
                }
            }
            return Err(e.into());
        }
    };
    let version = outcome
        .soap_ns
        .and_then(SoapVersion::from_ns)
        .ok_or_else(|| invalid("not a SOAP envelope"))?;
    if !outcome.fault {
        return Ok(SoapMessage { version, json });
    }
    match read_fault(xml, opts)? {
        Some(f) => Err(UnwrapError::Fault(Box::new(f))),
        None => Err(invalid("internal: fault disappeared on second pass").into()),
    }
}

/// Faults are small: translate with the envelope namespace unprefixed, lenient repeats
/// (detail content is free-form) and Reason/Text as an array, then pick the fields.
fn read_fault(xml: &[u8], opts: &XmlToJsonOptions) -> Result<Option<SoapFault>, TranslateError> {
    let mut fopts = opts.clone();
    fopts.strict_repeats = false;
    fopts.arrays = ArrayPaths::new(["/Fault/Reason/Text"]);
    for ns in [SOAP11_NS, SOAP12_NS] {
        fopts.namespaces.insert(ns.to_string(), String::new());
    }
    let mut json = Vec::with_capacity(xml.len());
    let outcome = xml_in::convert(xml, &fopts, Capture::SoapBody, &mut json)?;
    let Some(version) = outcome.soap_ns.and_then(SoapVersion::from_ns) else {
        return Ok(None);
    };
    if !outcome.fault {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("internal: fault JSON unreadable: {e}")))?;
    let f = v.get("Fault").cloned().unwrap_or(Value::Null);
    Ok(Some(parse_fault(version, &f)))
}

/// Text of a translated leaf: either the string itself or the `#text` of an object.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Object(m) => match m.get("#text") {
            Some(Value::String(s)) => Some(s.trim().to_string()),
            _ => Some(String::new()),
        },
        _ => None,
    }
}

fn parse_fault(version: SoapVersion, f: &Value) -> SoapFault {
    match version {
        SoapVersion::V11 => SoapFault {
            version,
            code: text_of(f.get("faultcode")).unwrap_or_default(),
            subcodes: Vec::new(),
            reason: text_of(f.get("faultstring")).unwrap_or_default(),
            lang: f
                .get("faultstring")
                .and_then(|s| s.get("@xml:lang"))
                .and_then(|l| l.as_str())
                .map(str::to_string),
            actor: text_of(f.get("faultactor")),
            node: None,
            detail: f.get("detail").cloned(),
        },
        SoapVersion::V12 => {
            let code = f.get("Code");
            let mut subcodes = Vec::new();
            let mut sub = code.and_then(|c| c.get("Subcode"));
            while let Some(s) = sub {
                if let Some(t) = text_of(s.get("Value")) {
                    subcodes.push(t);
                }
                sub = s.get("Subcode");
            }
            let texts = f
                .get("Reason")
                .and_then(|r| r.get("Text"))
                .and_then(|t| t.as_array())
                .cloned()
                .unwrap_or_default();
            let first = texts.first();
            SoapFault {
                version,
                code: text_of(code.and_then(|c| c.get("Value"))).unwrap_or_default(),
                subcodes,
                reason: text_of(first).unwrap_or_default(),
                lang: first
                    .and_then(|t| t.get("@xml:lang"))
                    .and_then(|l| l.as_str())
                    .map(str::to_string),
                actor: text_of(f.get("Role")),
                node: text_of(f.get("Node")),
                detail: f.get("Detail").cloned(),
            }
        }
    }
}

/// Serialises a fault as a complete SOAP envelope of `fault.version`. `opts` supplies the
/// namespace map and limits used for the detail. Codes without a prefix get the envelope
/// prefix, and the standard codes are translated between versions (Client ↔ Sender,
/// Server ↔ Receiver).
pub fn fault_to_xml(fault: &SoapFault, opts: &SoapWrapOptions) -> Result<Vec<u8>, TranslateError> {
    let p = opts.envelope_prefix.as_str();
    check_prefix(p)?;
    let v = fault.version;
    let code = qualify_code(&fault.code, v, p);
    let mut out = Vec::with_capacity(512);
    envelope_open(&mut out, v, p, opts.json.xml_declaration);
    let mut w = XmlWriter::new(&opts.json.namespaces, &opts.json.limits, &mut out);
    w.raw(format!("<{p}:Body><{p}:Fault>").as_bytes());
    // The detail is converted through the JSON parser so that it obeys the same rules
    // (duplicate keys, names, limits) as any other JSON input.
    let detail_json = match &fault.detail {
        Some(d) => Some(serde_json::to_vec(d).map_err(|e| invalid(format!("fault detail: {e}")))?),
        None => None,
    };
    let detail = match &detail_json {
        Some(d) => Some(json_in::parse(d, &opts.json.limits)?),
        None => None,
    };
    match v {
        SoapVersion::V11 => {
            w.raw(b"<faultcode>");
            w.escaped(&code)?;
            w.raw(b"</faultcode><faultstring");
            if let Some(l) = &fault.lang {
                w.raw(b" xml:lang=\"");
                w.escaped_attr(l)?;
                w.raw(b"\"");
            }
            w.raw(b">");
            w.escaped(&fault.reason)?;
            w.raw(b"</faultstring>");
            if let Some(a) = &fault.actor {
                w.raw(b"<faultactor>");
                w.escaped(a)?;
                w.raw(b"</faultactor>");
            }
            if let Some(d) = &detail {
                w.raw(b"<detail>");
                write_detail(&mut w, d)?;
                w.raw(b"</detail>");
            }
        }
        SoapVersion::V12 => {
            w.raw(format!("<{p}:Code><{p}:Value>").as_bytes());
            w.escaped(&code)?;
            w.raw(format!("</{p}:Value>").as_bytes());
            for s in &fault.subcodes {
                w.raw(format!("<{p}:Subcode><{p}:Value>").as_bytes());
                w.escaped(s)?;
                w.raw(format!("</{p}:Value>").as_bytes());
            }
            for _ in &fault.subcodes {
                w.raw(format!("</{p}:Subcode>").as_bytes());
            }
            w.raw(format!("</{p}:Code><{p}:Reason><{p}:Text xml:lang=\"").as_bytes());
            w.escaped_attr(fault.lang.as_deref().unwrap_or("en"))?;
            w.raw(b"\">");
            w.escaped(&fault.reason)?;
            w.raw(format!("</{p}:Text></{p}:Reason>").as_bytes());
            if let Some(n) = &fault.node {
                w.raw(format!("<{p}:Node>").as_bytes());
                w.escaped(n)?;
                w.raw(format!("</{p}:Node>").as_bytes());
            }
            if let Some(r) = &fault.actor {
                w.raw(format!("<{p}:Role>").as_bytes());
                w.escaped(r)?;
                w.raw(format!("</{p}:Role>").as_bytes());
            }
            if let Some(d) = &detail {
                w.raw(format!("<{p}:Detail>").as_bytes());
                write_detail(&mut w, d)?;
                w.raw(format!("</{p}:Detail>").as_bytes());
            }
        }
    }
    w.raw(format!("</{p}:Fault></{p}:Body></{p}:Envelope>").as_bytes());
    Ok(out)
}

fn write_detail(w: &mut XmlWriter<'_, '_>, d: &json_in::JVal<'_>) -> Result<(), TranslateError> {
    match d {
        json_in::JVal::Obj(members) => {
            for (k, v, _) in members {
                match v {
                    json_in::JVal::Arr(items) => {
                        for it in items {
                            w.write_root(k, it)?;
                        }
                    }
                    _ => w.write_root(k, v)?,
                }
            }
            Ok(())
        }
        json_in::JVal::Str(s) => w.escaped(s),
        json_in::JVal::Num(n) => w.escaped(n),
        json_in::JVal::Bool(b) => w.escaped(if *b { "true" } else { "false" }),
        json_in::JVal::Null => Ok(()),
        json_in::JVal::Arr(_) => Err(invalid("fault detail must be an object or a string")),
    }
}

fn qualify_code(code: &str, v: SoapVersion, p: &str) -> String {
    let local = code.rsplit(':').next().unwrap_or(code);
    let std_local = match (v, local) {
        (SoapVersion::V11, "Sender") => Some("Client"),
        (SoapVersion::V11, "Receiver") => Some("Server"),
        (SoapVersion::V12, "Client") => Some("Sender"),
        (SoapVersion::V12, "Server") => Some("Receiver"),
        (_, "VersionMismatch" | "MustUnderstand") => Some(local),
        (SoapVersion::V11, "Client" | "Server") => Some(local),
        (SoapVersion::V12, "Sender" | "Receiver" | "DataEncodingUnknown") => Some(local),
        _ => None,
    };
    match std_local {
        Some(l) => format!("{p}:{l}"),
        None if code.contains(':') => code.to_string(),
        None => format!("{p}:{code}"),
    }
}
