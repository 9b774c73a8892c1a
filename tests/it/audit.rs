//! The audit log through the gateway: exactly one record per request (refused ones
//! included), body digests, fail-closed durability, no secrets, offline verification,
//! inclusion proofs, tamper detection, and SIGKILL under load.

use crate::support::*;
use lienthong::audit::record::{AuditRecord, RecordKind};
use lienthong::store::audit::Filter;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lienthong");

fn db_of(gw: &TestGateway) -> std::path::PathBuf {
    gw.config_path.parent().unwrap().join("audit.db")
}

pub(crate) async fn records(gw: &TestGateway) -> Vec<(u64, AuditRecord)> {
    // A checkpoint goes through the writer's queue after every record already
    // submitted, so once it returns they are committed.
    assert_eq!(admin_post(gw, "/admin/audit/checkpoint").await.0, 200);
    stored_records(gw).await
}

/// Every record committed to the gateway's audit database (the log open or closed).
async fn stored_records(gw: &TestGateway) -> Vec<(u64, AuditRecord)> {
    let db = db_of(gw);
    tokio::task::spawn_blocking(move || {
        lienthong::audit::writer::query(
            &db,
            &Filter {
                limit: Some(100_000),
                ..Filter::default()
            },
        )
        .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn every_request_leaves_exactly_one_record_with_digests() {
    let up = MockUpstream::start(echo("up")).await;
    let dead = dead_addr().await;
    let cfg = base_config(&format!(
        r#"
{issuer}[upstreams.up]
endpoints = ["{url}"]
[upstreams.dead]
endpoints = ["http://{dead}"]
[upstreams.dead.retry]
attempts = 1
[[routes]]
name = "open"
path_prefix = "/open"
upstream = "up"
max_body_bytes = 1000
auth = {{ anonymous = true }}
[[routes]]
name = "closed"
path_prefix = "/closed"
upstream = "up"
auth = {{}}
[[routes]]
name = "dead"
path_prefix = "/dead"
methods = ["GET"]
upstream = "dead"
auth = {{ anonymous = true }}
"#,
        issuer = dev_issuer(),
        url = up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let body = "{\"hoso\":\"000.00.01.H22-251126-0001\"}";
    let requests: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /open/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 200),
        (format!("POST /open/y HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes(), 200),
        (b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404),
        (b"GET /closed/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 401),
        (b"GET /open/%2e%2e%2fetc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 400),
        (b"POST /dead/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(), 405),
        (b"GET /dead/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 502),
        (format!("POST /open/z HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}", "x".repeat(5000)).into_bytes(), 413),
        (b"GET /open/dan-cu/079201001234 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 200),
    ];
    let mut ids = BTreeSet::new();
    let mut post_response = Vec::new();
    for (req, want) in &requests {
        let r = raw(gw.addr(), req).await;
        assert_eq!(r.status, *want, "{}", String::from_utf8_lossy(req));
        ids.insert(r.header("x-request-id").unwrap().to_string());
        if req.starts_with(b"POST /open/y") {
            post_response = r.body.clone();
        }
    }
    // The plain ones (both 200s to /open, the 502, the masked path) and the 401 of the
    // route that checks tokens took the HTTP/1 fast path, whose records are checked
    // here as the full path's are.
    assert_eq!(fast_path_requests(&gw), 5);
    let recs = records(&gw).await;
    let got: BTreeSet<String> = recs.iter().map(|(_, r)| r.request_id.clone()).collect();
    assert_eq!(recs.len(), requests.len(), "exactly one record per request");
    assert_eq!(got, ids);
    let by_status = |s: u16| {
        recs.iter()
            .find(|(_, r)| r.status == Some(s))
            .unwrap()
            .1
            .clone()
    };
    for s in [404, 401, 400, 405, 413] {
        assert_eq!(by_status(s).kind, RecordKind::Rejected, "status {s}");
    }
    assert_eq!(by_status(502).error.unwrap().kind, "upstream_unreachable");
    let post = recs
        .iter()
        .find(|(_, r)| r.method.as_deref() == Some("POST") && r.status == Some(200))
        .unwrap()
        .1
        .clone();
    assert_eq!(
        post.request_sha256.unwrap().as_str(),
        sha256_hex(body.as_bytes())
    );
    assert_eq!(post.bytes_in, body.len() as u64);
    assert_eq!(
        post.response_sha256.unwrap().as_str(),
        sha256_hex(&post_response)
    );
    assert_eq!(post.bytes_out, post_response.len() as u64);
    assert_eq!(post.route.as_deref(), Some("open"));
    // Citizen identifiers in paths are masked.
    let masked = recs
        .iter()
        .find(|(_, r)| {
            r.path
                .as_ref()
                .is_some_and(|p| p.as_str().contains("dan-cu"))
        })
        .unwrap();
    assert!(!masked
        .1
        .path
        .as_ref()
        .unwrap()
        .as_str()
        .contains("079201001234"));
}

#[tokio::test]
async fn a_record_is_dated_when_its_request_arrived() {
    // The upstream answers after 600 ms; the record's time is the request's
    // arrival, and its latency covers the wait.
    let up = MockUpstream::start(Arc::new(|_: &Seen| {
        Action::Delay(
            Duration::from_millis(600),
            json_response(200, serde_json::json!({"ok": true})),
        )
    }))
    .await;
    let cfg = base_config(&format!(
        r#"
[upstreams.up]
endpoints = ["{url}"]
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "up"
auth = {{ anonymous = true }}
"#,
        url = up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let sent = lienthong::audit::record::epoch_ms(std::time::SystemTime::now());
    let r = raw_get(gw.addr(), "/slow").await;
    let answered = lienthong::audit::record::epoch_ms(std::time::SystemTime::now());
    assert_eq!(r.status, 200);
    assert!(
        answered >= sent + 600,
        "the upstream's delay did not happen"
    );
    let recs = records(&gw).await;
    let (_, rec) = recs
        .iter()
        .find(|(_, r)| r.route.as_deref() == Some("slow"))
        .expect("the request's record");
    let t = rec.time_ms().expect("a parsable time");
    // Milliseconds on both sides: allow one for the rounding.
    assert!(
        t + 1 >= sent && t + 300 < answered,
        "record time {t} not at the request's arrival (sent {sent}, answered {answered})"
    );
    assert!(rec.latency_us >= 600_000, "latency {} µs", rec.latency_us);
}

#[tokio::test]
async fn fail_closed_route_answers_only_after_the_record_is_durable() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "[upstreams.up]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"intake\"\npath_prefix = \"/\"\nupstream = \"up\"\naudit = \"fail_closed\"\nauth = {{ anonymous = true }}\n",
        up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let db = db_of(&gw);
    for i in 0..5 {
        let r = raw_get(gw.addr(), &format!("/hoso/{i}")).await;
        assert_eq!(r.status, 200);
        let id = r.header("x-request-id").unwrap().to_string();
        // No flush: the record must already be committed when the response arrives.
        let db = db.clone();
        let found = tokio::task::spawn_blocking(move || {
            lienthong::audit::writer::query(
                &db,
                &Filter {
                    limit: Some(1000),
                    ..Filter::default()
                },
            )
            .unwrap()
            .iter()
            .any(|(_, r)| r.request_id == id)
        })
        .await
        .unwrap();
        assert!(found, "response {i} was sent before its record was durable");
    }
}

#[tokio::test]
async fn no_tokens_or_secrets_in_audit_records() {
    std::env::set_var(
        "LIENTHONG_TEST_AUDIT_SECRET",
        "very-secret-client-secret-42",
    );
    let idp = MockUpstream::start(Arc::new(|_| {
        Action::Respond(json_response(
            200,
            serde_json::json!({"access_token": "upstream-access-token-xyz", "expires_in": 600}),
        ))
    }))
    .await;
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        r#"
{issuer}[upstreams.idp]
endpoints = ["{idp}"]
[upstreams.up]
endpoints = ["{up}"]
[upstreams.up.credentials]
type = "oauth2"
token_upstream = "idp"
client_id = "lienthong"
client_secret = {{ env = "LIENTHONG_TEST_AUDIT_SECRET" }}
[[routes]]
name = "r"
path_prefix = "/"
upstream = "up"
auth = {{}}
"#,
        issuer = dev_issuer(),
        idp = idp.url(),
        up = up.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let key = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dev/dev-issuer.key.pem"
    ))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = lienthong::auth::jwt::mint(
        &key,
        jsonwebtoken::Algorithm::EdDSA,
        serde_json::json!({"iss": "lienthong-dev", "aud": "lienthong", "sub": "s", "iat": now, "exp": now + 600, "agency": "000.00.01.H22"}),
        None,
    )
    .unwrap();
    for path in ["/a", "/b?access_token=zzz"] {
        raw(gw.addr(), format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    }
    raw(gw.addr(), b"GET /c HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer not-a-real-token\r\nConnection: close\r\n\r\n").await;
    let recs = records(&gw).await;
    assert_eq!(recs.len(), 3);
    let all: String = recs
        .iter()
        .map(|(_, r)| String::from_utf8(r.to_json()).unwrap())
        .collect();
    for secret in [
        token.as_str(),
        "very-secret-client-secret-42",
        "upstream-access-token-xyz",
        "not-a-real-token",
        &token[..30],
    ] {
        assert!(!all.contains(secret), "a secret reached the audit log");
    }
    assert!(
        !lienthong::audit::record::contains_secret_like(&all),
        "{all}"
    );
}

#[tokio::test]
async fn cli_verifies_proves_and_names_a_tampered_record() {
    let up = MockUpstream::start(echo("up")).await;
    let cfg = base_config(&format!(
        "[upstreams.up]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\nauth = {{ anonymous = true }}\n",
        up.url()
    ));
    let mut gw = TestGateway::start(&cfg).await;
    for i in 0..20 {
        assert_eq!(raw_get(gw.addr(), &format!("/x/{i}")).await.status, 200);
    }
    records(&gw).await;
    let config = gw.config_path.clone();
    let done = gw.shutdown();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
    drop(gw);
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The 20 requests, and the admin checkpoint request `records` made (admin actions
    // are audited too).
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: 21 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A counterpart checks "my request was logged" with the proof and the public key only.
    let proof = run(&["audit", "prove", "7"]);
    assert!(proof.status.success());
    let pf = config.parent().unwrap().join("proof.json");
    std::fs::write(&pf, &proof.stdout).unwrap();
    let key = String::from_utf8(run(&["audit", "key"]).stdout).unwrap();
    let check = Command::new(BIN)
        .args(["audit", "check-proof"])
        .arg(&pf)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // A proof altered by one byte fails.
    let mut v: serde_json::Value = serde_json::from_slice(&proof.stdout).unwrap();
    v["record"] =
        serde_json::Value::String(v["record"].as_str().unwrap().replace("\"GET\"", "\"PUT\""));
    std::fs::write(&pf, serde_json::to_vec(&v).unwrap()).unwrap();
    let check = Command::new(BIN)
        .args(["audit", "check-proof"])
        .arg(&pf)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    assert!(!check.status.success());
    // Export verifies offline.
    let export = run(&["audit", "export"]);
    assert!(export.status.success());
    let ef = config.parent().unwrap().join("export.jsonl");
    std::fs::write(&ef, &export.stdout).unwrap();
    let ve = Command::new(BIN)
        .args(["audit", "verify-export"])
        .arg(&ef)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    assert!(
        ve.status.success(),
        "{}",
        String::from_utf8_lossy(&ve.stdout)
    );
    // Someone with database access edits record 5: verify names it.
    let db = config.parent().unwrap().join("audit.db");
    let mut frame = lienthong::store::audit::tamper::frame_of(&db, 5);
    let at = frame.len() / 2;
    frame[at] ^= 0x01;
    lienthong::store::audit::tamper::set_frame(&db, 5, &frame);
    let out = run(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("record 5"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A TSA certificate as RFC 3161 §2.3 wants it (critical extendedKeyUsage with only
/// id-kp-timeStamping; rcgen's own EKU support marks it non-critical) and its PKCS#8 key.
fn tsa_identity(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    // SEQUENCE { OID 1.3.6.1.5.5.7.3.8 }
    let eku = vec![
        0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
    ];
    let mut ext = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], eku);
    ext.set_criticality(true);
    p.custom_extensions.push(ext);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (p.self_signed(&key).unwrap(), key)
}

/// A gateway config whose checkpoints are timestamped by `tsa` (certificate `cert`,
/// written to the scratch folder) and one route to `up` with `route_extra`; returns
/// the config, the scratch folder and the certificate's path.
fn tsa_gateway_config(
    cert: &rcgen::Certificate,
    tsa: &MockUpstream,
    up: &MockUpstream,
    route_extra: &str,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch_dir();
    let cert_path = dir.join("tsa.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let cfg = base_config(&format!(
        r#"
[audit.timestamp]
upstream = "tsa"
path = "/tsr"
cert = "{cert}"
min_interval = "1ms"
[upstreams.tsa]
endpoints = ["{tsa_url}"]
[upstreams.up]
endpoints = ["{url}"]
[[routes]]
name = "r"
path_prefix = "/"
upstream = "up"
auth = {{ anonymous = true }}
{route_extra}
"#,
        cert = cert_path.display(),
        tsa_url = tsa.url(),
        url = up.url()
    ));
    (cfg, dir, cert_path)
}

#[tokio::test]
async fn checkpoints_are_timestamped_by_the_tsa_and_verified_offline() {
    use lienthong::audit::timestamp::TestTsa;
    let (cert, key) = tsa_identity("lienthong test TSA");
    let tsa = Arc::new(TestTsa::new(cert.der().to_vec(), &key.serialize_der()).unwrap());
    let t2 = tsa.clone();
    let tsa_up = MockUpstream::start(Arc::new(move |s: &Seen| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            t2.respond(&s.body),
        )));
        r.headers_mut().insert(
            "content-type",
            "application/timestamp-reply".parse().unwrap(),
        );
        Action::Respond(r)
    }))
    .await;
    let up = MockUpstream::start(echo("up")).await;
    let (cfg, dir, cert_path) = tsa_gateway_config(&cert, &tsa_up, &up, "");
    let mut gw = TestGateway::start(&cfg).await;
    for i in 0..5 {
        assert_eq!(raw_get(gw.addr(), &format!("/x/{i}")).await.status, 200);
    }
    let cp = admin_post(&gw, "/admin/audit/checkpoint").await;
    assert_eq!(cp.0, 200);
    // Timestamps are taken in the background. With no more traffic the checkpoints
    // stop; wait until the latest one has its token.
    let db = db_of(&gw);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let size = loop {
        let db = db.clone();
        let latest = tokio::task::spawn_blocking(move || {
            let s = lienthong::store::audit::Store::open_read_only(&db).unwrap();
            let size = s.latest_checkpoint().unwrap().map(|c| c.checkpoint().size);
            size.filter(|n| s.timestamp_at(*n).unwrap().is_some())
        })
        .await
        .unwrap();
        if let Some(size) = latest {
            break size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint was timestamped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    {
        let seen = tsa_up.seen.lock().unwrap();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/tsr");
        assert_eq!(
            seen[0].header("content-type"),
            Some("application/timestamp-query")
        );
    }
    let config = gw.config_path.clone();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // An export of the timestamped checkpoint carries its token and verifies offline.
    let (ok, export) = run(&["audit", "export"]);
    assert!(ok);
    let header: serde_json::Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert!(header["timestamp"].is_string(), "{header}");
    let ef = dir.join("export.jsonl");
    std::fs::write(&ef, &export).unwrap();
    let (ok, out) = run(&[
        "audit",
        "verify-export",
        ef.to_str().unwrap(),
        "--tsa-cert",
        cert_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("timestamped by the TSA"), "{out}");
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .unwrap()
        .unwrap();
    drop(gw);
    let (ok, out) = run(&["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("time-stamp tokens verified"), "{out}");
    let covered = format!("records up to {size} existed by");
    assert!(out.contains(&covered), "{out}");
    // Another TSA's certificate does not vouch for these tokens.
    let (other, _) = tsa_identity("another TSA");
    let other_path = dir.join("other-tsa.pem");
    std::fs::write(&other_path, other.pem()).unwrap();
    let (ok, out) = run(&[
        "audit",
        "verify",
        "--tsa-cert",
        other_path.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("time-stamp token of checkpoint"), "{out}");
    // Someone with database access swaps a byte of a stored token: verify names it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut token: Vec<u8> = conn
        .query_row(
            "SELECT token FROM audit_timestamps WHERE size = ?1",
            [size as i64],
            |r| r.get(0),
        )
        .unwrap();
    let at = token.len() - 10;
    token[at] ^= 0x01;
    conn.execute(
        "UPDATE audit_timestamps SET token = ?1 WHERE size = ?2",
        rusqlite::params![token, size as i64],
    )
    .unwrap();
    drop(conn);
    let (ok, out) = run(&["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("time-stamp token of checkpoint {size}")),
        "{out}"
    );
    // Deleting the token cannot be told from a TSA outage, but it takes the proof
    // with it: verify no longer claims those records were timestamped.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "DELETE FROM audit_timestamps WHERE size = ?1",
        [size as i64],
    )
    .unwrap();
    drop(conn);
    let (ok, out) = run(&["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(!out.contains(&covered), "{out}");
}

#[tokio::test]
async fn refused_or_foreign_tokens_are_counted_and_never_stored() {
    use lienthong::audit::timestamp::TestTsa;
    let (cert, key) = tsa_identity("lienthong test TSA");
    let tsa = Arc::new(TestTsa::new(cert.der().to_vec(), &key.serialize_der()).unwrap());
    let (other_cert, other_key) = tsa_identity("an impostor TSA");
    let impostor = TestTsa::new(other_cert.der().to_vec(), &other_key.serialize_der()).unwrap();
    let t2 = tsa.clone();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = calls.clone();
    // The first answer is a refusal (PKIStatus 2, rejection); the next ones are granted
    // tokens signed by another TSA than the configured one.
    let tsa_up = MockUpstream::start(Arc::new(move |s: &Seen| {
        let n = c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = if n == 0 {
            t2.reject(&s.body, 2)
        } else {
            impostor.respond(&s.body)
        };
        Action::Respond(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
    }))
    .await;
    let up = MockUpstream::start(echo("up")).await;
    let (cfg, _, _) = tsa_gateway_config(&cert, &tsa_up, &up, "audit = \"fail_closed\"");
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(raw_get(gw.addr(), "/a").await.status, 200);
    assert_eq!(admin_post(&gw, "/admin/audit/checkpoint").await.0, 200);
    // Both answers are counted as failures (the second after the 2 s backoff).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = admin_get(&gw, "/metrics").await;
        let failed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lienthong_audit_timestamps_total{outcome=\"failed\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if failed >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "failures counted: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (Metrics are process-wide; no other test makes a TSA call fail.)
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // Fail-closed traffic goes on while the TSA refuses; nothing unverified is stored.
    for i in 0..5 {
        assert_eq!(raw_get(gw.addr(), &format!("/b/{i}")).await.status, 200);
    }
    let db = db_of(&gw);
    let tokens = tokio::task::spawn_blocking(move || {
        lienthong::store::audit::Store::open_read_only(&db)
            .and_then(|s| s.timestamp_count())
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(tokens, 0, "{tokens} tokens stored");
}

/// The route `slow` (`/slow`) to the upstream at `url`, for the interrupted-request
/// tests; `server` goes before it, `route` into it.
fn slow_route_config(url: &str, server: &str, route: &str) -> String {
    base_config(&format!(
        r#"{server}
[upstreams.up]
endpoints = ["{url}"]
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "up"
auth = {{ anonymous = true }}
{route}
"#
    ))
}

/// Sends a request head (and a short body) on a raw connection and waits until the
/// upstream has it.
async fn send_and_wait(gw: &TestGateway, up: &MockUpstream, id: &str) -> tokio::net::TcpStream {
    send_and_wait_with(gw, up, id, "").await
}

/// [`send_and_wait`] with further header lines (`extra`, each ending in CRLF).
async fn send_and_wait_with(
    gw: &TestGateway,
    up: &MockUpstream,
    id: &str,
    extra: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "POST /slow/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\n{extra}Content-Length: 2\r\n\r\nok"
    );
    let before = up.count();
    s.write_all(req.as_bytes()).await.unwrap();
    eventually("request in flight", Duration::from_secs(5), || async {
        up.count() > before
    })
    .await;
    s
}

/// Waits for the record of the request `id`, which must be an interrupted one.
async fn interrupted_record_arrives(gw: &TestGateway, id: &str) {
    eventually(
        "the interrupted request's record",
        Duration::from_secs(5),
        || async { records(gw).await.iter().any(|(_, r)| r.request_id == id) },
    )
    .await;
    assert_interrupted(&records(gw).await, id);
}

fn assert_interrupted(recs: &[(u64, AuditRecord)], id: &str) {
    let mine: Vec<&AuditRecord> = recs
        .iter()
        .filter(|(_, r)| r.request_id == id)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(mine.len(), 1, "exactly one record of {id}: {recs:?}");
    let r = mine[0];
    assert_eq!(r.status, Some(499), "{r:?}");
    assert_eq!(r.error.as_ref().unwrap().kind, "interrupted");
    assert_eq!(
        r.kind,
        RecordKind::Proxy,
        "an interrupted request is not a refusal"
    );
    assert_eq!(r.route.as_deref(), Some("slow"));
    assert_eq!(r.upstream.as_deref(), Some("up"));
    assert_eq!(r.method.as_deref(), Some("POST"));
    assert_eq!(r.bytes_out, 0);
    assert!(r.response_sha256.is_none());
}

/// A client that hangs up while the upstream still works on its request: the upstream
/// may act on it, so the request still leaves its record (as `interrupted`, 499) and
/// is counted in the metrics. hyper drops the request's future when its connection
/// closes; before, that dropped the record with it.
#[tokio::test]
async fn a_request_whose_client_hangs_up_still_leaves_a_record() {
    let hang: Handler = Arc::new(|_: &Seen| Action::Hang);
    let up = MockUpstream::start(hang).await;
    let gw = TestGateway::start(&slow_route_config(&up.url(), "", "")).await;
    let s = send_and_wait(&gw, &up, "hung-up-1").await;
    // On the HTTP/1 fast path, which watches the client while the upstream works.
    assert_eq!(fast_path_requests(&gw), 1);
    drop(s);
    interrupted_record_arrives(&gw, "hung-up-1").await;
    // The same on the full path (hyper's), where a client-sent `Via` sends it.
    let s = send_and_wait_with(&gw, &up, "hung-up-2", "Via: 1.1 client\r\n").await;
    assert_eq!(fast_path_requests(&gw), 1);
    drop(s);
    interrupted_record_arrives(&gw, "hung-up-2").await;
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lienthong_requests_total")
                && l.contains("route=\"slow\"")
                && l.contains("status=\"499\"")),
        "{metrics}"
    );
}

/// A request still waiting on its upstream when the drain timeout closes its
/// connection leaves its record before the audit log closes.
#[tokio::test]
async fn a_request_cut_off_at_the_drain_timeout_leaves_a_record() {
    let hang: Handler = Arc::new(|_: &Seen| Action::Hang);
    let up = MockUpstream::start(hang).await;
    let cfg = slow_route_config(&up.url(), "[server]\ndrain_timeout = \"200ms\"", "");
    let mut gw = TestGateway::start(&cfg).await;
    let _s = send_and_wait(&gw, &up, "cut-off-1").await;
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("the shutdown ends after the drain timeout")
        .unwrap();
    // As `serve` does after the server has stopped: the log closes last.
    let audit = gw.gw.runtime().audit.clone().unwrap();
    audit.writer.shutdown().await.unwrap();
    let recs = stored_records(&gw).await;
    assert_interrupted(&recs, "cut-off-1");
}

/// On a fail-closed route the gateway reads the upstream's whole answer before it
/// records and answers; a client that hangs up while the answer is still arriving
/// leaves an `interrupted` record too.
#[tokio::test]
async fn a_fail_closed_request_whose_client_hangs_up_mid_answer_leaves_a_record() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends a head and part of its body, then stalls.
    let (answered_tx, answered_rx) = tokio::sync::oneshot::channel::<()>();
    let up_addr = scripted_upstream(|mut s| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            .await
            .unwrap();
        let _ = answered_tx.send(());
        // Held open, never finished.
        let _ = s.read(&mut [0u8; 16]).await;
    })
    .await;
    let cfg = slow_route_config(&format!("http://{up_addr}"), "", "audit = \"fail_closed\"");
    let gw = TestGateway::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /slow/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: hung-up-2\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), answered_rx)
        .await
        .expect("the upstream got the request")
        .unwrap();
    drop(s);
    interrupted_record_arrives(&gw, "hung-up-2").await;
}

/// The same over HTTP/2, whose streams hyper runs in tasks of their own, outside the
/// connection's: shutdown waits for them once their connections are closed.
#[tokio::test]
async fn an_http2_request_cut_off_at_the_drain_timeout_leaves_a_record() {
    let hang: Handler = Arc::new(|_: &Seen| Action::Hang);
    let up = MockUpstream::start(hang).await;
    let cfg = slow_route_config(&up.url(), "[server]\ndrain_timeout = \"200ms\"", "");
    let mut gw = TestGateway::start(&cfg).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://t/slow/x")
        .header("x-request-id", "cut-off-2")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    eventually("request in flight", Duration::from_secs(5), || async {
        up.count() == 1
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("the shutdown ends after the drain timeout")
        .unwrap();
    let audit = gw.gw.runtime().audit.clone().unwrap();
    audit.writer.shutdown().await.unwrap();
    assert!(pending.await.unwrap().is_err(), "the stream was cut off");
    let recs = stored_records(&gw).await;
    assert_interrupted(&recs, "cut-off-2");
}
