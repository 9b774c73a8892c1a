//! Lookups through the gateway: the shipped administrative-unit table, ETag
//! revalidation, access rules, an upstream-fed lookup (coalescing, serve-stale, errors
//! not cached) and admin purge/refresh.

use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn repo(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn shipped_admin_units_are_served_with_etag_revalidation() {
    let cfg = base_config(&format!(
        r#"
[[lookups]]
name = "provinces"
source = {{ file = "{data}", table = "provinces" }}
auth = {{ anonymous = true }}
[[lookups]]
name = "communes-old-to-new"
source = {{ file = "{data}", table = "communes-old-to-new" }}
auth = {{ anonymous = true }}
[[lookups]]
name = "private"
source = {{ file = "{data}", table = "communes" }}
auth = {{ agencies = ["*.H22"] }}
{issuer}"#,
        data = repo("config/data/dvhc-2025.csv"),
        issuer = dev_issuer(),
    ));
    let gw = TestGateway::start(&cfg).await;
    let all = raw_get(gw.addr(), "/lookups/provinces").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json().as_array().unwrap().len(), 34);
    assert!(all
        .header("cache-control")
        .unwrap()
        .starts_with("public, max-age="));
    let hn = raw_get(gw.addr(), "/lookups/provinces/01").await;
    assert_eq!(hn.status, 200);
    assert_eq!(hn.json()["name"], "Thành phố Hà Nội");
    let etag = hn.header("etag").unwrap().to_string();
    let again = raw(
        gw.addr(),
        format!("GET /lookups/provinces/01 HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_error(
        &raw_get(gw.addr(), "/lookups/provinces/99").await,
        404,
        "not_found",
    );
    let r = raw(gw.addr(), b"POST /lookups/provinces/01 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_error(&r, 405, "method_not_allowed");
    // An old commune code converts to the new one(s).
    let conv = raw_get(gw.addr(), "/lookups/communes-old-to-new")
        .await
        .json();
    let first_old = conv.as_array().unwrap()[0]["old_code"]
        .as_str()
        .unwrap()
        .to_string();
    let one = raw_get(
        gw.addr(),
        &format!("/lookups/communes-old-to-new/{first_old}"),
    )
    .await;
    assert_eq!(one.status, 200);
    assert!(one.json().as_array().is_some_and(|a| !a.is_empty()));
    // Lookups follow the access rules: a private lookup needs a token.
    assert_error(
        &raw_get(gw.addr(), "/lookups/private/00004").await,
        401,
        "invalid_token",
    );
}

#[tokio::test]
async fn upstream_lookup_coalesces_serves_stale_and_never_caches_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (c, f) = (calls.clone(), failing.clone());
    let src = MockUpstream::start(Arc::new(move |s: &Seen| {
        c.fetch_add(1, Ordering::SeqCst);
        if f.load(Ordering::SeqCst) {
            return Action::Respond(json_response(500, serde_json::json!({})));
        }
        if s.uri.ends_with("/missing") {
            return Action::Respond(json_response(404, serde_json::json!({})));
        }
        Action::Delay(
            Duration::from_millis(100),
            json_response(
                200,
                serde_json::json!({"ma": s.uri.rsplit('/').next(), "ten": "Cấp giấy phép"}),
            ),
        )
    }))
    .await;
    let cfg = base_config(&format!(
        r#"
[upstreams.catalogue]
endpoints = ["{}"]
[upstreams.catalogue.retry]
attempts = 1
[upstreams.catalogue.passive]
consecutive_failures = 0
[upstreams.catalogue.circuit_breaker]
consecutive_failures = 0
[[lookups]]
name = "thutuc"
source = {{ upstream = "catalogue", path = "/thutuc/{{key}}" }}
ttl = "300ms"
max_stale = "60s"
auth = {{ anonymous = true }}
"#,
        src.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = gw.addr();
        tasks.push(tokio::spawn(async move {
            raw_get(addr, "/lookups/thutuc/1.000123").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "200 concurrent cold requests made one source call"
    );
    // Source fails after expiry: the last good value is served, marked stale.
    failing.store(true, Ordering::SeqCst);
    eventually("stale copy served", Duration::from_secs(5), || async {
        let r = raw_get(gw.addr(), "/lookups/thutuc/1.000123").await;
        r.status == 200 && r.header("x-lienthong-stale") == Some("true")
    })
    .await;
    // A key never fetched fails, and the failure is not cached.
    let before = calls.load(Ordering::SeqCst);
    assert_error(
        &raw_get(gw.addr(), "/lookups/thutuc/2.000999").await,
        503,
        "lookup_unavailable",
    );
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        raw_get(gw.addr(), "/lookups/thutuc/2.000999").await.status,
        200
    );
    assert!(calls.load(Ordering::SeqCst) >= before + 2);
    assert_error(
        &raw_get(gw.addr(), "/lookups/thutuc/missing").await,
        404,
        "not_found",
    );

    // Admin: stats, purge and forced refresh.
    let (status, stats) = admin_get(&gw, "/admin/lookups").await;
    assert_eq!(status, 200);
    assert!(stats.contains("\"thutuc\""), "{stats}");
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(
        admin_post(&gw, "/admin/lookups/thutuc/refresh?key=1.000123")
            .await
            .0,
        200
    );
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    // A key is purged however its escapes are spelled (as the public path reads it),
    // and a key that cannot be one is a 400, not a purge that did nothing.
    assert_eq!(
        admin_post(&gw, "/admin/lookups/thutuc/purge?key=1%2E000123")
            .await
            .0,
        200
    );
    assert_eq!(
        raw_get(gw.addr(), "/lookups/thutuc/1.000123").await.status,
        200
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 2,
        "purged, so fetched again"
    );
    let (status, body) = admin_post(&gw, "/admin/lookups/thutuc/purge?key=").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_key"), "{body}");
    assert_eq!(admin_post(&gw, "/admin/lookups/thutuc/purge").await.0, 200);
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("lienthong_lookup_source_calls{lookup=\"thutuc\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_with_escapes_reaches_the_source_encoded_once() {
    let src = MockUpstream::start(Arc::new(|s: &Seen| {
        Action::Respond(json_response(200, serde_json::json!({"uri": s.uri})))
    }))
    .await;
    let cfg = base_config(&format!(
        "[upstreams.src]\nendpoints = [\"{}\"]\n[[lookups]]\nname = \"ten\"\n\
         source = {{ upstream = \"src\", path = \"/ten/{{key}}\" }}\nttl = \"60s\"\n\
         auth = {{ anonymous = true }}\n",
        src.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let r = raw_get(gw.addr(), "/lookups/ten/h%c3%a0%20n%E1%BB%99i").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(src.last().uri, "/ten/h%C3%A0%20n%E1%BB%99i");
    // Escapes that are not UTF-8 text are refused before routing (any path, any route).
    assert_error(
        &raw_get(gw.addr(), "/lookups/ten/%FF").await,
        400,
        "bad_path",
    );
}

#[tokio::test]
async fn response_cache_serves_hits_and_isolates_callers() {
    let up = MockUpstream::start(Arc::new(|s: &Seen| {
        let mut r = json_response(
            200,
            serde_json::json!({"for": s.header("x-lienthong-caller-agency"), "uri": s.uri}),
        );
        let cc = if s.uri.contains("nostore") {
            "no-store"
        } else {
            "max-age=60"
        };
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
        if s.uri.contains("vary") {
            // What the gateway sets on the way up, not what the client sent.
            r.headers_mut()
                .insert("vary", "X-Forwarded-For".parse().unwrap());
        }
        Action::Respond(r)
    }))
    .await;
    let cfg = base_config(&format!(
        r#"
{issuer}[upstreams.u]
endpoints = ["{url}"]
[[routes]]
name = "shared"
path_prefix = "/shared"
upstream = "u"
auth = {{ anonymous = true }}
cache = {{ public = true }}
[[routes]]
name = "percaller"
path_prefix = "/percaller"
upstream = "u"
auth = {{}}
cache = {{}}
"#,
        issuer = dev_issuer(),
        url = up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let a = raw_get(gw.addr(), "/shared/catalogue").await;
    assert_eq!(a.header("x-lienthong-cache"), Some("miss"));
    let b = raw_get(gw.addr(), "/shared/catalogue").await;
    assert_eq!(b.status, 200);
    assert_eq!(b.header("x-lienthong-cache"), Some("hit"));
    assert!(b.header("age").is_some());
    assert_eq!(a.body, b.body);
    assert_eq!(up.count(), 1);
    raw_get(gw.addr(), "/shared/nostore").await;
    raw_get(gw.addr(), "/shared/nostore").await;
    assert_eq!(up.count(), 3, "no-store answers are not cached");
    // The host as the upstream is told it, port included, keys the entry: an answer
    // for `t:1` (its links, its redirects) is not one for `t`.
    let other_port = |_| {
        raw(
            gw.addr(),
            b"GET /shared/catalogue HTTP/1.1\r\nHost: t:1\r\nConnection: close\r\n\r\n",
        )
    };
    assert_eq!(
        other_port(()).await.header("x-lienthong-cache"),
        Some("miss")
    );
    assert_eq!(
        other_port(()).await.header("x-lienthong-cache"),
        Some("hit")
    );
    assert_eq!(up.count(), 4);
    // A GET with a body is neither answered from the cache nor stored.
    let with_body = raw(
        gw.addr(),
        b"GET /shared/catalogue HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(with_body.status, 200);
    assert_eq!(with_body.header("x-lienthong-cache"), None);
    assert_eq!(up.count(), 5);
    // An answer that varies on a field the gateway sets is not stored.
    raw_get(gw.addr(), "/shared/vary").await;
    raw_get(gw.addr(), "/shared/vary").await;
    assert_eq!(
        up.count(),
        7,
        "answers varying on X-Forwarded-For are not cached"
    );

    // Per-caller entries: agency A's answer is never served to agency B.
    let key = std::fs::read(repo("config/dev/dev-issuer.key.pem")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tok = |agency: &str| {
        let claims = serde_json::json!({"iss": "lienthong-dev", "aud": "lienthong", "sub": "s", "iat": now, "exp": now + 600, "agency": agency});
        lienthong::auth::jwt::mint(&key, jsonwebtoken::Algorithm::EdDSA, claims, None).unwrap()
    };
    let get = |t: String| {
        let addr = gw.addr();
        async move {
            raw(addr, format!("GET /percaller/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await
        }
    };
    let before = up.count();
    let a1 = get(tok("000.00.01.H22")).await;
    let b1 = get(tok("000.00.02.H23")).await;
    let a2 = get(tok("000.00.01.H22")).await;
    assert_eq!(a1.json()["for"], "000.00.01.H22");
    assert_eq!(
        b1.json()["for"],
        "000.00.02.H23",
        "B got its own answer, not A's"
    );
    assert_eq!(a2.header("x-lienthong-cache"), Some("hit"));
    assert_eq!(a2.json()["for"], "000.00.01.H22");
    assert_eq!(up.count(), before + 2);
}
