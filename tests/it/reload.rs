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
