//! Routing and path normalisation: no encoded or dotted spelling of a path escapes
//! the route that should match it, and the upstream receives the normalised path.

use crate::support::*;

async fn setup() -> (TestGateway, MockUpstream, MockUpstream) {
    setup_with("").await
}

/// [`setup`]'s gateway with `extra` routes after its own.
async fn setup_with(extra: &str) -> (TestGateway, MockUpstream, MockUpstream) {
    let open = MockUpstream::start(echo("open")).await;
    let secret = MockUpstream::start(echo("secret")).await;
    let cfg = base_config(&format!(
        r#"
[upstreams.open]
endpoints = ["{}"]
[upstreams.secret]
endpoints = ["{}"]
[[routes]]
auth.anonymous = true
name = "admin"
path_prefix = "/admin"
methods = ["GET"]
upstream = "secret"
[[routes]]
auth.anonymous = true
name = "public"
path_prefix = "/public"
upstream = "open"
[[routes]]
auth.anonymous = true
name = "v1"
path_prefix = "/api"
rewrite_prefix = "/v1"
upstream = "open"
[[routes]]
auth.anonymous = true
name = "strip"
path_prefix = "/strip/"
strip_prefix = true
upstream = "open"
[[routes]]
auth.anonymous = true
name = "portal"
host = "portal.tinh.gov.vn"
path_prefix = "/"
upstream = "secret"
[[routes]]
auth.anonymous = true
name = "wild"
host = "*.bo.gov.vn"
path_prefix = "/"
upstream = "open"
[[routes]]
auth.anonymous = true
name = "absolute"
path_prefix = "/abs"
allow_absolute_form = true
upstream = "open"
{extra}
"#,
        open.url(),
        secret.url()
    ));
    (TestGateway::start(&cfg).await, open, secret)
}

enum Want {
    /// Reaches this upstream with exactly this path-and-query.
    Up(&'static str, &'static str),
    Status(u16),
}

#[tokio::test]
async fn no_spelling_escapes_its_route() {
    let (gw, _open, _secret) = setup().await;
    use Want::*;
    let cases: &[(&str, Want)] = &[
        ("/admin/x", Up("secret", "/admin/x")),
        ("/admin", Up("secret", "/admin")),
        ("/public/../admin/x", Up("secret", "/admin/x")),
        ("/public/%2e%2e/admin/x", Up("secret", "/admin/x")),
        ("/public/%2E%2E/admin/x", Up("secret", "/admin/x")),
        ("/public/.%2e/admin/x", Up("secret", "/admin/x")),
        ("/public/./../admin/x", Up("secret", "/admin/x")),
        ("//admin//x", Up("secret", "/admin/x")),
        ("/%61dmin/x", Up("secret", "/admin/x")),
        ("/%61%64%6d%69%6e/x", Up("secret", "/admin/x")),
        ("/admin/./x", Up("secret", "/admin/x")),
        ("/admin/x/", Up("secret", "/admin/x/")),
        (
            "/admin/x?q=%2F&r=../y",
            Up("secret", "/admin/x?q=%2F&r=../y"),
        ),
        ("/admin/h%c3%a1", Up("secret", "/admin/h%C3%A1")),
        ("/admin%2fx", Status(400)),
        ("/admin%2Fx", Status(400)),
        ("/public%2f..%2fadmin", Status(400)),
        ("/public/..%2fadmin", Status(400)),
        ("/public/%5c../admin", Status(400)),
        ("/public/..%5cadmin", Status(400)),
        ("/public/..;/admin", Status(400)),
        ("/public/.;x/../admin", Status(400)),
        ("/public/%252e%252e/admin", Status(400)),
        ("/public/%25%32%65%25%32%65/admin", Status(400)),
        ("/public/%00/admin", Status(400)),
        ("/public/%2", Status(400)),
        ("/public/../../admin", Status(400)),
        ("/..", Status(400)),
        ("/adminx", Status(404)),
        ("/ADMIN/x", Status(404)),
        ("/public/x", Up("open", "/public/x")),
        ("/public/admin/../x", Up("open", "/public/x")),
        ("/api/users?id=1", Up("open", "/v1/users?id=1")),
        ("/api", Up("open", "/v1")),
        ("/strip/a/b", Up("open", "/a/b")),
        ("/strip", Up("open", "/")),
    ];
    for (target, want) in cases {
        let r = raw_get(gw.addr(), target).await;
        match want {
            Up(name, path) => {
                assert_eq!(
                    r.status,
                    200,
                    "{target}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                let j = r.json();
                assert_eq!(j["upstream"], *name, "{target} reached the wrong upstream");
                assert_eq!(j["uri"], *path, "{target} arrived with the wrong path");
            }
            Status(code) => {
                assert_eq!(
                    r.status,
                    *code,
                    "{target}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                // hyper refuses some bytes before our code runs; ours carry the JSON contract.
                if !r.body.is_empty() {
                    let code_str = r.json()["code"].as_str().unwrap().to_string();
                    assert!(!code_str.is_empty());
                }
            }
        }
    }
}

#[tokio::test]
async fn literal_backslash_is_refused() {
    let (gw, _o, secret) = setup().await;
    let r = raw_get(gw.addr(), "/public/..\\admin").await;
    assert_eq!(r.status, 400);
    assert_eq!(secret.count(), 0);
}

#[tokio::test]
async fn wrong_method_on_a_dotted_path_gets_the_target_routes_rules() {
    let (gw, _o, secret) = setup().await;
    let r = raw(
        gw.addr(),
        b"POST /public/../admin/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(secret.count(), 0);
}

/// Servers that drop a segment's `;…` parameters also merge the empty segment that
/// leaves: `/;x/admin` is `/admin` to them. Behind a catch-all route, that spelling must
/// not reach the admin upstream under the catch-all's rules (here: any method).
#[tokio::test]
async fn an_empty_segment_with_parameters_does_not_escape_its_route() {
    let (gw, _open, secret) = setup_with(
        "[[routes]]\nauth.anonymous = true\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"open\"",
    )
    .await;
    for target in [
        "/;x/admin/users",
        "/;/admin",
        "/a/..;x/;y/admin",
        "/;x/;y/admin",
    ] {
        let r = raw_get(gw.addr(), target).await;
        assert_eq!(
            r.status,
            400,
            "{target}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Parameters that do not change the route are fine.
    let r = raw_get(gw.addr(), "/docs;v=1/x").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(secret.count(), 0);
}

/// Methods are case-sensitive: `post` is another method than `POST` to the admin route's
/// method list, and an upstream comparing without case would run it as a POST. Refused.
#[tokio::test]
async fn a_lower_case_method_is_refused() {
    let (gw, open, secret) = setup().await;
    for head in [
        "post /admin/x HTTP/1.1",
        "Get /public/x HTTP/1.1",
        "delete /public/x HTTP/1.1",
    ] {
        let req = format!("{head}\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let r = raw(gw.addr(), req.as_bytes()).await;
        assert_error(&r, 400, "bad_method");
    }
    assert_eq!(secret.count() + open.count(), 0);
    // Upper-case extension methods still go through.
    let r = raw(
        gw.addr(),
        b"PROPFIND /public/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let (gw, _o, _s) = setup().await;
    let r = raw_get(gw.addr(), "/nowhere").await;
    assert_error(&r, 404, "no_route");
}

#[tokio::test]
async fn host_routing_exact_wildcard_and_port() {
    let (gw, _o, _s) = setup().await;
    let go = |host: &'static str| {
        let addr = gw.addr();
        async move {
            raw(
                addr,
                format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
        }
    };
    assert_eq!(go("portal.tinh.gov.vn").await.json()["upstream"], "secret");
    assert_eq!(
        go("PORTAL.tinh.gov.vn:8443").await.json()["upstream"],
        "secret"
    );
    assert_eq!(go("so-tp.bo.gov.vn").await.json()["upstream"], "open");
    assert_eq!(go("bo.gov.vn").await.status, 404);
    assert_eq!(go("evil.com").await.status, 404);
    let r = raw(gw.addr(), b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_error(&r, 400, "bad_host");
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn absolute_form_only_where_the_route_allows_it() {
    let (gw, _o, secret) = setup().await;
    let r = raw(
        gw.addr(),
        b"GET http://portal.tinh.gov.vn/admin/x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "absolute_form_not_allowed");
    assert_eq!(secret.count(), 0);
    let r = raw(
        gw.addr(),
        b"GET http://test.local/abs/%2e%2e/abs/y HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["uri"], "/abs/y");
    assert_eq!(j["headers"]["host"], "test.local");
}

#[tokio::test]
async fn connect_and_asterisk_are_refused() {
    let (gw, _o, _s) = setup().await;
    let r = raw(
        gw.addr(),
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    assert_error(&r, 405, "connect_not_allowed");
    let r = raw(
        gw.addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "bad_target");
}
