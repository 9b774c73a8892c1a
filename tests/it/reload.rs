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
