//! Adapters as data (`adapters/<system>/`): the shipped adapters load with every fixture
//! passing; a canonical dossier becomes exactly the national DongBoHoSoMC shape, on its own
//! and through the proxy; a JSON client calls a SOAP agency through the `hotich` adapter; an
//! edXML packet survives a round trip through the gateway; mistakes in adapters and in routes
//! using them are load errors with key paths.

use crate::support::*;
use lienthong::adapter::{self, Format};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn adapters_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters")
}

fn shared_sample(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [here.join("../shared"), here.join("../../shared")]
        .into_iter()
        .map(|s| s.join("domain/samples/constructed").join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("shared sample {name} not found"))
}

fn json_file(p: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("_comment");
    v
}

#[test]
fn shipped_adapters_load_and_every_fixture_passes() {
    let (a, problems) = adapter::load_dir(&adapters_dir());
    assert!(problems.is_empty(), "{problems:#?}");
    for system in ["dvcqg", "edxml", "hotich"] {
        let s = a.systems.get(system).unwrap_or_else(|| panic!("{system}"));
        assert!(s.fixtures >= 3, "{system} ran {} fixtures", s.fixtures);
    }
    for op in [
        "DongBoHoSoMC",
        "CapNhatTienDoHoSoMC",
        "LayThuTuc",
        "LayDanhSachTTHC",
        "LayDanhMucCoQuan",
        "ThanhToanInit",
    ] {
        assert!(a.operation("dvcqg", op).is_some(), "{op}");
    }
}

#[test]
fn canonical_dossier_becomes_exactly_the_national_dongbohosomc_shape() {
    let want = json_file(&shared_sample("dvcqg-dongbohosomc-request.json"));
    // The fixture the adapter checks against is that sample, unchanged.
    let fixture = json_file(&adapters_dir().join("dvcqg/fixtures/dongbohosomc-request.json"));
    assert_eq!(fixture, want);

    let (a, _) = adapter::load_dir(&adapters_dir());
    let op = a.operation("dvcqg", "DongBoHoSoMC").unwrap();
    let input = std::fs::read(adapters_dir().join("dvcqg/fixtures/dossier.json")).unwrap();
    // The input is a valid canonical dossier (what intake accepts).
    let d: lienthong::exchange::dossier::Dossier = serde_json::from_slice(&input).unwrap();
    lienthong::exchange::dossier::validate(&d, &lienthong::exchange::dossier::NoCatalogue).unwrap();

    let ctx = [(
        "session".to_string(),
        "3f5c0b7e-0000-0000-0000-000000000000".to_string(),
    )]
    .into();
    let out = op.request.as_ref().unwrap().run(&input, &ctx).unwrap();
    assert_eq!(out.content_type, "application/json");
    let got: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(got, want);
    // Member order follows the national sample, not the alphabet.
    let text = String::from_utf8(out.body).unwrap();
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("session") < pos("madonvi") && pos("madonvi") < pos("service"));
    assert!(pos("MaHoSo") < pos("MaTTHC") && pos("TrangThaiHoSo") < pos("NgayTra"));
}

#[test]
fn missing_and_unmappable_fields_name_the_field() {
    let (a, _) = adapter::load_dir(&adapters_dir());
    let step = a
        .operation("dvcqg", "DongBoHoSoMC")
        .unwrap()
        .request
        .clone()
        .unwrap();
    let ctx = [("session".to_string(), "secret-session".to_string())].into();
    let e = step
        .run(
            br#"{"receiving_unit":"000.00.01.H22","code":"x","status":2,"applicant":{}}"#,
            &ctx,
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("procedure_code"), "{msg}");
    assert!(!msg.contains("secret-session"), "{msg}");
    // A missing context value is named, never shown.
    let e = step
        .run(
            std::fs::read(adapters_dir().join("dvcqg/fixtures/dossier.json"))
                .unwrap()
                .as_slice(),
            &Default::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("session"), "{e}");
}

#[test]
fn payment_checksum_is_the_sha256_of_the_fields_as_sent() {
    let (a, _) = adapter::load_dir(&adapters_dir());
    let step = a
        .operation("dvcqg", "ThanhToanInit")
        .unwrap()
        .request
        .clone()
        .unwrap();
    let ctx = [
        ("partner_code".to_string(), "P1".to_string()),
        ("payment_secret".to_string(), "s3cret".to_string()),
    ]
    .into();
    let input = br#"{"reference":"R1","amount":1000,"description":"D","at":"2025-07-15T01:30:00Z","client_ip":"10.0.0.1","dossier_code":"X","unit":"U"}"#;
    let out = step.run(input, &ctx).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["ThoiGianGD"], "20250715083000", "UTC+7 local time");
    let joined = "INIT|1.0.6|P1|R1|1000|PAY|1|1|vi-VN|VND|PAYMENT|D|20250715083000|10.0.0.1|s3cret";
    let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, joined.as_bytes());
    let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["MaXacThuc"], hex);
    assert!(!String::from_utf8_lossy(&out.body).contains("s3cret"));
}

/// A mock upstream that records every body it receives and answers `reply(body)`.
fn recording(
    reply: impl Fn(&[u8]) -> (u16, &'static str, Vec<u8>) + Send + Sync + 'static,
) -> (Handler, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let h: Handler = Arc::new(move |s: &Seen| {
        s2.lock().unwrap().push(s.clone());
        let (status, ctype, body) = reply(&s.body);
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", ctype.parse().unwrap());
        Action::Respond(r)
    });
    (h, seen)
}

fn adapter_route(upstream: &MockUpstream, name: &str, system: &str, op: &str, ctx: &str) -> String {
    format!(
        r#"
[adapters]
dir = "{dir}"
[upstreams.{name}]
endpoints = ["{url}"]
[upstreams.{name}.retry]
attempts = 1
[[routes]]
name = "{name}"
path_prefix = "/{name}"
strip_prefix = true
upstream = "{name}"
auth = {{ anonymous = true }}
[routes.translate]
adapter = "{system}"
operation = "{op}"
context = {{ {ctx} }}
"#,
        dir = adapters_dir().display(),
        url = upstream.url(),
    )
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn dossier_through_the_proxy_reaches_dvcqg_in_the_national_shape() {
    let (h, seen) = recording(|_| {
        (
            200,
            "application/json",
            r#"{"error_code":0,"message":"Đồng bộ thành công"}"#
                .as_bytes()
                .to_vec(),
        )
    });
    let up = MockUpstream::start(h).await;
    let cfg = base_config(&adapter_route(
        &up,
        "dvcqg",
        "dvcqg",
        "DongBoHoSoMC",
        r#"session = "3f5c0b7e-0000-0000-0000-000000000000""#,
    ));
    let gw = TestGateway::start(&cfg).await;
    let dossier = std::fs::read(adapters_dir().join("dvcqg/fixtures/dossier.json")).unwrap();
    let r = raw(gw.addr(), &post("/dvcqg/sync", &dossier)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The answer went through the response mapping, with a Content-Length that fits it.
    assert_eq!(
        r.json(),
        serde_json::json!({"ok": true, "code": "0", "exists": false, "exists_said": false, "message": "Đồng bộ thành công"})
    );
    assert_eq!(
        r.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    let s = seen.lock().unwrap()[0].clone();
    let got: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        got,
        json_file(&shared_sample("dvcqg-dongbohosomc-request.json"))
    );
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert_eq!(
        s.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(s.body.len())
    );

    // A dossier that does not fit is refused before anything is sent, naming the field.
    let r = raw(
        gw.addr(),
        &post(
            "/dvcqg/sync",
            br#"{"receiving_unit":"u","status":2,"applicant":{}}"#,
        ),
    )
    .await;
    assert_error(&r, 422, "unmappable");
    assert!(r.json()["message"].as_str().unwrap().contains("code"));
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Not JSON at all: 400.
    let r = raw(gw.addr(), &post("/dvcqg/sync", b"{\"a\":")).await;
    assert_error(&r, 400, "untranslatable");
}

const TRACUU_OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:TraCuuResponse xmlns:m="urn:sandbox:hotich"><m:SoDinhDanh>022090000001</m:SoDinhDanh><m:HoTen>Nguyễn Văn A</m:HoTen></m:TraCuuResponse></soap:Body></soap:Envelope>"#;
const TRACUU_FAULT: &str = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>Không tìm thấy</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;

#[tokio::test]
async fn json_client_calls_the_soap_agency_through_the_hotich_adapter() {
    let (h, seen) = recording(|body| {
        if String::from_utf8_lossy(body).contains("000000000000") {
            (500, "text/xml; charset=utf-8", TRACUU_FAULT.into())
        } else if String::from_utf8_lossy(body).contains("111111111111") {
            (200, "text/xml; charset=utf-8", Vec::new())
        } else {
            (200, "text/xml; charset=utf-8", TRACUU_OK.into())
        }
    });
    let up = MockUpstream::start(h).await;
    let cfg = base_config(&adapter_route(&up, "hotich", "hotich", "TraCuu", ""));
    let gw = TestGateway::start(&cfg).await;
    let r = raw(
        gw.addr(),
        &post("/hotich/ws", br#"{"so_dinh_danh":"022090000001"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"so_dinh_danh": "022090000001", "ho_ten": "Nguyễn Văn A"})
    );
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(
        s.header("soapaction"),
        Some("\"urn:sandbox:hotich#TraCuu\"")
    );
    assert_eq!(s.header("content-type"), Some("text/xml; charset=utf-8"));
    let sent = adapter::as_json(Format::Soap11, &s.body).unwrap();
    let body = &sent["{http://schemas.xmlsoap.org/soap/envelope/}Envelope"]
        ["{http://schemas.xmlsoap.org/soap/envelope/}Body"]["{urn:sandbox:hotich}TraCuu"];
    assert_eq!(body["{urn:sandbox:hotich}SoDinhDanh"], "022090000001");
    // The built-in request id reaches the mapping ($ctx.request_id).
    let rid = r.header("x-request-id").unwrap();
    assert_eq!(body["{urn:sandbox:hotich}MaYeuCau"], rid);

    // The agency's fault becomes a JSON error; bad input is refused before the call.
    let r = raw(
        gw.addr(),
        &post("/hotich/ws", br#"{"so_dinh_danh":"000000000000"}"#),
    )
    .await;
    assert_error(&r, 422, "upstream_fault");
    // An empty answer where the operation defines one is the agency's failure, not an
    // empty 200 passed on.
    let r = raw(
        gw.addr(),
        &post("/hotich/ws", br#"{"so_dinh_danh":"111111111111"}"#),
    )
    .await;
    assert_error(&r, 502, "upstream_untranslatable");
    let r = raw(gw.addr(), &post("/hotich/ws", br#"{"cccd":"1"}"#)).await;
    assert_error(&r, 422, "unmappable");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("so_dinh_danh"));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn edxml_packet_round_trips_through_the_gateway() {
    // The counterpart answers with the packet it received, unchanged.
    let (h, seen) = recording(|body| (200, "application/xml", body.to_vec()));
    let up = MockUpstream::start(h).await;
    let cfg = base_config(&adapter_route(&up, "axis", "edxml", "edoc_out", ""));
    let gw = TestGateway::start(&cfg).await;
    let packet = std::fs::read(shared_sample("edxml-edoc-sample.edxml")).unwrap();
    let json = std::fs::read(adapters_dir().join("edxml/fixtures/edoc.json")).unwrap();
    let r = raw(gw.addr(), &post("/axis/sendEdoc", &json)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // What went out is the standard's packet (same names, namespaces, order and text)…
    let sent = seen.lock().unwrap()[0].body.clone();
    assert_eq!(
        adapter::as_json(Format::Xml, &sent).unwrap(),
        adapter::as_json(Format::Xml, &packet).unwrap()
    );
    assert!(String::from_utf8_lossy(&sent).contains("http://www.mic.gov.vn/TBT/QCVN_102_2016"));
    // …and what came back is the JSON the client sent.
    let back: serde_json::Value = r.json();
    let mine: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, mine);
    // The attachment kept its base64 content.
    assert!(String::from_utf8_lossy(&r.body).contains("JVBERi0xLjQK"));
}

#[test]
fn adapter_mistakes_are_load_errors_with_key_paths() {
    let dir = scratch_dir();
    let sys = dir.join("broken");
    std::fs::create_dir_all(sys.join("mappings")).unwrap();
    std::fs::write(
        sys.join("adapter.toml"),
        r#"
system = "broken"
version = "1"
[operations.A]
request = { input = "json", output = "yaml", mapping = "mappings/a.toml" }
[operations.B]
request = { input = "json", output = "json", mapping = "mappings/b.toml" }
[[fixtures]]
step = "B.request"
input = "in.json"
expected = "out.json"
[[fixtures]]
step = "C.request"
input = "in.json"
expected = "out.json"
"#,
    )
    .unwrap();
    std::fs::write(
        sys.join("mappings/b.toml"),
        "[[field]]\nto = \"x\"\nhook = \"sha512\"\nargs = [\"y\"]\n[[field]]\nto = \"z\"\nfrom = \"w\"\ntype = \"date\"\n[[field]]\nto = \"q\"\nfrom = \"y\"\nconst = \"c\"\n",
    )
    .unwrap();
    std::fs::write(sys.join("in.json"), r#"{"y": "1"}"#).unwrap();
    std::fs::write(sys.join("out.json"), r#"{"x": "2"}"#).unwrap();
    let (_, problems) = adapter::load_dir(&dir);
    let all = format!("{problems:#?}");
    for needle in [
        "broken/adapter.toml: operations.A.request.output",
        "yaml",
        "operations.A.request.mapping",
        "field[0].hook",
        "sha512",
        "field[1].type",
        "date",
        "field[2]",
        "mutually exclusive",
        "fixtures[1]",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in {all}");
    }

    // A fixture whose expected output is wrong fails the load, naming the difference.
    std::fs::write(
        sys.join("adapter.toml"),
        "system = \"broken\"\nversion = \"1\"\n[operations.B]\nrequest = { input = \"json\", output = \"json\", mapping = \"mappings/b.toml\" }\n[[fixtures]]\nstep = \"B.request\"\ninput = \"in.json\"\nexpected = \"out.json\"\n",
    )
    .unwrap();
    std::fs::write(
        sys.join("mappings/b.toml"),
        "[[field]]\nto = \"x\"\nfrom = \"y\"\n",
    )
    .unwrap();
    let (a, problems) = adapter::load_dir(&dir);
    assert!(a.systems.is_empty());
    let all = format!("{problems:#?}");
    assert!(all.contains("fixtures[0]") && all.contains(".x"), "{all}");
}

/// XML's element order is part of the document: a fixture whose expected XML has the
/// same elements in another order fails the load, naming where; JSON's member order is
/// not checked.
#[test]
fn xml_fixtures_check_element_order() {
    let dir = scratch_dir();
    let sys = dir.join("hotich");
    for sub in ["", "mappings", "fixtures"] {
        std::fs::create_dir_all(sys.join(sub)).unwrap();
    }
    let src = adapters_dir().join("hotich");
    for f in [
        "adapter.toml",
        "mappings/tracuu.request.toml",
        "mappings/tracuu.response.toml",
        "fixtures/tracuu.json",
        "fixtures/tracuu-bad.json",
        "fixtures/tracuu-request.xml",
        "fixtures/tracuu-response.xml",
        "fixtures/tracuu-fault.xml",
    ] {
        std::fs::copy(src.join(f), sys.join(f)).unwrap();
    }
    // The JSON fixture's members in the other order than the mapping writes them
    // (`so_dinh_danh`, then `ho_ten`): still passes.
    let shipped = std::fs::read_to_string(src.join("fixtures/tracuu.out.json")).unwrap();
    assert!(shipped.find("so_dinh_danh").unwrap() < shipped.find("ho_ten").unwrap());
    let out: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    std::fs::write(
        sys.join("fixtures/tracuu.out.json"),
        format!(
            r#"{{"ho_ten": {}, "so_dinh_danh": {}}}"#,
            out["ho_ten"], out["so_dinh_danh"]
        ),
    )
    .unwrap();
    let (a, problems) = adapter::load_dir(&dir);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(a.systems.len(), 1);

    // The expected request with its two elements swapped: refused.
    let xml = std::fs::read_to_string(src.join("fixtures/tracuu-request.xml")).unwrap();
    let swapped = xml
        .replace("<m:SoDinhDanh>022090000001</m:SoDinhDanh>", "@@")
        .replace(
            "<m:MaYeuCau></m:MaYeuCau>",
            "<m:SoDinhDanh>022090000001</m:SoDinhDanh>",
        )
        .replace("@@", "<m:MaYeuCau></m:MaYeuCau>");
    assert_ne!(swapped, xml);
    std::fs::write(sys.join("fixtures/tracuu-request.xml"), swapped).unwrap();
    let (a, problems) = adapter::load_dir(&dir);
    assert!(a.systems.is_empty());
    let all = format!("{problems:#?}");
    assert!(
        all.contains("fixtures[0]") && all.contains("members in the order"),
        "{all}"
    );
    assert!(
        all.contains("MaYeuCau") && all.contains("SoDinhDanh"),
        "{all}"
    );
}

#[test]
fn routes_naming_missing_operations_or_context_are_config_errors() {
    let dir = scratch_dir();
    let cfg = format!(
        r#"
[adapters]
dir = "{}"
[upstreams.u]
endpoints = ["http://127.0.0.1:9"]
[[routes]]
name = "a"
path_prefix = "/a"
upstream = "u"
auth = {{ anonymous = true }}
translate = {{ adapter = "dvcqg", operation = "NoSuchOp" }}
[[routes]]
name = "b"
path_prefix = "/b"
upstream = "u"
auth = {{ anonymous = true }}
translate = {{ adapter = "dvcqg", operation = "LayThuTuc" }}
[[routes]]
name = "c"
path_prefix = "/c"
upstream = "u"
auth = {{ anonymous = true }}
translate = {{ adapter = "nope", operation = "X", request = "json_to_xml" }}
"#,
        adapters_dir().display()
    );
    let p = dir.join("bad.toml");
    std::fs::write(&p, cfg).unwrap();
    let e = lienthong::config::Config::load(&p).unwrap_err().to_string();
    for needle in [
        "routes[0].translate.operation",
        "NoSuchOp",
        "routes[1].translate.context.madonvi",
        "routes[1].translate.context.session",
        "routes[2].translate",
        "nope",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

/// A JSON client sends an edXML packet to the sandbox's document axis through the `edxml`
/// adapter; the axis accepts it as a well-formed QCVN 102:2016 packet, and what it holds is
/// the standard's packet.
#[tokio::test]
async fn json_edoc_reaches_the_sandbox_edxml_axis_as_the_standard_packet() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sb_addr = l.local_addr().unwrap();
    let sb = Arc::new(lienthong::sandbox::Sandbox::default());
    tokio::spawn(lienthong::sandbox::serve(l, sb.clone()));
    let cfg = base_config(&format!(
        r#"
[adapters]
dir = "{dir}"
[upstreams.sandbox]
endpoints = ["http://{sb_addr}"]
[[routes]]
name = "axis"
path_prefix = "/axis"
rewrite_prefix = "/edxml"
upstream = "sandbox"
auth = {{ anonymous = true }}
translate = {{ adapter = "edxml", operation = "send" }}
"#,
        dir = adapters_dir().display(),
    ));
    let gw = TestGateway::start(&cfg).await;
    let json = std::fs::read(adapters_dir().join("edxml/fixtures/edoc.json")).unwrap();
    let r = raw(gw.addr(), &post("/axis/sendEdoc", &json)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "OK", "{}", r.json());
    let doc_id = r.json()["DocId"].as_str().unwrap().to_string();

    // The axis hands the packet back base64-encoded: it is the standard's packet.
    let req = format!(
        "POST /edxml/getEdoc HTTP/1.1\r\nHost: t\r\ndocid: {doc_id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let got = raw(sb_addr, req.as_bytes()).await;
    use base64::Engine;
    let packet = base64::engine::general_purpose::STANDARD
        .decode(got.json()["data"].as_str().unwrap())
        .unwrap();
    let sample = std::fs::read(shared_sample("edxml-edoc-sample.edxml")).unwrap();
    assert_eq!(
        adapter::as_json(Format::Xml, &packet).unwrap(),
        adapter::as_json(Format::Xml, &sample).unwrap()
    );
    // Something that is not an edXML packet is refused by the axis.
    let r = raw(gw.addr(), &post("/axis/sendEdoc", br#"{"note": "x"}"#)).await;
    assert_eq!(r.json()["status"], "FAIL", "{}", r.json());
}

#[test]
fn exchange_adapter_settings_are_checked_with_key_paths() {
    let dir = scratch_dir();
    let cfg = format!(
        r#"
[adapters]
dir = "{}"
[upstreams.u]
endpoints = ["http://127.0.0.1:9"]
[exchange]
db = "x.db"
destinations = ["a", "b", "c"]
catalogue = "missing-lookup"
formats = {{ xml = "edxml/send", bad = "nosuchformat" }}
[exchange.deliveries.a]
upstream = "u"
adapter = "dvcqg"
[exchange.deliveries.b]
upstream = "u"
adapter = "dvcqg"
dossier_operation = "DongBoHoSoMC"
events = ["step", "birthday"]
[exchange.deliveries.c]
upstream = "u"
event_operation = "TienDoXuLy"
"#,
        adapters_dir().display()
    );
    let p = dir.join("bad.toml");
    std::fs::write(&p, cfg).unwrap();
    let e = lienthong::config::Config::load(&p).unwrap_err().to_string();
    for needle in [
        "exchange.catalogue",
        "exchange.formats.xml",
        "must produce JSON",
        "exchange.formats.bad",
        "exchange.deliveries.a.dossier_operation",
        "exchange.deliveries.b.events[1]",
        "exchange.deliveries.b.context.session",
        "exchange.deliveries.c",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

/// A reload re-reads the adapters. Routes pick up an edited mapping; the exchange (which
/// cannot change on reload) refuses one its deliveries use, even without a version bump,
/// instead of silently keeping the old mapping; an unchanged reload is accepted.
#[tokio::test]
async fn reload_notices_edited_mappings() {
    let dir = scratch_dir();
    let copy = dir.join("adapters");
    for sub in ["", "dvcqg", "dvcqg/mappings", "dvcqg/fixtures"] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
    }
    for sub in ["dvcqg", "dvcqg/mappings", "dvcqg/fixtures"] {
        for e in std::fs::read_dir(adapters_dir().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, copy.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let cfg = base_config(&format!(
        r#"
[adapters]
dir = "{dir}"
[upstreams.u]
endpoints = ["http://127.0.0.1:9"]
[exchange]
db = "exchange.db"
destinations = ["dvcqg"]
auth = {{ anonymous = true }}
[exchange.deliveries.dvcqg]
upstream = "u"
adapter = "dvcqg"
dossier_operation = "DongBoHoSoMC"
context = {{ session = "s" }}
"#,
        dir = copy.display()
    ));
    let gw = TestGateway::start(&cfg).await;
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "an unchanged reload is accepted: {body}");

    // Same version, different mapping: a description edit is enough to change the content.
    let m = copy.join("dvcqg/mappings/dongbohosomc.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text.replacen("description = \"", "description = \"(edited) ", 1),
    )
    .unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("exchange"), "{body}");
}

/// A route's login session that the counterpart refuses (here DVCQG's "session expired",
/// which the operation maps to `ok: false`) is dropped: the next call logs in again, as
/// deliveries do, instead of failing until the session's lifetime runs out.
#[tokio::test]
async fn a_refused_route_session_is_renewed_on_the_next_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let logins = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::start(dvcqg_with_logins(logins.clone())).await;
    std::env::set_var("LIENTHONG_TEST_ROUTE_DVCQG_PASSWORD", "mat-khau-thu");
    let cfg = base_config(&adapter_route(
        &up,
        "dvcqg",
        "dvcqg",
        "DongBoHoSoMC",
        r#"session = { login = { upstream = "dvcqg", path = "/login", username = "000.00.01.H22", password = { env = "LIENTHONG_TEST_ROUTE_DVCQG_PASSWORD" } } }"#,
    ));
    let gw = TestGateway::start(&cfg).await;
    let dossier = std::fs::read(adapters_dir().join("dvcqg/fixtures/dossier.json")).unwrap();
    let first = raw(gw.addr(), &post("/dvcqg/sync", &dossier)).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["ok"], false);
    let second = raw(gw.addr(), &post("/dvcqg/sync", &dossier)).await;
    assert_eq!(
        second.json()["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(
        logins.load(Ordering::SeqCst),
        2,
        "one more login after the refusal"
    );
}

/// A refused login (a wrong or rotated password) is not tried again by every caller:
/// counterparts lock accounts after a few failures.
#[tokio::test]
async fn a_refused_login_is_not_retried_by_every_caller() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let logins = Arc::new(AtomicUsize::new(0));
    let seen = logins.clone();
    let up = MockUpstream::start(Arc::new(move |s: &Seen| {
        if s.uri == "/login" {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        Action::Respond(json_response(
            401,
            serde_json::json!({"error_code": 1, "message": "Sai mật khẩu"}),
        ))
    }))
    .await;
    std::env::set_var("LIENTHONG_TEST_ROUTE_DVCQG_WRONG", "sai");
    let cfg = base_config(&adapter_route(
        &up,
        "dvcqg",
        "dvcqg",
        "DongBoHoSoMC",
        r#"session = { login = { upstream = "dvcqg", path = "/login", username = "000.00.01.H22", password = { env = "LIENTHONG_TEST_ROUTE_DVCQG_WRONG" } } }"#,
    ));
    let gw = TestGateway::start(&cfg).await;
    let dossier = std::fs::read(adapters_dir().join("dvcqg/fixtures/dossier.json")).unwrap();
    for _ in 0..5 {
        let r = raw(gw.addr(), &post("/dvcqg/sync", &dossier)).await;
        assert_error(&r, 502, "credentials_unavailable");
    }
    assert_eq!(
        logins.load(Ordering::SeqCst),
        1,
        "one login, then fail fast"
    );
}
