//! Translation on the request path: a JSON client calls a SOAP agency service through
//! lienthong and gets JSON back; SOAP faults become JSON errors; bad payloads get the
//! right 4xx; Content-Length and Content-Type follow the translated bodies.

use crate::support::*;
use std::sync::Arc;

const SOAP_OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <m:TraCuuHoTichResponse xmlns:m="urn:hotich">
      <m:SoDinhDanh>001089012345</m:SoDinhDanh>
      <m:HoTen>Nguyễn Văn A</m:HoTen>
      <m:Con><m:HoTen>Nguyễn Văn B</m:HoTen></m:Con>
    </m:TraCuuHoTichResponse>
  </soap:Body>
</soap:Envelope>"#;

const SOAP_FAULT: &str = r#"<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>Số định danh không hợp lệ</faultstring></soap:Fault></soap:Body>
</soap:Envelope>"#;

async fn setup() -> (TestGateway, MockUpstream) {
    let agency = MockUpstream::start(Arc::new(|s: &Seen| {
        let body = String::from_utf8_lossy(&s.body);
        let (status, xml) = if body.contains("000000000000") {
            (500, SOAP_FAULT)
        } else {
            (200, SOAP_OK)
        };
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(xml)));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", "text/xml; charset=utf-8".parse().unwrap());
        Action::Respond(r)
    }))
    .await;
    let cfg = base_config(&format!(
        r#"
[upstreams.hotich]
endpoints = ["{}"]
[upstreams.hotich.retry]
attempts = 1
[[routes]]
name = "hotich"
path_prefix = "/hotich"
strip_prefix = true
upstream = "hotich"
auth = {{ anonymous = true }}
[routes.translate]
request = "soap_wrap"
response = "soap_unwrap"
soap_action = "urn:hotich#TraCuuHoTich"
arrays = ["//m:Con"]
namespaces = {{ "urn:hotich" = "m" }}
"#,
        agency.url()
    ));
    (TestGateway::start(&cfg).await, agency)
}

/// A gateway with one anonymous route `/a` to `up`, translated as `translate` says.
async fn translating(up: &MockUpstream, translate: &str) -> TestGateway {
    let cfg = base_config(&format!(
        "[upstreams.a]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"a\"\nauth = {{ anonymous = true }}\n[routes.translate]\n{translate}\n",
        up.url()
    ));
    TestGateway::start(&cfg).await
}

fn post(body: &str) -> Vec<u8> {
    format!(
        "POST /hotich/ws HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn json_client_calls_a_soap_service_and_gets_json() {
    let (gw, agency) = setup().await;
    let r = raw(
        gw.addr(),
        &post(r#"{"m:TraCuuHoTich":{"m:SoDinhDanh":"001089012345"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    let j = r.json();
    let resp = &j["m:TraCuuHoTichResponse"];
    assert_eq!(
        resp["m:SoDinhDanh"], "001089012345",
        "leading zeros and digits stay a string: {j}"
    );
    assert_eq!(resp["m:HoTen"], "Nguyễn Văn A");
    assert!(
        resp["m:Con"].is_array(),
        "a declared array stays an array with one element: {j}"
    );
    // What the SOAP service received: an envelope with the action, and a length that matches.
    let seen = agency.last();
    assert!(seen.header("content-type").unwrap().starts_with("text/xml"));
    assert_eq!(
        seen.header("soapaction"),
        Some("\"urn:hotich#TraCuuHoTich\"")
    );
    assert_eq!(
        seen.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        seen.body.len()
    );
    let env = String::from_utf8_lossy(&seen.body);
    assert!(
        env.contains("Envelope") && env.contains("001089012345"),
        "{env}"
    );
}

#[tokio::test]
async fn translated_exchanges_are_not_compressed() {
    let (gw, agency) = setup().await;
    let body = r#"{"m:TraCuuHoTich":{"m:SoDinhDanh":"001089012345"}}"#;
    let with = |extra: &str| {
        format!(
            "POST /hotich/ws HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    // The client accepts gzip, but the upstream's answer is to be translated: the
    // upstream is not offered compression.
    let r = raw(gw.addr(), &with("Accept-Encoding: gzip, br\r\n")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(agency.last().header("accept-encoding").is_none());
    // A compressed body to translate is refused, not misread.
    let before = agency.count();
    let r = raw(gw.addr(), &with("Content-Encoding: gzip\r\n")).await;
    assert_error(&r, 415, "unsupported_encoding");
    assert_eq!(agency.count(), before);
}

#[tokio::test]
async fn soap_faults_become_json_errors_and_bad_input_gets_4xx() {
    let (gw, agency) = setup().await;
    let r = raw(
        gw.addr(),
        &post(r#"{"m:TraCuuHoTich":{"m:SoDinhDanh":"000000000000"}}"#),
    )
    .await;
    assert_error(&r, 422, "upstream_fault");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("Số định danh không hợp lệ"));
    let before = agency.count();
    assert_error(
        &raw(gw.addr(), &post(r#"{"a": 1, "a": 2}"#)).await,
        400,
        "untranslatable",
    );
    assert_error(
        &raw(gw.addr(), &post(r#"{"a": "#)).await,
        400,
        "untranslatable",
    );
    assert_eq!(
        agency.count(),
        before,
        "nothing untranslatable reached the upstream"
    );
}

/// The client's SOAPAction describes the client's body, not the translated one: a SOAP
/// 1.2 envelope carries its action in the content type and nothing else.
#[tokio::test]
async fn a_clients_soapaction_does_not_ride_along_on_a_translated_request() {
    let agency = MockUpstream::start(echo("agency")).await;
    let gw = translating(
        &agency,
        "request = \"soap_wrap\"\nsoap_version = \"1.2\"\nsoap_action = \"urn:hotich#TraCuuHoTich\"",
    )
    .await;
    let body = r#"{"TraCuu":{"So":"1"}}"#;
    let req = format!(
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nSOAPAction: \"urn:admin#XoaHet\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = agency.last();
    assert_eq!(seen.header("soapaction"), None);
    let ct = seen.header("content-type").unwrap();
    assert!(
        ct.starts_with("application/soap+xml") && ct.contains("urn:hotich#TraCuuHoTich"),
        "{ct}"
    );
}

/// HEAD describes what GET would return: the translated type, not the upstream's XML
/// (and not the upstream's length).
#[tokio::test]
async fn head_on_a_translated_route_names_the_translated_type() {
    let agency = MockUpstream::start(Arc::new(|_s: &Seen| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            "<a><b>1</b></a>",
        )));
        r.headers_mut()
            .insert("content-type", "application/xml".parse().unwrap());
        Action::Respond(r)
    }))
    .await;
    let gw = translating(&agency, "response = \"xml_to_json\"").await;
    let get = raw(
        gw.addr(),
        b"GET /a/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(get.header("content-type"), Some("application/json"));
    // A HEAD answer has no body to frame: read its head alone.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"HEAD /a/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut head))
        .await
        .expect("the gateway closes after the HEAD answer")
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    // Not the XML's 15 bytes.
    assert!(!head.contains("content-length: 15\r\n"), "{head}");
}
