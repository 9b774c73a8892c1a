//! The intake channel's HTTP API: durable 202 receipts, idempotency, conflicts,
//! validation naming the field, events with transition rules, the timeline, and
//! fail-closed audit records carrying the dossier code.

use crate::support::*;

fn dossier(code: Option<&str>, summary: &str) -> String {
    let mut v = serde_json::json!({
        "procedure_code": "3.000182.000.00.00.H22",
        "procedure_name": "Tuyển sinh trung học cơ sở",
        "receiving_unit": "000.00.01.H22",
        "channel": "2",
        "summary": summary,
        "status": "1",
        "received_at": "20251126083000",
        "due_at": "20251203170000",
        "applicant": {
            "name": "Nguyễn Văn A",
            "kind": "1",
            "id_number": "022090000001",
            "identifiers": [{"kind": "1", "number": "022090000001"}]
        }
    });
    if let Some(c) = code {
        v["code"] = c.into();
    }
    v.to_string()
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn gateway() -> TestGateway {
    let cfg = base_config(
        r#"
[exchange]
db = "exchange.db"
destinations = ["dvcqg", "so-gddt"]
auth = { anonymous = true }
"#,
    );
    TestGateway::start(&cfg).await
}

#[tokio::test]
async fn intake_gives_durable_idempotent_receipts() {
    let gw = gateway().await;
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier(None, "Hồ sơ tuyển sinh lớp 6"), ""),
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
            &dossier(Some(&code), "Hồ sơ tuyển sinh lớp 6"),
            "",
        ),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), receipt);
    let other = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier(Some(&code), "Nội dung khác"), ""),
    )
    .await;
    assert_error(&other, 409, "conflict");
    // Idempotency-Key works the same way.
    let k = "Idempotency-Key: portal-req-7\r\n";
    let a = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier(None, "Hồ sơ B"), k),
    )
    .await;
    let b = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier(None, "Hồ sơ B"), k),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json(), b.json());
    assert_error(
        &raw(
            gw.addr(),
            &post("/v1/dossiers", &dossier(None, "Hồ sơ C"), k),
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
        &lienthong::audit::store::Filter {
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
    let gw = gateway().await;
    let bad = dossier(None, "x").replace("022090000001", "12345");
    let r = raw(gw.addr(), &post("/v1/dossiers", &bad, "")).await;
    assert_error(&r, 422, "invalid_dossier");
    assert!(
        r.json()["message"].as_str().unwrap().contains("applicant"),
        "{}",
        r.json()
    );
    let r = raw(
        gw.addr(),
        &post("/v1/dossiers", &dossier(None, "Hồ sơ D"), ""),
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
