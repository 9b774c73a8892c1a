//! Property test: for documents within the convention, XML → JSON → XML → JSON is stable
//! (the second JSON equals the first).

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Elem {
        name: &'static str,
        attrs: Vec<(&'static str, String)>,
        nil: bool,
        children: Vec<Node>,
    },
}

const NAMES: &[&str] = &["a", "b", "c", "p:d", "q:e"];
const ATTRS: &[&str] = &["x", "y", "p:z", "q:w"];

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 <>&\"'\t\r\néễ😀]{0,8}"
}

fn elem(children: impl Strategy<Value = Vec<Node>>) -> impl Strategy<Value = Node> {
    (
        proptest::sample::select(NAMES),
        proptest::collection::btree_map(proptest::sample::select(ATTRS), text(), 0..3),
        proptest::bool::weighted(0.1),
        children,
    )
        .prop_map(|(name, attrs, nil, children)| Node::Elem {
            name,
            attrs: attrs.into_iter().collect(),
            nil,
            children: if nil { Vec::new() } else { children },
        })
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![text().prop_map(Node::Text), elem(Just(Vec::new()))];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            1 => text().prop_map(Node::Text),
            3 => elem(proptest::collection::vec(inner, 0..5)),
        ]
    })
}

fn esc(s: &str, attr: bool) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' if attr => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn write(n: &Node, out: &mut String, root: bool) {
    match n {
        Node::Text(t) => out.push_str(&esc(t, false)),
        Node::Elem {
            name,
            attrs,
            nil,
            children,
        } => {
            out.push('<');
            out.push_str(name);
            if root {
                out.push_str(
                    " xmlns:p=\"urn:a\" xmlns:q=\"urn:u\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"",
                );
            }
            for (k, v) in attrs {
                out.push_str(&format!(" {k}=\"{}\"", esc(v, true)));
            }
            if *nil {
                out.push_str(" xsi:nil=\"true\"");
            }
            if children.is_empty() {
                out.push_str("/>");
            } else {
                out.push('>');
                for c in children {
                    write(c, out, false);
                }
                out.push_str(&format!("</{name}>"));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn xml_json_xml_json_is_stable(root in elem(proptest::collection::vec(node(), 0..6))) {
        let mut xml = String::new();
        write(&root, &mut xml, true);
        let mut xo = XmlToJsonOptions { strict_repeats: false, ..Default::default() };
        xo.namespaces.insert("urn:a".into(), "a".into());
        let mut jo = JsonToXmlOptions::default();
        jo.namespaces.insert("urn:a".into(), "a".into());

        let mut j1 = Vec::new();
        xml_to_json(xml.as_bytes(), &xo, &mut j1).map_err(|e| TestCaseError::fail(format!("{xml}: {e}")))?;
        let mut x2 = Vec::new();
        json_to_xml(&j1, &jo, &mut x2).map_err(|e| TestCaseError::fail(format!("{}: {e}", String::from_utf8_lossy(&j1))))?;
        let mut j2 = Vec::new();
        xml_to_json(&x2, &xo, &mut j2).map_err(|e| TestCaseError::fail(format!("{}: {e}", String::from_utf8_lossy(&x2))))?;
        prop_assert_eq!(String::from_utf8_lossy(&j1), String::from_utf8_lossy(&j2), "xml={} x2={}", xml, String::from_utf8_lossy(&x2));
    }

    #[test]
    fn never_panics_on_mutated_xml(root in elem(proptest::collection::vec(node(), 0..4)), cut in 0usize..200, byte in any::<u8>()) {
        let mut xml = String::new();
        write(&root, &mut xml, true);
        let mut b = xml.into_bytes();
        if !b.is_empty() {
            let i = cut % b.len();
            b[i] = byte;
            let mut out = Vec::new();
            let _ = xml_to_json(&b, &XmlToJsonOptions::default(), &mut out);
            let _ = xml_to_json(&b[..i], &XmlToJsonOptions::default(), &mut out);
            let _ = soap::unwrap(&b, &XmlToJsonOptions::default());
        }
    }

    #[test]
    fn never_panics_on_arbitrary_json(s in "[\\[\\]{}\",:a-z0-9@#\\\\uéỗ ]{0,40}") {
        let mut out = Vec::new();
        let _ = json_to_xml(s.as_bytes(), &JsonToXmlOptions::default(), &mut out);
        let _ = validate_json(s.as_bytes(), &Limits::default());
    }
}

/// A `\u` escape whose four following bytes split a character is an error, not a
/// panic (the check once sliced the text there).
#[test]
fn a_unicode_escape_cut_inside_a_character_is_an_error() {
    for doc in ["\"\\u1éé\"", "{\"a\":\"\\uéé\"}", "[\"\\u12ỗ\"]"] {
        let mut out = Vec::new();
        assert!(
            json_to_xml(doc.as_bytes(), &JsonToXmlOptions::default(), &mut out).is_err(),
            "{doc}"
        );
        assert!(
            validate_json(doc.as_bytes(), &Limits::default()).is_err(),
            "{doc}"
        );
    }
}
