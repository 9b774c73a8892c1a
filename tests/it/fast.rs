//! The HTTP/1 fast path (`pipeline::fast`): what it takes, what it leaves to hyper on
//! the same connection, the upstream framings it relays, upstream connections that
//! close while idle, and its audit records against the full path's. (The plain routes of
//! the other suites run on it too.)

use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A pool `up` of one endpoint and an anonymous route `plain` to it for every path.
fn plain_route(upstream: &str) -> String {
    format!(
        r#"
[upstreams.up]
endpoints = ["{upstream}"]
[[routes]]
name = "plain"
path_prefix = "/"
upstream = "up"
auth.anonymous = true
"#
    )
}

/// A gateway without the audit log with [`plain_route`].
async fn gateway(upstream: &str) -> TestGateway {
    TestGateway::start(&plain_config(&plain_route(upstream))).await
}

/// Reads the next response off a keep-alive connection.
async fn next_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> RawResponse {
    loop {
        if let Some((r, used)) = parse_with_len(buf) {
            buf.drain(..used);
            return r;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn plain_requests_take_the_fast_path_and_the_rest_fall_back_on_the_same_connection() {
    let up = MockUpstream::start(echo("up")).await;
    let gw = gateway(&up.url()).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /a?x=1 HTTP/1.1\r\nHost: Test.Local\r\nX-Request-Id: fast-1\r\nX-Custom: one\r\n\r\n",
    )
    .await
    .unwrap();
    let r = next_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("fast-1"));
    assert_eq!(r.header("via"), Some("1.1 lienthong"));
    assert!(r.header("date").is_some());
    let seen = r.json();
    assert_eq!(seen["uri"], "/a?x=1");
    let h = &seen["headers"];
    assert_eq!(h["host"], "Test.Local");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "Test.Local");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=Test.Local");
    assert_eq!(h["via"], "1.1 lienthong");
    assert_eq!(h["x-custom"], "one");
    assert_eq!(h["x-request-id"], "fast-1");
    assert_eq!(fast_path_requests(&gw), 1);

    // A chunked upload is the full path's: hyper takes the connection over, with the
    // bytes already read, and keeps it.
    s.write_all(
        b"POST /b HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = next_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 5);
    s.write_all(b"GET /c HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .unwrap();
    let r = next_response(&mut s, &mut buf).await;
    assert_eq!(r.json()["uri"], "/c");
    assert_eq!(fast_path_requests(&gw), 1);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = MockUpstream::start(echo("up")).await;
    let gw = gateway(&up.url()).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          DELETE /3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for (uri, method, len) in [("/1", "GET", 0), ("/2", "POST", 3), ("/3", "DELETE", 0)] {
        let r = next_response(&mut s, &mut buf).await;
        let seen = r.json();
        assert_eq!(seen["uri"], uri);
        assert_eq!(seen["method"], method);
        assert_eq!(seen["body_len"], len);
    }
    assert_eq!(fast_path_requests(&gw), 3);
    assert_eq!(up.last().header("content-length"), None);
}

/// An upstream written by hand: on every connection, answers each request head with
/// `script(path)`, and closes the connection after an answer that says
/// `Connection: close` (or after `linger`, when given, once idle).
async fn raw_upstream(
    script: fn(&str) -> Vec<u8>,
    linger: Option<Duration>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (c, d) = (conns.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut b = [0u8; 4096];
                        let read = match linger {
                            Some(t) if got.is_empty() => {
                                match tokio::time::timeout(t, s.read(&mut b)).await {
                                    Ok(r) => r,
                                    // Idle for `linger`: closed, as an upstream's own
                                    // keep-alive timeout would.
                                    Err(_) => {
                                        drop(s);
                                        d.store(true, Ordering::SeqCst);
                                        return;
                                    }
                                }
                            }
                            _ => s.read(&mut b).await,
                        };
                        match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_string();
                    got.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let answer = script(&path);
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                    if String::from_utf8_lossy(&answer).contains("Connection: close") {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, closed)
}

fn framings(path: &str) -> Vec<u8> {
    match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n\
            5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            .to_vec(),
        "/close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
        "/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
        "/named" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\
            Keep-Alive: timeout=5\r\nX-Request-Id: upstreams-own\r\nVia: 1.0 backend\r\n\
            Content-Length: 2\r\n\r\nok"
            .to_vec(),
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n".to_vec(),
        "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain".to_vec(),
    }
}

#[tokio::test]
async fn upstream_framings_are_relayed_and_the_connection_goes_on() {
    let (addr, conns, _) = raw_upstream(framings, None).await;
    let gw = gateway(&format!("http://{addr}")).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = Vec::new();
    let mut get = async |path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        next_response(&mut s, &mut buf).await
    };
    // Chunks are decoded and framed anew; extensions and trailers stay behind.
    let r = get("/chunked").await;
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("x-up"), Some("1"));
    assert!(r.header("x-trailer").is_none());
    // Interim answers are not passed on.
    let r = get("/interim").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert!(r.header("link").is_none());
    // Hop-by-hop fields and those `Connection` names go; Via is appended to; the
    // request id is the gateway's.
    let r = get("/named").await;
    assert_eq!(r.body, b"ok");
    assert!(r.header("x-secret").is_none());
    assert!(r.header("keep-alive").is_none());
    assert!(r.header("connection").is_none());
    assert_eq!(r.header("via"), Some("1.0 backend, 1.1 lienthong"));
    assert_ne!(r.header("x-request-id"), Some("upstreams-own"));
    let r = get("/empty").await;
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none());
    // A body delimited by the upstream's close arrives whole, chunked, and the
    // client's connection stays open.
    let r = get("/close").await;
    assert_eq!(r.body, b"until the end");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let r = get("/plain").await;
    assert_eq!(r.body, b"plain");
    // HEAD keeps the upstream's length and has no body.
    s.write_all(b"HEAD /head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed after Connection: close")
        .unwrap();
    let text = String::from_utf8_lossy(&rest).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("content-length: 42\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after a HEAD answer: {text}"
    );
    assert_eq!(fast_path_requests(&gw), 7);
    // One upstream connection for all, but the one the close-delimited body ended.
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_connection_closed_while_idle_is_not_used_again() {
    fn plain(_: &str) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    }
    let (addr, conns, closed) = raw_upstream(plain, Some(Duration::from_millis(100))).await;
    let gw = gateway(&format!("http://{addr}")).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next_response(&mut s, &mut buf).await.body, b"ok");
    eventually(
        "the upstream closes its idle connection",
        Duration::from_secs(5),
        || {
            let c = closed.clone();
            async move { c.load(Ordering::SeqCst) }
        },
    )
    .await;
    // A POST may not be sent again once sent: it must not go on the closed one.
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let r = next_response(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(fast_path_requests(&gw), 2);
}

#[tokio::test]
async fn fast_path_errors_are_the_json_contract() {
    let gw = gateway(&format!("http://{}", dead_addr().await)).await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: err-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&r, 502, "upstream_unreachable");
    assert_eq!(r.json()["request_id"], "err-1");
    assert_eq!(r.header("x-request-id"), Some("err-1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(fast_path_requests(&gw), 1);
}

/// With the audit log on, the fast path leaves the records the full path leaves: each
/// request goes both ways (a client-sent `Via` sends it to the full path), and the two
/// records agree on all but the request id and timings — status, kind, sizes and both
/// digests, for every framing an upstream answers with.
#[tokio::test]
async fn fast_path_audit_records_are_the_full_paths() {
    let (addr, _, _) = raw_upstream(framings, None).await;
    let gw = TestGateway::start(&base_config(&plain_route(&format!("http://{addr}")))).await;
    let cases = [
        ("GET", "/chunked", ""),
        ("GET", "/close", ""),
        ("GET", "/interim", ""),
        ("GET", "/named", ""),
        ("HEAD", "/head", ""),
        ("GET", "/empty", ""),
        ("POST", "/plain", "hello"),
        ("PUT", "/plain", ""),
    ];
    for (i, (method, path, body)) in cases.iter().enumerate() {
        for (way, extra) in [("fast", ""), ("full", "Via: 1.1 client\r\n")] {
            let out = until_closed(
                gw.addr(),
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {way}-{i}\r\n{extra}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
            assert!(out.starts_with(b"HTTP/1.1 2"), "{way} {path}: {out:?}");
        }
    }
    assert_eq!(fast_path_requests(&gw), cases.len() as u64);
    let recs = crate::audit::records(&gw).await;
    let of = |id: String| {
        let r = &recs.iter().find(|(_, r)| r.request_id == id).expect(&id).1;
        format!(
            "{:?}",
            (
                r.status,
                r.kind,
                &r.route,
                &r.upstream,
                &r.method,
                &r.path,
                &r.error,
                r.bytes_in,
                &r.request_sha256,
                r.bytes_out,
                &r.response_sha256
            )
        )
    };
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(of(format!("fast-{i}")), of(format!("full-{i}")), "{case:?}");
    }
}

/// A client that sends a second request behind its first and then closes its side gets
/// its first answer: the buffered request is not mistaken for a client that went away.
#[tokio::test]
async fn a_pipelined_request_then_a_half_close_gets_the_first_answer() {
    let up = MockUpstream::start(echo("up")).await;
    let gw = gateway(&up.url()).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let r = next_response(&mut s, &mut buf).await;
    assert_eq!(r.json()["uri"], "/1");
}

/// A JWT route: the fast path takes its requests, a token seen for the first time
/// verified by the full path's own check and a cached one taken from the cache, and
/// answers each as the full path does (forced there by a `Via` field): the caller's
/// fields upstream (UTF-8 values included), the refusals (401 with its challenge, 403),
/// the audit records.
#[tokio::test]
async fn jwt_routes_are_answered_on_the_fast_path_as_on_the_full_one() {
    let up = MockUpstream::start(echo("up")).await;
    // With the audit log on: the records of both paths name the caller alike.
    let cfg = base_config(&format!(
        r#"
{issuer}
[upstreams.up]
endpoints = ["{url}"]
[[routes]]
name = "h22"
path_prefix = "/h22"
upstream = "up"
auth = {{ agencies = ["*.H22"] }}
"#,
        issuer = dev_issuer(),
        url = up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    // A Vietnamese subject and role go upstream as their UTF-8 bytes.
    let mint = |sub: &str| {
        dev_token_with(serde_json::json!({
            "sub": sub, "agency": "000.00.01.H22", "roles": ["nhân viên", "reader"],
        }))
    };
    let (first, second) = (mint("Nguyễn Văn A"), mint("Trần Thị B"));
    let other = dev_token("000.00.01.G01");
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let (third, fourth) = (mint("c"), mint("d"));
    let cases: Vec<(&str, String, &str, &str, u16)> = vec![
        // (name, fields, query, body, status)
        ("fresh", bearer(&first), "", "", 200),
        ("cached", bearer(&first), "", "", 200),
        ("fresh-too", bearer(&second), "", "", 200),
        ("refused", bearer(&other), "", "", 403),
        ("refused-cached", bearer(&other), "", "", 403),
        ("none", String::new(), "", "", 401),
        ("two", bearer(&first) + &bearer(&first), "", "", 401),
        ("in-query", bearer(&first), "?access_token=x", "", 401),
        ("post", bearer(&third), "", "{\"a\":1}", 200),
        ("post-refused", bearer(&other), "", "{\"a\":1}", 403),
        ("post-none", String::new(), "", "{\"a\":1}", 401),
        ("post-fresh", bearer(&fourth), "", "{\"b\":2}", 200),
    ];
    let caller_fields = |s: &Seen| {
        [
            "x-lienthong-caller-issuer",
            "x-lienthong-caller-subject",
            "x-lienthong-caller-agency",
            "x-lienthong-caller-roles",
            "authorization",
        ]
        .map(|n| s.headers.get(n).map(|v| v.as_bytes().to_vec()))
    };
    let mut answers = std::collections::HashMap::new();
    for (name, fields, query, body, status) in &cases {
        // A token's first sight on either path: "fresh-too" and "post-fresh" go to the
        // full path first.
        let mut ways = [("fast", ""), ("full", "Via: 1.1 client\r\n")];
        if name.ends_with("fresh-too") || *name == "post-fresh" {
            ways.reverse();
        }
        for (way, extra) in ways {
            let before = up.count();
            let head = if body.is_empty() {
                format!("GET /h22/x{query} HTTP/1.1\r\n")
            } else {
                format!(
                    "POST /h22/x{query} HTTP/1.1\r\nContent-Length: {}\r\n",
                    body.len()
                )
            };
            let r = raw(
                gw.addr(),
                format!(
                    "{head}Host: t\r\n{fields}{extra}\
                     X-Request-Id: {way}-{name}\r\nConnection: close\r\n\r\n{body}"
                )
                .as_bytes(),
            )
            .await;
            assert_eq!(r.status, *status, "{way} {name}");
            let seen = (up.count() > before).then(|| caller_fields(&up.last()));
            let code = (r.status != 200).then(|| r.json()["code"].clone());
            answers.insert(
                (way, *name),
                format!(
                    "{:?}",
                    (seen, code, r.header("www-authenticate").map(str::to_string))
                ),
            );
        }
        assert_eq!(
            answers[&("fast", *name)],
            answers[&("full", *name)],
            "{name}"
        );
    }
    assert!(
        answers[&("fast", "fresh")].contains(&format!("{:?}", "Nguyễn Văn A".as_bytes())),
        "{}",
        answers[&("fast", "fresh")]
    );
    assert_eq!(fast_path_requests(&gw), cases.len() as u64);
    assert_eq!(up.count(), 10);
    let recs = crate::audit::records(&gw).await;
    let record = |id: String| {
        let r = &recs.iter().find(|(_, r)| r.request_id == id).expect(&id).1;
        format!(
            "{:?}",
            (
                (&r.caller, &r.route, &r.upstream, r.status, r.kind, &r.error),
                // (The echoed answers differ: they show each request's own id and Via.)
                (r.bytes_in, &r.request_sha256)
            )
        )
    };
    for (name, ..) in &cases {
        assert_eq!(
            record(format!("fast-{name}")),
            record(format!("full-{name}")),
            "{name}"
        );
    }
}

/// Lookups (`GET /lookups/...`) are answered on the fast path as the full path answers
/// them (forced there by a `Via` field): hits, a missing key, the whole table, access
/// rules with and without a token, and the records; an encoded key, HEAD and
/// `If-None-Match` stay the full path's.
#[tokio::test]
async fn lookups_are_answered_on_the_fast_path_as_on_the_full_one() {
    let data = format!("{}/config/data/dvhc-2025.csv", env!("CARGO_MANIFEST_DIR"));
    let cfg = base_config(&format!(
        r#"
{issuer}
[[lookups]]
name = "provinces"
source = {{ file = "{data}", table = "provinces" }}
auth = {{ anonymous = true }}
[[lookups]]
name = "private"
source = {{ file = "{data}", table = "provinces" }}
auth = {{ agencies = ["*.H22"] }}
"#,
        issuer = dev_issuer(),
    ));
    let gw = TestGateway::start(&cfg).await;
    let long_key = format!("/lookups/provinces/{}", "a".repeat(300));
    let ok = bearer_field(&dev_token("000.00.01.H22"));
    let other = bearer_field(&dev_token("000.00.01.G01"));
    let cases: Vec<(&str, &str, String, u16)> = vec![
        // (name, path, fields, status)
        ("hit", "/lookups/provinces/01", String::new(), 200),
        ("table", "/lookups/provinces", String::new(), 200),
        ("encoded", "/lookups/provinces/%30%31", String::new(), 200),
        ("missing", "/lookups/provinces/99", String::new(), 404),
        ("private", "/lookups/private/01", ok.clone(), 200),
        ("private-again", "/lookups/private/01", ok, 200),
        ("refused", "/lookups/private/01", other, 403),
        ("no-token", "/lookups/private/01", String::new(), 401),
        // A 400 closes the connection, on both paths alike.
        ("long-key", &long_key, String::new(), 400),
    ];
    for (name, path, fields, status) in &cases {
        let mut answers = Vec::new();
        for (way, extra) in [("fast", ""), ("full", "Via: 1.1 client\r\n")] {
            let r = raw(
                gw.addr(),
                format!(
                    "GET {path} HTTP/1.1\r\nHost: t\r\n{fields}{extra}X-Request-Id: {way}-{name}\r\n\
                     Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
            assert_eq!(r.status, *status, "{way} {name}");
            // (`age` and `max-age` count whole seconds: a pair may straddle one.)
            let mut fields: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id" | "age"))
                .map(|(k, v)| match v.split_once("max-age=") {
                    Some((before, _)) => (k.clone(), format!("{before}max-age=…")),
                    None => (k.clone(), v.clone()),
                })
                .collect();
            fields.sort();
            let body = if r.status == 200 {
                String::from_utf8(r.body.clone()).unwrap()
            } else {
                r.json()["code"].to_string()
            };
            answers.push(format!("{fields:?} {body}"));
        }
        assert_eq!(answers[0], answers[1], "{name}");
    }
    // All but the encoded key, which normalisation rewrites (the full path's).
    assert_eq!(fast_path_requests(&gw), cases.len() as u64 - 1);
    let taken = fast_path_requests(&gw);
    // The 400's connection is closed even when the client meant to keep it.
    let out = until_closed(
        gw.addr(),
        format!("GET {long_key} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 400"), "{out:?}");
    // HEAD and a conditional GET are the full path's.
    let head = until_closed(
        gw.addr(),
        b"HEAD /lookups/provinces/01 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let cond = raw(
        gw.addr(),
        b"GET /lookups/provinces/01 HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"x\"\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(cond.status, 200);
    assert_eq!(fast_path_requests(&gw), taken + 1, "only the long key's");
    let recs = crate::audit::records(&gw).await;
    let record = |id: String| {
        let r = &recs.iter().find(|(_, r)| r.request_id == id).expect(&id).1;
        format!(
            "{:?}",
            (
                (&r.caller, &r.route, &r.upstream, r.status, r.kind, &r.error),
                // (An error body holds its request's own id.)
                (
                    r.bytes_out,
                    r.status
                        .filter(|s| *s == 200)
                        .and(r.response_sha256.as_ref())
                )
            )
        )
    };
    for (name, ..) in &cases {
        assert_eq!(
            record(format!("fast-{name}")),
            record(format!("full-{name}")),
            "{name}"
        );
    }
}

fn bearer_field(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Sends `request` on a new connection and reads until the gateway closes it.
async fn until_closed(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer and the close")
        .unwrap();
    out
}
