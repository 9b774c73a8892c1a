//! Golden tests: one per rule of the convention (see adapters/README.md), both directions.

use super::*;

fn x2j_with(xml: &str, opts: &XmlToJsonOptions) -> Result<String, TranslateError> {
    let mut out = Vec::new();
    xml_to_json(xml.as_bytes(), opts, &mut out)?;
    let s = String::from_utf8(out).expect("utf8 output");
    // every successful output must be valid JSON
    serde_json::from_str::<serde_json::Value>(&s)
        .unwrap_or_else(|e| panic!("invalid JSON output {s}: {e}"));
    Ok(s)
}

fn x2j(xml: &str) -> String {
    x2j_with(xml, &XmlToJsonOptions::default()).unwrap_or_else(|e| panic!("{xml}: {e}"))
}

fn x2j_err(xml: &str) -> TranslateError {
    match x2j_with(xml, &XmlToJsonOptions::default()) {
        Ok(s) => panic!("expected error for {xml:?}, got {s}"),
        Err(e) => e,
    }
}

fn arrays(paths: &[&str]) -> XmlToJsonOptions {
    XmlToJsonOptions {
        arrays: ArrayPaths::new(paths),
        ..Default::default()
    }
}

fn j2x_with(json: &str, opts: &JsonToXmlOptions) -> Result<String, TranslateError> {
    let mut out = Vec::new();
    json_to_xml(json.as_bytes(), opts, &mut out)?;
    Ok(String::from_utf8(out).expect("utf8"))
}

fn j2x(json: &str) -> String {
    let opts = JsonToXmlOptions {
        xml_declaration: false,
        ..Default::default()
    };
    j2x_with(json, &opts).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn leaf_text_and_no_type_guessing() {
    assert_eq!(x2j("<a>hello</a>"), r#"{"a":"hello"}"#);
    // leading zeros and 25-digit numbers stay strings, untouched
    assert_eq!(
        x2j("<r><zip>007</zip><n>1234567890123456789012345</n><f>1.50</f><b>true</b></r>"),
        r#"{"r":{"zip":"007","n":"1234567890123456789012345","f":"1.50","b":"true"}}"#
    );
    assert_eq!(
        j2x(r#"{"r":{"zip":"007","n":1234567890123456789012345,"f":1.50,"b":true}}"#),
        "<r><zip>007</zip><n>1234567890123456789012345</n><f>1.50</f><b>true</b></r>"
    );
}

#[test]
fn attributes_vs_elements() {
    assert_eq!(
        x2j(r#"<p id="7" kind="x"><name>An</name></p>"#),
        r#"{"p":{"@id":"7","@kind":"x","name":"An"}}"#
    );
    assert_eq!(
        x2j(r#"<p id="7">An</p>"#),
        r##"{"p":{"@id":"7","#text":"An"}}"##
    );
    assert_eq!(x2j(r#"<p id="7"/>"#), r#"{"p":{"@id":"7"}}"#);
    assert_eq!(
        j2x(r##"{"p":{"name":"An","@id":"7","#text":"x"}}"##),
        r#"<p id="7"><name>An</name>x</p>"#
    );
    assert_eq!(
        j2x(r##"{"p":{"@id":"7","#text":"An"}}"##),
        r#"<p id="7">An</p>"#
    );
    // attribute value normalisation and references
    assert_eq!(
        x2j("<p a=\"x&#10;y\tz&amp;&lt;\"/>"),
        r#"{"p":{"@a":"x\ny z&<"}}"#
    );
}

#[test]
fn one_vs_many() {
    let xml = "<Resp><Item>1</Item><Other>o</Other></Resp>";
    assert_eq!(
        x2j_with(xml, &arrays(&["/Resp/Item"])).unwrap(),
        r#"{"Resp":{"Item":["1"],"Other":"o"}}"#
    );
    assert_eq!(
        x2j_with(xml, &arrays(&["//Item"])).unwrap(),
        r#"{"Resp":{"Item":["1"],"Other":"o"}}"#
    );
    let many = "<Resp><Item>1</Item><Item><x>2</x></Item></Resp>";
    assert_eq!(
        x2j_with(many, &arrays(&["/Resp/Item"])).unwrap(),
        r#"{"Resp":{"Item":["1",{"x":"2"}]}}"#
    );
    // undeclared repeat: strict error with the path, lenient array
    let e = x2j_err(many);
    assert_eq!(e.kind(), TranslateErrorKind::Invalid);
    assert_eq!(e.path(), Some("/Resp/Item"));
    let lenient = XmlToJsonOptions {
        strict_repeats: false,
        ..Default::default()
    };
    assert_eq!(
        x2j_with(many, &lenient).unwrap(),
        r#"{"Resp":{"Item":["1",{"x":"2"}]}}"#
    );
    // non-adjacent repeats: strict error; lenient keeps order through #mixed
    let inter = "<r><a>1</a><b>2</b><a>3</a></r>";
    assert_eq!(
        x2j_with(inter, &arrays(&["//a"])).unwrap_err().kind(),
        TranslateErrorKind::Invalid
    );
    assert_eq!(
        x2j_with(inter, &lenient).unwrap(),
        r##"{"r":{"#mixed":[{"a":"1"},{"b":"2"},{"a":"3"}]}}"##
    );
    // JSON arrays become repeated elements
    assert_eq!(
        j2x(r#"{"Resp":{"Item":["1",{"x":"2"}]}}"#),
        "<Resp><Item>1</Item><Item><x>2</x></Item></Resp>"
    );
}

#[test]
fn mixed_content_preserves_order() {
    assert_eq!(
        x2j("<p>Hello <b>world</b>, bye<br/></p>"),
        r##"{"p":{"#mixed":["Hello ",{"b":"world"},", bye",{"br":""}]}}"##
    );
    // mixed content discovered late (text after children) and nested
    assert_eq!(
        x2j(r#"<d><p a="1"><i>x</i> tail <i>y</i></p><q>z</q></d>"#),
        r##"{"d":{"p":{"@a":"1","#mixed":[{"i":"x"}," tail ",{"i":"y"}]},"q":"z"}}"##
    );
    assert_eq!(
        j2x(r##"{"p":{"#mixed":["Hello ",{"b":"world"},", bye",{"br":""}]}}"##),
        "<p>Hello <b>world</b>, bye<br/></p>"
    );
    // indentation whitespace is not mixed content
    assert_eq!(
        x2j("<a>\n  <b>1</b>\n  <c/>\n</a>"),
        r#"{"a":{"b":"1","c":""}}"#
    );
    // but whitespace-only leaves keep their value
    assert_eq!(x2j("<a> </a>"), r#"{"a":" "}"#);
}

#[test]
fn cdata_is_text() {
    assert_eq!(
        x2j("<a><![CDATA[<b>&amp;</b>]]> and &amp; more</a>"),
        r#"{"a":"<b>&amp;</b> and & more"}"#
    );
    assert_eq!(
        j2x(r#"{"a":"<b>&amp;</b>"}"#),
        "<a>&lt;b&gt;&amp;amp;&lt;/b&gt;</a>"
    );
}

#[test]
fn namespaces_two_prefixes_one_uri_and_rebinding() {
    let mut opts = XmlToJsonOptions::default();
    opts.namespaces.insert("urn:a".into(), "a".into());
    opts.namespaces.insert("urn:b".into(), "b".into());
    // p and q are both bound to urn:a → same JSON prefix; p is rebound to urn:b inside.
    let xml = r#"<p:r xmlns:p="urn:a" xmlns:q="urn:a"><q:x>1</q:x><p:y xmlns:p="urn:b"><p:z p:at="v">2</p:z></p:y><p:w>3</p:w></p:r>"#;
    assert_eq!(
        x2j_with(xml, &opts).unwrap(),
        r##"{"a:r":{"a:x":"1","b:y":{"b:z":{"@b:at":"v","#text":"2"}},"a:w":"3"}}"##
    );
    // two prefixes for the same URI are the same element name → a repeat
    let dup = r#"<r xmlns:p="urn:a" xmlns:q="urn:a"><p:x/><q:x/></r>"#;
    assert_eq!(
        x2j_with(dup, &opts).unwrap_err().kind(),
        TranslateErrorKind::Invalid
    );
    // unmapped namespace → {uri}local; default namespace; "" mapping → unprefixed
    assert_eq!(
        x2j(r#"<r xmlns="urn:x"><c/></r>"#),
        r#"{"{urn:x}r":{"{urn:x}c":""}}"#
    );
    let mut o2 = XmlToJsonOptions::default();
    o2.namespaces.insert("urn:x".into(), "".into());
    assert_eq!(
        x2j_with(r#"<r xmlns="urn:x"><c xmlns="">1</c></r>"#, &o2).unwrap(),
        r#"{"r":{"c":"1"}}"#
    );
    // duplicate attributes by expanded name
    let e = x2j_err(r#"<r xmlns:p="urn:a" xmlns:q="urn:a" p:x="1" q:x="2"/>"#);
    assert_eq!(e.kind(), TranslateErrorKind::Malformed);
    // unbound prefix
    assert_eq!(x2j_err("<p:r/>").kind(), TranslateErrorKind::Malformed);
    // JSON → XML with a prefix map and {uri} keys
    let mut jo = JsonToXmlOptions {
        xml_declaration: false,
        ..Default::default()
    };
    jo.namespaces.insert("urn:a".into(), "a".into());
    assert_eq!(
        j2x_with(r#"{"a:r":{"a:x":"1","{urn:z}y":{"@{urn:z}k":"v"}}}"#, &jo).unwrap(),
        r#"<a:r xmlns:a="urn:a" xmlns:ns1="urn:z"><a:x>1</a:x><ns1:y ns1:k="v"/></a:r>"#
    );
    assert_eq!(
        j2x_with(r#"{"zz:r":"1"}"#, &jo).unwrap_err().kind(),
        TranslateErrorKind::Invalid
    );
}

#[test]
fn empty_and_nil() {
    assert_eq!(x2j("<r><e/><f></f></r>"), r#"{"r":{"e":"","f":""}}"#);
    let xml = r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><n xsi:nil="true"/><m xsi:nil="true" id="1"/></r>"#;
    assert_eq!(
        x2j(xml),
        r#"{"r":{"n":null,"m":{"@xsi:nil":"true","@id":"1"}}}"#
    );
    assert_eq!(
        j2x(r#"{"r":{"n":null,"e":""}}"#),
        r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><n xsi:nil="true"/><e/></r>"#
    );
    let bad =
        r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><n xsi:nil="true">x</n></r>"#;
    assert_eq!(x2j_err(bad).kind(), TranslateErrorKind::Invalid);
}

#[test]
fn unicode_and_escapes() {
    assert_eq!(
        x2j("<t>Nguyễn Văn \"A\" \\ &#x1F600;\r\nx&#13;</t>"),
        r#"{"t":"Nguyễn Văn \"A\" \\ 😀\nx\r"}"#
    );
    assert_eq!(j2x(r#"{"t":"a\r\nb\u0009"}"#), "<t>a&#13;\nb\t</t>");
    let e = j2x_with(r#"{"t":"\u0001"}"#, &JsonToXmlOptions::default()).unwrap_err();
    assert_eq!(e.kind(), TranslateErrorKind::Invalid);
}

#[test]
fn safety_refusals() {
    use TranslateErrorKind::*;
    let cases: &[(&str, TranslateErrorKind)] = &[
        ("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", Unsupported),
        ("<a>", Malformed),
        ("<a></b>", Malformed),
        ("<a/><b/>", Malformed),
        ("<a/>text", Malformed),
        ("<a>\u{1}</a>", Malformed),
        ("<a b='1' b='2'/>", Malformed),
        ("<a b='<'/>", Malformed),
        ("<a>&unknown;</a>", Malformed),
        ("<a>&#0;</a>", Malformed),
        ("<a>& </a>", Malformed),
        ("<a>]]></a>", Malformed),
        ("<a b='1'c='2'/>", Malformed),
        ("<1a/>", Malformed),
        ("<a><!-- a -- b --></a>", Malformed),
        ("<a/><?xml version='1.0'?>", Malformed),
        ("<?xml version='1.0' encoding='latin1'?><a/>", Unsupported),
        ("", Malformed),
        ("<a:b:c/>", Malformed),
    ];
    for (xml, kind) in cases {
        let e = x2j_err(xml);
        assert_eq!(e.kind(), *kind, "{xml}: {e}");
    }
    let e = x2j_with("<a>\n  <b>\u{0}</b></a>", &XmlToJsonOptions::default()).unwrap_err();
    let p = e.position().expect("position");
    assert_eq!((p.line, p.column, p.offset), (2, 6, 9));
    // invalid UTF-8
    let mut out = Vec::new();
    let e = xml_to_json(b"<a>\xff</a>", &XmlToJsonOptions::default(), &mut out).unwrap_err();
    assert_eq!(e.kind(), Malformed);
    assert!(out.is_empty());
}

#[test]
fn limits() {
    use TranslateErrorKind::TooLarge;
    let mut o = XmlToJsonOptions::default();
    o.limits.max_depth = 3;
    assert_eq!(
        x2j_with("<a><b><c/></b></a>", &o).unwrap(),
        r#"{"a":{"b":{"c":""}}}"#
    );
    assert_eq!(
        x2j_with("<a><b><c><d/></c></b></a>", &o)
            .unwrap_err()
            .kind(),
        TooLarge
    );
    let mut o = XmlToJsonOptions::default();
    o.limits.max_text_len = 4;
    assert_eq!(x2j_with("<a>12345</a>", &o).unwrap_err().kind(), TooLarge);
    o.limits.max_attributes = 1;
    assert_eq!(
        x2j_with("<a x='1' y='2'/>", &o).unwrap_err().kind(),
        TooLarge
    );
    let mut o = XmlToJsonOptions::default();
    o.limits.max_total_bytes = 10;
    assert_eq!(
        x2j_with("<a>12345678</a>", &o).unwrap_err().kind(),
        TooLarge
    );
    let l = Limits {
        max_depth: 2,
        ..Default::default()
    };
    assert_eq!(validate_json(b"[[1]]", &l), Ok(()));
    assert_eq!(validate_json(b"[[[1]]]", &l).unwrap_err().kind(), TooLarge);
}

#[test]
fn attribute_keys_from_long_namespace_uris_are_capped() {
    use TranslateErrorKind::TooLarge;
    // An unmapped namespace becomes `@{uri}local` in every attribute's key: a long URI
    // (an attribute value, up to max_text_len) must not be copied out unchecked.
    let uri = "u".repeat(5000);
    for uri in [uri.clone(), uri.replace('u', "\\\\")] {
        let attrs: String = (0..50).map(|i| format!(" a:b{i}=''")).collect();
        let doc = format!("<r xmlns:a='{uri}'><e{attrs}/></r>");
        let e = x2j_with(&doc, &XmlToJsonOptions::default()).unwrap_err();
        assert_eq!(e.kind(), TooLarge, "{e}");
    }
    // Short URIs are fine, and the output bound is checked attribute by attribute.
    let attrs: String = (0..50).map(|i| format!(" a:b{i}=''")).collect();
    let doc = format!("<r xmlns:a='urn:x'><e{attrs}/></r>");
    assert!(x2j_with(&doc, &XmlToJsonOptions::default()).is_ok());
    let mut o = XmlToJsonOptions::default();
    o.limits.max_output_bytes = 300;
    assert_eq!(x2j_with(&doc, &o).unwrap_err().kind(), TooLarge);
}

#[test]
fn json_to_xml_bounds_attributes_and_namespaces() {
    use TranslateErrorKind::TooLarge;
    let o = JsonToXmlOptions::default();
    let n = o.limits.max_attributes;
    let attrs = |count: usize| -> String {
        (0..count)
            .map(|i| format!("\"@a{i}\":0"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Each attribute is checked against the others: their number is bounded.
    assert!(j2x_with(&format!("{{\"r\":{{{}}}}}", attrs(n)), &o).is_ok());
    let e = j2x_with(&format!("{{\"r\":{{{}}}}}", attrs(n + 1)), &o).unwrap_err();
    assert_eq!(e.kind(), TooLarge, "{e}");
    // Every new namespace URI is a declaration on the root, searched for every name.
    let elems = |count: usize| -> String {
        (0..count)
            .map(|i| format!("\"{{urn:n{i}}}x\":0"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert!(j2x_with(&format!("{{\"r\":{{{}}}}}", elems(n)), &o).is_ok());
    let e = j2x_with(&format!("{{\"r\":{{{}}}}}", elems(n + 1)), &o).unwrap_err();
    assert_eq!(e.kind(), TooLarge, "{e}");
}

#[test]
fn json_side_checks() {
    let l = Limits::default();
    assert_eq!(
        validate_json(br#"{"a":1,"a":2}"#, &l).unwrap_err().kind(),
        TranslateErrorKind::Malformed
    );
    assert_eq!(
        validate_json(br#"{"a":1,"\u0061":2}"#, &l)
            .unwrap_err()
            .kind(),
        TranslateErrorKind::Malformed
    );
    assert!(validate_json(br#"["\ud800"]"#, &l).is_err());
    assert!(validate_json(br#"["\ud83d\ude00"]"#, &l).is_ok());
    let o = JsonToXmlOptions::default();
    for bad in [
        r#"{"a b":"1"}"#,
        r#"{"r":{"1x":"1"}}"#,
        r#"{"r":{"@xmlns:p":"u"}}"#,
        r#"{"r":{"@{}xmlns":"urn:evil","x":"1"}}"#,
        r#"{"r":{"@{http://www.w3.org/2000/xmlns/}p":"urn:evil"}}"#,
        r##"{"r":{"#foo":"1"}}"##,
        r#"{"r":[[1]]}"#,
        r#"[1]"#,
        r#"{"a":1,"b":2}"#,
        r#"{"r":"\u0000"}"#,
        r#"{"r":{"@a":{"x":1}}}"#,
    ] {
        let e = j2x_with(bad, &o).unwrap_err();
        assert_eq!(e.kind(), TranslateErrorKind::Invalid, "{bad}: {e}");
    }
    // configured root name wraps any value
    let o = JsonToXmlOptions {
        root: Some("Req".into()),
        xml_declaration: false,
        ..Default::default()
    };
    assert_eq!(
        j2x_with(r#"{"a":1,"b":[2,3]}"#, &o).unwrap(),
        "<Req><a>1</a><b>2</b><b>3</b></Req>"
    );
    assert_eq!(j2x_with(r#""x""#, &o).unwrap(), "<Req>x</Req>");
}

#[test]
fn soap_payloads_with_mixed_content_read_as_documents_do() {
    let xo = XmlToJsonOptions::default();
    for payload in [
        "<r>ok<x>1</x></r>",
        "<r><x/>tail</r>",
        "<r>a<x>1</x>b<y/>c</r>",
    ] {
        let env = format!(
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{payload}</s:Body></s:Envelope>"
        );
        let msg = soap::unwrap(env.as_bytes(), &xo).unwrap();
        let json = String::from_utf8(msg.json).unwrap();
        assert_eq!(json, x2j(payload), "{payload}");
    }
}

#[test]
fn soap_roundtrip_and_fault() {
    let mut opts = soap::SoapWrapOptions::default();
    opts.json.namespaces.insert("urn:svc".into(), "m".into());
    opts.action = Some("urn:svc/Get".into());
    opts.header = Some(br#"{"m:Token":"abc"}"#.to_vec());
    for v in [soap::SoapVersion::V11, soap::SoapVersion::V12] {
        let req = soap::wrap(br#"{"m:Get":{"m:Id":"0042"}}"#, v, &opts).unwrap();
        let mut xo = XmlToJsonOptions::default();
        xo.namespaces.insert("urn:svc".into(), "m".into());
        let msg = soap::unwrap(&req.body, &xo).unwrap();
        assert_eq!(msg.version, v);
        assert_eq!(
            String::from_utf8(msg.json).unwrap(),
            r#"{"m:Get":{"m:Id":"0042"}}"#
        );
        match v {
            soap::SoapVersion::V11 => {
                assert_eq!(req.content_type, "text/xml; charset=utf-8");
                assert_eq!(req.soap_action.as_deref(), Some("\"urn:svc/Get\""));
            }
            soap::SoapVersion::V12 => {
                assert!(req.content_type.starts_with("application/soap+xml"));
                assert!(req.content_type.contains("action=\"urn:svc/Get\""));
                assert_eq!(req.soap_action, None);
            }
        }
        let fault = soap::SoapFault {
            version: v,
            code: "Client".into(),
            subcodes: vec![],
            reason: "bad <id>".into(),
            lang: None,
            actor: None,
            node: None,
            detail: Some(serde_json::json!({"m:Err": {"@code": "E1", "#text": "x"}})),
        };
        let xml = soap::fault_to_xml(&fault, &opts).unwrap();
        match soap::unwrap(&xml, &xo) {
            Err(soap::UnwrapError::Fault(f)) => {
                assert_eq!(f.version, v);
                assert_eq!(f.reason, "bad <id>");
                assert_eq!(
                    f.code_local(),
                    if v == soap::SoapVersion::V11 {
                        "Client"
                    } else {
                        "Sender"
                    }
                );
                assert_eq!(
                    f.detail,
                    Some(serde_json::json!({"m:Err": {"@code": "E1", "#text": "x"}}))
                );
            }
            other => panic!("expected fault, got {other:?}"),
        }
    }
    // not an envelope
    match soap::unwrap(b"<a/>", &XmlToJsonOptions::default()) {
        Err(soap::UnwrapError::Translate(e)) => {
            assert_eq!(e.kind(), TranslateErrorKind::Unsupported)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn array_paths_match_keys_of_unmapped_namespaces_holding_slashes() {
    // `{uri}local` keys contain '/', so the path's last segment is not the key.
    let o = arrays(&["//{http://x/y}Item", "/r/b"]);
    let xml = r#"<r xmlns:p="http://x/y"><p:Item>a</p:Item><b>1</b><c><p:Item>z</p:Item></c></r>"#;
    assert_eq!(
        x2j_with(xml, &o).unwrap(),
        r#"{"r":{"{http://x/y}Item":["a"],"b":["1"],"c":{"{http://x/y}Item":["z"]}}}"#
    );
}

#[test]
fn soap_11_fault_codes_refined_with_dots_keep_their_class() {
    let f = |version, code: &str| soap::SoapFault {
        version,
        code: code.into(),
        subcodes: Vec::new(),
        reason: String::new(),
        lang: None,
        actor: None,
        node: None,
        detail: None,
    };
    use soap::SoapVersion::{V11, V12};
    assert_eq!(f(V11, "soap:Client.Authentication").code_local(), "Client");
    assert_eq!(f(V11, "Server.Database").code_local(), "Server");
    assert_eq!(f(V11, "soap:Client").code_local(), "Client");
    assert_eq!(f(V12, "env:Sender").code_local(), "Sender");
}
