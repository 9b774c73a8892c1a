//! Reload (admin API) and graceful shutdown, in process.

use crate::support::*;
use std::sync::Arc;
use std::time::Duration;

fn config(upstream: &str, prefix: &str) -> String {
    base_config(&format!(
        "[upstreams.u]\nendpoints = [\"{upstream}\"]\n[[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"{prefix}\"\nupstream = \"u\"\n"
    ))
}

#[tokio::test]
async fn reload_swaps_config_and_rejects_invalid_ones() {
    let a = MockUpstream::start(echo("a")).await;
    let b = MockUpstream::start(echo("b")).await;
    let gw = TestGateway::start(&config(&a.url(), "/one")).await;
    assert_eq!(raw_get(gw.addr(), "/one").await.json()["upstream"], "a");
    assert_eq!(raw_get(gw.addr(), "/two").await.status, 404);

    std::fs::write(&gw.config_path, config(&b.url(), "/two")).unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw_get(gw.addr(), "/two").await.json()["upstream"], "b");
    assert_eq!(raw_get(gw.addr(), "/one").await.status, 404);

    // An invalid file is reported with key paths and changes nothing.
    std::fs::write(
        &gw.config_path,
        config(&b.url(), "/three").replace("[[routes]]", "[[routes]]\ntimeout = \"soon\""),
    )
    .unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 422);
    assert!(body.contains("routes[0].timeout"), "{body}");
    assert_eq!(raw_get(gw.addr(), "/two").await.json()["upstream"], "b");
    assert_eq!(raw_get(gw.addr(), "/three").await.status, 404);

    // A listener setting fixed when its socket was bound is refused, not silently
    // kept: here the connection limit.
    std::fs::write(
        &gw.config_path,
        config(&b.url(), "/three").replace(
            "header_read_timeout = \"2s\"",
            "header_read_timeout = \"2s\"\nmax_connections = 7",
        ),
    )
    .unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("restart instead"), "{body}");
    assert_eq!(raw_get(gw.addr(), "/three").await.status, 404);
    // So is the log filter, set up once at start.
    std::fs::write(
        &gw.config_path,
        config(&b.url(), "/three").replace(
            "access_log = false",
            "access_log = false\nlevel = \"debug\"",
        ),
    )
    .unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("log.level"), "{body}");

    // The running config is visible on the admin listener.
    let (status, body) = admin_get(&gw, "/admin/config").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"/two\""));
}

#[tokio::test]
async fn a_reload_that_moves_a_token_endpoint_rebuilds_the_pools_that_use_it() {
    let idp = |tok: &'static str| {
        MockUpstream::start(Arc::new(move |_s: &Seen| {
            Action::Respond(json_response(
                200,
                serde_json::json!({"access_token": tok, "expires_in": 3600}),
            ))
        }))
    };
    let (idp1, idp2) = (idp("tok-1").await, idp("tok-2").await);
    let api = MockUpstream::start(echo_authorization()).await;
    std::env::set_var("LIENTHONG_TEST_RELOAD_SECRET", "x");
    let cfg = |idp: &MockUpstream| {
        base_config(&format!(
            "[upstreams.idp]\nendpoints = [\"{}\"]\n[upstreams.api]\nendpoints = [\"{}\"]\n\
             [upstreams.api.credentials]\ntype = \"oauth2\"\ntoken_upstream = \"idp\"\n\
             client_id = \"gw\"\nclient_secret = {{ env = \"LIENTHONG_TEST_RELOAD_SECRET\" }}\n\
             [[routes]]\nauth.anonymous = true\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"api\"\n",
            idp.url(),
            api.url()
        ))
    };
    let gw = TestGateway::start(&cfg(&idp1)).await;
    assert_eq!(
        raw_get(gw.addr(), "/x").await.json()["auth"],
        "Bearer tok-1"
    );
    // Only the token upstream moves; `api`'s own config is unchanged.
    std::fs::write(&gw.config_path, cfg(&idp2)).unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        raw_get(gw.addr(), "/x").await.json()["auth"],
        "Bearer tok-2"
    );
    assert_eq!(idp1.count(), 1);
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let slow_a: Handler = Arc::new(|_| {
        Action::Delay(
            Duration::from_millis(600),
            json_response(200, serde_json::json!({"upstream": "a"})),
        )
    });
    let a = MockUpstream::start(slow_a).await;
    let b = MockUpstream::start(echo("b")).await;
    let gw = TestGateway::start(&config(&a.url(), "/")).await;
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move { raw_get(addr, "/x").await });
    eventually("request reached a", Duration::from_secs(5), || async {
        a.count() == 1
    })
    .await;
    std::fs::write(&gw.config_path, config(&b.url(), "/")).unwrap();
    assert_eq!(admin_post(&gw, "/admin/reload").await.0, 200);
    assert_eq!(raw_get(gw.addr(), "/x").await.json()["upstream"], "b");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "a");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let slow: Handler = Arc::new(|_| {
        Action::Delay(
            Duration::from_millis(500),
            json_response(200, serde_json::json!({"done": true})),
        )
    });
    let up = MockUpstream::start(slow).await;
    let mut gw = TestGateway::start(&config(&up.url(), "/")).await;
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move { raw_get(addr, "/x").await });
    eventually("request in flight", Duration::from_secs(5), || async {
        up.count() == 1
    })
    .await;
    let done = gw.shutdown();
    eventually("listener closed", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["done"], true);
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .unwrap()
        .unwrap();
}

/// The admin API has no credentials of its own, so a web page on the admin host must not
/// reach it (a request with `Origin`, or addressed to a name that is not the host's), and
/// it answers refusals with the JSON error body and a request id like the gateway does.
#[tokio::test]
async fn the_admin_api_refuses_web_pages_and_bad_parameters_with_json_errors() {
    let a = MockUpstream::start(echo("a")).await;
    let gw = TestGateway::start(&config(&a.url(), "/one")).await;
    let ok = admin_raw(&gw, "GET", "/admin/upstreams", "").await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("x-request-id").is_some());
    // A page's cross-site request (forms included) carries an Origin.
    let r = admin_raw(
        &gw,
        "POST",
        "/admin/reload",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_error(&r, 403, "cross_origin");
    // DNS rebinding: a name of the attacker's pointed at 127.0.0.1.
    let addr = gw.admin.unwrap();
    let rebound = raw(
        addr,
        b"GET /admin/audit/records HTTP/1.1\r\nHost: evil.example:9090\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&rebound, 403, "host_not_allowed");
    let local = raw(
        addr,
        format!(
            "GET /health/live HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(local.status, 200);
    // Parameters that do not parse are refused, not dropped (which would widen the query),
    // and one answer holds at most 1000 records.
    for q in ["status=5O3", "limit=100000", "from_index=x", "limit=-1"] {
        let r = admin_raw(&gw, "GET", &format!("/admin/audit/records?{q}"), "").await;
        assert_error(&r, 400, "bad_parameter");
    }
    let r = admin_raw(&gw, "GET", "/admin/audit/records?limit=2&status=200", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().as_array().unwrap().len() <= 2);
    // A known endpoint with another method: 405 and Allow; an unknown one: 404.
    let r = admin_raw(&gw, "POST", "/metrics", "").await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    assert_error(
        &admin_raw(&gw, "GET", "/admin/nope", "").await,
        404,
        "not_found",
    );

    // Every /admin/ request leaves an `admin` audit record, refused ones included, under
    // the request id it was answered with; probes do not.
    let refused = admin_raw(
        &gw,
        "POST",
        "/admin/reload",
        "Origin: https://evil.example\r\n",
    )
    .await;
    let rid = refused.header("x-request-id").unwrap().to_string();
    let db = gw.config_path.parent().unwrap().join("audit.db");
    eventually("admin records written", Duration::from_secs(5), || {
        let db = db.clone();
        let rid = rid.clone();
        async move {
            let recs = lienthong::audit::writer::query(
                &db,
                &lienthong::store::audit::Filter {
                    kind: Some(lienthong::audit::record::RecordKind::Admin),
                    limit: Some(1000),
                    ..Default::default()
                },
            )
            .unwrap_or_default();
            let of = |path: &str| {
                recs.iter()
                    .filter(|(_, r)| r.path.as_ref().is_some_and(|p| p.as_str() == path))
                    .count()
            };
            recs.iter().any(|(_, r)| {
                r.request_id == rid
                    && r.status == Some(403)
                    && r.error.as_ref().is_some_and(|e| e.kind == "cross_origin")
            }) && of("/admin/upstreams") == 1
                && of("/admin/nope") == 1
                && of("/health/live") == 0
        }
    })
    .await;
}

/// At the drain timeout the connections still open are closed (not left running until
/// the process ends, with the audit log already closed under them), and their records
/// reach the audit log first.
#[tokio::test]
async fn connections_still_open_at_the_drain_timeout_are_closed() {
    let hang: Handler = Arc::new(|_: &Seen| Action::Hang);
    let up = MockUpstream::start(hang).await;
    let cfg = format!(
        "[server]\ndrain_timeout = \"300ms\"\n{}",
        config(&up.url(), "/")
    );
    let mut gw = TestGateway::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    eventually("request in flight", Duration::from_secs(5), || async {
        up.count() == 1
    })
    .await;
    let done = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("the shutdown ends after the drain timeout")
        .unwrap();
    // The client's connection is closed by now, not held until the process exits.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("the connection is closed, not left open")
    .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}

/// Gauges read on scrape (pools, endpoints, lookups) describe the running config: a
/// pool a reload removed is gone from the next scrape instead of being reported with
/// its last value for good.
#[tokio::test]
async fn a_reload_drops_the_gauges_of_the_pools_it_removed() {
    let a = MockUpstream::start(echo("a")).await;
    let b = MockUpstream::start(echo("b")).await;
    let cfg = |with_gone: bool| {
        let mut c = config(&a.url(), "/one");
        if with_gone {
            c = c.replace(
                "[[routes]]",
                &format!(
                    "[upstreams.gone]\nendpoints = [\"{}\"]\n[[routes]]\nauth.anonymous = true\n\
                     name = \"g\"\npath_prefix = \"/gone\"\nupstream = \"gone\"\n[[routes]]",
                    b.url()
                ),
            );
        }
        c
    };
    let gw = TestGateway::start(&cfg(true)).await;
    let gone = format!(
        "lienthong_upstream_outstanding{{upstream=\"gone\",endpoint=\"{}\"}} 0\n",
        b.url()
    );
    let (_, text) = admin_get(&gw, "/metrics").await;
    assert!(text.contains(&gone), "{text}");
    assert!(text.contains("lienthong_upstream_circuit_open{upstream=\"gone\"} 0\n"));
    for family in [
        "lienthong_upstream_circuit_open",
        "lienthong_upstream_endpoint_healthy",
        "lienthong_upstream_outstanding",
    ] {
        let head = format!("# TYPE {family} gauge\n");
        assert_eq!(text.matches(&head).count(), 1, "{family}: {text}");
    }
    std::fs::write(&gw.config_path, cfg(false)).unwrap();
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = admin_get(&gw, "/metrics").await;
    assert!(!text.contains("upstream=\"gone\""), "{text}");
    assert!(text.contains("lienthong_upstream_circuit_open{upstream=\"u\"} 0\n"));
}
