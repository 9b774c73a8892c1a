//! Listener limits: 413, 414, 431, slow clients, idle timeout, connection limit.

use crate::support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup(listener_extra: &str) -> (TestGateway, MockUpstream) {
    let up = MockUpstream::start(echo("up")).await;
    let gw = gateway(listener_extra, &up.url()).await;
    (gw, up)
}

/// A gateway with one listener (`listener_extra` added to it) and two routes to
/// `upstream`: `/small` with a 1000-byte body cap, and everything else.
async fn gateway(listener_extra: &str, upstream: &str) -> TestGateway {
    let cfg = format!(
        r#"
[log]
access_log = false
[admin]
enabled = false
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_extra}
[upstreams.u]
endpoints = ["{upstream}"]
[[routes]]
auth.anonymous = true
name = "small"
path_prefix = "/small"
max_body_bytes = 1000
upstream = "u"
[[routes]]
auth.anonymous = true
name = "r"
path_prefix = "/"
upstream = "u"
"#
    );
    TestGateway::start(&cfg).await
}

#[tokio::test]
async fn body_over_the_route_cap_is_413() {
    let (gw, up) = setup("").await;
    let body = "x".repeat(2000);
    let r = raw(
        gw.addr(),
        format!("POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{body}").as_bytes(),
    )
    .await;
    assert_error(&r, 413, "body_too_large");
    // Chunked: no declared length, cut while streaming.
    let r = raw(
        gw.addr(),
        format!("POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_error(&r, 413, "body_too_large");
    let within = "x".repeat(900);
    let r = raw(
        gw.addr(),
        format!("POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{within}").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), 900);
}

#[tokio::test]
async fn long_uri_is_414() {
    let (gw, up) = setup("max_uri_bytes = 1024").await;
    let long = format!("/x?{}", "a".repeat(2000));
    let r = raw_get(gw.addr(), &long).await;
    assert_error(&r, 414, "uri_too_long");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_431() {
    let (gw, up) = setup("max_header_bytes = 4096\nmax_headers = 20").await;
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(5000)
    );
    let r = raw(gw.addr(), big.as_bytes()).await;
    assert_error(&r, 431, "headers_too_large");
    // Far past the limit, the parser itself refuses (no body, still 431).
    let huge = format!(
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20000)
    );
    assert_eq!(raw(gw.addr(), huge.as_bytes()).await.status, 431);
    let many = |n: usize| {
        let mut h = String::from("GET /x HTTP/1.1\r\nHost: t\r\n");
        for i in 0..n {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h + "Connection: close\r\n\r\n"
    };
    // Up to 100 fields in all, the request path refuses them with its JSON body.
    for n in [25, 97] {
        let r = raw(gw.addr(), many(n).as_bytes()).await;
        assert_error(&r, 431, "too_many_headers");
    }
    // Beyond that the parser refuses on its own: still 431, without the JSON body.
    let r = raw(gw.addr(), many(120).as_bytes()).await;
    assert_eq!(r.status, 431);
    assert!(r.body.is_empty(), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn slow_header_clients_are_cut_off_while_others_are_served() {
    let (gw, _up) = setup("header_read_timeout = \"500ms\"").await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Others are served while the slow ones hold their connections.
    for _ in 0..5 {
        assert_eq!(raw_get(gw.addr(), "/x").await.status, 200);
    }
    let start = Instant::now();
    for mut s in slow {
        // Trickle a byte now and then, as a slowloris does; the head never completes.
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if s.write_all(b"a").await.is_err() {
                    return;
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => continue, // a 408 may be sent before closing
                    Err(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow client was not cut off");
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(raw_get(gw.addr(), "/x").await.status, 200);
}

/// A keep-alive connection to the gateway that has had one exchange (`GET /x`, 200).
async fn after_one_exchange(gw: &TestGateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(parse_complete(&buf[..n]).is_some_and(|r| r.status == 200));
    s
}

/// The connection's next read, given at most 5 s (`Ok(Ok(0))`: closed by the gateway).
async fn next_read(
    s: &mut TcpStream,
) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (gw, _up) =
        setup("idle_timeout = \"300ms\"\nheader_read_timeout = \"10s\"\nh2c = false").await;
    let mut s = after_one_exchange(&gw).await;
    let start = Instant::now();
    let r = next_read(&mut s).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection was not closed"
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn connection_limit_holds_extra_connections_back() {
    let (gw, _up) = setup("max_connections = 1").await;
    let mut first = TcpStream::connect(gw.addr()).await.unwrap();
    first
        .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(n > 0);
    // The second connection is not served while the first holds the only slot.
    let addr = gw.addr();
    let second = tokio::spawn(async move { raw_get(addr, "/x").await });
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "second connection was served beyond the limit"
    );
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

/// An upstream that answers every request on its one connection with a chunked body
/// sent in `chunks` pieces, `gap` apart (a slow stream, not a synchronisation).
async fn slow_streaming_upstream(chunks: usize, gap: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "gateway closed before its request was complete");
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        for _ in 0..chunks {
            s.write_all(b"5\r\nhello\r\n").await.unwrap();
            tokio::time::sleep(gap).await;
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        // Keep the connection until the gateway lets go of it.
        let _ = s.read(&mut chunk).await;
    });
    addr
}

#[tokio::test]
async fn a_response_streaming_longer_than_the_header_timeout_is_not_cut_off() {
    // The header-read timeout bounds the wait for a request head; a response body that
    // takes longer than it to stream is not such a wait.
    let up = slow_streaming_upstream(6, Duration::from_millis(250)).await;
    let gw = gateway("header_read_timeout = \"500ms\"", &format!("http://{up}")).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return false; // closed before the body's end
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"0\r\n\r\n") {
                return true;
            }
        }
    })
    .await
    .expect("the response did not end");
    let text = String::from_utf8_lossy(&got);
    assert!(ended, "connection closed mid-body: {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("hello").count(), 6, "{text}");
    assert!(start.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test]
async fn a_keep_alive_connection_is_cut_off_when_its_next_head_is_late() {
    let (gw, _up) = setup("header_read_timeout = \"500ms\"\nidle_timeout = \"60s\"").await;
    let mut s = after_one_exchange(&gw).await;
    // The start of a second head, never finished.
    let start = Instant::now();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let r = next_read(&mut s).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection with a late head was not closed: {r:?}"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}"
    );
    // Others are still served.
    assert_eq!(raw_get(gw.addr(), "/x").await.status, 200);
}

/// An upstream answering 12 MB, on a listener with these timeouts, behind two routes:
/// `/whole` is fail-closed (the response is read whole, for its audit record, and
/// handed to hyper in one piece), `/stream` streams it.
async fn big_response_gateway(idle: &str, header_read: &str) -> (TestGateway, MockUpstream) {
    let up = MockUpstream::start(std::sync::Arc::new(|_: &Seen| {
        Action::Respond(hyper::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(vec![b'x'; BIG]),
        )))
    }))
    .await;
    let cfg = base_config(&format!(
        "idle_timeout = \"{idle}\"\n[upstreams.u]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\n\
         name = \"whole\"\npath_prefix = \"/whole\"\nupstream = \"u\"\naudit = \"fail_closed\"\n\
         [[routes]]\nauth.anonymous = true\nname = \"stream\"\npath_prefix = \"/stream\"\nupstream = \"u\"\n",
        up.url()
    ))
    .replace(
        "header_read_timeout = \"2s\"",
        &format!("header_read_timeout = \"{header_read}\""),
    );
    (TestGateway::start(&cfg).await, up)
}

const BIG: usize = 12 << 20;

/// A client with a small receive buffer that has asked for `path`.
async fn ask_for_big(gw: &TestGateway, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    let mut s = sock.connect(gw.addr()).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

/// A client that stops reading a response is cut off after `idle_timeout` without a
/// byte written (nginx's `send_timeout`): its exchange would otherwise hold the
/// connection, its slot and the response behind it for ever.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
    // Streamed, so the exchange stays open while the client does not read (hyper takes
    // the body only as it can write it).
    let (gw, _up) = big_response_gateway("500ms", "2s").await;
    let mut s = ask_for_big(&gw, "/stream").await;
    let mut buf = vec![0u8; 16 << 10];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Stop reading for well over the idle timeout, then take what is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = n;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => got += k,
            Err(_) => panic!("the connection was kept open for a client that stopped reading"),
        }
    }
    assert!(got < BIG, "the response was cut off ({got} bytes of {BIG})");
}

/// A response handed to hyper in one piece (here a fail-closed route's, read whole for
/// its audit record) is written to a slow reader for as long as that takes: the next
/// request head's deadline runs from the last byte written, not from when hyper took
/// the body (which cut the response off one `header_read_timeout` later).
#[tokio::test]
async fn a_slow_reader_gets_the_whole_of_a_large_response() {
    const LEN: usize = BIG;
    // Reading the whole takes several header_read_timeouts, and no idle_timeout
    // passes without a byte written.
    let (gw, _up) = big_response_gateway("60s", "1s").await;
    let mut s = ask_for_big(&gw, "/whole").await;
    let start = Instant::now();
    let mut got = Vec::new();
    let mut head_len = None;
    let mut buf = vec![0u8; 16 << 10];
    while head_len.is_none_or(|h| got.len() < h + LEN) {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the response stalled after {} bytes", got.len()),
        }
        if head_len.is_none() {
            head_len = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        // About 4 MB/s at most: the response takes several header_read_timeouts.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let head = String::from_utf8_lossy(&got[..head_len.expect("a response head")]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        start.elapsed() > Duration::from_secs(2),
        "the read should outlast the header-read timeout: {:?}",
        start.elapsed()
    );
    assert_eq!(
        got.len() - head_len.unwrap(),
        LEN,
        "the whole body, not cut off by the next head's deadline"
    );
}

/// A response whose upstream pauses longer than the idle timeout between two chunks is
/// not a client that stopped reading: the connection stays, and the client gets it all.
#[tokio::test]
async fn a_pause_of_the_upstream_mid_body_is_not_a_stalled_client() {
    let up_addr = scripted_upstream(|mut s| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            .await
            .unwrap();
        // Three idle timeouts of silence from the upstream.
        tokio::time::sleep(Duration::from_millis(900)).await;
        s.write_all(b"-last").await.unwrap();
        let _ = s.read(&mut [0u8; 16]).await;
    })
    .await;
    let gw = gateway(
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"10s\"",
        &format!("http://{up_addr}"),
    )
    .await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"first-last");
}
