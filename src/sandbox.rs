//! `lienthong sandbox`: simulated counterparts on loopback for tests, demos and
//! integrators trying lienthong before connecting real systems. One listener serves:
//!
//! - a DVCQG-like national portal: `POST /dvcqg/login` (session), `POST /dvcqg/hoso`
//!   (DongBoHoSoMC-style sync, answers `{"error_code": "0"}`), `GET /dvcqg/thutuc/{ma}`
//!   (LayThuTuc-style lookup);
//! - a SOAP agency system: `POST /agency/soap` answers a SOAP 1.1 envelope echoing the
//!   identifier it was asked about;
//! - an edXML document axis in the manner of the VPCP axis API (brief §8.3):
//!   `POST /edxml/sendEdoc` (body: the raw edXML packet, headers `from`, `to`, `messagetype`;
//!   refused with `status: FAIL` unless it is a well-formed QCVN 102:2016 edoc or status
//!   packet), `POST /edxml/getReceivedEdocList`, `POST /edxml/getEdoc` (header `docid`; the
//!   packet base64 in `data`), `POST /edxml/updateStatus` (headers `docid`, `status`);
//! - `GET /health`.
//!
//! Each system (`dvcqg`, `agency`, `edxml`) can be switched at run time with
//! `POST /sandbox/mode?system=dvcqg&mode=ok|slow|failing|down`: slow answers after two
//! seconds, failing answers 503, down closes the connection without answering.
//! `GET /sandbox/received` lists what the counterparts accepted (for demos and tests).

use crate::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    Slow,
    Failing,
    Down,
}

/// Shared state of the simulated counterparts.
#[derive(Default)]
pub struct Sandbox {
    modes: Mutex<HashMap<String, Mode>>,
    received: Mutex<Vec<serde_json::Value>>,
    /// Packets the edXML axis holds: (docId, headers, packet, status).
    edocs: Mutex<Vec<Edoc>>,
}

struct Edoc {
    id: u64,
    from: String,
    to: String,
    message_type: String,
    packet: Bytes,
    status: String,
}

impl Sandbox {
    pub fn mode(&self, system: &str) -> Mode {
        *self
            .modes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(system)
            .unwrap_or(&Mode::Ok)
    }

    pub fn set_mode(&self, system: &str, mode: Mode) {
        self.modes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(system.to_string(), mode);
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(serde_json::to_vec(&v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// What to do with a request: answer it, or drop the connection (mode `down`).
enum Reply {
    Answer(Response<Body>),
    Hangup,
}

async fn handle(sb: &Sandbox, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if path == "/health" {
        return Reply::Answer(json(StatusCode::OK, serde_json::json!({"status": "ok"})));
    }
    if path == "/sandbox/mode" && parts.method == Method::POST {
        let get = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
        };
        let mode = match get("mode").as_deref() {
            Some("ok") => Mode::Ok,
            Some("slow") => Mode::Slow,
            Some("failing") => Mode::Failing,
            Some("down") => Mode::Down,
            _ => {
                return Reply::Answer(json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "mode is ok, slow, failing or down"}),
                ))
            }
        };
        let system = get("system").unwrap_or_else(|| "dvcqg".into());
        sb.set_mode(&system, mode);
        tracing::info!(system, ?mode, "sandbox mode changed");
        return Reply::Answer(json(
            StatusCode::OK,
            serde_json::json!({"system": system, "mode": format!("{mode:?}")}),
        ));
    }
    if path == "/sandbox/received" {
        return Reply::Answer(json(
            StatusCode::OK,
            serde_json::Value::Array(sb.received()),
        ));
    }
    let system = if path.starts_with("/dvcqg/") {
        "dvcqg"
    } else if path.starts_with("/agency/") {
        "agency"
    } else if path.starts_with("/edxml/") {
        "edxml"
    } else {
        return Reply::Answer(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such sandbox endpoint"}),
        ));
    };
    match sb.mode(system) {
        Mode::Down => return Reply::Hangup,
        Mode::Failing => {
            return Reply::Answer(json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error_code": "-1", "message": "hệ thống tạm ngừng (sandbox: failing)"}),
            ))
        }
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        Mode::Ok => {}
    }
    let answer = match (parts.method.clone(), path.as_str()) {
        (Method::POST, "/dvcqg/login") => json(
            StatusCode::OK,
            serde_json::json!({"session": "sandbox-session", "error_code": "0"}),
        ),
        (Method::POST, "/dvcqg/hoso") => {
            let v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            sb.received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(serde_json::json!({
                    "system": "dvcqg",
                    "idempotency_key": parts.headers.get("idempotency-key").and_then(|h| h.to_str().ok()),
                    "body": v,
                }));
            json(
                StatusCode::OK,
                serde_json::json!({"error_code": "0", "message": "Thành công"}),
            )
        }
        (Method::GET, p) if p.starts_with("/dvcqg/thutuc/") => {
            let ma = &p["/dvcqg/thutuc/".len()..];
            json(
                StatusCode::OK,
                serde_json::json!({"MaTTHC": ma, "TenTTHC": "Thủ tục mô phỏng (sandbox)", "CoQuanThucHien": "000.00.01.H22"}),
            )
        }
        (Method::POST, p) if p.starts_with("/edxml/") => edxml_axis(sb, p, &parts.headers, body),
        (Method::POST, "/agency/soap") => {
            let text = String::from_utf8_lossy(&body);
            let id: String = text
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| s.len() == 12)
                .unwrap_or("000000000000")
                .to_string();
            let xml = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:TraCuuResponse xmlns:m="urn:sandbox:hotich"><m:SoDinhDanh>{id}</m:SoDinhDanh><m:HoTen>Nguyễn Văn A</m:HoTen></m:TraCuuResponse></soap:Body></soap:Envelope>"#
            );
            let mut r = Response::new(Body::full(Bytes::from(xml)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such sandbox endpoint"}),
        ),
    };
    Reply::Answer(answer)
}

/// The edXML axis: `{status: "OK"|"FAIL", ErrorCode, ErrorDesc, DocId?, data?}` answers.
fn edxml_axis(sb: &Sandbox, path: &str, h: &http::HeaderMap, body: Bytes) -> Response<Body> {
    let header = |k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let fail = |desc: &str| {
        json(
            StatusCode::OK,
            serde_json::json!({"status": "FAIL", "ErrorCode": "-1", "ErrorDesc": desc}),
        )
    };
    let mut edocs = sb.edocs.lock().unwrap_or_else(|e| e.into_inner());
    match path {
        "/edxml/sendEdoc" => {
            // The axis checks the packet is well-formed and of the standard's namespace.
            let o = crate::translate::XmlToJsonOptions {
                strict_repeats: false,
                ..Default::default()
            };
            let Ok(v) = crate::translate::xml_to_json_bytes(&body, &o) else {
                return fail("not a well-formed XML packet");
            };
            let text = String::from_utf8_lossy(&v);
            if !text.contains("{http://www.mic.gov.vn/TBT/QCVN_102_2016}") {
                return fail("not a QCVN 102:2016 packet");
            }
            let id = edocs.len() as u64 + 1;
            let message_type = match header("messagetype").as_str() {
                "" => "edoc".to_string(),
                m => m.to_string(),
            };
            edocs.push(Edoc {
                id,
                from: header("from"),
                to: header("to"),
                message_type,
                packet: body,
                status: "initial".into(),
            });
            json(
                StatusCode::OK,
                serde_json::json!({"status": "OK", "ErrorCode": "0", "ErrorDesc": "", "DocId": id.to_string()}),
            )
        }
        "/edxml/getReceivedEdocList" => {
            let data: Vec<serde_json::Value> = edocs
                .iter()
                .map(|d| {
                    serde_json::json!({"docId": d.id.to_string(), "serviceType": "eDoc",
                        "messageType": d.message_type, "from": d.from, "to": d.to, "status": d.status})
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"status": "OK", "ErrorCode": "0", "ErrorDesc": "", "data": data}),
            )
        }
        "/edxml/getEdoc" | "/edxml/updateStatus" => {
            let id = header("docid");
            let Some(d) = edocs.iter_mut().find(|d| d.id.to_string() == id) else {
                return fail("no such docId");
            };
            if path == "/edxml/getEdoc" {
                use base64::Engine;
                let data = base64::engine::general_purpose::STANDARD.encode(&d.packet);
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "OK", "ErrorCode": "0", "ErrorDesc": "", "data": data}),
                )
            } else {
                let st = header("status");
                if !matches!(st.as_str(), "processing" | "done" | "fail") {
                    return fail("status is processing, done or fail");
                }
                d.status = st;
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "OK", "ErrorCode": "0", "ErrorDesc": ""}),
                )
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such edXML axis endpoint"}),
        ),
    }
}

/// Serves the sandbox on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sb: Arc<Sandbox>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sb = sb.clone();
        tokio::spawn(async move {
            let (hang_tx, mut hang_rx) = tokio::sync::mpsc::channel::<()>(1);
            let svc = service_fn(move |req| {
                let sb = sb.clone();
                let hang = hang_tx.clone();
                async move {
                    match handle(&sb, req).await {
                        Reply::Answer(r) => Ok::<_, std::convert::Infallible>(r),
                        Reply::Hangup => {
                            let _ = hang.send(()).await;
                            std::future::pending().await
                        }
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // Mode `down`: the connection is dropped mid-request, as a dead system would.
            tokio::select! {
                _ = conn => {}
                _ = hang_rx.recv() => {}
            }
        });
    }
}
