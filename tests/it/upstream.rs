//! Upstream behaviour: timeouts, unreachable endpoints, retries, health (active and
//! passive), the circuit breaker, balancing and connection reuse.

use crate::support::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pool(name: &str, endpoints: &[String], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[upstreams.{name}]\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

fn route(upstream: &str, extra: &str) -> String {
    format!("[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"{upstream}\"\n{extra}\n")
}

#[tokio::test]
async fn hanging_upstream_is_504() {
    let up = MockUpstream::start(Arc::new(|_| Action::Hang)).await;
    let cfg = base_config(&(pool("u", &[up.url()], "") + &route("u", "timeout = \"300ms\"")));
    let gw = TestGateway::start(&cfg).await;
    let t = Instant::now();
    let r = raw_get(gw.addr(), "/x").await;
    assert_error(&r, 504, "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = dead_addr().await;
    let cfg = base_config(
        &(pool(
            "u",
            &[format!("http://{dead}")],
            "[upstreams.u.retry]\nattempts = 1\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    let r = raw_get(gw.addr(), "/x").await;
    assert_error(&r, 502, "upstream_unreachable");
    // Internals (the address) stay out of the client's view.
    assert!(!String::from_utf8_lossy(&r.body).contains(&dead.port().to_string()));
}

#[tokio::test]
async fn idempotent_requests_retry_on_another_endpoint() {
    let bad = MockUpstream::start(status(503)).await;
    let good = MockUpstream::start(echo("good")).await;
    let cfg = base_config(
        &(pool("u", &[bad.url(), good.url()], "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n")
            + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..6 {
        let r = raw_get(gw.addr(), "/x").await;
        assert_eq!(
            r.status, 200,
            "GET must be retried away from the failing endpoint"
        );
    }
    assert!(bad.count() >= 1, "round robin reached the bad endpoint");
    // POST is not idempotent: a sent attempt that failed is not repeated.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = raw(
            gw.addr(),
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await;
        statuses.push(r.status);
    }
    let posts_bad = bad
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    let posts_good = good
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts_bad + posts_good, 6, "no POST was sent twice");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), posts_bad);
}

#[tokio::test]
async fn connect_failures_retry_even_for_post() {
    let dead = dead_addr().await;
    let good = MockUpstream::start(echo("good")).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[format!("http://{dead}"), good.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..4 {
        let r = raw(
            gw.addr(),
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(good.count(), 4);
}

#[tokio::test]
async fn passive_ejection_after_consecutive_failures() {
    let bad = MockUpstream::start(status(502)).await;
    let good = MockUpstream::start(echo("good")).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[bad.url(), good.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 2\nejection_time = \"60s\"\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..20 {
        raw_get(gw.addr(), "/x").await;
    }
    assert_eq!(bad.count(), 2, "ejected after two consecutive failures");
    assert_eq!(good.count(), 18);
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out() {
    let sick: Handler = Arc::new(|s| {
        if s.uri == "/health" {
            Action::Respond(json_response(500, serde_json::json!({})))
        } else {
            Action::Respond(json_response(200, serde_json::json!({"upstream": "sick"})))
        }
    });
    let sick = MockUpstream::start(sick).await;
    let well = MockUpstream::start(echo("well")).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[sick.url(), well.url()],
            "[upstreams.u.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    eventually("ready", Duration::from_secs(5), || async {
        admin_get(&gw, "/health/ready").await.0 == 200
    })
    .await;
    for _ in 0..10 {
        let r = raw_get(gw.addr(), "/x").await;
        assert_eq!(r.json()["upstream"], "well");
    }
    let non_health = sick
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri != "/health")
        .count();
    assert_eq!(non_health, 0);
    let (_, ups) = admin_get(&gw, "/admin/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&ups).unwrap();
    let eps = v["u"]["endpoints"].as_array().unwrap();
    assert!(eps.iter().any(|e| e["healthy"] == false));
}

#[tokio::test]
async fn readiness_waits_for_health() {
    let slow_health: Handler = Arc::new(|_| {
        Action::Delay(
            Duration::from_millis(400),
            json_response(200, serde_json::json!({})),
        )
    });
    let up = MockUpstream::start(slow_health).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[up.url()],
            "[upstreams.u.health]\ninterval = \"10s\"\ntimeout = \"2s\"\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(admin_get(&gw, "/health/live").await.0, 200);
    assert_eq!(
        admin_get(&gw, "/health/ready").await.0,
        503,
        "health not known yet"
    );
    eventually("ready", Duration::from_secs(5), || async {
        admin_get(&gw, "/health/ready").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn circuit_breaker_opens_and_fails_fast() {
    let bad = MockUpstream::start(status(503)).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[bad.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"30s\"\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(raw_get(gw.addr(), "/x").await.status, 503);
    }
    let r = raw_get(gw.addr(), "/x").await;
    assert_error(&r, 503, "circuit_open");
    assert!(r.header("retry-after").is_some());
    assert_eq!(bad.count(), 3, "the open breaker sent nothing upstream");
}

#[tokio::test]
async fn http2_upstreams_get_the_authority_as_a_pseudo_header_only() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&(pool("u", &[up.url()], "http2 = true") + &route("u", "")));
    let gw = TestGateway::start(&cfg).await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: portal.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        seen.uri,
        format!("{}/x", up.url()),
        ":authority is the endpoint's"
    );
    assert!(seen.header("host").is_none(), "no Host beside :authority");
}

#[tokio::test]
async fn endpoints_named_by_host_name_are_resolved_and_reached() {
    let up = MockUpstream::start(echo("named")).await;
    let named = format!("http://localhost:{}", up.addr.port());
    let cfg = base_config(&(pool("u", &[named], "") + &route("u", "")));
    let gw = TestGateway::start(&cfg).await;
    let r = raw_get(gw.addr(), "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "named");
}

/// Ejecting the only endpoint does not refuse all traffic for the ejection time: once
/// the upstream answers again, so does the gateway (refusing a failing upstream as a
/// whole is the circuit breaker's job, disabled here).
#[tokio::test]
async fn an_ejected_last_endpoint_still_gets_first_attempts() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    let up = MockUpstream::start(Arc::new(move |_: &Seen| {
        let code = if f.load(std::sync::atomic::Ordering::SeqCst) {
            502
        } else {
            200
        };
        Action::Respond(json_response(code, serde_json::json!({})))
    }))
    .await;
    let cfg = base_config(
        &(pool(
            "u",
            &[up.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 2\nejection_time = \"60s\"\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(raw_get(gw.addr(), "/x").await.status, 502);
    }
    let healthy = || async {
        let (_, v) = admin_get(&gw, "/admin/upstreams").await;
        serde_json::from_str::<serde_json::Value>(&v).unwrap()["u"]["endpoints"][0]["healthy"]
            .as_bool()
            .unwrap()
    };
    assert!(!healthy().await, "ejected");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = raw_get(gw.addr(), "/x").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 4);
    // Its answer ended the ejection.
    assert!(healthy().await);
}

/// A client that uploads its body slower than the route's timeout gets 408, and the
/// upstream, still waiting for that body, is not blamed: its breaker stays closed.
#[tokio::test]
async fn a_slow_upload_is_the_clients_timeout_not_the_upstreams() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[up.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 1\n",
        ) + &route("u", "timeout = \"300ms\"")),
    );
    let gw = TestGateway::start(&cfg).await;
    // A chunked body (streamed, not buffered), its first chunk only.
    let r = raw(
        gw.addr(),
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert_error(&r, 408, "request_body_timeout");
    let r = raw_get(gw.addr(), "/x").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// An upstream that stops reading a body the client sends in full is the upstream's
/// failure, not the client's: 504, charged to it (its breaker opens).
#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_is_charged_with_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = scripted_upstream(|s| async move {
        // Reads the head only, then holds the connection without reading.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let cfg = base_config(
        &(pool(
            "u",
            &[format!("http://{up}")],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 1\n",
        ) + &route("u", "timeout = \"500ms\"\nmax_body_bytes = 67108864")),
    );
    let gw = TestGateway::start(&cfg).await;
    let len = 48 << 20;
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(gw.addr())
        .await
        .unwrap()
        .into_split();
    tokio::spawn(async move {
        let head = format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n");
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b'x'; len]).await;
    });
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = rd.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_complete(&buf) {
                return r;
            }
            assert!(n > 0, "closed without an answer");
        }
    })
    .await
    .expect("an answer");
    assert_error(&r, 504, "upstream_timeout");
    assert_error(&raw_get(gw.addr(), "/x").await, 503, "circuit_open");
}

#[tokio::test]
async fn a_failure_that_ejects_the_last_endpoint_is_answered_as_it_is() {
    let bad = MockUpstream::start(status(502)).await;
    let dead = dead_addr().await;
    let cfg = base_config(
        &(pool(
            "u",
            &[bad.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 1\nejection_time = \"60s\"\n[upstreams.u.retry]\nattempts = 3\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &pool(
            "d",
            &[format!("http://{dead}")],
            "[upstreams.d.passive]\nconsecutive_failures = 1\nejection_time = \"60s\"\n[upstreams.d.retry]\nattempts = 3\n[upstreams.d.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("u", "")
            + "[[routes]]\nauth.anonymous = true\nname = \"d\"\npath_prefix = \"/dead\"\nupstream = \"d\"\n"),
    );
    let gw = TestGateway::start(&cfg).await;
    // The upstream's own 502, not a 503 no_healthy_endpoint from the retry that found
    // nothing left to try.
    let r = raw_get(gw.addr(), "/x").await;
    assert_eq!(r.status, 502);
    assert_ne!(r.json()["code"], "no_healthy_endpoint");
    assert_eq!(bad.count(), 1);
    // Likewise an unreachable one: its own error.
    assert_error(
        &raw_get(gw.addr(), "/dead").await,
        502,
        "upstream_unreachable",
    );
}

#[tokio::test]
async fn a_try_that_hangs_past_per_try_timeout_is_retried_elsewhere() {
    let hanging = MockUpstream::start(Arc::new(|_| Action::Hang)).await;
    let good = MockUpstream::start(echo("good")).await;
    let tuning = "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n[upstreams.u.retry]\nper_try_timeout = \"200ms\"\n";
    let cfg = base_config(
        &(pool("u", &[hanging.url(), good.url()], tuning) + &route("u", "timeout = \"10s\"")),
    );
    let gw = TestGateway::start(&cfg).await;
    let t = Instant::now();
    for _ in 0..4 {
        let r = raw_get(gw.addr(), "/x").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["upstream"], "good");
    }
    assert!(hanging.count() >= 1, "the hanging endpoint had its tries");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no try waited for the route's timeout"
    );
    // Without a retry left, the try's timeout is the answer: 504.
    let one = "[upstreams.u.retry]\nattempts = 1\nper_try_timeout = \"200ms\"\n";
    let cfg = base_config(&(pool("u", &[hanging.url()], one) + &route("u", "timeout = \"10s\"")));
    let gw = TestGateway::start(&cfg).await;
    assert_error(&raw_get(gw.addr(), "/x").await, 504, "upstream_timeout");
}

/// Hangs on `/hang`, answers everything else.
fn hangs_on_hang() -> Handler {
    Arc::new(|s| {
        if s.uri == "/hang" {
            Action::Hang
        } else {
            Action::Respond(json_response(200, serde_json::json!({})))
        }
    })
}

#[tokio::test]
async fn a_half_open_probe_that_times_out_does_not_wedge_the_breaker() {
    let up = MockUpstream::start(hangs_on_hang()).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[up.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 1\nopen_for = \"200ms\"\n",
        ) + &route("u", "timeout = \"200ms\"")),
    );
    let gw = TestGateway::start(&cfg).await;
    assert_error(&raw_get(gw.addr(), "/hang").await, 504, "upstream_timeout");
    assert_error(&raw_get(gw.addr(), "/ok").await, 503, "circuit_open");
    // Once the breaker is half-open, a request that hangs is its probe, and times out.
    eventually(
        "a probe that times out",
        Duration::from_secs(10),
        || async {
            let r = raw_get(gw.addr(), "/hang").await;
            r.status == 504
        },
    )
    .await;
    // The probe's slot was given back: after the breaker's next open period a request
    // is let through again (it was refused as circuit_open forever before).
    eventually(
        "the breaker lets a request through",
        Duration::from_secs(10),
        || async { raw_get(gw.addr(), "/ok").await.status == 200 },
    )
    .await;
}

#[tokio::test]
async fn timeouts_count_towards_passive_ejection() {
    let hanging = MockUpstream::start(Arc::new(|_| Action::Hang)).await;
    let good = MockUpstream::start(echo("good")).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[hanging.url(), good.url()],
            "[upstreams.u.passive]\nconsecutive_failures = 2\nejection_time = \"60s\"\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("u", "timeout = \"200ms\"")),
    );
    let gw = TestGateway::start(&cfg).await;
    let mut timeouts = 0;
    for _ in 0..12 {
        let r = raw_get(gw.addr(), "/x").await;
        if r.status == 504 {
            timeouts += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(timeouts, 2, "ejected after two consecutive timeouts");
    assert_eq!(hanging.count(), 2);
    assert_eq!(good.count(), 10);
}

#[tokio::test]
async fn least_outstanding_avoids_the_busy_endpoint() {
    let h: Handler = Arc::new(|s| {
        if s.uri == "/slow" {
            Action::Hang
        } else {
            Action::Respond(json_response(200, serde_json::json!({})))
        }
    });
    let a = MockUpstream::start(h.clone()).await;
    let b = MockUpstream::start(h).await;
    let cfg = base_config(
        &(pool(
            "u",
            &[a.url(), b.url()],
            "balance = \"least_outstanding\"\n",
        ) + &route("u", "timeout = \"30s\"")),
    );
    let gw = TestGateway::start(&cfg).await;
    let addr = gw.addr();
    let slow = tokio::spawn(async move { raw_get(addr, "/slow").await });
    eventually(
        "slow request reached an endpoint",
        Duration::from_secs(5),
        || async { a.count() + b.count() == 1 },
    )
    .await;
    let busy_is_a = a.count() == 1;
    for _ in 0..10 {
        assert_eq!(raw_get(gw.addr(), "/fast").await.status, 200);
    }
    let (busy, idle) = if busy_is_a { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        busy.count(),
        1,
        "no request went to the endpoint with one outstanding"
    );
    assert_eq!(idle.count(), 10);
    slow.abort();
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&(pool("u", &[up.url()], "") + &route("u", "")));
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..20 {
        assert_eq!(raw_get(gw.addr(), "/x").await.status, 200);
    }
    assert_eq!(up.count(), 20);
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn metrics_describe_requests_by_route_upstream_and_status() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&(pool("metricpool", &[up.url()], "") + "[[routes]]\nauth.anonymous = true\nname = \"metricroute\"\npath_prefix = \"/\"\nupstream = \"metricpool\"\n"));
    let gw = TestGateway::start(&cfg).await;
    raw_get(gw.addr(), "/x").await;
    let (status, text) = admin_get(&gw, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("lienthong_requests_total{route=\"metricroute\",upstream=\"metricpool\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("lienthong_request_duration_seconds_bucket{route=\"metricroute\""));
    assert!(text.contains("lienthong_upstream_endpoint_healthy{upstream=\"metricpool\""));
    assert!(text.contains("lienthong_connections"));
    // The one upstream connection is idle once its exchange is over.
    let idle = format!(
        "lienthong_upstream_idle_connections{{upstream=\"metricpool\",endpoint=\"{}\"}} 1\n",
        up.url()
    );
    eventually(
        "one idle upstream connection",
        Duration::from_secs(5),
        || async { admin_get(&gw, "/metrics").await.1.contains(&idle) },
    )
    .await;
}

/// A TCP listener that accepts connections and never says a word on them (a TLS
/// server stuck before its handshake).
async fn mute_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_failure_on_http2_pools_too() {
    let mute = mute_addr().await;
    let good = MockUpstream::start(echo("good")).await;
    for http2 in ["false", "true"] {
        // The request timeout is far away: a handshake that never ends must be cut at
        // connect_timeout, count as a connect failure and move on to the next endpoint.
        let cfg = base_config(
            &(pool(
                "u",
                &[format!("https://{mute}"), good.url()],
                &format!("http2 = {http2}\nconnect_timeout = \"200ms\"\nrequest_timeout = \"60s\"\n[upstreams.u.passive]\nconsecutive_failures = 0\n"),
            ) + &route("u", "")),
        );
        let gw = TestGateway::start(&cfg).await;
        for i in 0..3 {
            let r = tokio::time::timeout(Duration::from_secs(20), raw_get(gw.addr(), "/x"))
                .await
                .unwrap_or_else(|_| panic!("http2 = {http2}: request {i} waited on the handshake"));
            assert_eq!(r.status, 200, "http2 = {http2}: request {i}");
        }
    }
    assert_eq!(good.count(), 6);
}

/// A raw upstream that reads what it is sent and never answers; it counts the
/// connections that have brought it request bytes and those that have ended.
async fn reading_upstream() -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (started, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s2, e2) = (started.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let (s2, e2) = (s2.clone(), e2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut got = 0;
                let mut counted = false;
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got += n;
                    // The head and some of the body.
                    if got > 1000 && !counted {
                        counted = true;
                        s2.fetch_add(1, Ordering::SeqCst);
                    }
                }
                e2.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, started, ended)
}

#[tokio::test]
async fn a_client_that_breaks_off_its_upload_is_not_charged_to_the_upstream() {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let (up, started, ended) = reading_upstream().await;
    // One failure opens the breaker: a broken-off upload charged to the upstream would
    // refuse the next upload with 503 circuit_open before it reached the upstream.
    let cfg = base_config(
        &(pool(
            "u",
            &[format!("http://{up}")],
            "[upstreams.u.passive]\nconsecutive_failures = 0\n[upstreams.u.retry]\nattempts = 1\n[upstreams.u.circuit_breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\n",
        ) + &route("u", "")),
    );
    let gw = TestGateway::start(&cfg).await;
    for i in 1..=3 {
        let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        c.write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        c.write_all(&[b'x'; 5000]).await.unwrap();
        eventually(
            "the upload reaches the upstream",
            Duration::from_secs(5),
            || async { started.load(Ordering::SeqCst) == i },
        )
        .await;
        // The client goes away mid-body; the gateway gives up the upstream exchange.
        drop(c);
        eventually(
            "the upstream exchange ends",
            Duration::from_secs(5),
            || async { ended.load(Ordering::SeqCst) == i },
        )
        .await;
    }
}
