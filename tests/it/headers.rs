//! Proxy semantics: hop-by-hop fields, forwarding fields, request ids, Via, Host,
//! Content-Length, redirects.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;

async fn setup(handler: Handler) -> (TestGateway, MockUpstream) {
    let up = MockUpstream::start(handler).await;
    let cfg = base_config(&format!(
        r#"
[upstreams.up]
endpoints = ["{url}"]
[[routes]]
auth.anonymous = true
name = "preserve"
path_prefix = "/p"
upstream = "up"
[[routes]]
auth.anonymous = true
name = "uphost"
path_prefix = "/u"
host_header = "upstream"
upstream = "up"
[[routes]]
auth.anonymous = true
name = "literal"
path_prefix = "/l"
host_header = "api.bo.gov.vn"
upstream = "up"
[[routes]]
auth.anonymous = true
name = "small"
path_prefix = "/small"
max_body_bytes = 1000
upstream = "up"
"#,
        url = up.url()
    ));
    (TestGateway::start(&cfg).await, up)
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_fields_are_removed() {
    let (gw, up) = setup(echo("up")).await;
    let r = raw(
        gw.addr(),
        b"GET /p/x HTTP/1.1\r\nHost: test.local\r\nConnection: X-Foo, keep-alive\r\nX-Foo: secret\r\n\
Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
X-Keep: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for gone in [
        "x-foo",
        "keep-alive",
        "proxy-authorization",
        "te",
        "proxy-connection",
    ] {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-keep"), Some("yes"));
}

#[tokio::test]
async fn forwarding_fields_are_the_gateways_own() {
    let (gw, up) = setup(echo("up")).await;
    let r = raw(
        gw.addr(),
        b"GET /p/x HTTP/1.1\r\nHost: test.local\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6;host=evil\r\nX-Real-IP: 6.6.6.6\r\n\
X-Lienthong-Client-Cert-S256: forged\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n\
X-Forwarded-Prefix: /admin\r\nX-Forwarded-Port: 443\r\nTrue-Client-IP: 6.6.6.6\r\n\
X-HTTP-Method-Override: DELETE\r\nX-Original-URI: /admin\r\n\
X-Keep: yes\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for forged in [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "true-client-ip",
        "x-http-method-override",
        "x-original-uri",
    ] {
        assert!(
            seen.header(forged).is_none(),
            "{forged} reached the upstream"
        );
    }
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("test.local"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=test.local")
    );
    assert!(seen.header("x-real-ip").is_none());
    assert!(seen.header("x-lienthong-client-cert-s256").is_none());
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
}

#[tokio::test]
async fn request_id_generated_or_propagated_and_via_added() {
    let (gw, up) = setup(echo("up")).await;
    let r = raw_get(gw.addr(), "/p/x").await;
    let seen = up.last();
    let rid = seen
        .header("x-request-id")
        .expect("generated id")
        .to_string();
    assert_eq!(r.header("x-request-id"), Some(rid.as_str()));
    assert_eq!(seen.header("via"), Some("1.1 lienthong"));
    assert_eq!(r.header("via"), Some("1.1 lienthong"));

    let r = raw(
        gw.addr(),
        b"GET /p/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\nVia: 1.1 portal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(up.last().header("x-request-id"), Some("abc-123"));
    assert_eq!(up.last().header("via"), Some("1.1 portal, 1.1 lienthong"));
    // An id that could smuggle content is replaced, not passed on.
    let r = raw(
        gw.addr(),
        b"GET /p/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: a b{}\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("a b{}"));
}

#[tokio::test]
async fn host_preserved_or_rewritten_per_route() {
    let (gw, up) = setup(echo("up")).await;
    raw_get(gw.addr(), "/p/x").await;
    assert_eq!(up.last().header("host"), Some("test.local"));
    raw_get(gw.addr(), "/u/x").await;
    assert_eq!(up.last().header("host"), Some(up.addr.to_string().as_str()));
    raw_get(gw.addr(), "/l/x").await;
    assert_eq!(up.last().header("host"), Some("api.bo.gov.vn"));
}

#[tokio::test]
async fn response_hop_by_hop_fields_are_removed() {
    let handler: Handler = Arc::new(|_| {
        let mut r = json_response(200, serde_json::json!({"ok": true}));
        let h = r.headers_mut();
        h.insert("connection", "X-Bar".parse().unwrap());
        h.insert("x-bar", "internal".parse().unwrap());
        h.insert("keep-alive", "timeout=99".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-visible", "1".parse().unwrap());
        Action::Respond(r)
    });
    let (gw, _up) = setup(handler).await;
    let r = raw_get(gw.addr(), "/p/x").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-bar").is_none());
    assert!(r.header("keep-alive").is_none());
    assert!(r.header("proxy-authenticate").is_none());
    assert_eq!(r.header("x-visible"), Some("1"));
}

#[tokio::test]
async fn content_length_matches_the_body_sent() {
    let (gw, up) = setup(echo("up")).await;
    // A chunked request body arrives with its true length (or chunked framing).
    let body = "a".repeat(700);
    let req = format!(
        "POST /p/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = raw(gw.addr(), req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 700);
    let seen = up.last();
    assert_eq!(seen.body.len(), 700);
    if let Some(cl) = seen.header("content-length") {
        assert_eq!(cl, "700");
    }
    // The response carries a length equal to the bytes that follow.
    let cl: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(cl, r.body.len());
    // A client-declared length is not copied blindly.
    let (status, _, b) = send(
        gw.addr(),
        http::Request::post("/p/x")
            .header("host", "t")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["body_len"],
        5
    );
    assert_eq!(up.last().header("content-length"), Some("5"));
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let handler: Handler = Arc::new(|_| {
        let mut r = json_response(302, serde_json::json!({}));
        r.headers_mut()
            .insert("location", "http://127.0.0.1:1/elsewhere".parse().unwrap());
        Action::Respond(r)
    });
    let (gw, up) = setup(handler).await;
    let r = raw_get(gw.addr(), "/p/x").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://127.0.0.1:1/elsewhere"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn upgrade_refused_unless_allowed() {
    let (gw, up) = setup(echo("up")).await;
    let r = raw(
        gw.addr(),
        b"GET /p/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "upgrade_not_allowed");
    assert_eq!(up.count(), 0);
}

/// A raw upstream that switches protocols on its first connection and then echoes
/// bytes.
async fn ws_echo_upstream() -> std::net::SocketAddr {
    switching_upstream("websocket").await
}

/// As [`ws_echo_upstream`], answering `Upgrade: {to}` whatever was asked.
async fn switching_upstream(to: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap() == 0 {
                return;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.contains("upgrade: websocket"), "{text}");
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {to}\r\nConnection: Upgrade\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    up_addr
}

/// Sends an upgrade request on a fresh connection and reads the head of the answer.
async fn upgraded(gw: &TestGateway) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    (c, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn only_the_routes_upgrade_protocols_pass_and_never_h2c() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "[upstreams.up]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"up\"\nallow_upgrade = true\nauth = {{ anonymous = true }}\n\
[[routes]]\nname = \"feed\"\npath_prefix = \"/feed\"\nupstream = \"up\"\nallow_upgrade = true\nupgrade_protocols = [\"sse-v2\"]\nauth = {{ anonymous = true }}\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let ask = |path: &str, upgrade: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
    };
    // h2c smuggling: once upgraded, the client's later requests would pass inside the
    // tunnel, past routing and rules. Refused alone, in a list, and in any case.
    for (path, upgrade, refused) in [
        ("/ws/x", "h2c", "h2c"),
        ("/ws/x", "websocket, h2c", "h2c"),
        ("/ws/x", "H2C", "h2c"),
        // Not on the route's list (the default list is websocket alone).
        ("/ws/x", "sse-v2", "sse-v2"),
        ("/feed/x", "websocket", "websocket"),
        ("/feed/x", "sse-v2, h2c/1", "h2c"),
    ] {
        let r = raw(gw.addr(), ask(path, upgrade).as_bytes()).await;
        assert_error(&r, 400, "upgrade_not_allowed");
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains(&format!("\\\"{refused}\\\"")),
            "{upgrade}: {body}"
        );
    }
    // Not a list of protocol names at all.
    let r = raw(gw.addr(), ask("/ws/x", "web socket").as_bytes()).await;
    assert_error(&r, 400, "bad_upgrade");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_upstream_switching_to_a_protocol_not_offered_is_refused() {
    let up_addr = switching_upstream("h2c").await;
    let cfg = base_config(&format!(
        "[upstreams.ws]\nendpoints = [\"http://{up_addr}\"]\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\nallow_upgrade = true\nauth = {{ anonymous = true }}\n"
    ));
    let gw = TestGateway::start(&cfg).await;
    let (_c, head) = upgraded(&gw).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("upgrade: h2c"),
        "{head}"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up_addr = ws_echo_upstream().await;
    let cfg = base_config(&format!(
        "idle_timeout = \"300ms\"\n[upstreams.ws]\nendpoints = [\"http://{up_addr}\"]\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\nallow_upgrade = true\nauth = {{ anonymous = true }}\n"
    ));
    let gw = TestGateway::start(&cfg).await;
    let (mut c, head) = upgraded(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).await.unwrap();
    // Quiet from here: the gateway closes the tunnel after the idle timeout.
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), c.read(&mut rest))
        .await
        .expect("the idle tunnel was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn upgrade_tunnels_where_the_route_allows_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up_addr = ws_echo_upstream().await;
    let plain = MockUpstream::start(echo("plain")).await;
    // One connection at a time on the listener: the tunnel keeps its place.
    let cfg = base_config(&format!(
        "max_connections = 1\n[upstreams.ws]\nendpoints = [\"http://{up_addr}\"]\n[[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\nallow_upgrade = true\nauth = {{ anonymous = true }}\n\
[upstreams.plain]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"plain\"\nauth = {{ anonymous = true }}\n",
        plain.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let (mut c, head) = upgraded(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"xin chao").await.unwrap();
    let mut got = [0u8; 8];
    tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("echo through the tunnel")
        .unwrap();
    assert_eq!(&got, b"xin chao");
    // The tunnel still holds the listener's one connection: another is not served...
    let addr = gw.addr();
    let second = tokio::spawn(async move { raw_get(addr, "/plain/x").await });
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "a connection was served beyond the limit during a tunnel"
    );
    // ...until the tunnel ends.
    drop(c);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .expect("served once the tunnel ended")
        .unwrap();
    assert_eq!(r.status, 200);
}
