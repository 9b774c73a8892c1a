//! Authentication and authorisation through the gateway, JWKS rotation through an
//! upstream, and the credentials lienthong presents upstream.

use crate::support::*;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A throwaway Ed25519 key: PKCS#8 PEM for minting, JWK for publishing.
struct TestKey {
    pem: Vec<u8>,
    kid: String,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> TestKey {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let pem =
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n").into_bytes();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key().as_ref());
    TestKey {
        pem,
        kid: kid.into(),
        jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(k: &TestKey, iss: &str, extra: serde_json::Value) -> String {
    let mut claims = serde_json::json!({
        "iss": iss, "aud": "lienthong", "sub": "officer-7", "iat": now(), "exp": now() + 600,
        "agency": "000.00.01.H22", "roles": ["reader"], "scope": "hoso.read",
    });
    for (k2, v) in extra.as_object().unwrap() {
        claims[k2] = v.clone();
    }
    lienthong::auth::jwt::mint(&k.pem, jsonwebtoken::Algorithm::EdDSA, claims, Some(&k.kid))
        .unwrap()
}

fn get_with(path: &str, bearer: Option<&str>, extra: &str) -> Vec<u8> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}{extra}Connection: close\r\n\r\n").into_bytes()
}

/// `k`'s public key as a SubjectPublicKeyInfo PEM, the form `public_key` reads.
fn public_pem(k: &TestKey) -> String {
    let kp = Ed25519KeyPair::from_pkcs8(
        &base64::engine::general_purpose::STANDARD
            .decode(std::str::from_utf8(&k.pem).unwrap().lines().nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    // SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix + the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(kp.public_key().as_ref());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki)
    )
}

/// A gateway trusting `k` as the static key of issuer `idp`, with `rest` of the config.
async fn issuer_gateway(k: &TestKey, rest: &str) -> TestGateway {
    let dir = scratch_dir();
    std::fs::write(dir.join("issuer.pub.pem"), public_pem(k)).unwrap();
    let cfg = base_config(&format!(
        r#"
[[auth.issuers]]
name = "idp"
iss = "https://idp.tinh.gov.vn"
audiences = ["lienthong"]
algorithms = ["EdDSA"]
public_key = "issuer.pub.pem"
kid = "{kid}"
{rest}"#,
        kid = k.kid,
    ));
    let path = dir.join("lienthong.toml");
    std::fs::write(&path, cfg).unwrap();
    TestGateway::start_file(path).await
}

async fn static_issuer_gateway(up: &MockUpstream, k: &TestKey) -> TestGateway {
    let rest = format!(
        r#"
[upstreams.u]
endpoints = ["{url}"]
[[routes]]
name = "h22"
path_prefix = "/h22"
upstream = "u"
auth = {{ agencies = ["*.H22"], roles = ["reader"] }}
[[routes]]
name = "fwd"
path_prefix = "/fwd"
upstream = "u"
auth = {{ forward_token = true }}
[[routes]]
name = "scoped"
path_prefix = "/scoped"
upstream = "u"
auth = {{ scopes = ["hoso.write"] }}
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "u"
auth = {{ anonymous = true }}
[[routes]]
name = "undeclared"
path_prefix = "/undeclared"
upstream = "u"
"#,
        url = up.url()
    );
    issuer_gateway(k, &rest).await
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401_with_the_json_contract() {
    let up = MockUpstream::start(echo("up")).await;
    let k = key("k1");
    let gw = static_issuer_gateway(&up, &k).await;
    // No bearer token, none at all or another scheme: the challenge names the scheme
    // only (RFC 6750 §3.1).
    for extra in ["", "Authorization: Basic dTpw\r\n"] {
        let r = raw(gw.addr(), &get_with("/h22/x", None, extra)).await;
        assert_error(&r, 401, "invalid_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{extra}");
    }
    let r = raw(gw.addr(), &get_with("/h22/x", Some("not.a.token"), "")).await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let other = key("k1");
    let r = raw(
        gw.addr(),
        &get_with(
            "/h22/x",
            Some(&token(
                &other,
                "https://idp.tinh.gov.vn",
                serde_json::json!({}),
            )),
            "",
        ),
    )
    .await;
    assert_error(&r, 401, "invalid_token");
    let t = token(&k, "https://idp.tinh.gov.vn", serde_json::json!({}));
    let two = format!("Authorization: Bearer {t}\r\n");
    let r = raw(gw.addr(), &get_with("/h22/x", Some(&t), &two)).await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(up.count(), 0);
    // A route without an auth table denies everyone, even with a valid token.
    let r = raw(gw.addr(), &get_with("/undeclared/x", Some(&t), "")).await;
    assert_error(&r, 403, "forbidden");
    // The token never shows up in the response.
    assert!(!String::from_utf8_lossy(&r.body).contains(&t[..20]));
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("lienthong_auth_failures_total{reason=\"missing_token\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn valid_callers_pass_with_identity_headers_and_others_get_403() {
    let up = MockUpstream::start(echo("up")).await;
    let k = key("k1");
    let gw = static_issuer_gateway(&up, &k).await;
    let t = token(&k, "https://idp.tinh.gov.vn", serde_json::json!({}));
    let r = raw(
        gw.addr(),
        &get_with(
            "/h22/x",
            Some(&t),
            "X-Lienthong-Caller-Agency: 000.00.01.G01\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(
        seen.header("x-lienthong-caller-agency"),
        Some("000.00.01.H22")
    );
    assert_eq!(seen.header("x-lienthong-caller-subject"), Some("officer-7"));
    assert_eq!(seen.header("x-lienthong-caller-roles"), Some("reader"));
    assert_eq!(seen.header("x-lienthong-caller-issuer"), Some("idp"));
    assert!(
        seen.header("authorization").is_none(),
        "the raw token is not forwarded by default"
    );
    // forward_token routes pass it on.
    raw(gw.addr(), &get_with("/fwd/x", Some(&t), "")).await;
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {t}").as_str())
    );
    // Another province's agency, a missing role, a missing scope: 403.
    let g01 = token(
        &k,
        "https://idp.tinh.gov.vn",
        serde_json::json!({"agency": "000.00.01.G01"}),
    );
    assert_error(
        &raw(gw.addr(), &get_with("/h22/x", Some(&g01), "")).await,
        403,
        "forbidden",
    );
    let norole = token(
        &k,
        "https://idp.tinh.gov.vn",
        serde_json::json!({"roles": []}),
    );
    assert_error(
        &raw(gw.addr(), &get_with("/h22/x", Some(&norole), "")).await,
        403,
        "forbidden",
    );
    assert_error(
        &raw(gw.addr(), &get_with("/scoped/x", Some(&t), "")).await,
        403,
        "forbidden",
    );
    // Anonymous routes need nothing.
    assert_eq!(
        raw(gw.addr(), &get_with("/public/x", None, ""))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn certificate_bound_token_without_the_certificate_is_403() {
    let up = MockUpstream::start(echo("up")).await;
    let k = key("k1");
    let gw = static_issuer_gateway(&up, &k).await;
    let thumb = lienthong::server::cert_thumbprint(b"some agency certificate");
    let bound = token(
        &k,
        "https://idp.tinh.gov.vn",
        serde_json::json!({"cnf": {"x5t#S256": thumb}}),
    );
    let r = raw(gw.addr(), &get_with("/h22/x", Some(&bound), "")).await;
    assert_error(&r, 403, "forbidden");
    assert_eq!(up.count(), 0);
}

/// A JWKS endpoint whose document the test can change, take down, and count.
struct Jwks {
    up: MockUpstream,
    doc: Arc<Mutex<serde_json::Value>>,
    down: Arc<Mutex<bool>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_upstream(keys: &[&TestKey]) -> Jwks {
    let doc = Arc::new(Mutex::new(
        serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
    ));
    let down = Arc::new(Mutex::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, dn, f) = (doc.clone(), down.clone(), fetches.clone());
    let up = MockUpstream::start(Arc::new(move |s: &Seen| {
        if s.uri.starts_with("/.well-known/jwks.json") {
            f.fetch_add(1, Ordering::SeqCst);
            if *dn.lock().unwrap() {
                return Action::Respond(json_response(503, serde_json::json!({})));
            }
            return Action::Respond(json_response(200, d.lock().unwrap().clone()));
        }
        Action::Respond(json_response(200, serde_json::json!({"ok": true})))
    }))
    .await;
    Jwks {
        up,
        doc,
        down,
        fetches,
    }
}

/// A gateway whose issuer `idp` takes its keys from `jwks` (with the key-set `timing`
/// options), guarding one route to an echo upstream.
async fn jwks_gateway(jwks: &Jwks, timing: &str) -> (TestGateway, MockUpstream) {
    let api = MockUpstream::start(echo("api")).await;
    let cfg = base_config(&format!(
        r#"
[[auth.issuers]]
name = "idp"
iss = "https://idp"
audiences = ["lienthong"]
algorithms = ["EdDSA"]
jwks = {{ upstream = "idp", path = "/.well-known/jwks.json", {timing} }}
[upstreams.idp]
endpoints = ["{idp}"]
[upstreams.api]
endpoints = ["{api}"]
[[routes]]
name = "api"
path_prefix = "/"
upstream = "api"
auth = {{}}
"#,
        idp = jwks.up.url(),
        api = api.url()
    ));
    (TestGateway::start(&cfg).await, api)
}

/// Key sets are fetched when the config is loaded, not by the first token that needs
/// them, and the gateway is not ready until each has been fetched or tried.
#[tokio::test]
async fn key_sets_are_fetched_at_startup_and_readiness_waits_for_them() {
    let k1 = key("k1");
    let doc = serde_json::json!({"keys": [k1.jwk.clone()]});
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    // The key source takes its time answering, as a slow IdP does.
    let up = MockUpstream::start(Arc::new(move |_s: &Seen| {
        f.fetch_add(1, Ordering::SeqCst);
        Action::Delay(Duration::from_secs(2), json_response(200, doc.clone()))
    }))
    .await;
    let jwks = Jwks {
        up,
        doc: Default::default(),
        down: Default::default(),
        fetches,
    };
    let (gw, _api) = jwks_gateway(&jwks, r#"refresh_interval = "1h""#).await;
    assert_eq!(admin_get(&gw, "/health/ready").await.0, 503);
    eventually("ready", Duration::from_secs(10), || async {
        admin_get(&gw, "/health/ready").await.0 == 200
    })
    .await;
    // No token has been presented yet: the fetch was the warm-up's.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    let t = token(&k1, "https://idp", serde_json::json!({}));
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&t), "")).await.status,
        200
    );
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        1,
        "the warm-up's keys serve"
    );
}

#[tokio::test]
async fn jwks_rotation_refetch_bound_and_fail_closed() {
    let k1 = key("k1");
    let k2 = key("k2");
    let jwks = jwks_upstream(&[&k1]).await;
    let (gw, _api) = jwks_gateway(
        &jwks,
        r#"refresh_interval = "300ms", min_refetch_interval = "200ms", max_stale = "1500ms""#,
    )
    .await;
    let t1 = token(&k1, "https://idp", serde_json::json!({}));
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&t1), "")).await.status,
        200
    );
    let after_first = jwks.fetches.load(Ordering::SeqCst);
    assert!(after_first >= 1);

    // Unknown kids from an attacker do not each cause a fetch.
    let stranger = key("zz");
    for i in 0..20 {
        let t = token(&stranger, "https://idp", serde_json::json!({"jti": i}));
        assert_eq!(
            raw(gw.addr(), &get_with("/x", Some(&t), "")).await.status,
            401
        );
    }
    assert!(
        jwks.fetches.load(Ordering::SeqCst) <= after_first + 1,
        "fetches are rate-limited"
    );

    // A newly published key is accepted after a refetch.
    *jwks.doc.lock().unwrap() = serde_json::json!({"keys": [k1.jwk.clone(), k2.jwk.clone()]});
    let t2 = token(&k2, "https://idp", serde_json::json!({}));
    eventually("new kid accepted", Duration::from_secs(5), || async {
        raw(gw.addr(), &get_with("/x", Some(&t2), "")).await.status == 200
    })
    .await;

    // A removed key is refused once the set is refreshed (fresh tokens: not cached).
    *jwks.doc.lock().unwrap() = serde_json::json!({"keys": [k2.jwk.clone()]});
    eventually("removed key refused", Duration::from_secs(5), || async {
        let t = token(
            &k1,
            "https://idp",
            serde_json::json!({"jti": now().to_string() + "-r"}),
        );
        raw(gw.addr(), &get_with("/x", Some(&t), "")).await.status == 401
    })
    .await;

    // JWKS down: the last good keys serve, then the issuer fails closed with 503.
    *jwks.down.lock().unwrap() = true;
    let fresh = || {
        token(
            &k2,
            "https://idp",
            serde_json::json!({"jti": format!("{:?}", std::time::Instant::now())}),
        )
    };
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&fresh()), ""))
            .await
            .status,
        200
    );
    eventually(
        "fail closed after max_stale",
        Duration::from_secs(6),
        || async {
            let r = raw(gw.addr(), &get_with("/x", Some(&fresh()), "")).await;
            r.status == 503 && r.json()["code"] == "issuer_unavailable"
        },
    )
    .await;
    // The key endpoint was never called with anything but the configured path.
    assert!(jwks
        .up
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.uri == "/.well-known/jwks.json"));
}

#[tokio::test]
async fn oauth2_token_is_fetched_once_refreshed_and_reauthenticated_once_on_401() {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let tc = token_calls.clone();
    let idp = MockUpstream::start(Arc::new(move |s: &Seen| {
        assert_eq!(s.method, "POST");
        let n = tc.fetch_add(1, Ordering::SeqCst) + 1;
        Action::Delay(
            Duration::from_millis(50),
            json_response(200, serde_json::json!({"access_token": format!("tok-{n}"), "expires_in": 3600, "token_type": "Bearer"})),
        )
    }))
    .await;
    // The API refuses "tok-1" once (as if revoked), then accepts any token.
    let refused = Arc::new(AtomicUsize::new(0));
    let rf = refused.clone();
    let api = MockUpstream::start(Arc::new(move |s: &Seen| {
        if s.header("authorization") == Some("Bearer tok-1")
            && s.uri == "/revoke-me"
            && rf.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Action::Respond(json_response(401, serde_json::json!({})));
        }
        Action::Respond(json_response(
            200,
            serde_json::json!({"auth": s.header("authorization")}),
        ))
    }))
    .await;
    std::env::set_var("LIENTHONG_TEST_CLIENT_SECRET", "s3cr3t value");
    let cfg = base_config(&format!(
        r#"
[upstreams.idp]
endpoints = ["{idp}"]
[upstreams.api]
endpoints = ["{api}"]
[upstreams.api.credentials]
type = "oauth2"
token_upstream = "idp"
token_path = "/token"
client_id = "lienthong"
client_secret = {{ env = "LIENTHONG_TEST_CLIENT_SECRET" }}
scope = "dvc"
[[routes]]
name = "api"
path_prefix = "/"
upstream = "api"
auth = {{ anonymous = true }}
"#,
        idp = idp.url(),
        api = api.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let addr = gw.addr();
        tasks.push(tokio::spawn(async move { raw_get(addr, "/x").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["auth"], "Bearer tok-1");
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "one token request served all concurrent calls"
    );
    let req = idp.last();
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(req.header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(
        std::str::from_utf8(&req.body).unwrap(),
        "grant_type=client_credentials&scope=dvc"
    );

    // 401 from the upstream: exactly one re-authentication, then success.
    let r = raw_get(gw.addr(), "/revoke-me").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["auth"], "Bearer tok-2");
    assert_eq!(token_calls.load(Ordering::SeqCst), 2);

    // The secret never appears in the admin config view.
    let (_, cfgview) = admin_get(&gw, "/admin/config").await;
    assert!(!cfgview.contains("s3cr3t"), "{cfgview}");
    assert!(cfgview.contains("redacted"));
}

/// A gateway whose anonymous route `/` goes to `api` with OAuth2 credentials from the
/// token endpoint `idp` (client `lienthong`, secret `x`); `extra` adds to the
/// credentials table.
async fn oauth2_gateway(idp: &MockUpstream, api: &MockUpstream, extra: &str) -> TestGateway {
    std::env::set_var("LIENTHONG_TEST_OAUTH2_SECRET", "x");
    TestGateway::start(&base_config(&format!(
        r#"
[upstreams.idp]
endpoints = ["{idp}"]
[upstreams.api]
endpoints = ["{api}"]
[upstreams.api.credentials]
type = "oauth2"
token_upstream = "idp"
client_id = "lienthong"
client_secret = {{ env = "LIENTHONG_TEST_OAUTH2_SECRET" }}
{extra}
[[routes]]
name = "api"
path_prefix = "/"
upstream = "api"
auth = {{ anonymous = true }}
"#,
        idp = idp.url(),
        api = api.url()
    )))
    .await
}

#[tokio::test]
async fn a_failing_token_endpoint_is_not_asked_again_by_every_waiting_request() {
    let idp = MockUpstream::start(Arc::new(|_s: &Seen| {
        Action::Respond(json_response(500, serde_json::json!({"error": "down"})))
    }))
    .await;
    let api = MockUpstream::start(echo("api")).await;
    let gw = oauth2_gateway(&idp, &api, "").await;
    let addr = gw.addr();
    let waiting: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { raw_get(addr, "/x").await }))
        .collect();
    for w in waiting {
        let r = w.await.unwrap();
        assert_error(&r, 502, "credentials_unavailable");
    }
    assert_eq!(
        idp.count(),
        1,
        "one fetch failed; the waiters behind it failed fast"
    );
    assert_eq!(api.count(), 0);
}

#[tokio::test]
async fn an_absurd_token_lifetime_is_clamped_not_a_panic() {
    let idp = MockUpstream::start(Arc::new(|_s: &Seen| {
        Action::Respond(json_response(
            200,
            serde_json::json!({"access_token": "tok-forever", "expires_in": u64::MAX}),
        ))
    }))
    .await;
    let api = MockUpstream::start(echo_authorization()).await;
    let gw = oauth2_gateway(&idp, &api, "").await;
    for _ in 0..2 {
        let r = raw_get(gw.addr(), "/x").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["auth"], "Bearer tok-forever");
    }
    assert_eq!(idp.count(), 1, "the token is cached, not refetched");
}

#[tokio::test]
async fn a_token_said_to_expire_at_once_is_not_fetched_for_every_request() {
    let idp = MockUpstream::start(Arc::new(|_s: &Seen| {
        Action::Respond(json_response(
            200,
            serde_json::json!({"access_token": "tok-now", "expires_in": 0}),
        ))
    }))
    .await;
    let api = MockUpstream::start(echo_authorization()).await;
    let gw = oauth2_gateway(&idp, &api, "").await;
    for _ in 0..5 {
        let r = raw_get(gw.addr(), "/x").await;
        assert_eq!(r.json()["auth"], "Bearer tok-now");
    }
    // Kept for its minimum lifetime (refreshed within a second or two at most).
    assert!(idp.count() <= 2, "{} token fetches", idp.count());
}

#[tokio::test]
async fn oauth2_token_is_refreshed_before_expiry() {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let tc = token_calls.clone();
    let idp = MockUpstream::start(Arc::new(move |_s: &Seen| {
        let n = tc.fetch_add(1, Ordering::SeqCst) + 1;
        Action::Respond(json_response(
            200,
            serde_json::json!({"access_token": format!("tok-{n}"), "expires_in": 2}),
        ))
    }))
    .await;
    let api = MockUpstream::start(echo_authorization()).await;
    let gw = oauth2_gateway(
        &idp,
        &api,
        "client_auth = \"form\"\nrefresh_margin = \"1s\"\n",
    )
    .await;
    assert_eq!(
        raw_get(gw.addr(), "/x").await.json()["auth"],
        "Bearer tok-1"
    );
    assert!(std::str::from_utf8(&idp.last().body)
        .unwrap()
        .contains("client_id=lienthong&client_secret=x"));
    // Refreshed once the token is within the margin of its expiry, before it lapses.
    eventually("refreshed token in use", Duration::from_secs(5), || async {
        raw_get(gw.addr(), "/x").await.json()["auth"] == "Bearer tok-2"
    })
    .await;
}

#[tokio::test]
async fn own_jwt_and_static_header_credentials() {
    let api = MockUpstream::start(echo("api")).await;
    std::env::set_var("LIENTHONG_TEST_API_KEY", "key-123");
    std::env::set_var("LIENTHONG_TEST_LGSP_SECRET", "lgsp-secret");
    let repo = env!("CARGO_MANIFEST_DIR");
    let cfg = base_config(&format!(
        r#"
[auth.signing]
key = "{repo}/config/dev/lienthong-signing.key.pem"
kid = "lt-1"
[upstreams.jwt]
endpoints = ["{api}"]
[upstreams.jwt.credentials]
type = "jwt"
audience = "https://ngsp.gov.vn"
ttl = "5m"
[upstreams.key]
endpoints = ["{api}"]
[upstreams.key.credentials]
type = "header"
header = "X-Api-Key"
value = {{ env = "LIENTHONG_TEST_API_KEY" }}
[upstreams.lgsp]
endpoints = ["{api}"]
[upstreams.lgsp.credentials]
type = "lgsp"
fields = {{ AppName = "lienthong", PartnerCode = "000.00.01.H22", SecretKey = {{ env = "LIENTHONG_TEST_LGSP_SECRET" }} }}
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "jwt"
auth = {{ anonymous = true }}
[[routes]]
name = "key"
path_prefix = "/key"
upstream = "key"
auth = {{ anonymous = true }}
[[routes]]
name = "lgsp"
path_prefix = "/lgsp"
upstream = "lgsp"
auth = {{ anonymous = true }}
"#,
        api = api.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    // The JWT lienthong presents verifies against its published JWKS.
    raw_get(gw.addr(), "/jwt/x").await;
    let bearer = up_header(&api, "authorization")
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let jwks = raw_get(gw.addr(), "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    let set = lienthong::auth::keys::KeySet::from_jwks(&jwks.body).unwrap();
    assert_eq!(set.len(), 1);
    let parts: Vec<&str> = bearer.split('.').collect();
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["aud"], "https://ngsp.gov.vn");
    let jwk = jsonwebtoken::jwk::JwkSet {
        keys: serde_json::from_value(
            serde_json::from_slice::<serde_json::Value>(&jwks.body).unwrap()["keys"].clone(),
        )
        .unwrap(),
    };
    let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["https://ngsp.gov.vn"]);
    jsonwebtoken::decode::<serde_json::Value>(&bearer, &dk, &v)
        .expect("lienthong's JWT verifies with its JWKS");

    raw_get(gw.addr(), "/key/x").await;
    assert_eq!(up_header(&api, "x-api-key"), "key-123");
    raw_get(gw.addr(), "/lgsp/x").await;
    let cred = up_header(&api, "lgspaccesstoken");
    let decoded: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(cred)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded["PartnerCode"], "000.00.01.H22");
    assert_eq!(decoded["SecretKey"], "lgsp-secret");
}

fn up_header(up: &MockUpstream, name: &str) -> String {
    up.last()
        .header(name)
        .unwrap_or_else(|| panic!("upstream got no {name}"))
        .to_string()
}

fn post_dossier(bearer: &str, key: &str, summary: &str) -> Vec<u8> {
    let body = dossier_json(None, summary);
    format!(
        "POST /v1/dossiers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gateway whose intake admits tokens of the `idp` issuer for agencies `*.H22`, with
/// `giam-sat` as the role that reads every dossier and `xu-ly` as the one that posts
/// events to every dossier; deliveries go to `dest`.
async fn exchange_gateway(k: &TestKey, dest: &MockUpstream) -> TestGateway {
    let rest = format!(
        r#"
[upstreams.dest]
endpoints = ["{url}"]
[exchange]
db = "exchange.db"
destinations = ["dvcqg"]
auth = {{ agencies = ["*.H22"] }}
read_all_roles = ["giam-sat"]
event_roles = ["xu-ly"]
[exchange.deliveries]
dvcqg = {{ upstream = "dest", path = "/dvcqg/DongBoHoSoMC" }}
"#,
        url = dest.url()
    );
    issuer_gateway(k, &rest).await
}

/// An Idempotency-Key is its caller's own: two agencies that happen to pick the same key
/// each get their dossier accepted (not the other's receipt, not a 409 over the other's
/// content), and each caller's resend is still a replay.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_caller() {
    let k = key("intake-key");
    let dest = MockUpstream::start(echo("dest")).await;
    let gw = exchange_gateway(&k, &dest).await;
    let iss = "https://idp.tinh.gov.vn";
    let a = token(
        &k,
        iss,
        serde_json::json!({"agency": "000.00.01.H22", "sub": "portal"}),
    );
    let b = token(
        &k,
        iss,
        serde_json::json!({"agency": "000.00.02.H22", "sub": "portal"}),
    );

    let first = raw(gw.addr(), &post_dossier(&a, "req-1", "Hồ sơ của A")).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let other = raw(gw.addr(), &post_dossier(&b, "req-1", "Hồ sơ của B")).await;
    assert_eq!(
        other.status,
        202,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
    assert_eq!(other.header("x-lienthong-replayed"), None);
    assert_ne!(
        first.json()["dossier_code"],
        other.json()["dossier_code"],
        "another agency's key must not reach the first dossier"
    );
    // Each caller's resend is a replay of its own dossier, and a different body under
    // its own key is still a conflict.
    for (t, r, summary) in [(&a, &first, "Hồ sơ của A"), (&b, &other, "Hồ sơ của B")] {
        let again = raw(gw.addr(), &post_dossier(t, "req-1", summary)).await;
        assert_eq!(again.status, 202);
        assert_eq!(again.header("x-lienthong-replayed"), Some("true"));
        assert_eq!(again.json(), r.json());
    }
    assert_error(
        &raw(gw.addr(), &post_dossier(&a, "req-1", "Nội dung khác")).await,
        409,
        "conflict",
    );
}

/// Tokens of the callers the intake's access rules tell apart (issuer `idp`).
struct Parties {
    /// Files the sample dossier.
    portal: String,
    /// 000.00.01.H22, the agency the sample dossier is filed with.
    receiving: String,
    stranger: String,
    /// Holds `giam-sat`, the role that reads every dossier.
    monitor: String,
    /// Holds `xu-ly`, the role that posts events to every dossier.
    processor: String,
}

/// The parties' tokens, and the code of the sample dossier `portal` files under `key`.
async fn file_with_parties(k: &TestKey, gw: &TestGateway, key: &str) -> (Parties, String) {
    let as_agency = |agency: &str, roles: &[&str]| {
        token(
            k,
            "https://idp.tinh.gov.vn",
            serde_json::json!({"agency": agency, "sub": "system", "roles": roles}),
        )
    };
    let p = Parties {
        portal: as_agency("000.00.05.H22", &[]),
        receiving: as_agency("000.00.01.H22", &[]),
        stranger: as_agency("000.00.09.H22", &[]),
        monitor: as_agency("000.00.09.H22", &["giam-sat"]),
        processor: as_agency("000.00.07.H22", &["xu-ly"]),
    };
    let filed = raw(gw.addr(), &post_dossier(&p.portal, key, "Hồ sơ")).await;
    assert_eq!(
        filed.status,
        202,
        "{}",
        String::from_utf8_lossy(&filed.body)
    );
    let code = filed.json()["dossier_code"].as_str().unwrap().to_string();
    (p, code)
}

/// A dossier's timeline is shown to whoever filed it and to the agency it was filed with
/// (and to the monitoring role); anyone else gets the 404 of a dossier that does not exist.
#[tokio::test]
async fn a_dossier_timeline_is_shown_only_to_those_with_a_part_in_it() {
    let k = key("intake-read");
    let dest = MockUpstream::start(echo("dest")).await;
    let gw = exchange_gateway(&k, &dest).await;
    let (p, code) = file_with_parties(&k, &gw, "read-1").await;
    let (portal, receiving, stranger, monitor) = (p.portal, p.receiving, p.stranger, p.monitor);
    let timeline = |t: String| {
        let path = format!("/v1/dossiers/{code}");
        let addr = gw.addr();
        async move { raw(addr, &get_with(&path, Some(&t), "")).await }
    };
    for (who, t) in [
        ("submitter", &portal),
        ("receiving unit", &receiving),
        ("monitor", &monitor),
    ] {
        let r = timeline(t.clone()).await;
        assert_eq!(r.status, 200, "{who}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["dossier_code"], code.as_str(), "{who}");
    }
    let missing = raw(
        gw.addr(),
        &get_with(
            "/v1/dossiers/000.00.01.H22-251126-9999",
            Some(&stranger),
            "",
        ),
    )
    .await;
    assert_error(&missing, 404, "not_found");
    let hidden = timeline(stranger.clone()).await;
    assert_error(&hidden, 404, "not_found");
    assert_eq!(hidden.json()["message"], missing.json()["message"]);
}

/// Events (processing steps, status changes) are added to a dossier only by those with
/// a part in it (whoever filed it, the agency it was filed with) or a holder of
/// `[exchange] event_roles`; anyone else, a reader of every dossier included, gets the
/// 404 of a dossier that does not exist, and the timeline is unchanged.
#[tokio::test]
async fn events_are_accepted_only_from_those_with_a_part_in_the_dossier() {
    let k = key("intake-events");
    let dest = MockUpstream::start(echo("dest")).await;
    let gw = exchange_gateway(&k, &dest).await;
    let (p, code) = file_with_parties(&k, &gw, "events-1").await;
    let (portal, receiving, stranger, monitor, processor) =
        (p.portal, p.receiving, p.stranger, p.monitor, p.processor);
    let post_step = |t: String, content: &'static str| {
        let body = serde_json::json!({"kind": "step", "handler": "Cán bộ", "at": "20251126090000", "content": content, "status": 2}).to_string();
        let req = format!(
            "POST /v1/dossiers/{code}/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let addr = gw.addr();
        async move { raw(addr, req.as_bytes()).await }
    };
    for (who, t, content) in [
        ("submitter", &portal, "accepted step 1"),
        ("receiving unit", &receiving, "accepted step 2"),
        ("event role", &processor, "accepted step 3"),
    ] {
        let r = post_step(t.clone(), content).await;
        assert_eq!(r.status, 202, "{who}: {}", String::from_utf8_lossy(&r.body));
    }
    for (who, t) in [
        ("stranger", &stranger),
        ("reader of every dossier", &monitor),
    ] {
        let r = post_step(t.clone(), "refused step").await;
        assert_error(&r, 404, "not_found");
        assert_eq!(r.json()["message"], "no such dossier", "{who}");
    }
    // An evaluation is an event too.
    let eval = serde_json::json!({"at": "20251126100000", "rating": 5}).to_string();
    for (t, want) in [(&stranger, 404), (&portal, 202)] {
        let req = format!(
            "POST /v1/dossiers/{code}/evaluation HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{eval}",
            eval.len()
        );
        let r = raw(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = raw(
        gw.addr(),
        &get_with(&format!("/v1/dossiers/{code}"), Some(&monitor), ""),
    )
    .await;
    assert_eq!(r.status, 200);
    let timeline = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(timeline.matches("accepted step").count(), 3, "{timeline}");
    assert_eq!(timeline.matches("\"rating\"").count(), 1, "{timeline}");
    assert!(!timeline.contains("refused step"), "{timeline}");
}

/// With several issuers trusted, one (a partner province's IdP, a vendor's) must not
/// speak for another's agencies: an issuer's `agencies` bounds what its tokens may claim.
#[tokio::test]
async fn an_issuer_vouches_only_for_its_own_agencies() {
    let up = MockUpstream::start(echo("up")).await;
    let (home, partner) = (key("home-1"), key("partner-1"));
    let dir = scratch_dir();
    std::fs::write(dir.join("partner.pub.pem"), public_pem(&partner)).unwrap();
    let gw = issuer_gateway(
        &home,
        &format!(
            r#"agencies = ["*.H22"]
[[auth.issuers]]
name = "partner"
iss = "https://idp.partner.gov.vn"
audiences = ["lienthong"]
algorithms = ["EdDSA"]
public_key = "{pem}"
kid = "partner-1"
agencies = ["*.H29"]
[upstreams.u]
endpoints = ["{url}"]
[[routes]]
name = "h22"
path_prefix = "/h22"
upstream = "u"
auth = {{ agencies = ["*.H22", "*.H29"] }}
"#,
            pem = dir.join("partner.pub.pem").display(),
            url = up.url()
        ),
    )
    .await;
    let addr = gw.addr();
    let ask = |t: &str| {
        let req = get_with("/h22/x", Some(t), "");
        async move { raw(addr, &req).await }
    };
    let home_h22 = token(&home, "https://idp.tinh.gov.vn", serde_json::json!({}));
    assert_eq!(ask(&home_h22).await.status, 200);
    let partner_h29 = token(
        &partner,
        "https://idp.partner.gov.vn",
        serde_json::json!({"agency": "000.00.01.H29"}),
    );
    assert_eq!(ask(&partner_h29).await.status, 200);
    // The partner's IdP claiming an H22 agency is refused, however the route reads.
    let forged = token(
        &partner,
        "https://idp.partner.gov.vn",
        serde_json::json!({"agency": "000.00.01.H22"}),
    );
    let r = ask(&forged).await;
    assert_error(&r, 401, "invalid_token");
    assert_eq!(up.count(), 2);
}

/// A reload while the key set's source is down keeps the last good keys (for the rest of
/// `max_stale`) instead of refusing every token until the source is back.
#[tokio::test]
async fn a_reload_keeps_the_key_set_it_had() {
    let k1 = key("k1");
    let jwks = jwks_upstream(&[&k1]).await;
    let (gw, _api) = jwks_gateway(
        &jwks,
        r#"refresh_interval = "1h", min_refetch_interval = "1h", max_stale = "1h""#,
    )
    .await;
    let fresh = |n: u32| token(&k1, "https://idp", serde_json::json!({"jti": n}));
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&fresh(1)), ""))
            .await
            .status,
        200
    );
    *jwks.down.lock().unwrap() = true;
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    // A token the new generation has not seen (so not from a cache) still verifies.
    let r = raw(gw.addr(), &get_with("/x", Some(&fresh(2)), "")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // A reload is also how a withdrawn key is dropped at once: with the source back,
    // the first use after it fetches anew.
    let k2 = key("k2");
    *jwks.doc.lock().unwrap() = serde_json::json!({"keys": [k2.jwk.clone()]});
    *jwks.down.lock().unwrap() = false;
    let (status, body) = admin_post(&gw, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&fresh(3)), ""))
            .await
            .status,
        401
    );
    let t2 = token(&k2, "https://idp", serde_json::json!({"jti": 4}));
    assert_eq!(
        raw(gw.addr(), &get_with("/x", Some(&t2), "")).await.status,
        200
    );
}
