//! The intake channel's HTTP API: durable 202 receipts, idempotency, conflicts,
//! validation naming the field, events with transition rules, the timeline, and
//! fail-closed audit records carrying the dossier code.

use crate::support::*;

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn gateway_to(dest: &MockUpstream, extra: &str) -> TestGateway {
    gateway_at(&dest.url(), extra).await
}

/// As [`gateway_to`], delivering to the endpoint `url`.
async fn gateway_at(url: &str, extra: &str) -> TestGateway {
    let cfg = base_config(&format!(
        r#"
[upstreams.dest]
endpoints = ["{url}"]
[upstreams.dest.retry]
attempts = 1
[upstreams.dest.passive]
consecutive_failures = 0
[upstreams.dest.circuit_breaker]
consecutive_failures = 0
[exchange]
db = "exchange.db"
destinations = ["dvcqg", "so-gddt"]
auth = {{ anonymous = true }}
backoff_base = "50ms"
backoff_cap = "200ms"
{extra}
[exchange.deliveries]
dvcqg = {{ upstream = "dest", path = "/dvcqg/DongBoHoSoMC" }}
so-gddt = {{ upstream = "dest", path = "/so-gddt/hoso" }}
"#,
        url = url
    ));
    TestGateway::start(&cfg).await
}

/// Files a dossier with neither code nor key and returns its code.
async fn file(gw: &TestGateway, title: &str) -> String {
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, title), ""),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["dossier_code"].as_str().unwrap().to_string()
}

/// The attempts made so far on the outbox's first item.
async fn first_attempts(gw: &TestGateway) -> u64 {
    let (_, o) = admin_get(gw, "/admin/exchange/outbox").await;
    serde_json::from_str::<serde_json::Value>(&o).unwrap()[0]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the outbox lists `code` as delivered.
async fn delivered(gw: &TestGateway, code: &str, what: &str) {
    eventually(what, std::time::Duration::from_secs(10), || async {
        let (_, o) = admin_get(gw, "/admin/exchange/outbox?state=delivered").await;
        o.contains(code)
    })
    .await;
}

async fn gateway() -> (TestGateway, MockUpstream) {
    let dest = MockUpstream::start(echo("dest")).await;
    (gateway_to(&dest, "").await, dest)
}

/// A gateway config delivering to one DVCQG-like upstream through the `dvcqg` adapter
/// (DongBoHoSoMC), with short backoffs; `exchange` and `delivery` add keys to those tables.
fn dvcqg_config(url: &str, exchange: &str, delivery: &str) -> String {
    base_config(&format!(
        r#"
[adapters]
dir = "{adapters}"
[upstreams.dvcqg]
endpoints = ["{url}"]
[exchange]
db = "exchange.db"
destinations = ["dvcqg"]
auth = {{ anonymous = true }}
backoff_base = "20ms"
backoff_cap = "50ms"
{exchange}
[exchange.deliveries.dvcqg]
upstream = "dvcqg"
path = "/dvcqg/hoso"
adapter = "dvcqg"
dossier_operation = "DongBoHoSoMC"
{delivery}
"#,
        adapters = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("adapters")
            .display(),
    ))
}

#[tokio::test]
async fn intake_gives_durable_idempotent_receipts() {
    let (gw, _dest) = gateway().await;
    let r = raw(
        gw.addr(),
        &post(
            "/v1/dossiers",
            &dossier_json(None, "Hồ sơ tuyển sinh lớp 6"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let receipt = r.json();
    let code = receipt["dossier_code"].as_str().unwrap().to_string();
    assert!(code.starts_with("000.00.01.H22-"), "{code}");
    assert_eq!(
        receipt["destinations"],
        serde_json::json!(["dvcqg", "so-gddt"])
    );

    // Same content under its code: the same receipt. Different content: 409.
    let again = raw(
        gw.addr(),
        &post(
            "/v1/dossiers",
            &dossier_json(Some(&code), "Hồ sơ tuyển sinh lớp 6"),
            "",
        ),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), receipt);
    let other = raw(
        gw.addr(),
        &post(
            "/v1/dossiers",
            &dossier_json(Some(&code), "Nội dung khác"),
            "",
        ),
    )
    .await;
    assert_error(&other, 409, "conflict");
    // Idempotency-Key works the same way.
    let k = "Idempotency-Key: portal-req-7\r\n";
    let a = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Hồ sơ B"), k),
    )
    .await;
    let b = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Hồ sơ B"), k),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json(), b.json());
    assert_error(
        &raw(
            gw.addr(),
            &post("/v1/dossiers", &dossier_json(None, "Hồ sơ C"), k),
        )
        .await,
        409,
        "conflict",
    );

    // Timeline with per-destination delivery state.
    let t = raw_get(gw.addr(), &format!("/v1/dossiers/{code}")).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.json()["dossier_code"], code.as_str());
    assert_error(
        &raw_get(gw.addr(), "/v1/dossiers/000.00.01.H22-251126-9999").await,
        404,
        "not_found",
    );

    // The receipt was audited fail-closed with the dossier code.
    let db = gw.config_path.parent().unwrap().join("audit.db");
    let recs = lienthong::audit::writer::query(
        &db,
        &lienthong::store::audit::Filter {
            dossier: Some(code.clone()),
            limit: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        recs.iter().any(
            |(_, r)| r.kind == lienthong::audit::record::RecordKind::Intake
                && r.status == Some(202)
        ),
        "{recs:?}"
    );
}

#[tokio::test]
async fn invalid_dossiers_and_events_name_the_field() {
    let (gw, _dest) = gateway().await;
    let bad = dossier_json(None, "x").replace("022090000001", "12345");
    let r = raw(gw.addr(), &post("/v1/dossiers", &bad, "")).await;
    assert_error(&r, 422, "invalid_dossier");
    assert!(
        r.json()["message"].as_str().unwrap().contains("applicant"),
        "{}",
        r.json()
    );
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Hồ sơ D"), ""),
    )
    .await;
    let code = r.json()["dossier_code"].as_str().unwrap().to_string();
    // Status 1 → 2 is allowed; 2 → 1 is not.
    let ev = |s: &str| {
        serde_json::json!({"kind": "status", "status": s, "at": "20251126090000"}).to_string()
    };
    let ok = raw(
        gw.addr(),
        &post(&format!("/v1/dossiers/{code}/events"), &ev("2"), ""),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", String::from_utf8_lossy(&ok.body));
    let back = raw(
        gw.addr(),
        &post(&format!("/v1/dossiers/{code}/events"), &ev("1"), ""),
    )
    .await;
    assert_eq!(back.status, 422, "{}", String::from_utf8_lossy(&back.body));
    let r = raw(
        gw.addr(),
        b"PUT /v1/dossiers HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&r, 405, "method_not_allowed");
}

#[tokio::test]
async fn dossiers_and_events_are_delivered_in_order_with_idempotency_keys() {
    let (gw, dest) = gateway().await;
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Hồ sơ giao"), ""),
    )
    .await;
    let code = r.json()["dossier_code"].as_str().unwrap().to_string();
    let ev =
        serde_json::json!({"kind": "status", "status": "2", "at": "20251126090000"}).to_string();
    assert_eq!(
        raw(
            gw.addr(),
            &post(&format!("/v1/dossiers/{code}/events"), &ev, "")
        )
        .await
        .status,
        202
    );
    eventually(
        "both destinations got the dossier and the event",
        std::time::Duration::from_secs(10),
        || async { dest.count() >= 4 },
    )
    .await;
    let seen = dest.seen.lock().unwrap().clone();
    for d in ["/dvcqg/DongBoHoSoMC", "/so-gddt/hoso"] {
        let keys: Vec<String> = seen
            .iter()
            .filter(|s| s.uri == d)
            .map(|s| s.header("idempotency-key").unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            vec![format!("{code}:0"), format!("{code}:1")],
            "creation before update at {d}"
        );
    }
    let first = seen
        .iter()
        .find(|s| s.uri == "/dvcqg/DongBoHoSoMC")
        .unwrap();
    assert!(String::from_utf8_lossy(&first.body).contains("3.000182.000.00.00.H22"));
    // The destination counts a delivery when it has it; the outbox marks it delivered
    // once its answer is back: a moment later.
    eventually(
        "the outbox shows the four deliveries",
        std::time::Duration::from_secs(10),
        || async {
            let (_, outbox) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            serde_json::from_str::<serde_json::Value>(&outbox)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
                == 4
        },
    )
    .await;
    // Each delivery's audit record proves what was sent: the payload's digest (here sent
    // as is: no adapter renders it, so no translated digest) and the answer's.
    let creation = delivery_record(&gw, "dvcqg", &format!("{code}:0")).await;
    assert_eq!(creation["status"], 200);
    assert_eq!(
        creation["request_sha256"].as_str(),
        Some(sha256_hex(&first.body).as_str()),
        "{creation}"
    );
    assert_eq!(creation["bytes_in"], first.body.len());
    assert!(creation.get("request_translated_sha256").is_none());
    assert_eq!(creation["response_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(creation["endpoint"].as_str(), Some(dest.url().as_str()));
}

#[tokio::test]
async fn counterpart_down_then_back_gets_everything() {
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d = down.clone();
    let dest = MockUpstream::start(std::sync::Arc::new(move |_s: &Seen| {
        if d.load(std::sync::atomic::Ordering::SeqCst) {
            Action::Respond(json_response(503, serde_json::json!({})))
        } else {
            Action::Respond(json_response(200, serde_json::json!({"ok": true})))
        }
    }))
    .await;
    let gw = gateway_to(&dest, "").await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let r = raw(
            gw.addr(),
            &post(
                "/v1/dossiers",
                &dossier_json(None, &format!("Hồ sơ {i}")),
                "",
            ),
        )
        .await;
        assert_eq!(r.status, 202);
        codes.push(r.json()["dossier_code"].as_str().unwrap().to_string());
    }
    eventually(
        "retries happening",
        std::time::Duration::from_secs(10),
        || async { dest.count() >= 10 },
    )
    .await;
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        "all delivered once the counterpart is back",
        std::time::Duration::from_secs(20),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            serde_json::from_str::<serde_json::Value>(&o)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
                == 10
        },
    )
    .await;
    let ok: std::collections::HashSet<String> = dest
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.header("x-lienthong-dossier").unwrap().to_string())
        .collect();
    for c in &codes {
        assert!(ok.contains(c), "{c} never reached the counterpart");
    }
}

#[tokio::test]
async fn permanent_refusal_dead_letters_and_admin_retry_redelivers() {
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r2 = refuse.clone();
    let dest = MockUpstream::start(std::sync::Arc::new(move |_s: &Seen| {
        if r2.load(std::sync::atomic::Ordering::SeqCst) {
            Action::Respond(json_response(400, serde_json::json!({"error": "bad"})))
        } else {
            Action::Respond(json_response(200, serde_json::json!({})))
        }
    }))
    .await;
    let gw = gateway_to(&dest, "").await;
    assert_eq!(
        raw(
            gw.addr(),
            &post("/v1/dossiers", &dossier_json(None, "Hồ sơ X"), "")
        )
        .await
        .status,
        202
    );
    let dead = || async {
        let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=dead").await;
        serde_json::from_str::<serde_json::Value>(&o).unwrap()
    };
    eventually(
        "dead-lettered",
        std::time::Duration::from_secs(10),
        || async { dead().await.as_array().unwrap().len() == 2 },
    )
    .await;
    let items = dead().await;
    assert!(items[0]["last_error"].as_str().unwrap().contains("400"));
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    for it in items.as_array().unwrap() {
        let id = it["id"].as_i64().unwrap();
        assert_eq!(
            admin_post(&gw, &format!("/admin/exchange/outbox/{id}/retry"))
                .await
                .0,
            200
        );
    }
    eventually(
        "redelivered after admin retry",
        std::time::Duration::from_secs(10),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            serde_json::from_str::<serde_json::Value>(&o)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
                == 2
        },
    )
    .await;
}

#[tokio::test]
async fn sandbox_counterpart_down_failing_then_ok() {
    use lienthong::sandbox::{Mode, Sandbox};
    let sb = std::sync::Arc::new(Sandbox::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(lienthong::sandbox::serve(l, sb.clone()));
    let cfg = base_config(&format!(
        r#"
[upstreams.sandbox]
endpoints = ["http://{addr}"]
request_timeout = "1s"
[upstreams.sandbox.retry]
attempts = 1
[upstreams.sandbox.passive]
consecutive_failures = 0
[upstreams.sandbox.circuit_breaker]
consecutive_failures = 0
[exchange]
db = "exchange.db"
destinations = ["dvcqg"]
auth = {{ anonymous = true }}
backoff_base = "50ms"
backoff_cap = "200ms"
delivery_timeout = "1s"
[exchange.deliveries]
dvcqg = {{ upstream = "sandbox", path = "/dvcqg/hoso" }}
"#
    ));
    let gw = TestGateway::start(&cfg).await;
    sb.set_mode("dvcqg", Mode::Down);
    let code = file(&gw, "Hồ sơ sandbox").await;
    eventually(
        "attempts while down",
        std::time::Duration::from_secs(10),
        || async { first_attempts(&gw).await >= 2 },
    )
    .await;
    sb.set_mode("dvcqg", Mode::Failing);
    eventually(
        "attempts while failing",
        std::time::Duration::from_secs(10),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox").await;
            serde_json::from_str::<serde_json::Value>(&o).unwrap()[0]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("503")
        },
    )
    .await;
    assert!(sb.received().is_empty());
    sb.set_mode("dvcqg", Mode::Ok);
    eventually(
        "delivered once the portal is back",
        std::time::Duration::from_secs(10),
        || async {
            sb.received()
                .iter()
                .any(|r| r["idempotency_key"] == format!("{code}:0"))
        },
    )
    .await;
    // The sandbox also answers lookups and SOAP calls directly.
    let r = raw(
        addr,
        b"GET /dvcqg/thutuc/1.000123 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.json()["MaTTHC"], "1.000123");
}

/// A destination with an adapter gets the national shapes: the fixture dossier as exactly
/// the DongBoHoSoMC sample, a step as CapNhatTienDoHoSoMC, and no evaluation (a kind the
/// destination does not take); another destination keeps the canonical JSON.
#[tokio::test]
async fn deliveries_render_through_their_adapter() {
    // The national portal answers `{"error_code": "0"}`; the other destination echoes.
    let echo_dest = echo("dest");
    let dest = MockUpstream::start(std::sync::Arc::new(move |s: &Seen| {
        if s.uri == "/dvcqg/hoso" {
            Action::Respond(json_response(
                200,
                serde_json::json!({"error_code": "0", "message": "Thành công"}),
            ))
        } else {
            echo_dest(s)
        }
    }))
    .await;
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = base_config(&format!(
        r#"
[adapters]
dir = "{adapters}"
[upstreams.dest]
endpoints = ["{url}"]
[exchange]
db = "exchange.db"
destinations = ["dvcqg", "so-gddt"]
auth = {{ anonymous = true }}
[exchange.deliveries.dvcqg]
upstream = "dest"
path = "/dvcqg/hoso"
adapter = "dvcqg"
dossier_operation = "DongBoHoSoMC"
event_operation = "TienDoXuLy"
events = ["status", "step"]
context = {{ session = "3f5c0b7e-0000-0000-0000-000000000000", madonvi = "000.00.01.H22" }}
[exchange.deliveries.so-gddt]
upstream = "dest"
path = "/so-gddt/hoso"
"#,
        adapters = here.join("adapters").display(),
        url = dest.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let body = std::fs::read_to_string(here.join("adapters/dvcqg/fixtures/dossier.json")).unwrap();
    let r = raw(gw.addr(), &post("/v1/dossiers", &body, "")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let code = r.json()["dossier_code"].as_str().unwrap().to_string();
    assert_eq!(code, "000.00.01.H22-250715-0001");
    let step = serde_json::json!({"kind": "step", "handler": "Cán bộ một cửa", "at": "20250715083000", "content": "Tiếp nhận hồ sơ", "status": 2}).to_string();
    let r = raw(
        gw.addr(),
        &post(&format!("/v1/dossiers/{code}/events"), &step, ""),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let eval =
        serde_json::json!({"kind": "evaluation", "at": "20250722170000", "rating": 5}).to_string();
    let r = raw(
        gw.addr(),
        &post(&format!("/v1/dossiers/{code}/events"), &eval, ""),
    )
    .await;
    assert!(r.status == 202, "{}", String::from_utf8_lossy(&r.body));
    // Everything settles: 3 items per destination, the skipped evaluation included.
    eventually(
        "all six outbox items delivered",
        std::time::Duration::from_secs(10),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            serde_json::from_str::<serde_json::Value>(&o)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
                == 6
        },
    )
    .await;
    let seen = dest.seen.lock().unwrap().clone();
    let national: Vec<serde_json::Value> = seen
        .iter()
        .filter(|s| s.uri == "/dvcqg/hoso")
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert_eq!(national.len(), 2, "the evaluation is not sent to DVCQG");
    let mut want: serde_json::Value = serde_json::from_slice(
        &std::fs::read(here.join("adapters/dvcqg/fixtures/dongbohosomc-request.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(national[0], want);
    want = serde_json::from_slice(
        &std::fs::read(here.join("adapters/dvcqg/fixtures/capnhattiendohosomc-request.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(national[1], want);
    let canonical = seen.iter().filter(|s| s.uri == "/so-gddt/hoso").count();
    assert_eq!(canonical, 3, "the canonical destination takes every event");
    let first = seen.iter().find(|s| s.uri == "/so-gddt/hoso").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(v["procedure_code"], "3.000182.000.00.00.H22");
    // The audit record of the rendered delivery carries the digest of what went on the
    // wire, beside the stored payload's, and names the adapter.
    let creation = delivery_record(&gw, "dvcqg", &format!("{code}:0")).await;
    let sent = seen.iter().find(|s| s.uri == "/dvcqg/hoso").unwrap();
    assert_eq!(
        creation["request_translated_sha256"].as_str(),
        Some(sha256_hex(&sent.body).as_str()),
        "{creation}"
    );
    assert_ne!(
        creation["request_sha256"],
        creation["request_translated_sha256"]
    );
    assert_eq!(creation["adapter"]["id"], "dvcqg");
}

/// The intake reads the national DongBoHoSoMC shape through the dvcqg adapter
/// (`?format=dvcqg`), and the DVCQG delivery renders it back: what reaches the portal is
/// exactly the national sample that came in.
#[tokio::test]
async fn intake_reads_the_national_format_and_delivers_it_unchanged() {
    let dest = MockUpstream::start(echo("dest")).await;
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = dvcqg_config(
        &dest.url(),
        r#"formats = { dvcqg = "dvcqg/HoSoTuDVCQG" }"#,
        r#"context = { session = "3f5c0b7e-0000-0000-0000-000000000000" }"#,
    );
    let gw = TestGateway::start(&cfg).await;
    let national =
        std::fs::read_to_string(here.join("adapters/dvcqg/fixtures/dongbohosomc-request.json"))
            .unwrap();
    let r = raw(gw.addr(), &post("/v1/dossiers?format=dvcqg", &national, "")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let receipts = r.json()["receipts"].as_array().unwrap().clone();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["dossier_code"], "000.00.01.H22-250715-0001");
    // Sent again: the same receipt, replayed.
    let r = raw(gw.addr(), &post("/v1/dossiers?format=dvcqg", &national, "")).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-lienthong-replayed"), Some("true"));
    eventually(
        "delivered to DVCQG",
        std::time::Duration::from_secs(10),
        || async { dest.count() >= 1 },
    )
    .await;
    let got: serde_json::Value = serde_json::from_slice(&dest.last().body).unwrap();
    let want: serde_json::Value = serde_json::from_str(&national).unwrap();
    assert_eq!(got, want);

    // An unknown format is 415; a batch missing a mandatory field is 422 naming it.
    let r = raw(gw.addr(), &post("/v1/dossiers?format=igate", &national, "")).await;
    assert_error(&r, 415, "unknown_format");
    let mut bad: serde_json::Value = serde_json::from_str(&national).unwrap();
    bad["data"][0].as_object_mut().unwrap().remove("MaTTHC");
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers?format=dvcqg", &bad.to_string(), ""),
    )
    .await;
    assert_error(&r, 422, "invalid_dossier");
    assert!(
        r.json()["message"].as_str().unwrap().contains("MaTTHC"),
        "{}",
        r.json()
    );
}

/// Deliveries are routed by procedure code and field: a destination with filters gets only
/// the dossiers that match them, and a dossier's events follow it.
#[tokio::test]
async fn deliveries_are_routed_by_procedure_and_field() {
    let dest = MockUpstream::start(echo("dest")).await;
    let cfg = base_config(&format!(
        r#"
[upstreams.dest]
endpoints = ["{url}"]
[exchange]
db = "exchange.db"
destinations = ["dvcqg", "so-gddt", "so-yte"]
auth = {{ anonymous = true }}
[exchange.deliveries]
dvcqg = {{ upstream = "dest", path = "/dvcqg" }}
so-gddt = {{ upstream = "dest", path = "/so-gddt", procedures = ["3.000182.*"] }}
so-yte = {{ upstream = "dest", path = "/so-yte", fields = ["G14-*"] }}
"#,
        url = dest.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Tuyển sinh"), ""),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let receipt = r.json();
    assert_eq!(
        receipt["destinations"],
        serde_json::json!(["dvcqg", "so-gddt"]),
        "{receipt}"
    );
    let code = receipt["dossier_code"].as_str().unwrap().to_string();
    let ev =
        serde_json::json!({"kind": "status", "status": "2", "at": "20251126090000"}).to_string();
    let r = raw(
        gw.addr(),
        &post(&format!("/v1/dossiers/{code}/events"), &ev, ""),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.json()["destinations"],
        serde_json::json!(["dvcqg", "so-gddt"])
    );
    // A health dossier (field G14-…, another procedure) goes to so-yte, not so-gddt.
    let mut v: serde_json::Value = serde_json::from_str(&dossier_json(None, "Y tế")).unwrap();
    v["procedure_code"] = "1.001234.000.00.00.H22".into();
    v["field_code"] = "G14-YT01".into();
    let r = raw(gw.addr(), &post("/v1/dossiers", &v.to_string(), "")).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["destinations"],
        serde_json::json!(["dvcqg", "so-yte"])
    );
    eventually(
        "five deliveries",
        std::time::Duration::from_secs(10),
        || async { dest.count() >= 6 },
    )
    .await;
    let uris: Vec<String> = dest
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(
        uris.iter().filter(|u| *u == "/so-gddt").count(),
        2,
        "{uris:?}"
    );
    assert_eq!(
        uris.iter().filter(|u| *u == "/so-yte").count(),
        1,
        "{uris:?}"
    );
    assert_eq!(
        uris.iter().filter(|u| *u == "/dvcqg").count(),
        3,
        "{uris:?}"
    );
}

/// With `[exchange] catalogue`, a procedure code the catalogue lookup does not know is a 422
/// naming `procedure_code`; a known one is accepted.
#[tokio::test]
async fn procedure_codes_are_checked_against_the_catalogue_lookup() {
    let catalogue = MockUpstream::start(std::sync::Arc::new(|s: &Seen| {
        if s.uri == "/thutuc/3.000182.000.00.00.H22" {
            Action::Respond(json_response(
                200,
                serde_json::json!({"MaTTHC": "3.000182.000.00.00.H22"}),
            ))
        } else {
            Action::Respond(json_response(
                404,
                serde_json::json!({"error": "not found"}),
            ))
        }
    }))
    .await;
    let dest = MockUpstream::start(echo("dest")).await;
    let cfg = base_config(&format!(
        r#"
[upstreams.catalogue]
endpoints = ["{cat}"]
[upstreams.dest]
endpoints = ["{url}"]
[[lookups]]
name = "thutuc"
source = {{ upstream = "catalogue", path = "/thutuc/{{key}}" }}
auth = {{ anonymous = true }}
[exchange]
db = "exchange.db"
destinations = ["dvcqg"]
catalogue = "thutuc"
auth = {{ anonymous = true }}
[exchange.deliveries]
dvcqg = {{ upstream = "dest", path = "/dvcqg" }}
"#,
        cat = catalogue.url(),
        url = dest.url()
    ));
    let gw = TestGateway::start(&cfg).await;
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Có trong danh mục"), ""),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let mut v: serde_json::Value = serde_json::from_str(&dossier_json(None, "Không có")).unwrap();
    v["procedure_code"] = "9.999999.000.00.00.H22".into();
    let r = raw(gw.addr(), &post("/v1/dossiers", &v.to_string(), "")).await;
    assert_error(&r, 422, "invalid_dossier");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("procedure_code"),
        "{}",
        r.json()
    );
}

/// DVCQG answers HTTP 200 with an `error_code`: the delivery reads the answer through the
/// operation's response step — a refusal is retried (not taken as delivered), and "already
/// exists" (the dossier code is the receiver's idempotency key) counts as delivered.
#[tokio::test]
async fn deliveries_read_the_counterparts_answer_through_the_adapter() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let thirds = std::sync::Arc::new(AtomicUsize::new(0));
    let t2 = thirds.clone();
    let dvcqg = MockUpstream::start(std::sync::Arc::new(move |s: &Seen| {
        let body = String::from_utf8_lossy(&s.body).to_string();
        if body.contains("Lần ba") {
            // An "exists" code without the words that say so: a refusal, once.
            let answer = if t2.fetch_add(1, Ordering::SeqCst) == 0 {
                serde_json::json!({"error_code": "-3", "message": "Mã thủ tục không hợp lệ"})
            } else {
                serde_json::json!({"error_code": 0, "message": "Thành công"})
            };
            return Action::Respond(json_response(200, answer));
        }
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let answer = if body.contains("Lần hai") {
            serde_json::json!({"error_code": "3", "message": "Hồ sơ đã tồn tại"})
        } else if n == 0 {
            serde_json::json!({"error_code": "-1", "message": "Phiên làm việc hết hạn"})
        } else {
            serde_json::json!({"error_code": 0, "message": "Thành công"})
        };
        Action::Respond(json_response(200, answer))
    }))
    .await;
    let cfg = dvcqg_config(&dvcqg.url(), "", r#"context = { session = "s" }"#);
    let gw = TestGateway::start(&cfg).await;
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Lần một"), ""),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let first = r.json()["dossier_code"].as_str().unwrap().to_string();
    eventually(
        "the refused dossier is retried and delivered",
        std::time::Duration::from_secs(10),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            o.contains(&first)
        },
    )
    .await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the refusal was not taken as delivered"
    );
    let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
    let items: serde_json::Value = serde_json::from_str(&o).unwrap();
    let item = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["dossier_code"] == first.as_str())
        .unwrap();
    assert_eq!(item["attempts"], 2, "{item}");

    let second = file(&gw, "Lần hai").await;
    delivered(&gw, &second, "'already exists' counts as delivered").await;

    let third = file(&gw, "Lần ba").await;
    delivered(
        &gw,
        &third,
        "the ambiguous refusal is retried, then delivered",
    )
    .await;
    assert_eq!(
        thirds.load(Ordering::SeqCst),
        2,
        "-3 without 'đã tồn tại' was not a delivery"
    );
}

/// DVCQG's session comes from a login the gateway makes itself (`{ login = {…} }` context
/// value): one login serves several deliveries, and a refused call makes the next attempt
/// log in again.
#[tokio::test]
async fn delivery_sessions_come_from_a_login_and_are_renewed_after_a_refusal() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let logins = std::sync::Arc::new(AtomicUsize::new(0));
    let dvcqg = MockUpstream::start(dvcqg_with_logins(logins.clone())).await;
    let cfg = dvcqg_config(
        &dvcqg.url(),
        "",
        r#"[exchange.deliveries.dvcqg.context.session.login]
upstream = "dvcqg"
path = "/login"
username = "000.00.01.H22"
password = { env = "LIENTHONG_TEST_DVCQG_PASSWORD" }
headers = { dstcode = "VN:GOV:000.00.00.G22:vpcpdvcprovider" }"#,
    );
    std::env::set_var("LIENTHONG_TEST_DVCQG_PASSWORD", "mat-khau-thu");
    let gw = TestGateway::start(&cfg).await;
    let mut codes = Vec::new();
    for summary in ["Một", "Hai", "Ba"] {
        let r = raw(
            gw.addr(),
            &post("/v1/dossiers", &dossier_json(None, summary), ""),
        )
        .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        codes.push(r.json()["dossier_code"].as_str().unwrap().to_string());
    }
    eventually(
        "all three delivered",
        std::time::Duration::from_secs(10),
        || async {
            let (_, o) = admin_get(&gw, "/admin/exchange/outbox?state=delivered").await;
            codes.iter().all(|c| o.contains(c.as_str()))
        },
    )
    .await;
    // S1 was refused once; one more login (S2) served every later call.
    assert_eq!(logins.load(Ordering::SeqCst), 2);
    for login in dvcqg
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/login")
    {
        let body: serde_json::Value = serde_json::from_slice(&login.body).unwrap();
        assert_eq!(body["username"], "000.00.01.H22");
        assert_eq!(body["password"], "mat-khau-thu");
        assert_eq!(
            login.header("dstcode"),
            Some("VN:GOV:000.00.00.G22:vpcpdvcprovider")
        );
    }
    let delivered: Vec<serde_json::Value> = dvcqg
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/dvcqg/hoso")
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert!(delivered.iter().filter(|b| b["session"] == "S2").count() >= 3);
    // The password never shows in the running config.
    let (_, config) = admin_get(&gw, "/admin/config").await;
    assert!(!config.contains("mat-khau-thu"), "{config}");
}

/// The audit record of the delivery `id` (`{code}:{event_seq}`) to `destination`.
async fn delivery_record(gw: &TestGateway, destination: &str, id: &str) -> serde_json::Value {
    assert_eq!(admin_post(gw, "/admin/audit/checkpoint").await.0, 200);
    let path = format!("/admin/audit/records?route=exchange:{destination}");
    let (_, recs) = admin_get(gw, &path).await;
    let recs: serde_json::Value = serde_json::from_str(&recs).unwrap();
    recs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"].clone())
        .find(|r| r["kind"] == "delivery" && r["request_id"] == id)
        .unwrap_or_else(|| panic!("no delivery record {id}: {recs}"))
}

#[tokio::test]
async fn a_failed_deliverys_reason_names_no_endpoint() {
    let dead = dead_addr().await;
    let gw = gateway_at(&format!("http://{dead}"), "").await;
    let code = file(&gw, "Hồ sơ").await;
    eventually(
        "a failed attempt",
        std::time::Duration::from_secs(10),
        || async { first_attempts(&gw).await >= 1 },
    )
    .await;
    // The timeline is shown to agencies: the reason says what failed, not where.
    let r = raw(
        gw.addr(),
        format!("GET /v1/dossiers/{code} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("upstream_unreachable"), "{text}");
    assert!(!text.contains(&dead.port().to_string()), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
}

/// A dossier sent with neither a code nor an Idempotency-Key and sent again (the client
/// was told to retry, or its receipt was lost) is one dossier, not two under two numbers.
#[tokio::test]
async fn a_keyless_dossier_sent_twice_is_filed_once() {
    let (gw, _dest) = gateway().await;
    let body = dossier_json(None, "Hồ sơ gửi lại");
    let first = raw(gw.addr(), &post("/v1/dossiers", &body, "")).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let again = raw(gw.addr(), &post("/v1/dossiers", &body, "")).await;
    assert_eq!(again.status, 202);
    assert_eq!(
        again.json(),
        first.json(),
        "the first receipt, not a second dossier"
    );
    assert_eq!(again.header("x-lienthong-replayed"), Some("true"));
    // Other content is another dossier.
    let other = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier_json(None, "Hồ sơ khác"), ""),
    )
    .await;
    assert_eq!(other.status, 202);
    assert_ne!(other.json()["dossier_code"], first.json()["dossier_code"]);
}

#[tokio::test]
async fn the_admin_outbox_list_pages_by_id() {
    let dest = MockUpstream::start(status(503)).await;
    let gw = gateway_to(&dest, "").await;
    for title in ["Một", "Hai"] {
        file(&gw, title).await;
    }
    // Two dossiers, two destinations each.
    let list = |q: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = admin_get(gw, &format!("/admin/exchange/outbox{q}")).await;
            (
                status,
                serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (_, all) = list("").await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    let (_, first) = list("?limit=3").await;
    assert_eq!(first.as_array().unwrap().len(), 3);
    let last = first[2]["id"].as_i64().unwrap();
    let (_, rest) = admin_get(&gw, &format!("/admin/exchange/outbox?limit=3&after={last}")).await;
    let rest: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], all[3]["id"]);
    let (status, body) = list("?limit=lots").await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "bad_parameter");
}

/// A status change dated before the one already applied (a retried step that a later one
/// overtook) must not move the dossier back.
#[tokio::test]
async fn a_late_status_event_does_not_move_a_dossier_back() {
    let (gw, _dest) = gateway().await;
    let code = file(&gw, "Hồ sơ E").await;
    let send = |status: &str, at: &str| {
        let body = serde_json::json!({"kind": "status", "status": status, "at": at}).to_string();
        let req = post(&format!("/v1/dossiers/{code}/events"), &body, "");
        let addr = gw.addr();
        async move { raw(addr, &req).await }
    };
    assert_eq!(send("2", "20251126100000").await.status, 202);
    // Waiting for supplements (5) at 10:05; then "being processed" (4) dated 10:02
    // arrives late: 5 → 4 is a transition, but not one this late event may make.
    assert_eq!(send("5", "20251126100500").await.status, 202);
    let late = send("4", "20251126100200").await;
    assert_error(&late, 422, "invalid_dossier");
    assert!(
        late.json()["message"]
            .as_str()
            .unwrap()
            .contains("at: 20251126100200 is before"),
        "{}",
        late.json()
    );
    // A late event asserting the status in force changes nothing and is kept.
    assert_eq!(send("5", "20251126100100").await.status, 202);
    // An event from the future would make every genuine one "late": refused.
    let future = send("4", "20991231000000").await;
    assert_error(&future, 422, "invalid_dossier");
    assert!(future.json()["message"]
        .as_str()
        .unwrap()
        .contains("in the future"));
    // A later change is fine.
    assert_eq!(send("4", "20251126101000").await.status, 202);
}
