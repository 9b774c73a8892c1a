//! Conformance corpora: W3C XML test suite, JSONTestSuite, real SOAP messages.
//!
//! The W3C suite is licensed such that extracted files must not be committed, so it is
//! unzipped at test time into a fresh directory under the system temp dir and removed after.

use super::*;
use std::path::{Path, PathBuf};

fn unzip_to_temp(zip: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lienthong-xmlts-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let unzip = std::process::Command::new("unzip")
        .arg("-q")
        .arg("-o")
        .arg(zip)
        .arg("-d")
        .arg(&dir)
        .status();
    let ok = matches!(unzip, Ok(s) if s.success());
    if !ok {
        let st = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])")
            .arg(zip)
            .arg(&dir)
            .status()
            .expect("neither unzip nor python3 available to extract the W3C suite");
        assert!(st.success(), "extracting {} failed", zip.display());
    }
    dir
}

struct W3cTest {
    id: String,
    kind: String,
    file: PathBuf,
    version: String,
    edition: String,
    recommendation: String,
}

/// Reads the sub-catalogues named by `<!ENTITY x SYSTEM "path">` in xmlconf.xml (the
/// catalogue includes them as external entities, which this crate deliberately does not
/// expand) and collects their TEST elements.
fn w3c_tests(root: &Path) -> Vec<W3cTest> {
    let conf = std::fs::read_to_string(root.join("xmlconf.xml")).expect("xmlconf.xml");
    let mut tests = Vec::new();
    for line in conf.lines() {
        let Some(pos) = line.find("SYSTEM \"") else {
            continue;
        };
        if !line.trim_start().starts_with("<!ENTITY") {
            continue;
        }
        let rest = &line[pos + 8..];
        let Some(end) = rest.find('"') else { continue };
        let cat = root.join(&rest[..end]);
        let base = cat.parent().expect("catalogue dir").to_path_buf();
        let text = std::fs::read_to_string(&cat).expect("sub-catalogue");
        let mut r = quick_xml::Reader::from_str(&text);
        loop {
            match r.read_event() {
                Ok(quick_xml::events::Event::Start(e)) | Ok(quick_xml::events::Event::Empty(e))
                    if e.name().as_ref() == "TEST" =>
                {
                    let get = |n: &str| {
                        e.attributes()
                            .flatten()
                            .find(|a| a.key.as_ref() == n)
                            .map(|a| a.value.as_ref().to_string())
                            .unwrap_or_default()
                    };
                    let uri = get("URI");
                    tests.push(W3cTest {
                        id: get("ID"),
                        kind: get("TYPE"),
                        file: base.join(uri),
                        version: get("VERSION"),
                        edition: get("EDITION"),
                        recommendation: get("RECOMMENDATION"),
                    });
                }
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("catalogue {}: {e}", cat.display()),
            }
        }
    }
    tests
}

#[test]
fn w3c_xml_conformance() {
    let zip = shared_dir().join("corpora/xml/xmlts20130923.zip");
    let dir = unzip_to_temp(&zip);
    let tests = w3c_tests(&dir.join("xmlconf"));
    assert!(
        tests.len() > 2000,
        "catalogue parse found only {}",
        tests.len()
    );
    let opts = XmlToJsonOptions {
        strict_repeats: false,
        ..Default::default()
    };
    let mut nwf_nodtd = 0;
    let (mut nwf_total, mut nwf_refused, mut skipped_11, mut skipped_ed) = (0, 0, 0, 0);
    let (mut valid_nodtd, mut valid_nodtd_ok, mut valid_dtd) = (0, 0, 0);
    let mut accepted_not_wf = Vec::new();
    let mut refused_valid = Vec::new();
    let mut out = Vec::new();
    for t in &tests {
        let Ok(bytes) = std::fs::read(&t.file) else {
            panic!("missing test file {} ({})", t.file.display(), t.id);
        };
        out.clear();
        // every document, whatever its type, must be handled without panicking
        let res = xml_to_json(&bytes, &opts, &mut out);
        let is_11 = t.version.contains("1.1") || t.recommendation.ends_with("1.1");
        match t.kind.as_str() {
            "not-wf" => {
                if is_11 {
                    skipped_11 += 1;
                    continue;
                }
                if !t.edition.is_empty() && !t.edition.split_whitespace().any(|e| e == "5") {
                    skipped_ed += 1;
                    continue;
                }
                nwf_total += 1;
                if !bytes.windows(9).any(|w| w == b"<!DOCTYPE") {
                    nwf_nodtd += 1;
                }
                match res {
                    Err(_) => nwf_refused += 1,
                    Ok(()) => accepted_not_wf.push(format!("{} ({})", t.id, t.file.display())),
                }
            }
            "valid" if !is_11 => {
                let has_dtd = bytes.windows(9).any(|w| w == b"<!DOCTYPE");
                if has_dtd {
                    valid_dtd += 1;
                    assert!(res.is_err(), "{}: DOCTYPE accepted", t.id);
                } else {
                    valid_nodtd += 1;
                    match res {
                        Ok(()) => valid_nodtd_ok += 1,
                        Err(e) => refused_valid.push(format!("{}: {e}", t.id)),
                    }
                }
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "W3C: not-wf refused {nwf_refused}/{nwf_total} ({nwf_nodtd} of them without DOCTYPE; skipped: {skipped_11} XML 1.1, {skipped_ed} editions 1-4 only); \
         valid without DOCTYPE accepted {valid_nodtd_ok}/{valid_nodtd}; valid with DOCTYPE refused by policy: {valid_dtd}"
    );
    for r in &refused_valid {
        eprintln!("  valid refused: {r}");
    }
    assert!(
        accepted_not_wf.is_empty(),
        "{} not-wf documents accepted:\n{}",
        accepted_not_wf.len(),
        accepted_not_wf.join("\n")
    );
}

// Recorded i_ (implementation-defined) outcomes of validate_json:
// * accepted (10): all i_number_* files (huge exponents, overflowing/underflowing reals, very
//   big integers) — numbers are kept as literal text, so there is nothing to overflow.
// * rejected (25): every i_string_* / i_object_key_* file with lone or inverted surrogate
//   escapes, invalid/overlong/truncated UTF-8, ISO-8859-1 and UTF-16 (with or without BOM)
//   input; i_structure_UTF-8_BOM_empty_object (a BOM is not JSON); and
//   i_structure_500_nested_arrays (deeper than the default max_depth of 64 → TooLarge).
#[test]
fn json_test_suite() {
    let dir = shared_dir().join("corpora/json/test_parsing");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("test_parsing dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let limits = Limits::default();
    let jopts = JsonToXmlOptions::default();
    let (mut y, mut n, mut i_ok, mut i_err) = (0, 0, Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for p in &entries {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(p).expect("read");
        let r = validate_json(&bytes, &limits);
        // json_to_xml must never panic either
        let mut out = Vec::new();
        let x = json_to_xml(&bytes, &jopts, &mut out);
        if r.is_err() {
            assert!(
                x.is_err(),
                "{name}: json_to_xml accepted what validate_json refused"
            );
        }
        if name.starts_with("y_") {
            y += 1;
            // Deliberate policy deviation: RFC 8259 allows duplicate keys ("names SHOULD be
            // unique") but the gateway refuses them, so these two y_ files must be rejected.
            if name.starts_with("y_object_duplicated_key") {
                if r.is_ok() {
                    failures.push(format!("{name} accepted despite duplicate keys"));
                }
                continue;
            }
            if let Err(e) = r {
                failures.push(format!("{name} rejected: {e}"));
            }
        } else if name.starts_with("n_") {
            n += 1;
            if r.is_ok() {
                failures.push(format!("{name} accepted"));
            }
        } else if name.starts_with("i_") {
            match r {
                Ok(()) => i_ok.push(name),
                Err(_) => i_err.push(name),
            }
        }
    }
    eprintln!("JSONTestSuite: y_={y} n_={n}; i_ accepted: {i_ok:?}; i_ rejected: {i_err:?}");
    assert!(y > 90 && n > 180, "corpus looks incomplete");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn real_soap_messages() {
    let mut files = Vec::new();
    walk(&shared_dir().join("corpora/xml-real"), &mut files);
    files.sort();
    let lenient = XmlToJsonOptions {
        strict_repeats: false,
        ..Default::default()
    };
    let (mut envelopes, mut faults, mut bodies, mut others) = (0, 0, 0, 0);
    for p in &files {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "xml" | "wsdl" | "xsd") {
            continue;
        }
        let bytes = std::fs::read(p).expect("read");
        let name = p.display().to_string();
        // every file of the corpus is well-formed and must translate (lenient repeats)
        let mut out = Vec::new();
        if let Err(e) = xml_to_json(&bytes, &lenient, &mut out) {
            panic!("{name}: {e}");
        }
        let text = String::from_utf8_lossy(&bytes);
        let is_envelope = text.contains(":Envelope")
            && (text.contains(xml_in::SOAP11_NS) || text.contains(xml_in::SOAP12_NS));
        if !is_envelope || ext != "xml" {
            others += 1;
            continue;
        }
        envelopes += 1;
        match soap::unwrap(&bytes, &lenient) {
            Ok(m) => {
                bodies += 1;
                let v: serde_json::Value = serde_json::from_slice(&m.json).expect("json");
                assert!(v.is_object(), "{name}");
            }
            Err(soap::UnwrapError::Fault(f)) => {
                faults += 1;
                assert!(!f.code.is_empty(), "{name}: fault without code");
                assert!(!f.reason.is_empty(), "{name}: fault without reason");
                eprintln!("fault {name}: {} / {} / {:?}", f.code, f.reason, f.subcodes);
            }
            Err(soap::UnwrapError::Translate(e)) => panic!("{name}: {e}"),
        }
    }
    eprintln!("xml-real: {envelopes} envelopes ({bodies} bodies, {faults} faults), {others} other documents");
    assert!(faults >= 6, "expected the 6 fault samples, got {faults}");
    assert!(bodies >= 6);
}

#[test]
fn soap_fault_details() {
    let p = shared_dir().join("corpora/xml-real/node-soap/soap-failure.xml");
    let bytes = std::fs::read(p).expect("read");
    match soap::unwrap(&bytes, &XmlToJsonOptions::default()) {
        Err(soap::UnwrapError::Fault(f)) => {
            assert_eq!(f.version, soap::SoapVersion::V12);
            assert_eq!(f.code, "env:Sender");
            assert_eq!(f.subcodes, vec!["rpc:BadArguments".to_string()]);
            assert_eq!(f.reason, "Processing error");
            assert_eq!(f.lang.as_deref(), Some("en-US"));
            assert!(f.detail.is_some());
        }
        other => panic!("{other:?}"),
    }
    let p = shared_dir().join("corpora/xml-real/savon/response/soap_fault.xml");
    match soap::unwrap(
        &std::fs::read(p).expect("read"),
        &XmlToJsonOptions::default(),
    ) {
        Err(soap::UnwrapError::Fault(f)) => {
            assert_eq!(f.version, soap::SoapVersion::V11);
            assert_eq!(f.code, "soap:Server");
            assert_eq!(f.reason, "Fault occurred while processing.");
            assert_eq!(f.http_status(), 500);
        }
        other => panic!("{other:?}"),
    }
}

/// Throughput probe (run with `cargo test --release -- --ignored --nocapture bench`):
/// compares raw quick-xml event parsing with the full translation on a synthetic record list.
#[test]
#[ignore]
fn bench_throughput() {
    let mut doc = String::from(
        "<?xml version=\"1.0\"?><people xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">",
    );
    let mut i = 0;
    while doc.len() < 1_000_000 {
        doc.push_str(&format!(
            "<person id=\"P-{i:06}\" status=\"active\"><name><given>Jürgen</given><family>Nguyễn &amp; Co</family></name>\
             <birth>1970-01-{:02}</birth><address><street>Main Street {}</street><city>Hillview</city><postcode>{:05}</postcode></address>\
             <phones><phone type=\"home\">+84 24 3825 {:04}</phone><phone type=\"work\">+84 28 3829 {:04}</phone></phones>\
             <note xsi:nil=\"true\"/><amount currency=\"VND\">{}.{:02}</amount></person>",
            1 + i % 28, 1 + i % 250, 10000 + (i * 37) % 89999, i % 10000, (i * 7) % 10000, 100 + (i * 13) % 900, i % 100
        ));
        i += 1;
    }
    doc.push_str("</people>");
    let opts = XmlToJsonOptions {
        arrays: ArrayPaths::new(["/people/person", "//phone"]),
        ..Default::default()
    };
    let iters = 20;
    let t = std::time::Instant::now();
    let mut n = 0usize;
    for _ in 0..iters {
        let mut r = quick_xml::Reader::from_str(&doc);
        loop {
            match r.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => n += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let raw = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let total = bench_xml_to_json(doc.as_bytes(), &opts, iters).expect("translate");
    let conv = t.elapsed().as_secs_f64();
    let mb = (doc.len() * iters) as f64 / 1e6;
    eprintln!(
        "doc {} bytes: raw quick-xml {:.1} MB/s ({n} events), xml_to_json {:.1} MB/s ({total} bytes out), ratio {:.2}",
        doc.len(),
        mb / raw,
        mb / conv,
        raw / conv
    );
}
